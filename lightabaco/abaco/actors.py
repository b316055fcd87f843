"""Actor lifecycle: register, list, get, replace (PUT), delete (spec §2.1, §2.2, §3.1)."""

from __future__ import annotations

import collections
import re
from typing import Any, Iterator, Mapping

import peewee

from lightabaco import ids
from lightabaco.abaco import message_env, schedule
from lightabaco.abaco import network as network_mod
from lightabaco.protocol.errors import NotFound, ValidationError
from lightabaco.protocol.fields import FieldSpec, parse, present
from lightabaco.sharing import aliases, permissions
from lightabaco.sharing.identity import Identity
from lightabaco.sharing.links import validate_link, validate_webhook
from lightabaco.protocol.serialize import display_time
from lightabaco.store import fast
from lightabaco.store.db import write_tx
from lightabaco.store.models import Actor, Counter, Execution, JSONField, Log, Worker

DESCRIPTION_PREFIX = "Invalid actor description"

# The parser of POST /actors (PUT uses the same minus `name`, plus `force`).
ACTOR_FIELDS: list[FieldSpec] = [
    FieldSpec("image", "str", required=True, help="The Docker image to associate with the actor."),
    FieldSpec("name", "str", None, "User defined name for this actor."),
    FieldSpec("description", "str", "", "Description of this actor."),
    FieldSpec("stateless", "bool", True, "Whether the actor stores private state."),
    FieldSpec("default_environment", "dict", dict, "A dictionary of default environmental variables "
              "and values."),
    FieldSpec("hints", "list", list, "Hints for personal tagging or Abaco special cases."),
    FieldSpec("link", "str", "", "Actor identifier of actor to link this actor's events too. May be an "
              "actor id or an alias. Cycles not permitted."),
    FieldSpec("webhook", "str", "", "URL to publish this actor's events to."),
    FieldSpec("privileged", "bool", False, "Whether this actor runs in privileged mode."),
    FieldSpec("use_container_uid", "bool", False, "Whether this actor runs as the UID set in the "
              "container image."),
    FieldSpec("run_as_executor", "bool", False, "Whether this actor runs as the UID of the executor."),
    FieldSpec("max_workers", "int", None, "How many workers this actor is allowed at the same time."),
    FieldSpec("mem_limit", "str", None, "Memory limit for this actor's executions, e.g. '512m'."),
    FieldSpec("max_cpus", "int", None, "Maximum number of CPUs (nanoCPUs) this actor will have "
              "available to it."),
    FieldSpec("max_run_time", "float", None, "Seconds an execution of this actor may run "
              "(lightabaco extension)."),
    FieldSpec("token", "bool", None, "Whether this actor requires an OAuth access token."),
    FieldSpec("queue", "str", "default", "The command channel that this actor uses."),
    FieldSpec("log_ex", "int", None, "Amount of time, in seconds, after which logs will expire."),
    FieldSpec("cron_schedule", "str", None, "Cron schedule: 'YYYY-MM-DD HH + <n> <unit>'."),
    FieldSpec("cron_on", "bool", None, "Whether the cron schedule is on."),
    FieldSpec("type", "str", "none", "Return type (none, bin, json) for this actor. Default is none."),
    FieldSpec("message_env_allow", "list", list, "Variable names (or prefixes ending in '*') that message "
              "senders may set although they are refused by default, e.g. PYTHONPATH (lightabaco "
              "extension)."),
    FieldSpec("network", "str", None, "What the actor's executions may reach: none, api (the default: "
              "only this API), outbound (the internet, never the host), host (admins) (lightabaco "
              "extension)."),
]
_PUT_FIELDS = [f for f in ACTOR_FIELDS if f.name != "name"] + [
    FieldSpec("force", "bool", False, "Whether to force an update of the actor image.")]
PRIVILEGED_FIELDS = {"privileged", "max_workers", "max_cpus", "mem_limit", "queue"}
_BAD_HINT_CHARS = "\"'{}[]"
_MEM_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([bkmgt]?)b?\s*$", re.I)


