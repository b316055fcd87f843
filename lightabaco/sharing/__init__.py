"""Who may do what: `identity` (the caller), `auth` (tokens, JWTs, users and roles), `permissions`,
`nonces`, `aliases`, `configs` (actor configs and secrets) and `links` (who may link to whom).

The lower of the two rule layers: the lifecycle (lightabaco.abaco) calls it to check a caller, resolve
an alias, mint an actor's token or read its configs; it never calls the lifecycle.
May import: lightabaco.protocol, lightabaco.store, lightabaco.ids, lightabaco.config, the standard
library, peewee, jwt, hashids, cryptography.
"""
