"""Worker processes and their supervisor: claim a message, run it in the sandbox, record, acknowledge.

May import: lightabaco.abaco (and its signals, to announce ACTOR_READY/ERROR and EXECUTION_COMPLETE),
lightabaco.automation (only to subscribe it at process start), lightabaco.store, lightabaco.sandbox,
lightabaco.images, lightabaco.protocol, lightabaco.config, lightabaco.ids.
"""
