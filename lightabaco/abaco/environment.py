"""The environment an execution sees (spec §4.1), layered: actor defaults, the sender's variables,
then every platform variable (controller and worker keys, _actor_configs, MSG). Values are formatted
with str() like Docker receives them from Abaco, so a JSON message shows up in MSG as its Python repr.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from lightabaco.abaco import message_env as message_env_mod
from lightabaco.sharing import auth, configs as configs_mod
from lightabaco.abaco.messages import BINARY, JSON

log = logging.getLogger(__name__)


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


# Keys of a stored message's environment that enqueue (the platform) wrote after the sender's own
# parameters: they are applied after every other layer, never taken from defaults or senders.
MESSAGE_PLATFORM_KEYS = ("_abaco_username", "_abaco_api_server", "_abaco_execution_id",
                         "_abaco_Content_Type", "_abaco_actor_revision")


def build_env(services: Any, actor: Any, message_env: dict[str, Any], body: bytes, content_type: str,
              worker_id: str) -> dict[str, str | None]:
    """Layers, later wins: the owner's default_environment, the sender's variables (already checked
    by message_env.check when the message was accepted, filtered again here), then every platform
    variable — so neither a sender nor a default nor an allow-list can override those."""
    env: dict[str, str | None] = {}
    for key, value in (actor.default_environment or {}).items():
        env[str(key)] = None if value is None else str(value)
    stored = dict(message_env or {})
    platform_from_message = {k: stored.pop(k) for k in MESSAGE_PLATFORM_KEYS if k in stored}
    sender, dropped = message_env_mod.runtime_filter(actor, stored)
    if dropped:
        log.warning("actor %s: dropped message variables %s at execution start (not allowed by the "
                    "actor's message_env_allow)", getattr(actor, "dbid", "?"), ", ".join(sorted(dropped)))
    for key, value in sender.items():
        env[str(key)] = None if value is None else str(value)
    # -- platform variables, last --
    for key in MESSAGE_PLATFORM_KEYS:
        env.pop(key, None)
    for key, value in platform_from_message.items():
        env[key] = None if value is None else str(value)
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
    if not env.get("_abaco_api_server"):
        env["_abaco_api_server"] = actor.api_server
    # Abaco sets the underscore name; agavepy/tapipy read the hyphenated one. Set both.
    env["_abaco_Content_Type"] = env.get("_abaco_Content_Type") or content_type
    env["_abaco_Content-Type"] = env["_abaco_Content_Type"]
    env.pop("_actor_configs", None)
    configs = configs_mod.actor_configs_for(services, actor.tenant, actor.id)
    if configs:
        env["_actor_configs"] = str(configs)
    msg = message_text(body, content_type)
    if msg is not None:
        env["MSG"] = msg
    else:
        env.pop("MSG", None)
    return env
