"""Admin views (spec §2.12): utilization, every actor with its workers and totals, worker and execution
summaries, plus lightabaco's admin extras: a cron trigger and user management over HTTP."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from lightabaco.protocol.errors import PermissionDenied, ValidationError
from lightabaco.sharing.identity import Identity

ADMIN_REQUIRED = "Abaco Admin role required."
OWNER_REQUIRED = ("Not authorized -- only the instance owner (the token printed by `lightabaco token`) acts "
                  "across tenants; an admin manages the users and actors of its own tenant ({tenant}).")


def require_admin(identity: Identity) -> None:
    if not identity.is_admin:
        raise PermissionDenied(ADMIN_REQUIRED)


def scope(identity: Identity) -> str | None:
    """The tenant a caller's admin views cover: its own, or None (every tenant) for the instance owner."""
    return None if identity.is_owner else identity.tenant


def require_tenant(identity: Identity, tenant: str) -> None:
    """Refuse acting on another tenant's users unless the caller is the instance owner."""
    if not identity.reaches_tenant(tenant):
        raise PermissionDenied(OWNER_REQUIRED.format(tenant=identity.tenant))


def _actors_query(identity: Identity) -> Any:
    from lightabaco.store.models import Actor

    q = Actor.select()
    tenant = scope(identity)
    return q if tenant is None else q.where(Actor.tenant == tenant)


def _workers_query(identity: Identity) -> Any:
    from lightabaco.store.models import Worker

    q = Worker.select()
    tenant = scope(identity)
    return q if tenant is None else q.where(Worker.tenant == tenant)


def utilization(services: Any, identity: Identity) -> dict[str, int]:
    """Always camel case, as in Abaco. Counts cover the caller's tenant (every tenant for the owner);
    `totalActors` (actors ever created) is only kept instance-wide, so others see their current count."""
    from lightabaco.abaco.actors import total_created
    from lightabaco.store.models import Worker

    current = _actors_query(identity).count()
    workers = _workers_query(identity)
    return {"currentActors": current, "totalActors": total_created() if identity.is_owner else current,
            "workers": workers.count(),
            "commandQueue": workers.where(Worker.status == "REQUESTED").count()}


def all_actors(services: Any, identity: Identity) -> list[dict[str, Any]]:
    from lightabaco.abaco import actors, workers
    from lightabaco.store import mailbox
    from lightabaco.store.models import Actor, Execution, Worker

    require_admin(identity)
    queued = mailbox.count_all()
    out = []
    for row in _actors_query(identity).order_by(Actor.seq, Actor.create_time):
        shown = actors.display(services, identity, row)
        shown["tenant"] = row.tenant
        shown["workers"] = [workers.display(w) for w in Worker.select().where(Worker.actor_dbid == row.dbid)]
        shown["messages"] = queued.get(row.dbid, 0)
        executions = Execution.select(Execution.runtime).where(Execution.actor_dbid == row.dbid)
        shown["executions"] = executions.count()
        shown["runtime"] = sum(int(e.runtime or 0) for e in executions)
        out.append(shown)
    return out


def workers_summary(services: Any, identity: Identity) -> dict[str, Any]:
    from lightabaco.abaco import workers
    from lightabaco.store.models import Actor, Worker

    require_admin(identity)
    rows = list(_workers_query(identity).order_by(Worker.create_time))
    actor_ids = {a.dbid: a.id for a in _actors_query(identity).select(Actor.dbid, Actor.id)}
    with_workers = {w.actor_dbid for w in rows}
    starting = ("REQUESTED", "SPAWNER SETUP", "PULLING IMAGE", "CREATING CONTAINER", "UPDATING STORE")
    listed = []
    for w in rows:
        shown = workers.display(w)
        shown["actor_id"] = actor_ids.get(w.actor_dbid, w.actor_dbid.rsplit("_", 1)[-1])
        shown["actor_dbid"] = w.actor_dbid
        listed.append(shown)
    return {"summary": {
        "total_workers": len(rows),
        "ready_workers": sum(1 for w in rows if w.status == "READY"),
        "requested_workers": sum(1 for w in rows if w.status in starting),
        "error_workers": sum(1 for w in rows if w.status == "ERROR"),
        "busy_workers": sum(1 for w in rows if w.status == "BUSY"),
        "actors_no_workers": sum(1 for dbid in actor_ids if dbid not in with_workers),
    }, "workers": listed}