def mem_bytes(text: str | None) -> int | None:
    """Docker `--memory` syntax ("512m", "3g", "1048576") → bytes; None when unset."""
    if text in (None, "", "-1"):
        return None
    m = _MEM_RE.match(str(text))
    if not m:
        raise ValidationError(f"{DESCRIPTION_PREFIX}: mem_limit {text!r} is not a size; use e.g. "
                              "'512m' or '2g'.")
    mult = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}[m.group(2).lower()]
    return int(float(m.group(1)) * mult)


# -- lookups -------------------------------------------------------------------------------------


def load(services: Any, identity: Identity, identifier: str, level: str = "READ") -> Actor:
    """Resolve an id or alias in the caller's tenant, check the permission level, return the row."""
    actor_id = aliases.resolve_actor_id(services, identity.tenant, identifier)
    row = fast.get_one(Actor, "dbid", ids.dbid(identity.tenant, actor_id))
    if row is None:
        raise NotFound(f"Actor with identifier '{identifier}' not found")
    permissions.require_actor(services, identity, row, level)
    return row


def base_url(services: Any, identity: Identity | None, row: Actor | None = None) -> str:
    url = services.settings.public_url or (identity.api_server if identity else "") or \
        (row.api_server if row is not None else "")
    return url.rstrip("/")


def links(services: Any, identity: Identity | None, row: Actor) -> dict[str, str]:
    return _links(base_url(services, identity, row), row)


def _links(base: str, row: Any) -> dict[str, str]:
    return {"self": f"{base}/actors/{row.id}", "owner": f"{base}/profiles/{row.owner}",
            "executions": f"{base}/actors/{row.id}/executions"}


def display(services: Any, identity: Identity | None, row: Actor) -> dict[str, Any]:
    return _describe(row, base_url(services, identity, row), network_mod.effective(services.settings, row))


def _describe(row: Any, base: str, network: str) -> dict[str, Any]:
    """An actor's description from its row (a model or a named tuple of its columns): no query."""
    return {
        "id": row.id, "name": row.name, "image": row.image, "description": row.description,
        "owner": row.owner, "stateless": row.stateless, "type": row.type, "status": row.status,
        "status_message": row.status_message, "state": row.state,
        "default_environment": row.default_environment, "hints": row.hints, "link": row.link,
        "webhook": row.webhook, "privileged": row.privileged, "use_container_uid": row.use_container_uid,
        "run_as_executor": row.run_as_executor, "max_workers": row.max_workers,
        "mem_limit": row.mem_limit, "max_cpus": row.max_cpus, "max_run_time": row.max_run_time,
        "token": row.token, "queue": row.queue, "log_ex": row.log_ex, "cron_on": row.cron_on,
        "cron_schedule": row.cron_schedule, "cron_next_ex": row.cron_next_ex, "mounts": row.mounts,
        "uid": row.uid, "gid": row.gid, "tasdir": row.tasdir, "revision": row.revision,
        "message_env_allow": row.message_env_allow or [],
        "network": network,
        "image_digest": row.image_digest,
        "create_time": display_time(row.create_time),
        "last_update_time": display_time(row.last_update_time),
        "_links": _links(base, row),
    }


# -- validation shared by POST and PUT -------------------------------------------------------------


