"""--auth none, the v2 trusting switch, and the users / token commands."""

from __future__ import annotations

import base64
import io
import json
import warnings

import jwt

from lightabaco.cli import users as users_cli
from lightabaco.sharing import auth

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="Using `httpx`")
    from starlette.testclient import TestClient


def _client(env, **changes):
    from lightabaco.http.app import create_app

    env.services.settings = env.services.settings.replace(**changes)
    return TestClient(create_app(env.services))


def _wso2(user: str, roles: str) -> str:
    def part(d: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(d).encode()).decode().rstrip("=")
    return f"{part({'alg': 'SHA256withRSA'})}.{part({'http://wso2.org/claims/enduser': user + '@carbon.super', 'http://wso2.org/claims/role': roles})}.x"


def test_auth_none_makes_everyone_the_owner(sharing_env):
    with _client(sharing_env, auth="none") as c:
        r = c.post("/actors", data={"image": "abacosamples/test"})
        assert r.status_code == 200 and r.json()["result"]["owner"] == sharing_env.owner.username
        token = auth.add_user(sharing_env.home, "alice")
        r = c.get("/actors", headers={"Authorization": f"Bearer {token}"})
        assert r.json()["result"] == []  # a valid token still selects its user
        assert c.get("/actors", headers={"Authorization": "Bearer junk"}).status_code == 200


def test_trusted_v2_headers_select_user_tenant_and_role(sharing_env, caplog):
    with caplog.at_level("WARNING"), _client(sharing_env, trust_v2_jwt=True) as c:
        admin = {"X-Jwt-Assertion-DEV-DEVELOP": _wso2("testuser", "Internal/everyone,Internal/abaco-admin")}
        limited = {"X-Jwt-Assertion-DEV-DEVELOP": _wso2("testotheruser", "Internal/abaco-limited")}
        staging = {"X-Jwt-Assertion-DEV-STAGING": _wso2("testuser", "Internal/abaco-admin")}
        r = c.post("/actors", data={"image": "abacosamples/test"}, headers=admin)
        assert r.json()["result"]["owner"] == "testuser"
        aid = r.json()["result"]["id"]
        assert c.get(f"/actors/{aid}", headers=limited).status_code == 400
        assert c.get("/actors", headers=staging).json()["result"] == []
        assert c.get("/actors/admin", headers=admin).status_code == 200
        assert c.get("/actors/admin", headers=limited).status_code == 400
    # the switch says loudly that it is on
    assert any("INSECURE" in rec.message for rec in caplog.records)


def test_users_cli(sharing_env):
    out, err = io.StringIO(), io.StringIO()
    assert users_cli.users_main(["add", "student1", "--role", "limited"], sharing_env.home, out, err) == 0
    token = out.getvalue().strip()
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["tapis/username"] == "student1"
    assert auth.get_authenticator(sharing_env.services).verify_token(token).roles == frozenset({"limited"})
    out = io.StringIO()
    assert users_cli.users_main(["list"], sharing_env.home, out, err) == 0
    assert "student1" in out.getvalue() and "(owner)" in out.getvalue()
    assert users_cli.users_main(["add", "student1"], sharing_env.home, io.StringIO(), err) == 1
    assert "already exists" in err.getvalue()
    assert users_cli.users_main(["revoke", "student1"], sharing_env.home, io.StringIO(), err) == 0
    out = io.StringIO()
    assert users_cli.users_main(["list"], sharing_env.home, out, err) == 0
    assert "revoked" in out.getvalue()
    out = io.StringIO()
    assert users_cli.users_main(["token", "student1", "--role", "privileged"], sharing_env.home, out, err) == 0
    fresh = auth.get_authenticator(sharing_env.services).verify_token(out.getvalue().strip())
    assert fresh.roles == frozenset({"privileged"})
    assert users_cli.users_main(["add", "x", "--role", "root"], sharing_env.home, io.StringIO(), io.StringIO()) == 2


def test_token_cli(sharing_env):
    out = io.StringIO()
    assert users_cli.token_main([], sharing_env.home, out) == 0
    first = out.getvalue().strip()
    assert first == (sharing_env.home / "token").read_text().strip()
    out = io.StringIO()
    assert users_cli.token_main(["--rotate"], sharing_env.home, out) == 0
    assert out.getvalue().strip() != first


def test_resource_segments_and_nonce_levels():
    from lightabaco.http.auth import required_nonce_level, resource_segments

    assert resource_segments("/v3/actors/abc/messages") == ["abc", "messages"]
    assert resource_segments("/actors/v2/abc") == ["abc"]
    assert resource_segments("//actors//aliases/jane/") == ["aliases", "jane"]
    assert resource_segments("/metrics") is None
    assert required_nonce_level("GET", ["abc"]) == 1
    assert required_nonce_level("POST", ["abc", "messages"]) == 2
    assert required_nonce_level("DELETE", ["abc", "messages"]) == 3
    assert required_nonce_level("PUT", ["abc"]) == 3
    assert required_nonce_level("GET", ["abc", "nonces"]) == 3


def test_nonces_do_not_open_other_paths(sharing_client):
    c, h = sharing_client.client, sharing_client.h
    aid = sharing_client.create_actor("owner")
    nid = c.post(f"/actors/{aid}/nonces", headers=h("owner")).json()["result"]["id"]
    for path in ("/actors", "/actors/configs", "/actors/admin", "/actors/utilization"):
        r = c.get(f"{path}?x-nonce={nid}")
        assert r.status_code == 400 and "x-nonce can only be used" in r.json()["message"], path
    r = c.get("/actors/nonexistent-alias?x-nonce=" + nid)
    assert r.status_code == 400 and r.json()["message"] == "Nonce does not exist."
    r = c.get(f"/actors/{aid}?x-nonce=garbage")
    assert r.status_code == 400 and r.json()["message"] == "Nonce does not exist."
