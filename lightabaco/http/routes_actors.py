"""/actors, /actors/{actor_id}, /actors/{actor_id}/state."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from lightabaco.abaco import actors, state
from lightabaco.queries import search
from lightabaco.http.common import (call, has_search_params, identity_of, respond, services_of)
from lightabaco.http.envelope import ok
from lightabaco.http.parsing import NO_JSON, merged_fields


async def search_or(request: Request, kind: str, actor_identifier: str | None = None) -> Response | None:
    """The list endpoints switch to search mode when they carry query parameters (spec §2.11)."""
    if not has_search_params(request):
        return None
    services, identity = services_of(request), identity_of(request)
    actor = None
    if actor_identifier is not None:
        actor = await call(actors.load, services, identity, actor_identifier, "READ")
    params = dict(request.query_params.items())
    result = await call(search.search, services, identity, kind, params, actor)
    if result is None:
        return None
    messages = {"actors": "Actors search completed successfully.",
                "executions": "Executions search completed successfully.",
                "workers": "Workers search completed successfully.",
                "logs": "Log search completed successfully."}
    return ok(result, messages[kind])


async def actors_collection(request: Request) -> Response:
    services, identity = services_of(request), identity_of(request)
    if request.method == "GET":
        found = await search_or(request, "actors")
        if found is not None:
            return found
        result = await call(actors.list_actors, services, identity)
        return respond(request, result, "Actors retrieved successfully.")
    fields, _ = await merged_fields(request, services.settings.max_body_bytes)
    result = await call(actors.create_actor, services, identity, fields)
    return respond(request, result, "Actor created successfully.")


async def actor_item(request: Request) -> Response:
    services, identity = services_of(request), identity_of(request)
    actor_id = request.path_params["actor_id"]
    if request.method == "GET":
        result = await call(actors.get_actor, services, identity, actor_id)
        return respond(request, result, "Actor retrieved successfully.")
    if request.method == "PUT":
        fields, _ = await merged_fields(request, services.settings.max_body_bytes)
        result = await call(actors.update_actor, services, identity, actor_id, fields)
        return respond(request, result, "Actor updated successfully.")
    await call(actors.delete_actor, services, identity, actor_id)
    return ok(None, "Actor deleted successfully.")


async def actor_state(request: Request) -> Response:
    services, identity = services_of(request), identity_of(request)
    actor_id = request.path_params["actor_id"]
    if request.method == "GET":
        result = await call(state.get_state, services, identity, actor_id)
        return respond(request, result, "Actor state retrieved successfully.")
    _, parsed = await merged_fields(request, services.settings.max_body_bytes)
    value = state.MISSING if parsed is NO_JSON else parsed
    result = await call(state.set_state, services, identity, actor_id, value)
    return respond(request, result, "State updated successfully.")


routes = [
    Route("/actors", actors_collection, methods=["GET", "POST"]),
    Route("/actors/{actor_id}", actor_item, methods=["GET", "PUT", "DELETE"]),
    Route("/actors/{actor_id}/state", actor_state, methods=["GET", "POST"]),
]