def executions_summary(services: Any, identity: Identity) -> dict[str, Any]:
    from lightabaco.abaco.actors import total_created
    from lightabaco.store.models import Actor, Execution

    require_admin(identity)
    existing = {a.dbid: a for a in _actors_query(identity)}
    per_actor: dict[str, dict[str, int]] = {}
    executions = Execution.select(Execution.actor_dbid, Execution.cpu, Execution.io, Execution.runtime)
    tenant = scope(identity)
    if tenant is not None:
        executions = executions.where(Execution.tenant == tenant)
    for e in executions:
        t = per_actor.setdefault(e.actor_dbid, {"n": 0, "cpu": 0, "io": 0, "runtime": 0})
        t["n"] += 1
        t["cpu"] += int(e.cpu or 0)
        t["io"] += int(e.io or 0)
        t["runtime"] += int(e.runtime or 0)

    def totals(keys: list[str]) -> tuple[int, int, int, int]:
        picked = [per_actor[k] for k in keys]
        return (sum(p["n"] for p in picked), sum(p["runtime"] for p in picked), sum(p["cpu"] for p in picked),
                sum(p["io"] for p in picked))

    all_n, all_rt, all_cpu, all_io = totals(list(per_actor))
    ex_keys = [k for k in per_actor if k in existing]
    ex_n, ex_rt, ex_cpu, ex_io = totals(ex_keys)
    actors_out = []
    for dbid, actor in existing.items():
        t = per_actor.get(dbid, {"n": 0, "cpu": 0, "io": 0, "runtime": 0})
        actors_out.append({"actor_id": actor.id, "owner": actor.owner, "image": actor.image,
                           "total_executions": t["n"], "total_execution_cpu": t["cpu"],
                           "total_execution_io": t["io"], "total_execution_runtime": t["runtime"]})
    return {"summary": {
        # actors ever created is an instance-wide counter; a tenant sees those it can still count
        "total_actors_all": (max(total_created(), len(existing)) if tenant is None
                             else len(per_actor.keys() | existing.keys())),
        "total_actors_all_with_executions": len(per_actor),
        "total_executions_all": all_n, "total_execution_runtime_all": all_rt,
        "total_execution_cpu_all": all_cpu, "total_execution_io_all": all_io,
        "total_actors_existing": len(existing),
        "total_actors_existing_with_executions": len(ex_keys),
        "total_executions_existing": ex_n, "total_execution_runtime_existing": ex_rt,
        "total_execution_cpu_existing": ex_cpu, "total_execution_io_existing": ex_io,
    }, "actors": actors_out}


def run_cron(services: Any, identity: Identity, now: float | None = None) -> dict[str, int]:
    """Run one cron pass now (lightabaco extension: tests and admins need not wait for the ticker)."""
    from lightabaco.automation import cron

    require_admin(identity)
    if not identity.is_owner:  # one pass fires every tenant's due actors: the instance's business
        raise PermissionDenied(OWNER_REQUIRED.format(tenant=identity.tenant))
    return {"executions": cron.tick(services, services.now() if now is None else now)}


# -- users over HTTP (admin only) ----------------------------------------------------------------------


def list_users(services: Any, identity: Identity) -> list[dict[str, Any]]:
    from lightabaco.sharing import auth
    from lightabaco.protocol.serialize import display_time

    require_admin(identity)
    return [dict(u, create_time=display_time(u["create_time"])) for u in auth.list_users(scope(identity))]


def add_user(services: Any, identity: Identity, fields: Mapping[str, Any]) -> dict[str, Any]:
    from lightabaco.sharing import auth
    from lightabaco.protocol.fields import field

    require_admin(identity)
    username = field(fields, "username") or field(fields, "user")
    if not username:
        raise ValidationError("Invalid user description: the username field is required "
                              "(username=<name>&role=admin|privileged|user|limited).")
    role = str(field(fields, "role") or "user")
    tenant = str(field(fields, "tenant") or identity.tenant)
    require_tenant(identity, tenant)
    token = auth.add_user(Path(services.settings.home), str(username), role, tenant)
    return {"username": str(username), "tenant": tenant, "roles": [role.lower()], "token": token}


def reissue_token(services: Any, identity: Identity, username: str, tenant: str | None = None) -> dict[str, Any]:
    from lightabaco.sharing import auth

    require_admin(identity)
    tenant = tenant or identity.tenant
    require_tenant(identity, tenant)
    token = auth.issue_token(Path(services.settings.home), username, tenant)
    auth.get_authenticator(services).forget(username, tenant)
    return {"username": username, "tenant": tenant, "token": token}


def revoke_user(services: Any, identity: Identity, username: str, tenant: str | None = None) -> None:
    from lightabaco.sharing import auth

    require_admin(identity)
    tenant = tenant or identity.tenant
    require_tenant(identity, tenant)
    auth.revoke_user(username, tenant)
    auth.get_authenticator(services).forget(username, tenant)
