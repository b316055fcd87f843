"""A small HTTP client for the lightabaco (Abaco) REST API, used by the `lightabaco` CLI.

    client = Client("http://127.0.0.1:8000", token)
    actor = client.create_actor({"image": "abacosamples/wc"})
    execution = client.send_message(actor["id"], "count these words")

Every method returns the envelope's `result` (or raw bytes where the API answers bytes) and raises
ClientError with the server's message otherwise.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator

import httpx

DEFAULT_URL = "http://127.0.0.1:8000"


class ClientError(Exception):
    """The server refused a request, or could not be reached; `status` is the HTTP status (0 = none)."""

    def __init__(self, message: str, status: int = 0):
        super().__init__(message)
        self.message, self.status = message, status


def resolve_url(url: str | None, home: Path | None = None) -> str:
    """--url, else LIGHTABACO_URL, else the address a live server recorded in `home`, else the default."""
    if not url and not os.environ.get("LIGHTABACO_URL") and home is not None:
        from lightabaco.endpoint import find

        url = find(home)
    return (url or os.environ.get("LIGHTABACO_URL") or DEFAULT_URL).rstrip("/")


def resolve_token(token: str | None, home: Path | None = None) -> str:
    """--token, else LIGHTABACO_TOKEN, else the token file of the home (as `lightabaco serve` wrote it)."""
    if token:
        return token
    if os.environ.get("LIGHTABACO_TOKEN"):
        return os.environ["LIGHTABACO_TOKEN"]
    home = home or Path(os.environ.get("LIGHTABACO_HOME") or Path.home() / ".lightabaco")
    try:
        return (home / "token").read_text().strip()
    except OSError:
        return ""


class Client:
    def __init__(self, url: str | None = None, token: str | None = None, timeout: float = 60.0,
                 transport: httpx.BaseTransport | None = None):
        self.url = resolve_url(url)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout, transport=transport)

    def close(self) -> None:
        self.http.close()

    # -- plumbing --------------------------------------------------------------------------------
    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.TimeoutException:
            raise ClientError(f"{method} {self.url}{path} timed out; the server may be busy "
                              "(for long synchronous messages, send without --sync and poll)") from None
        except httpx.HTTPError as exc:
            raise ClientError(f"cannot reach lightabaco at {self.url} ({exc}); start it with "
                              "`lightabaco serve` or pass --url / set LIGHTABACO_URL") from None
        if response.status_code >= 400:
            raise ClientError(self._error_message(response), response.status_code)
        return response

    @staticmethod
    def _error_message(response: httpx.Response) -> str:
        try:
            body = response.json()
            message = body.get("message") if isinstance(body, dict) else None
        except ValueError:
            message = None
        message = message or response.text[:300] or response.reason_phrase
        if response.status_code == 401:
            message += " (pass --token, set LIGHTABACO_TOKEN, or run `lightabaco token` on the server)"
        return f"{response.status_code}: {message}"

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """JSON request → the envelope's result."""
        response = self._send(method, path, **kwargs)
        if not response.content:
            return None
        try:
            body = response.json()
        except ValueError:
            return response.content
        return body.get("result") if isinstance(body, dict) and "result" in body else body

    # -- actors ----------------------------------------------------------------------------------
    def list_actors(self) -> list[dict[str, Any]]:
        return self.call("GET", "/actors") or []

    def create_actor(self, fields: dict[str, Any]) -> dict[str, Any]:
        return self.call("POST", "/actors", json=fields)

    def get_actor(self, actor_id: str) -> dict[str, Any]:
        return self.call("GET", f"/actors/{actor_id}")

    def update_actor(self, actor_id: str, fields: dict[str, Any]) -> dict[str, Any]:
        return self.call("PUT", f"/actors/{actor_id}", json=fields)

    def delete_actor(self, actor_id: str) -> Any:
        return self.call("DELETE", f"/actors/{actor_id}")

    # -- messages --------------------------------------------------------------------------------
    def send_message(self, actor_id: str, message: str | dict[str, Any] | None = None, *,
                     binary: bytes | None = None, env: dict[str, str] | None = None,
                     sync: bool = False) -> Any:
        """Async: the result dict (execution_id, msg, ...). Sync: the first result's bytes, or the logs."""
        params = dict(env or {})
        if sync:
            params["_abaco_synchronous"] = "true"
        if binary is not None:
            kwargs: dict[str, Any] = {"content": binary, "headers": {"Content-Type": "application/octet-stream"}}
        elif isinstance(message, dict):
            kwargs = {"json": message}
        else:
            kwargs = {"data": {"message": message or ""}}
        response = self._send("POST", f"/actors/{actor_id}/messages", params=params, **kwargs)
        if sync:
            return response.content
        return response.json().get("result")

    def count_messages(self, actor_id: str) -> dict[str, Any]:
        return self.call("GET", f"/actors/{actor_id}/messages")

    # -- executions ------------------------------------------------------------------------------
    def list_executions(self, actor_id: str) -> dict[str, Any]:
        return self.call("GET", f"/actors/{actor_id}/executions")

    def get_execution(self, actor_id: str, execution_id: str) -> dict[str, Any]:
        return self.call("GET", f"/actors/{actor_id}/executions/{execution_id}")

    def get_logs(self, actor_id: str, execution_id: str) -> str:
        result = self.call("GET", f"/actors/{actor_id}/executions/{execution_id}/logs")
        if isinstance(result, dict):
            return result.get("logs") or ""
        return str(result or "")

    def pop_result(self, actor_id: str, execution_id: str) -> bytes:
        """One result (each call consumes one; b"" when there are none left)."""
        return self._send("GET", f"/actors/{actor_id}/executions/{execution_id}/results").content

    def results(self, actor_id: str, execution_id: str) -> Iterator[bytes]:
        while item := self.pop_result(actor_id, execution_id):
            yield item

    def kill_execution(self, actor_id: str, execution_id: str) -> Any:
        return self.call("DELETE", f"/actors/{actor_id}/executions/{execution_id}")

    # -- workers and state -----------------------------------------------------------------------
    def list_workers(self, actor_id: str) -> list[dict[str, Any]]:
        return self.call("GET", f"/actors/{actor_id}/workers") or []

    def add_workers(self, actor_id: str, num: int) -> Any:
        return self.call("POST", f"/actors/{actor_id}/workers", json={"num": num})

    def get_state(self, actor_id: str) -> Any:
        return self.call("GET", f"/actors/{actor_id}/state")

    def set_state(self, actor_id: str, state: Any) -> Any:
        return self.call("POST", f"/actors/{actor_id}/state", content=json.dumps(state),
                         headers={"Content-Type": "application/json"})
