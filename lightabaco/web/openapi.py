"""`/openapi.json`: an OpenAPI 3.1 description of every endpoint under /actors.

The path list comes from the app's own router (so a new route can never be missing from the document);
what each operation means, takes and answers comes from OPERATIONS below. A route with no row still
appears (described as undocumented) and tests/unit/test_web_openapi.py fails until it gets one.
"""

from __future__ import annotations

import re
from typing import Any, Iterable

from lightabaco.abaco.actors import ACTOR_FIELDS

_PARAM = re.compile(r"{([^}:]+)(?::[^}]*)?}")
JSON = "application/json"
BINARY = "application/octet-stream"
FORM = "application/x-www-form-urlencoded"
MULTIPART = "multipart/form-data"

_TYPES = {"str": {"type": "string"}, "int": {"type": "integer"}, "float": {"type": "number"},
          "bool": {"type": "boolean"}, "dict": {"type": "object"}, "list": {"type": "array"}, "any": {}}


def _actor_body(required: bool) -> dict[str, Any]:
    props = {f.name: dict(_TYPES.get(f.kind, {}), description=f.help) for f in ACTOR_FIELDS}
    body: dict[str, Any] = {"type": "object", "properties": props}
    if required:
        body["required"] = ["image"]
    return body


def _object(*names: str, required: Iterable[str] = ()) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "object", "properties": {n: {"type": "string"} for n in names}}
    if required:
        out["required"] = list(required)
    return out


# Bodies by name: (schema, content types it is accepted as).
BODIES: dict[str, tuple[dict[str, Any], tuple[str, ...]]] = {
    "actor": (_actor_body(True), (JSON, FORM, MULTIPART)),
    "actor_update": (_actor_body(False), (JSON, FORM, MULTIPART)),
    "state": ({"description": "Any JSON value: the actor's new state."}, (JSON,)),
    "message": ({"oneOf": [_object("message", required=["message"]), {"type": "object"}, {"type": "array"}],
                 "description": "A string (form or JSON field `message`), any JSON document (Content-Type "
                 "application/json), or bytes (application/octet-stream)."},
                (FORM, JSON, MULTIPART, BINARY)),
    "permission": (_object("user", "level", required=["user", "level"]), (JSON, FORM)),
    "nonce": ({"type": "object", "properties": {"level": {"type": "string", "enum": ["READ", "EXECUTE", "UPDATE"]},
                                                "maxUses": {"type": "integer"}, "max_uses": {"type": "integer"}}},
              (JSON, FORM)),
    "alias": (_object("alias", "actor_id", required=["alias", "actor_id"]), (JSON, FORM)),
    "alias_update": (_object("actor_id", required=["actor_id"]), (JSON, FORM)),
    "config": ({"type": "object", "properties": {"config_name": {"type": "string"}, "value": {},
                                                 "actors": {"type": "string"},
                                                 "is_secret": {"type": "boolean"}}}, (JSON, FORM)),
    "user": (_object("username", "role", "tenant", required=["username"]), (JSON, FORM)),
    "worker": ({"type": "object", "properties": {"num": {"type": "integer"}}}, (JSON, FORM)),
}

SEARCH_PARAMS = [("skip", "integer", "Search mode: results to skip."),
                 ("limit", "integer", "Search mode: at most this many results (default 100)."),
                 ("search", "string", "Search mode: a JSON object of field conditions (spec §2.11)."),
                 ("exactsearch", "string", "Search mode: a JSON object of exact field values.")]
SYNC_PARAMS = [("_abaco_synchronous", "boolean", "Wait for the execution and answer its first result "
                "(or its logs) instead of the execution id.")]
TENANT_PARAM = [("tenant", "string", "The user's tenant (instance owner only; default: the caller's).")]

