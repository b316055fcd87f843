"""The environment an execution sees (spec §4.1), layered: actor defaults, message (query parameters and
controller keys), worker keys, then _actor_configs and MSG. Values are formatted with str() like Docker
receives them from Abaco, so a JSON message shows up in MSG as its Python repr.
"""

from __future__ import annotations

import json
from typing import Any

from lightabaco.sharing import auth, configs as configs_mod
from lightabaco.abaco.messages import BINARY, JSON


def message_text(body: bytes, content_type: str) -> str | None:
    """MSG for one message: the string itself, the Python repr of a JSON value, nothing for binary."""
    if content_type == BINARY:
        return None
    text = body.decode("utf-8", "replace")
    if content_type == JSON:
        try:
            return str(json.loads(text))
        except ValueError:
            return text
    return text


def build_env(services: Any, actor: Any, message_env: dict[str, Any], body: bytes, content_type: str,
              worker_id: str) -> dict[str, str | None]:
    env: dict[str, str | None] = {}
    for key, value in (actor.default_environment or {}).items():
        env[str(key)] = None if value is None else str(value)
    for key, value in (message_env or {}).items():
        env[str(key)] = None if value is None else str(value)
    token = ""
    if actor.token in (True, "true", "True"):
        token = auth.mint_actor_token(services, actor.owner, actor.tenant,
                                       services.settings.token_ttl_s)
    env.update({
        "_abaco_access_token": token,
        "_abaco_actor_dbid": actor.dbid,
        "_abaco_actor_id": actor.id,
        "_abaco_worker_id": worker_id,
        "_abaco_container_repo": actor.image,
        "_abaco_actor_state": str(actor.state),
        "_abaco_actor_name": str(actor.name),
    })
    env.setdefault("_abaco_api_server", actor.api_server)
    # Abaco sets the underscore name; agavepy/tapipy read the hyphenated one. Set both.
    env["_abaco_Content-Type"] = env.get("_abaco_Content_Type") or content_type
    env["_abaco_Content_Type"] = env["_abaco_Content-Type"]
    configs = configs_mod.actor_configs_for(services, actor.tenant, actor.id)
    if configs:
        env["_actor_configs"] = str(configs)
    msg = message_text(body, content_type)
    if msg is not None:
        env["MSG"] = msg
    else:
        env.pop("MSG", None)
    return env
