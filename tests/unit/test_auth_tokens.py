"""Owner token, user tokens, revocation, actor tokens and the v2 trusting decoder."""

from __future__ import annotations

import base64
import json
import os
import stat
import time
from pathlib import Path

import jwt
import pytest

from lightabaco.sharing import auth
from lightabaco.protocol.errors import AuthenticationError
from lightabaco.sharing.identity import ADMIN, PRIVILEGED, USER


def test_owner_token_file_is_private_and_stable(sharing_env):
    path = sharing_env.home / auth.TOKEN_FILE
    token = path.read_text().strip()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(sharing_env.home / auth.KEY_FILE).st_mode) == 0o600
    assert auth.ensure_owner_token(sharing_env.home) == token
    # tapipy decodes every access token it gets and reads exp
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["exp"] > time.time() + 300 * 86400
    assert claims["tapis/tenant_id"] == "DEV"


def test_owner_token_authenticates_as_admin(sharing_env):
    authn = auth.get_authenticator(sharing_env.services)
    ident = authn.verify_token(authn.owner().token)
    assert ident.is_admin and ident.username == sharing_env.owner.username


def test_rotation_invalidates_old_owner_token(sharing_env):
    authn = auth.get_authenticator(sharing_env.services)
    old = authn.owner().token
    new = auth.rotate_owner_token(sharing_env.home)
    assert new != old
    with pytest.raises(AuthenticationError, match="replaced"):
        authn.verify_token(old)
    assert authn.verify_token(new).is_admin


def test_user_token_roles_and_revocation(sharing_env):
    authn = auth.get_authenticator(sharing_env.services)
    token = auth.add_user(sharing_env.home, "alice", PRIVILEGED)
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["tapis/username"] == "alice" and claims["tapis/tenant_id"] == "DEV" and "exp" in claims
    ident = authn.verify_token(token)
    assert ident.username == "alice" and ident.roles == frozenset({PRIVILEGED}) and not ident.is_admin
    auth.revoke_user("alice")
    with pytest.raises(AuthenticationError, match="revoked"):
        authn.verify_token(token)
    fresh = auth.issue_token(sharing_env.home, "alice")
    assert authn.verify_token(fresh).username == "alice"
    with pytest.raises(AuthenticationError):  # the pre-revocation token stays dead
        authn.verify_token(token)


def test_reissue_replaces_previous_token(sharing_env):
    authn = auth.get_authenticator(sharing_env.services)
    first = auth.add_user(sharing_env.home, "bob")
    second = auth.issue_token(sharing_env.home, "bob")
    assert authn.verify_token(second).username == "bob"
    with pytest.raises(AuthenticationError):
        authn.verify_token(first)


def test_bad_tokens_are_refused_without_echoing_them(sharing_env):
    authn = auth.get_authenticator(sharing_env.services)
    forged = jwt.encode({"tapis/username": "eve", "tapis/tenant_id": "DEV", "exp": time.time() + 60,
                         "lightabaco/kind": "user", "jti": "x"}, "not-the-key-" * 4, algorithm="HS256")
    with pytest.raises(AuthenticationError) as info:
        authn.verify_token(forged)
    assert forged not in info.value.message
    expired = auth.add_user(sharing_env.home, "carol", ttl_s=-10)
    with pytest.raises(AuthenticationError, match="expired"):
        authn.verify_token(expired)
    with pytest.raises(AuthenticationError):
        authn.verify_token("garbage")


def test_user_management_errors(sharing_env):
    auth.add_user(sharing_env.home, "dave")
    with pytest.raises(auth.UserError, match="already exists"):
        auth.add_user(sharing_env.home, "dave")
    with pytest.raises(auth.UserError, match="Unknown role"):
        auth.add_user(sharing_env.home, "erin", "superuser")
    with pytest.raises(auth.UserError, match="Invalid user name"):
        auth.add_user(sharing_env.home, "ABACO_WORLD")
    with pytest.raises(auth.UserError, match="Invalid user name"):
        auth.add_user(sharing_env.home, "-rf")
    auth.add_user(sharing_env.home, "_abaco_testuser_admin", ADMIN)  # Abaco's test users start with '_'
    with pytest.raises(auth.UserError, match="No user"):
        auth.revoke_user("nobody")
    # the same name in another tenant is another user
    auth.add_user(sharing_env.home, "dave", tenant="OTHER")
    assert {(u["username"], u["tenant"]) for u in auth.list_users()} == {
        ("dave", "DEV"), ("dave", "OTHER"), ("_abaco_testuser_admin", "DEV")}