# (method, path) -> summary, body name (or None), response kind, extra query parameters.
# Response kinds: "envelope" (JSON Abaco envelope), "binary" (raw bytes), "events" (text/event-stream).
OPERATIONS: dict[tuple[str, str], dict[str, Any]] = {
    ("GET", "/actors"): {"summary": "List the actors you can read (search mode with query parameters)",
                         "query": SEARCH_PARAMS, "tag": "actors"},
    ("POST", "/actors"): {"summary": "Register an actor", "body": "actor", "tag": "actors"},
    ("GET", "/actors/{actor_id}"): {"summary": "Get an actor", "tag": "actors"},
    ("PUT", "/actors/{actor_id}"): {"summary": "Update an actor (a new revision; workers restart)",
                                    "body": "actor_update", "tag": "actors"},
    ("DELETE", "/actors/{actor_id}"): {"summary": "Delete an actor and everything it owns", "tag": "actors"},
    ("GET", "/actors/{actor_id}/state"): {"summary": "Get a stateful actor's state", "tag": "actors"},
    ("POST", "/actors/{actor_id}/state"): {"summary": "Replace a stateful actor's state", "body": "state",
                                           "tag": "actors"},
    ("GET", "/actors/{actor_id}/messages"): {"summary": "Count the messages waiting for an actor",
                                             "tag": "messages"},
    ("POST", "/actors/{actor_id}/messages"): {
        "summary": "Send a message: an execution runs it (other query parameters become its environment)",
        "body": "message", "query": SYNC_PARAMS, "tag": "messages"},
    ("DELETE", "/actors/{actor_id}/messages"): {"summary": "Drop every waiting message of an actor",
                                                "tag": "messages"},
    ("GET", "/actors/{actor_id}/executions"): {"summary": "An actor's executions and their totals",
                                               "query": SEARCH_PARAMS, "tag": "executions"},
    ("GET", "/actors/{actor_id}/executions/{execution_id}"): {
        "summary": "An execution: status, exit code, runtime, cpu, io, reason it ended", "tag": "executions"},
    ("DELETE", "/actors/{actor_id}/executions/{execution_id}"): {"summary": "Force an execution to stop",
                                                                 "tag": "executions"},
    ("GET", "/actors/{actor_id}/executions/{execution_id}/logs"): {
        "summary": "An execution's logs (readable while it runs)", "query": SEARCH_PARAMS, "tag": "executions"},
    ("GET", "/actors/{actor_id}/executions/{execution_id}/logs/stream"): {
        "summary": "An execution's logs as server-sent events, live until it ends (events: log, reset, "
                   "status, end)", "response": "events", "tag": "executions"},
    ("GET", "/actors/{actor_id}/executions/{execution_id}/results"): {
        "summary": "Take the oldest result of an execution (bytes; empty when there is none)",
        "response": "binary", "tag": "executions"},
    ("GET", "/actors/{actor_id}/workers"): {"summary": "An actor's workers", "tag": "workers"},
    ("POST", "/actors/{actor_id}/workers"): {"summary": "Ask for more workers", "body": "worker",
                                             "tag": "workers"},
    ("GET", "/actors/{actor_id}/workers/{worker_id}"): {"summary": "A worker", "tag": "workers"},
    ("DELETE", "/actors/{actor_id}/workers/{worker_id}"): {"summary": "Stop a worker", "tag": "workers"},
    ("GET", "/actors/{actor_id}/permissions"): {"summary": "Who may do what with an actor", "tag": "sharing"},
    ("POST", "/actors/{actor_id}/permissions"): {"summary": "Grant (or with level NONE revoke) a permission",
                                                 "body": "permission", "tag": "sharing"},
    ("GET", "/actors/{actor_id}/nonces"): {"summary": "An actor's nonces", "tag": "sharing"},
    ("POST", "/actors/{actor_id}/nonces"): {"summary": "Make a nonce (a URL credential for one actor)",
                                            "body": "nonce", "tag": "sharing"},
    ("GET", "/actors/{actor_id}/nonces/{nonce_id}"): {"summary": "A nonce", "tag": "sharing"},
    ("DELETE", "/actors/{actor_id}/nonces/{nonce_id}"): {"summary": "Delete a nonce", "tag": "sharing"},
    ("GET", "/actors/aliases"): {"summary": "The aliases you can read", "tag": "sharing"},
    ("POST", "/actors/aliases"): {"summary": "Make an alias for an actor", "body": "alias", "tag": "sharing"},
    ("GET", "/actors/aliases/{alias}"): {"summary": "An alias", "tag": "sharing"},
    ("PUT", "/actors/aliases/{alias}"): {"summary": "Point an alias at another actor", "body": "alias_update",
                                         "tag": "sharing"},
    ("DELETE", "/actors/aliases/{alias}"): {"summary": "Delete an alias", "tag": "sharing"},
    ("GET", "/actors/aliases/{alias}/permissions"): {"summary": "Permissions of an alias", "tag": "sharing"},
    ("POST", "/actors/aliases/{alias}/permissions"): {"summary": "Grant a permission on an alias",
                                                      "body": "permission", "tag": "sharing"},
    ("GET", "/actors/aliases/{alias}/nonces"): {"summary": "Nonces of an alias", "tag": "sharing"},
    ("POST", "/actors/aliases/{alias}/nonces"): {"summary": "Make a nonce for an alias", "body": "nonce",
                                                 "tag": "sharing"},
    ("GET", "/actors/aliases/{alias}/nonces/{nonce_id}"): {"summary": "A nonce of an alias", "tag": "sharing"},
    ("DELETE", "/actors/aliases/{alias}/nonces/{nonce_id}"): {"summary": "Delete a nonce of an alias",
                                                              "tag": "sharing"},
    ("GET", "/actors/configs"): {"summary": "The actor configs you can read", "tag": "sharing"},
    ("POST", "/actors/configs"): {"summary": "Make a config (a value given to actors' environments)",
                                  "body": "config", "tag": "sharing"},
    ("GET", "/actors/configs/{config_name}"): {"summary": "A config", "tag": "sharing"},
    ("PUT", "/actors/configs/{config_name}"): {"summary": "Update a config", "body": "config", "tag": "sharing"},
    ("DELETE", "/actors/configs/{config_name}"): {"summary": "Delete a config", "tag": "sharing"},
    ("GET", "/actors/configs/{config_name}/permissions"): {"summary": "Permissions of a config",
                                                           "tag": "sharing"},
    ("POST", "/actors/configs/{config_name}/permissions"): {"summary": "Grant a permission on a config",
                                                            "body": "permission", "tag": "sharing"},
    ("GET", "/actors/search/{search_type}"): {
        "summary": "Search actors, workers, executions or logs", "query": SEARCH_PARAMS, "tag": "search",
        "enum": {"search_type": ["actors", "workers", "executions", "logs"]}},
    ("GET", "/actors/utilization"): {"summary": "Counts of actors and workers", "tag": "admin"},
    ("GET", "/actors/admin"): {"summary": "Every actor with its workers and totals (admins)", "tag": "admin"},
    ("GET", "/actors/admin/workers"): {"summary": "Every worker (admins)", "tag": "admin"},
    ("GET", "/actors/admin/executions"): {"summary": "Execution totals per actor (admins)", "tag": "admin"},
    ("POST", "/actors/admin/cron"): {"summary": "Run one cron pass now (instance owner)", "tag": "admin"},
    ("GET", "/actors/admin/users"): {"summary": "Users and their roles (admins)", "tag": "admin"},
    ("POST", "/actors/admin/users"): {"summary": "Add a user; answers its token once", "body": "user",
                                      "tag": "admin"},
    ("POST", "/actors/admin/users/{username}"): {
        "summary": "Issue a new token for a user (earlier ones stop working)", "query": TENANT_PARAM,
        "tag": "admin"},
    ("DELETE", "/actors/admin/users/{username}"): {"summary": "Revoke a user", "query": TENANT_PARAM,
                                                   "tag": "admin"},
}

