"""/actors/{actor_id}/workers[/{worker_id}] (spec §2.6)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from lightabaco.abaco import workers_api as workers
from lightabaco.protocol.fields import FieldSpec, parse
from lightabaco.http.common import call, identity_of, respond, services_of
from lightabaco.http.envelope import ok
from lightabaco.http.parsing import merged_fields
from lightabaco.http.routes_actors import search_or

_NUM = [FieldSpec("num", "int", None, "Number of workers to start (default 1).")]


async def workers_collection(request: Request) -> Response:
    services, identity = services_of(request), identity_of(request)
    actor_id = request.path_params["actor_id"]
    if request.method == "GET":
        found = await search_or(request, "workers", actor_id)
        if found is not None:
            return found
        result = await call(workers.list_workers, services, identity, actor_id)
        return respond(request, result, "Workers retrieved successfully.")
    fields, _ = await merged_fields(request, services.settings.max_body_bytes)
    num = parse(fields, _NUM, services.settings.case, "Invalid worker description")["num"]
    message = await call(workers.add_workers, services, identity, actor_id, num)
    return ok(None, message)


async def worker_item(request: Request) -> Response:
    services, identity = services_of(request), identity_of(request)
    actor_id, wid = request.path_params["actor_id"], request.path_params["worker_id"]
    if request.method == "GET":
        result = await call(workers.get_worker, services, identity, actor_id, wid)
        return respond(request, result, "Worker retrieved successfully.")
    await call(workers.delete_worker, services, identity, actor_id, wid)
    return ok(None, "Worker scheduled to be stopped.")


routes = [
    Route("/actors/{actor_id}/workers", workers_collection, methods=["GET", "POST"]),
    Route("/actors/{actor_id}/workers/{worker_id}", worker_item, methods=["GET", "DELETE"]),
]
