"""/actors/utilization and /actors/admin... (spec §2.12), plus lightabaco's admin extras:
POST /actors/admin/cron (run a cron pass now) and /actors/admin/users (issue, list, revoke tokens)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from lightabaco.queries import admin
from lightabaco.http.common import call, identity_of, respond, services_of
from lightabaco.http.envelope import ok
from lightabaco.http.parsing import merged_fields


async def utilization(request: Request) -> Response:
    result: Any = await call(admin.utilization, services_of(request), identity_of(request))
    return ok(result, "Abaco utilization returned successfully.")  # always camel, as in Abaco


async def admin_actors(request: Request) -> Response:
    result: Any = await call(admin.all_actors, services_of(request), identity_of(request))
    return respond(request, result, "Actors retrieved successfully.")


async def admin_workers(request: Request) -> Response:
    result: Any = await call(admin.workers_summary, services_of(request), identity_of(request))
    return ok(result, "Workers retrieved successfully.")


async def admin_executions(request: Request) -> Response:
    result: Any = await call(admin.executions_summary, services_of(request), identity_of(request))
    return ok(result, "Executions retrieved successfully.")


async def admin_cron(request: Request) -> Response:
    result: Any = await call(admin.run_cron, services_of(request), identity_of(request))
    return ok(result, "Cron pass completed.")


async def admin_users(request: Request) -> Response:
    services, identity = services_of(request), identity_of(request)
    if request.method == "GET":
        result: Any = await call(admin.list_users, services, identity)
        return ok(result, "Users retrieved successfully.")
    fields, _ = await merged_fields(request, services.settings.max_body_bytes)
    result = await call(admin.add_user, services, identity, fields)
    return ok(result, "User created; give them the token (it is shown only once).")


async def admin_user(request: Request) -> Response:
    services, identity = services_of(request), identity_of(request)
    username = request.path_params["username"]
    tenant = request.query_params.get("tenant")
    if request.method == "POST":  # a new token; the old one stops working
        result: Any = await call(admin.reissue_token, services, identity, username, tenant)
        return ok(result, "New token issued; earlier tokens of this user no longer work.")
    await call(admin.revoke_user, services, identity, username, tenant)
    return ok(None, "User revoked; their tokens no longer work.")


routes = [
    Route("/actors/utilization", utilization, methods=["GET"]),
    Route("/actors/admin", admin_actors, methods=["GET"]),
    Route("/actors/admin/workers", admin_workers, methods=["GET"]),
    Route("/actors/admin/executions", admin_executions, methods=["GET"]),
    Route("/actors/admin/cron", admin_cron, methods=["POST"]),
    Route("/actors/admin/users", admin_users, methods=["GET", "POST"]),
    Route("/actors/admin/users/{username}", admin_user, methods=["POST", "DELETE"]),
]
