"""Sharing routes: permissions, nonces (of actors and aliases), aliases and actor configs (spec §2.7-§2.10)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from lightabaco.abaco import actors
from lightabaco.sharing import aliases, configs, nonces
from lightabaco.sharing import permissions as perms
from lightabaco.http.common import call, identity_of, respond, services_of
from lightabaco.http.envelope import ok
from lightabaco.http.parsing import merged_fields


async def _fields(request: Request) -> dict[str, Any]:
    fields, _ = await merged_fields(request, services_of(request).settings.max_body_bytes)
    # query parameters such as x-nonce are not fields of these objects
    fields.pop("x-nonce", None)
    return fields


# -- permissions of actors ---------------------------------------------------------------------------


def _actor_permissions(services: Any, identity: Any, identifier: str) -> dict[str, str]:
    row = actors.load(services, identity, identifier, "READ")
    return perms.permissions_dict(perms.ACTOR, row.dbid)


def _set_actor_permission(services: Any, identity: Any, identifier: str, fields: dict[str, Any]) -> dict:
    row = actors.load(services, identity, identifier, "UPDATE")
    user, level = perms.permission_fields(fields)
    return perms.set_permission(perms.ACTOR, row.dbid, user, level)


async def actor_permissions(request: Request) -> Response:
    services, identity = services_of(request), identity_of(request)
    identifier = request.path_params["actor_id"]
    # usernames are keys here: never case-converted
    if request.method == "GET":
        result: Any = await call(_actor_permissions, services, identity, identifier)
        return ok(result, "Permissions retrieved successfully.")
    fields = await _fields(request)
    result = await call(_set_actor_permission, services, identity, identifier, fields)
    return ok(result, "Permission added successfully.")


# -- nonces of actors --------------------------------------------------------------------------------


def _actor_dbid(services: Any, identity: Any, identifier: str) -> str:
    return actors.load(services, identity, identifier, "READ").dbid


async def actor_nonces(request: Request) -> Response:
    services, identity = services_of(request), identity_of(request)
    dbid = await call(_actor_dbid, services, identity, request.path_params["actor_id"])
    if request.method == "GET":
        result: Any = await call(nonces.list_actor_nonces, services, identity, dbid)
        return respond(request, result, "Actor nonces retrieved successfully.")
    fields = await _fields(request)
    result = await call(nonces.create_actor_nonce, services, identity, dbid, fields)
    return respond(request, result, "Actor nonce created successfully.")


async def actor_nonce(request: Request) -> Response:
    services, identity = services_of(request), identity_of(request)
    dbid = await call(_actor_dbid, services, identity, request.path_params["actor_id"])
    nonce_id = request.path_params["nonce_id"]
    if request.method == "GET":
        result: Any = await call(nonces.get_actor_nonce, services, identity, dbid, nonce_id)
        return respond(request, result, "Actor nonce retrieved successfully.")
    await call(nonces.delete_actor_nonce, services, identity, dbid, nonce_id)
    return ok(None, "Actor nonce deleted successfully.")


# -- aliases -----------------------------------------------------------------------------------------


async def alias_collection(request: Request) -> Response:
    services, identity = services_of(request), identity_of(request)
    if request.method == "GET":
        result: Any = await call(aliases.list_aliases, services, identity)
        return respond(request, result, "Aliases retrieved successfully.")
    fields = await _fields(request)
    result = await call(aliases.create_alias, services, identity, fields)
    return respond(request, result, "Actor alias created successfully.")


async def alias_item(request: Request) -> Response:
    services, identity = services_of(request), identity_of(request)
    alias = request.path_params["alias"]
    if request.method == "GET":
        result: Any = await call(aliases.get_alias, services, identity, alias)
        return respond(request, result, "Alias retrieved successfully.")
    if request.method == "PUT":
        fields = await _fields(request)
        result = await call(aliases.update_alias, services, identity, alias, fields)
        return respond(request, result, "Actor alias updated successfully.")
    await call(aliases.delete_alias, services, identity, alias)
    return ok(None, f"Alias {alias} deleted successfully.")


async def alias_permissions(request: Request) -> Response:
    services, identity = services_of(request), identity_of(request)
    alias = request.path_params["alias"]
    if request.method == "GET":
        result: Any = await call(aliases.alias_permissions, services, identity, alias)
        return ok(result, "Permissions retrieved successfully.")
    fields = await _fields(request)
    result = await call(aliases.set_alias_permission, services, identity, alias, fields)
    return ok(result, "Permission added successfully.")


async def alias_nonces(request: Request) -> Response:
    services, identity = services_of(request), identity_of(request)
    alias = request.path_params["alias"]
    if request.method == "GET":
        result: Any = await call(nonces.list_alias_nonces, services, identity, alias)
        return respond(request, result, "Alias nonces retrieved successfully.")
    fields = await _fields(request)
    result = await call(nonces.create_alias_nonce, services, identity, alias, fields)
    return respond(request, result, "Alias nonce created successfully.")


async def alias_nonce(request: Request) -> Response:
    services, identity = services_of(request), identity_of(request)
    alias, nonce_id = request.path_params["alias"], request.path_params["nonce_id"]
    if request.method == "GET":
        result: Any = await call(nonces.get_alias_nonce, services, identity, alias, nonce_id)
        return respond(request, result, "Alias nonce retrieved successfully.")
    await call(nonces.delete_alias_nonce, services, identity, alias, nonce_id)
    return ok(None, "Alias nonce deleted successfully.")


# -- actor configs -----------------------------------------------------------------------------------


async def config_collection(request: Request) -> Response:
    services, identity = services_of(request), identity_of(request)
    if request.method == "GET":
        result: Any = await call(configs.list_configs, services, identity)
        return respond(request, result, "Actor Configs retrieved successfully.")
    fields = await _fields(request)
    result = await call(configs.create_config, services, identity, fields)
    return respond(request, result, "Actor config created successfully.")


async def config_item(request: Request) -> Response:
    services, identity = services_of(request), identity_of(request)
    name = request.path_params["config_name"]
    if request.method == "GET":
        result: Any = await call(configs.get_config, services, identity, name)
        return respond(request, result, "Config retrieved successfully.")
    if request.method == "PUT":
        fields = await _fields(request)
        result = await call(configs.update_config, services, identity, name, fields)
        return respond(request, result, "Actor config updated successfully.")
    await call(configs.delete_config, services, identity, name)
    return ok(None, f"Actor config {name} deleted successfully.")


async def config_permissions(request: Request) -> Response:
    services, identity = services_of(request), identity_of(request)
    name = request.path_params["config_name"]
    if request.method == "GET":
        result: Any = await call(configs.config_permissions, services, identity, name)
        return ok(result, "Permissions retrieved successfully.")
    fields = await _fields(request)
    result = await call(configs.set_config_permission, services, identity, name, fields)
    return ok(result, "Permission added successfully.")


# Fixed words first: /actors/aliases and /actors/configs must win over /actors/{actor_id}.
routes = [
    Route("/actors/aliases", alias_collection, methods=["GET", "POST"]),
    Route("/actors/aliases/{alias}", alias_item, methods=["GET", "PUT", "DELETE"]),
    Route("/actors/aliases/{alias}/permissions", alias_permissions, methods=["GET", "POST"]),
    Route("/actors/aliases/{alias}/nonces", alias_nonces, methods=["GET", "POST"]),
    Route("/actors/aliases/{alias}/nonces/{nonce_id}", alias_nonce, methods=["GET", "DELETE"]),
    Route("/actors/configs", config_collection, methods=["GET", "POST"]),
    Route("/actors/configs/{config_name}", config_item, methods=["GET", "PUT", "DELETE"]),
    Route("/actors/configs/{config_name}/permissions", config_permissions, methods=["GET", "POST"]),
    Route("/actors/{actor_id}/permissions", actor_permissions, methods=["GET", "POST"]),
    Route("/actors/{actor_id}/nonces", actor_nonces, methods=["GET", "POST"]),
    Route("/actors/{actor_id}/nonces/{nonce_id}", actor_nonce, methods=["GET", "DELETE"]),
]
