"""/actors/{actor_id}/executions[/{execution_id}[/logs|/results]] (spec §2.5)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from lightabaco.abaco import executions
from lightabaco.http.common import call, identity_of, respond, services_of
from lightabaco.http.envelope import ok
from lightabaco.http.routes_actors import search_or


async def executions_collection(request: Request) -> Response:
    services, identity = services_of(request), identity_of(request)
    actor_id = request.path_params["actor_id"]
    found = await search_or(request, "executions", actor_id)
    if found is not None:
        return found
    result = await call(executions.summary, services, identity, actor_id)
    return respond(request, result, "Actor executions retrieved successfully.", nested=("executions",))


async def execution_item(request: Request) -> Response:
    services, identity = services_of(request), identity_of(request)
    actor_id, eid = request.path_params["actor_id"], request.path_params["execution_id"]
    if request.method == "DELETE":
        message = await call(executions.force_quit, services, identity, actor_id, eid)
        return ok(None, message)
    result = await call(executions.get_execution, services, identity, actor_id, eid)
    return respond(request, result, "Actor execution retrieved successfully.")


async def execution_logs(request: Request) -> Response:
    services, identity = services_of(request), identity_of(request)
    actor_id, eid = request.path_params["actor_id"], request.path_params["execution_id"]
    found = await search_or(request, "logs", actor_id)
    if found is not None:
        return found
    result = await call(executions.get_logs, services, identity, actor_id, eid)
    return respond(request, result, "Logs retrieved successfully.")


async def execution_results(request: Request) -> Response:
    services, identity = services_of(request), identity_of(request)
    actor_id, eid = request.path_params["actor_id"], request.path_params["execution_id"]
    data = await call(executions.get_result, services, identity, actor_id, eid)
    return Response(data, media_type="application/octet-stream")


routes = [
    Route("/actors/{actor_id}/executions", executions_collection, methods=["GET"]),
    Route("/actors/{actor_id}/executions/{execution_id}", execution_item, methods=["GET", "DELETE"]),
    Route("/actors/{actor_id}/executions/{execution_id}/logs", execution_logs, methods=["GET"]),
    Route("/actors/{actor_id}/executions/{execution_id}/results", execution_results, methods=["GET"]),
]
