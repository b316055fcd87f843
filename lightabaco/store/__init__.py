"""The store: peewee models and the database they live in (SQLite in WAL mode, PostgreSQL when configured).

`handle` (the database proxy), `models` (actors, messages, executions, workers, logs, results),
`sharing` (users, permissions, nonces, aliases, configs, webhook deliveries), `db` (connect, create tables,
write transactions), `fast` (cached statements for the message path), `mailbox` (enqueue, claim with a
lease, ack, requeue), `notify` (PostgreSQL LISTEN/NOTIFY wake-ups across hosts; no-ops on SQLite).

May import: peewee (and psycopg, on PostgreSQL), the standard library, lightabaco.config and lightabaco.ids. Nothing above it: the
lifecycle, sharing and workers call into the store, never the other way.
"""