def _validate(services: Any, identity: Identity, raw: Mapping[str, Any], values: dict[str, Any],
              specs: list[FieldSpec], creating: bool, previous: Any = None) -> None:
    case = services.settings.case
    provided = {s.name for s in specs if present(raw, s, case)}
    permissions.check_privileged_fields(identity, {name: values.get(name) for name in provided & PRIVILEGED_FIELDS})
    hints = []
    for hint in values["hints"] or []:
        text = str(hint)
        for ch in _BAD_HINT_CHARS:
            if ch in text:
                raise ValidationError(f"{DESCRIPTION_PREFIX}: Hints must be simple stings or numbers, no "
                                      f"lists or dicts. Error character: {ch}")
        hints.append(text)
    values["hints"] = hints
    values["message_env_allow"] = message_env.validate_allow_list(values["message_env_allow"],
                                                                  DESCRIPTION_PREFIX)
    values["default_environment"] = {str(k): "" if v is None else str(v)
                                     for k, v in (values["default_environment"] or {}).items()}
    if not values["stateless"] and values["max_workers"]:
        raise ValidationError(f"{DESCRIPTION_PREFIX}: stateful actors can only have 1 worker.")
    if values["max_workers"] is not None and values["max_workers"] < 0:
        raise ValidationError(f"{DESCRIPTION_PREFIX}: max_workers must be 0 or more.")
    if values["use_container_uid"] and values["run_as_executor"]:
        a, b = ("useContainerUid", "runAsExecutor") if case == "camel" else \
            ("use_container_uid", "run_as_executor")
        raise ValidationError(f"Cannot set both {a} and {b} as true")
    if values["run_as_executor"]:
        raise ValidationError("run_as_executor isn't supported for your tenant")
    mem_bytes(values["mem_limit"])
    if values.get("webhook"):
        values["webhook"] = validate_webhook(services, values["webhook"])
    if values["max_run_time"] is not None and values["max_run_time"] <= 0:
        values["max_run_time"] = None
    if values["token"] is None:
        values["token"] = "true" if services.settings.default_token else "false"
    if values["log_ex"] is not None:
        values["log_ex"] = min(values["log_ex"], services.settings.log_ex_limit)
    if values["cron_schedule"]:
        values["cron_next_ex"] = schedule.next_ex_for(
            services, values["cron_schedule"], services.now(),
            getattr(previous, "cron_schedule", None), getattr(previous, "cron_next_ex", None))
        if creating:
            values["cron_on"] = True
    else:
        values["cron_next_ex"] = None
    if values["cron_on"] is None:
        values["cron_on"] = False
    values["network"] = network_mod.choose(services.settings, identity, values.get("network"),
                                           getattr(previous, "network", None), DESCRIPTION_PREFIX)


# -- use cases ---------------------------------------------------------------------------------------


def list_actors(services: Any, identity: Identity) -> list[dict[str, Any]]:
    """The caller's readable actors, in creation order, as `display` shows each one.

    Two queries whatever the count (the caller's permissions, the tenant's actors). The cost that
    grows with the count is per row, so rows are read as named tuples by `_rows` rather than as
    models, and the network mode is worked out once per distinct value."""
    visible = permissions.visible_actor_dbids(services, identity)
    q = Actor.select().where(Actor.tenant == identity.tenant).order_by(Actor.seq, Actor.create_time)
    fixed_base = services.settings.public_url or (identity.api_server if identity else "")
    networks: dict[Any, str] = {}
    out = []
    for row in _rows(q):
        if visible is not None and row.dbid not in visible:
            continue
        network = networks.get(row.network)
        if network is None:
            network = networks[row.network] = network_mod.effective(services.settings, row)
        base = fixed_base.rstrip("/") if fixed_base else base_url(services, identity, row)  # type: ignore[arg-type]
        out.append(_describe(row, base, network))
    return out


_ROW_TYPE: Any = None


def _rows(query: Any) -> Iterator[Any]:
    """The actor rows of `query` (all columns) as named tuples, converted as the models convert them.

    Peewee calls every column's converter on every row; text, numbers and times already come back from
    the driver as the model holds them, so only JSON and boolean columns are converted here. At 1,000
    actors this reads the rows in a third of the time (the listing's largest cost)."""
    global _ROW_TYPE
    fields = Actor._meta.sorted_fields
    if _ROW_TYPE is None:
        _ROW_TYPE = collections.namedtuple("ActorRow", [f.name for f in fields])  # type: ignore[misc]
    convert = [(i, f.python_value) for i, f in enumerate(fields)
               if isinstance(f, (JSONField, peewee.BooleanField))]
    sql, params = query.sql()
    for raw in Actor._meta.database.execute_sql(sql, params).fetchall():
        values = list(raw)
        for i, to_python in convert:
            values[i] = to_python(values[i])
        yield _ROW_TYPE._make(values)


