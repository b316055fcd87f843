"""Helpers for code running *inside* an actor's sandbox, compatible with agavepy.actors and tapipy.actors.

This file is copied verbatim into Python sample images (as the package `lightabaco`, module `actor`), so it
must stay a single module that needs only the standard library. cloudpickle is used for
`send_python_result` when the image has it (Abaco's helpers require it); plain pickle otherwise.

    from lightabaco.actor import get_context, get_binary_message, send_bytes_result
    ctx = get_context()
    print(ctx["message_dict"], ctx.execution_id)

The runtime contract it relies on (spec §4): the message in `MSG` (a Python repr for JSON messages), a
binary message readable at /_abaco_binary_data, a datagram socket at /_abaco_results.sock, and metadata in
`_abaco_*` variables.
"""

from __future__ import annotations

import ast
import errno
import json
import os
import pickle
import socket
import urllib.error
import urllib.request
from typing import Any

BINARY_DATA_PATH = "/_abaco_binary_data"
RESULTS_SOCKET_PATH = "/_abaco_results.sock"
# The largest result datagram the platform keeps (Abaco's documented limit).
MAX_RESULT_BYTES = 131072
_READ_CHUNK = 65536


class ActorHelperError(Exception):
    """A helper could not do what was asked; the message says why and what to check."""


class AttrDict(dict):
    """A dict whose keys can also be read as attributes (`ctx.actor_id`), as agavepy/tapipy return."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value


def reserved_environment_vars() -> list[str]:
    """The variables the platform sets for every execution; actors should not rely on overriding them."""
    return ["MSG", "_abaco_Content-Type", "_abaco_execution_id", "_abaco_username",
            "_abaco_actor_state", "_abaco_actor_dbid", "_abaco_actor_id"]


def _parse_message(raw: str | None, log: list[str]) -> dict[str, Any]:
    # Abaco puts JSON messages into MSG as Python's str() of the object, so try a literal first and
    # JSON second, the order agavepy and tapipy use; anything else is a plain string message.
    if raw is None:
        log.append("MSG is not set (binary or empty message)")
        return {}
    try:
        value = ast.literal_eval(raw)
        if isinstance(value, dict):
            return value
    except (ValueError, SyntaxError, MemoryError, RecursionError) as exc:
        log.append(f"not a Python literal: {exc}")
    try:
        value = json.loads(raw)
    except ValueError as exc:
        log.append(f"not JSON: {exc}")
        return {}
    return value if isinstance(value, dict) else {}


def get_context() -> AttrDict:
    """The message and its metadata, with every environment variable merged in (as agavepy/tapipy do)."""
    env = os.environ
    log: list[str] = []
    raw = env.get("MSG")
    context = AttrDict(
        raw_message=raw,
        content_type=env.get("_abaco_Content-Type") or env.get("_abaco_Content_Type"),
        actor_repo=env.get("_abaco_container_repo"),
        actor_name=env.get("_abaco_actor_name"),
        actor_id=env.get("_abaco_actor_id"),
        actor_dbid=env.get("_abaco_actor_dbid"),
        execution_id=env.get("_abaco_execution_id"),
        worker_id=env.get("_abaco_worker_id"),
        username=env.get("_abaco_username"),
        state=env.get("_abaco_actor_state"),
        raw_message_parse_log=log,
    )
    context["message_dict"] = _parse_message(raw, log)
    context.update(env)
    return context


def get_binary_message(path: str | None = None) -> bytes:
    """The whole binary message ("" when the message was not binary).

    Works on a regular file (lightabaco's delivery) and on a pre-filled FIFO (Abaco's): reads until
    end of file, or until an empty non-blocking pipe says there is nothing more.
    """
    path = path or BINARY_DATA_PATH
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise ActorHelperError(
            f"{path} does not exist: this helper only works inside a lightabaco or Abaco execution") from None
    chunks: list[bytes] = []
    try:
        while True:
            try:
                chunk = os.read(fd, _READ_CHUNK)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.EAGAIN:
                    break
                raise
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks)


def send_bytes_result(data: bytes, path: str | None = None) -> None:
    """Send one result (at most 131072 bytes) to the platform; each call is one item of `results`."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ActorHelperError(
            f"send_bytes_result needs bytes, got {type(data).__name__}; use send_python_result for objects")
    data = bytes(data)
    if len(data) > MAX_RESULT_BYTES:
        raise ActorHelperError(
            f"result is {len(data)} bytes; the limit is {MAX_RESULT_BYTES}: split it into several results")
    path = path or RESULTS_SOCKET_PATH
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        try:
            sock.connect(path)
        except (FileNotFoundError, ConnectionError) as exc:
            raise ActorHelperError(
                f"cannot reach the results socket {path} ({exc}): results only work inside an execution"
            ) from None
        sock.send(data)
    finally:
        sock.close()


def _dumps(obj: Any) -> bytes:
    try:
        import cloudpickle  # the format Abaco clients (AbacoExecutor) expect
    except ImportError:
        return pickle.dumps(obj)
    return cloudpickle.dumps(obj)


def send_python_result(obj: Any) -> None:
    """Send a Python object as a result (cloudpickle when installed, else pickle)."""
    try:
        data = _dumps(obj)
    except Exception as exc:  # pickling can raise almost anything for exotic objects
        raise ActorHelperError(f"could not serialise {obj!r}: {exc}") from exc
    send_bytes_result(data)


def _api_request(method: str, path: str, body: Any = None, timeout: float = 30.0) -> Any:
    server = os.environ.get("_abaco_api_server", "").rstrip("/")
    token = os.environ.get("_abaco_access_token", "")
    if not server:
        raise ActorHelperError("_abaco_api_server is not set: this helper only works inside an execution")
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(server + path, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("X-Tapis-Token", token)
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            payload = response.read()
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")[:500]
        raise ActorHelperError(f"{method} {path} answered {exc.code}: {detail}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise ActorHelperError(
            f"cannot reach the API at {server} ({exc}); the actor needs network access "
            "(register it with the network option on) to call the API") from None
    try:
        return json.loads(payload).get("result")
    except (ValueError, AttributeError):
        return payload


def update_state(state: Any) -> Any:
    """Replace the actor's state (stateful actors only) through the API, with the execution's token."""
    actor_id = os.environ.get("_abaco_actor_id")
    if not actor_id:
        raise ActorHelperError("_abaco_actor_id is not set: this helper only works inside an execution")
    return _api_request("POST", f"/actors/{actor_id}/state", state)


def send_message(actor_id: str, message: str | dict[str, Any]) -> Any:
    """Send a message to another actor (the API's POST /actors/{id}/messages); returns the result field."""
    body = message if isinstance(message, dict) else {"message": message}
    return _api_request("POST", f"/actors/{actor_id}/messages", body)
