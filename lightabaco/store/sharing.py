"""Peewee models for users and sharing: users, permissions, nonces, aliases, actor configs, events.

Keys are tenant-scoped as in Abaco (`{tenant}_{name}`); times are epoch seconds (float, UTC) like the
service's own models. The service's `create_tables()` picks these up through `MODELS`.
"""

from __future__ import annotations

import peewee

from lightabaco.store.handle import database


class SharingModel(peewee.Model):
    class Meta:
        database = database
        legacy_table_names = False


class User(SharingModel):
    """A user of a multi-user server. The owner (the token file) is not a row: it needs no database."""

    tenant = peewee.CharField()
    username = peewee.CharField()
    roles = peewee.CharField(default="user")  # comma-separated: admin, privileged, user, limited
    token_id = peewee.CharField()  # jti of the one valid token; issuing a new token revokes the old one
    revoked = peewee.BooleanField(default=False)
    create_time = peewee.FloatField()

    class Meta:
        table_name = "sharing_user"
        indexes = ((("tenant", "username"), True),)


class Permission(SharingModel):
    """One user's level on one object. kind: actor | alias | config; object_key: `{tenant}_{id}`."""

    id = peewee.AutoField()  # insertion order = display order of the permissions dict
    kind = peewee.CharField()
    object_key = peewee.CharField()
    username = peewee.CharField()
    level = peewee.IntegerField()

    class Meta:
        table_name = "sharing_permission"
        indexes = ((("kind", "object_key", "username"), True),)


class Nonce(SharingModel):
    id = peewee.CharField(primary_key=True)  # {tenant}_{hashid}
    tenant = peewee.CharField()
    actor_dbid = peewee.CharField(null=True, index=True)  # actor nonces
    # alias nonces: the alias name, not its key (not called `alias`: that is peewee's Model.alias())
    alias_name = peewee.CharField(null=True, index=True, column_name="alias")
    owner = peewee.CharField()
    roles = peewee.CharField(default="")  # the creator's roles when the nonce was made
    api_server = peewee.CharField(default="")
    level = peewee.CharField(default="EXECUTE")
    max_uses = peewee.IntegerField(default=-1)
    current_uses = peewee.IntegerField(default=0)
    remaining_uses = peewee.IntegerField(default=-1)
    description = peewee.TextField(default="")
    create_time = peewee.FloatField()
    last_use_time = peewee.FloatField(null=True)

    class Meta:
        table_name = "sharing_nonce"


class Alias(SharingModel):
    key = peewee.CharField(primary_key=True)  # {tenant}_{alias}
    tenant = peewee.CharField()
    name = peewee.CharField(column_name="alias")  # the alias itself
    actor_id = peewee.CharField(index=True)  # display id of the target actor
    owner = peewee.CharField()
    create_time = peewee.FloatField()

    class Meta:
        table_name = "sharing_alias"


class ActorConfig(SharingModel):
    key = peewee.CharField(primary_key=True)  # {tenant}_{name}
    tenant = peewee.CharField(index=True)
    name = peewee.CharField()
    value = peewee.TextField()  # Fernet token when is_secret
    is_secret = peewee.BooleanField(default=False)
    actors = peewee.TextField()  # verbatim, comma-separated ids and/or aliases
    owner = peewee.CharField()
    create_time = peewee.FloatField()

    class Meta:
        table_name = "sharing_config"


class EventDelivery(SharingModel):
    """A webhook POST waiting to be delivered (or retried); kept so a restart does not lose it."""

    id = peewee.AutoField()
    tenant = peewee.CharField()
    actor_dbid = peewee.CharField()
    url = peewee.TextField()
    payload = peewee.TextField()  # JSON
    attempts = peewee.IntegerField(default=0)
    next_attempt = peewee.FloatField(index=True)
    status = peewee.CharField(default="pending", index=True)  # pending | delivered | failed
    last_error = peewee.TextField(default="")
    create_time = peewee.FloatField()

    class Meta:
        table_name = "sharing_event_delivery"


MODELS: list[type[SharingModel]] = [User, Permission, Nonce, Alias, ActorConfig, EventDelivery]