def create_actor(services: Any, identity: Identity, raw: Mapping[str, Any]) -> dict[str, Any]:
    values = parse(raw, ACTOR_FIELDS, services.settings.case, DESCRIPTION_PREFIX)
    _validate(services, identity, raw, values, ACTOR_FIELDS, creating=True)
    now = services.now()
    actor_id = ids.new_id()
    with write_tx():
        seq = _bump_counter("actors_created")
        row = Actor.create(
            dbid=ids.dbid(identity.tenant, actor_id), id=actor_id, tenant=identity.tenant,
            owner=identity.username, api_server=base_url(services, identity), revision=1,
            status="SUBMITTED", status_message="", state={}, mounts=[], create_time=now,
            last_update_time=now, seq=seq, **values)
        validate_link(services, identity, row, row.link)
        permissions.on_actor_created(services, identity, row)
    from lightabaco.abaco import workers

    workers.ensure_one_worker(services, row)
    return display(services, identity, row)


def get_actor(services: Any, identity: Identity, identifier: str) -> dict[str, Any]:
    return display(services, identity, load(services, identity, identifier, "READ"))


def update_actor(services: Any, identity: Identity, identifier: str,
                 raw: Mapping[str, Any]) -> dict[str, Any]:
    row = load(services, identity, identifier, "UPDATE")
    values = parse(raw, _PUT_FIELDS, services.settings.case, DESCRIPTION_PREFIX)
    if not row.stateless and values["stateless"]:
        raise ValidationError(f"{DESCRIPTION_PREFIX}: an actor that was not stateless cannot be updated "
                              "to be stateless.")
    _validate(services, identity, raw, values, _PUT_FIELDS, creating=False, previous=row)
    force = values.pop("force")
    restart = force or values["image"] != row.image
    validate_link(services, identity, row, values["link"])
    with write_tx():
        fresh = Actor.get_or_none(Actor.dbid == row.dbid)
        if fresh is None:
            raise NotFound(f"Actor with identifier '{identifier}' not found")
        for key, value in values.items():
            setattr(fresh, key, value)
        fresh.last_update_time = services.now()
        if restart:
            fresh.revision = row.revision + 1
            fresh.status = "SUBMITTED"
            fresh.status_message = ""
        fresh.save()
    if restart:
        from lightabaco.abaco import workers

        workers.request_worker(services, fresh, stop_existing=True)
    return display(services, identity, fresh)


def delete_actor(services: Any, identity: Identity, identifier: str) -> None:
    row = load(services, identity, identifier, "UPDATE")
    from lightabaco.abaco import workers
    from lightabaco.store import mailbox

    with write_tx():
        Actor.update(status="SHUTTING_DOWN").where(Actor.dbid == row.dbid).execute()
        # Running executions are force-quit; their workers see the actor gone and exit.
        Execution.update(force_quit=True).where(
            (Execution.actor_dbid == row.dbid) & (Execution.status == "RUNNING")).execute()
        Log.delete().where(Log.actor_dbid == row.dbid).execute()
        mailbox.delete_actor(row.dbid)
        # Queued executions will never run now: say so instead of leaving them SUBMITTED forever.
        Execution.update(status="ERROR", status_message="The actor was deleted before this execution "
                         "ran.").where((Execution.actor_dbid == row.dbid)
                                       & (Execution.status == "SUBMITTED")).execute()
        worker_ids = [w.id for w in Worker.select(Worker.id).where(Worker.actor_dbid == row.dbid)]
        Worker.update(status="SHUTDOWN_REQUESTED").where(Worker.actor_dbid == row.dbid).execute()
        Actor.delete().where(Actor.dbid == row.dbid).execute()
        permissions.on_actor_deleted(services, row)
    for wid in worker_ids:
        services.notifier.wake_worker(wid, b"stop")
    workers.wake(services)


def _bump_counter(name: str) -> int:
    Counter.insert(name=name, value=1).on_conflict(
        conflict_target=[Counter.name], update={Counter.value: Counter.value + 1}).execute()
    return Counter.get(Counter.name == name).value


def total_created() -> int:
    row = Counter.get_or_none(Counter.name == "actors_created")
    return row.value if row else 0