ENVELOPE = {
    "type": "object",
    "required": ["result", "status", "version", "message"],
    "properties": {"result": {"description": "The answer: an object, a list, a string, a number or null."},
                   "status": {"type": "string", "enum": ["success", "error"]},
                   "version": {"type": "string"}, "message": {"type": "string"},
                   "metadata": {"type": "object"}},
}


def api_routes(routes: Iterable[Any]) -> list[tuple[str, str]]:
    """(method, path) of every route under /actors, HEAD left out (Starlette adds it to GET)."""
    out = []
    for route in routes:
        path = getattr(route, "path", "")
        methods = getattr(route, "methods", None) or ()
        if not (path == "/actors" or path.startswith("/actors/")):
            continue
        for method in sorted(methods):
            if method != "HEAD":
                out.append((method, path))
    return out


def _parameters(path: str, op: dict[str, Any]) -> list[dict[str, Any]]:
    params = []
    for name in _PARAM.findall(path):
        schema: dict[str, Any] = {"type": "string"}
        if name in op.get("enum", {}):
            schema["enum"] = op["enum"][name]
        params.append({"name": name, "in": "path", "required": True, "schema": schema})
    for name, kind, doc in op.get("query", ()):
        params.append({"name": name, "in": "query", "required": False, "schema": {"type": kind},
                       "description": doc})
    return params


