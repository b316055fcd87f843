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


class ConfigBinding(SharingModel):
    """One actor a config is delivered to, bound by the actor's identity (its dbid), never by a name.

    `alias_key` is set when the user named the actor through an alias: deleting that alias drops the
    binding, so whoever re-creates the name later does not receive the config."""

    id = peewee.AutoField()
    config_key = peewee.CharField(index=True)  # ActorConfig.key
    actor_dbid = peewee.CharField(index=True)  # {tenant}_{actor id}, resolved when the config was written
    alias_key = peewee.CharField(null=True, index=True)  # {tenant}_{alias} when named through an alias

    class Meta:
        table_name = "sharing_config_binding"



def unbind_config_alias(alias_key: str) -> None:
    """An alias is gone: configs attached through it stop reaching its actor."""
    ConfigBinding.delete().where(ConfigBinding.alias_key == alias_key).execute()


def unbind_config_actor(actor_dbid: str) -> None:
    """An actor is gone: no config is delivered to its id any more."""
    ConfigBinding.delete().where(ConfigBinding.actor_dbid == actor_dbid).execute()


class SchemaStep(SharingModel):
    """Data migrations already applied to this database (one row each), so each runs exactly once."""

    name = peewee.CharField(primary_key=True)
    applied_time = peewee.FloatField()

    class Meta:
        table_name = "sharing_schema_step"


MODELS: list[type[SharingModel]] = [User, Permission, Nonce, Alias, ActorConfig, EventDelivery, ConfigBinding,
                                    SchemaStep]

CONFIG_BINDINGS_STEP = "config_bindings_by_actor_id"


def resolve_config_targets(tenant: str, identifiers: list[str]) -> list[tuple[str, str | None]] | str:
    """[(actor dbid, alias key or None)] for the identifiers of a config, or the first one that names
    neither an actor nor an alias of the tenant."""
    from lightabaco.store.models import Actor

    out: list[tuple[str, str | None]] = []
    for ident in identifiers:
        dbid = f"{tenant}_{ident}"
        if Actor.select().where(Actor.dbid == dbid).exists():
            out.append((dbid, None))
            continue
        alias = Alias.get_or_none(Alias.key == f"{tenant}_{ident}")
        if alias is None or not Actor.select().where(Actor.dbid == f"{tenant}_{alias.actor_id}").exists():
            return ident
        out.append((f"{tenant}_{alias.actor_id}", alias.key))
    return out


def bind_config(config_key: str, targets: list[tuple[str, str | None]]) -> None:
    """Replace a config's bindings (call inside a write transaction)."""
    ConfigBinding.delete().where(ConfigBinding.config_key == config_key).execute()
    seen: set[tuple[str, str | None]] = set()
    for dbid, alias_key in targets:
        if (dbid, alias_key) not in seen:
            seen.add((dbid, alias_key))
            ConfigBinding.create(config_key=config_key, actor_dbid=dbid, alias_key=alias_key)


def migrate_config_bindings() -> None:
    """Databases written before bindings existed matched configs to actors by name at every execution.
    Bind each old config once to what its names resolve to now; names that resolve to nothing are
    dropped (they would otherwise go to whoever creates that name later). Idempotent: runs once per
    database, in one transaction with its marker."""
    import time

    from lightabaco.store.db import write_tx

    if SchemaStep.select().where(SchemaStep.name == CONFIG_BINDINGS_STEP).exists():
        return
    try:
        with write_tx():
            if SchemaStep.select().where(SchemaStep.name == CONFIG_BINDINGS_STEP).exists():
                return  # another process got there first
            for config in ActorConfig.select():
                idents = [a.strip() for a in config.actors.split(",") if a.strip()]
                targets: list[tuple[str, str | None]] = []
                for ident in idents:  # one at a time: an unresolvable name drops only itself
                    found = resolve_config_targets(config.tenant, [ident])
                    if not isinstance(found, str):
                        targets.extend(found)
                bind_config(config.key, targets)
            SchemaStep.create(name=CONFIG_BINDINGS_STEP, applied_time=time.time())
    except peewee.IntegrityError:
        # PostgreSQL: another process committed the same step concurrently; ours was rolled back
        if not SchemaStep.select().where(SchemaStep.name == CONFIG_BINDINGS_STEP).exists():
            raise


def migrate() -> None:
    """Data migrations of the sharing tables, run when the database is opened (store.db.create_tables)."""
    migrate_config_bindings()
