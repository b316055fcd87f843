"""Abaco's lifecycle: actors, messages → executions, workers (the admin side: records and requests;
the processes are lightabaco.workers), state, the execution environment (spec §4.1), cron schedule
grammar, doorbells, housekeeping, the services container, and `signals`: the event registry through
which the layers above hear what happened (ACTOR_READY, ACTOR_ERROR, EXECUTION_COMPLETE).

Named `abaco` rather than `lifecycle`: it is the part that implements Abaco's own resource model
(spec §2-§5), which is what a reader looks for first.
May import: lightabaco.sharing, lightabaco.protocol, lightabaco.store, lightabaco.sandbox and
lightabaco.images (the services container creates the backend and image store lazily), lightabaco.ids,
lightabaco.config. Never automation, queries, http, workers or cli — not even inside functions.
"""