def _responses(kind: str) -> dict[str, Any]:
    error = {"description": "An error: `message` says what went wrong and what to do next.",
             "content": {JSON: {"schema": {"$ref": "#/components/schemas/Envelope"}}}}
    if kind == "binary":
        ok = {"description": "The bytes of the result", "content": {BINARY: {"schema": {}}}}
    elif kind == "events":
        ok = {"description": "Server-sent events", "content": {"text/event-stream": {"schema": {"type": "string"}}}}
    else:
        ok = {"description": "Success", "content": {JSON: {"schema": {"$ref": "#/components/schemas/Envelope"}}}}
    return {"200": ok, "default": error}


def operation(method: str, path: str) -> dict[str, Any]:
    op = OPERATIONS.get((method, path))
    documented = op is not None
    op = op or {"summary": "Undocumented route", "tag": "other"}
    out: dict[str, Any] = {
        "operationId": (method.lower() + _PARAM.sub(r"by_\1", path).replace("/", "_")).rstrip("_"),
        "summary": op["summary"], "tags": [op.get("tag", "other")],
        "parameters": _parameters(path, op), "responses": _responses(op.get("response", "envelope")),
    }
    if not documented:
        out["x-undocumented"] = True
    body = op.get("body")
    if body:
        schema, types = BODIES[body]
        out["requestBody"] = {"required": False,
                              "content": {t: {"schema": {"type": "string", "format": "binary"}
                                              if t == BINARY else schema} for t in types}}
    return out


def build(routes: Iterable[Any], version: str, server_url: str | None = None) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for method, path in api_routes(routes):
        paths.setdefault(path, {})[method.lower()] = operation(method, path)
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "lightabaco", "version": version,
                 "description": "Abaco-compatible actors on one machine. The same tree is also served under "
                                "/actors/v2 and /v3/actors. Every JSON answer is an Abaco envelope."},
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": {"Envelope": ENVELOPE},
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer",
                           "description": "The token printed by `lightabaco token`, or a user's token."},
                "tapisToken": {"type": "apiKey", "in": "header", "name": "X-Tapis-Token"},
                "nonce": {"type": "apiKey", "in": "query", "name": "x-nonce"}},
        },
        "security": [{"bearer": []}, {"tapisToken": []}, {"nonce": []}],
    }
    if server_url:
        doc["servers"] = [{"url": server_url}]
    return doc