def test_actor_token_acts_as_owner_with_owner_roles(sharing_env):
    authn = auth.get_authenticator(sharing_env.services)
    auth.add_user(sharing_env.home, "frank", PRIVILEGED)
    token = auth.mint_actor_token(sharing_env.services, "frank", "DEV", 60)
    ident = authn.verify_token(token)
    assert ident.username == "frank" and ident.via == "actor-token" and ident.roles == frozenset({PRIVILEGED})
    owner_token = auth.mint_actor_token(sharing_env.services, sharing_env.owner.username, "DEV", 60)
    assert authn.verify_token(owner_token).is_admin
    auth.revoke_user("frank")
    with pytest.raises(AuthenticationError):
        authn.verify_token(token)
    short = auth.mint_actor_token(sharing_env.services, sharing_env.owner.username, "DEV", -1)
    with pytest.raises(AuthenticationError, match="expired"):
        authn.verify_token(short)


def _wso2(claims: dict) -> str:
    def part(d: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(d).encode()).decode().rstrip("=")
    return f"{part({'typ': 'JWT', 'alg': 'SHA256withRSA'})}.{part(claims)}.c2lnbmF0dXJl"


def test_v2_assertion_is_decoded_without_signature():
    token = _wso2({"http://wso2.org/claims/enduser": "testuser@carbon.super",
                   "http://wso2.org/claims/role": "Internal/everyone,Internal/abaco-admin", "exp": 1})
    ident = auth.decode_v2_assertion({"x-jwt-assertion-dev-develop": token})
    assert ident.username == "testuser" and ident.tenant == "DEV-DEVELOP" and ident.roles == frozenset({ADMIN})
    plain = _wso2({"http://wso2.org/claims/enduser": "jdoe@carbon.super"})
    assert auth.decode_v2_assertion({"X-Jwt-Assertion-AGAVE-PROD": plain}).roles == frozenset({USER})
    assert auth.decode_v2_assertion({"authorization": "Bearer x"}) is None


def test_verification_cache_is_short_and_forgettable(sharing_env, monkeypatch):
    authn = auth.get_authenticator(sharing_env.services)
    token = auth.add_user(sharing_env.home, "gina")
    assert authn.cached(token) is None
    authn.verify_token(token, "http://a")
    hit = authn.cached(token, "http://b")
    assert hit.username == "gina" and hit.api_server == "http://b"
    # revoked from another process: the cache keeps it at most CACHE_S
    auth.revoke_user("gina")
    assert authn.cached(token) is not None
    real = time.monotonic
    monkeypatch.setattr(auth.time, "monotonic", lambda: real() + auth.CACHE_S + 0.1)
    assert authn.cached(token) is None
    monkeypatch.setattr(auth.time, "monotonic", real)
    # revoked in this process: forgotten at once
    fresh = auth.issue_token(sharing_env.home, "gina")
    authn.verify_token(fresh)
    authn.forget("gina", "DEV")
    assert authn.cached(fresh) is None
    # a token about to expire is not cached past its exp
    soon = auth.add_user(sharing_env.home, "hank", ttl_s=1)
    authn.verify_token(soon)
    monkeypatch.setattr(auth.time, "monotonic", lambda: real() + 1.5)
    assert authn.cached(soon) is None


def _owner_token_in_child(home: str, queue) -> None:  # module level: picklable for spawn
    from lightabaco.sharing import auth as auth_mod

    queue.put(auth_mod.ensure_owner_token(Path(home)))


def test_owner_token_created_once_when_processes_start_together(tmp_path):
    """The Procfile starts `api` and `workers` at once on a fresh home: both must end up with one token."""
    import multiprocessing

    from lightabaco.sharing import auth as auth_mod

    ctx = multiprocessing.get_context("fork")
    for i in range(5):
        home = tmp_path / f"home{i}"
        queue = ctx.Queue()
        procs = [ctx.Process(target=_owner_token_in_child, args=(str(home), queue)) for _ in range(4)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(30)
        tokens = {queue.get(timeout=5) for _ in procs}
        assert tokens == {(home / auth_mod.TOKEN_FILE).read_text().strip()}
        # ...signed with the one key the home kept
        jwt.decode(tokens.pop(), auth_mod.signing_key(home), algorithms=[auth_mod.ALGORITHM])
