"""What a message sender may put into an execution's environment (issue 8, item 2).

Every query parameter of a message becomes an environment variable of the execution (spec §2.4), and
the sender needs only EXECUTE (or an EXECUTE nonce), while the execution runs with the owner's secrets
(`_actor_configs`) and token (`_abaco_access_token`). So a sender's variables must never change how the
image's program is loaded or what it trusts: `PYTHONPATH=/_abaco_binary_data` plus a zip holding
`sitecustomize.py` would otherwise run the sender's code as the owner.

The rule: names that steer loaders, interpreters, shells, name resolution, proxies and certificate
trust are refused (in any letter case: some programs fold case, and no legitimate message needs
`ld_preload`), and so are the actor's own `default_environment` keys — unless the owner lists the
name, or a prefix ending in `*`, in the actor's `message_env_allow`. Names that cannot be environment
names at all (empty, `=`, NUL) are always refused. The platform's own variables are set after the
message's in `environment.build_env`, so no sender, allow-list or default can override them.
"""

from __future__ import annotations

import json
from typing import Any, Iterable, Mapping

from lightabaco.protocol.errors import ValidationError

# Query parameters the API itself consumes; they are not variables chosen by the sender.
CONTROL_PARAMETERS = frozenset({"message", "x-nonce", "_abaco_synchronous"})

# Refused names, upper-cased; "X*" is a prefix. Grouped by what they steer.
_REFUSED = (
    # the dynamic loader and libc
    "LD_*", "GCONV_PATH", "LOCPATH", "MALLOC_*", "GLIBC_TUNABLES", "NLSPATH",
    # interpreters' module paths and start-up hooks
    "PYTHON*", "PERL5*", "PERLLIB", "RUBY*", "GEM_*", "NODE_*", "JAVA_TOOL_OPTIONS", "_JAVA_OPTIONS",
    "JDK_JAVA_OPTIONS", "CLASSPATH", "LUA_*", "TCLLIBPATH", "R_PROFILE*", "R_ENVIRON*", "PHPRC",
    # shells: start-up files, exported functions, tracing, word splitting, command lookup
    "BASH_ENV", "ENV", "BASH_FUNC_*", "SHELLOPTS", "BASHOPTS", "PS4", "IFS", "PATH", "HOME", "CDPATH",
    # what the program trusts on the network: proxies (they would receive the owner's token),
    # certificate bundles, name resolution, OpenSSL configuration (it can load engines)
    "*_PROXY", "SSL_CERT_*", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "OPENSSL_*", "HOSTALIASES",
    "RES_OPTIONS", "LOCALDOMAIN",
    # the platform's own names
    "_ABACO_*", "_ACTOR_CONFIGS",
)


def _matches(upper: str, pattern: str) -> bool:
    if pattern.startswith("*"):
        return upper.endswith(pattern[1:])
    if pattern.endswith("*"):
        return upper.startswith(pattern[:-1])
    return upper == pattern


def is_dangerous(name: str) -> bool:
    """Whether a variable of this name may change how a program is loaded or what it trusts."""
    upper = name.upper()
    return any(_matches(upper, p) for p in _REFUSED)


def invalid_name(name: str) -> bool:
    """Names execve cannot carry: empty, or with `=` or NUL in them."""
    return not name or "=" in name or "\0" in name


def allowed_by(name: str, allow: Iterable[str] | None) -> bool:
    """Whether the owner's allow-list names this variable (exactly, or by a prefix ending in `*`)."""
    for entry in allow or ():
        entry = str(entry)
        if entry.endswith("*"):
            if name.startswith(entry[:-1]):
                return True
        elif name == entry:
            return True
    return False


def allow_field_name(case: str) -> str:
    return "messageEnvAllow" if case == "camel" else "message_env_allow"


def check(actor: Any, params: Mapping[str, Any], case: str = "snake") -> dict[str, str]:
    """The sender's variables, or ValidationError (400) naming every refused one and the way out.

    `params` are the message's query parameters; the control parameters the API consumes are skipped
    here (the caller keeps `_abaco_synchronous` in the environment, as Abaco does).
    """
    allow = getattr(actor, "message_env_allow", None) or []
    defaults = set((getattr(actor, "default_environment", None) or {}).keys())
    invalid: list[str] = []
    refused: list[str] = []
    out: dict[str, str] = {}
    for key, value in params.items():
        name = str(key)
        if name in CONTROL_PARAMETERS:
            continue
        if invalid_name(name) or "\0" in str(value):
            invalid.append(name)
            continue
        if (is_dangerous(name) or name in defaults) and not allowed_by(name, allow):
            refused.append(name)
            continue
        out[name] = "" if value is None else str(value)
    if invalid:
        shown = ", ".join(repr(n) for n in sorted(set(invalid)))
        raise ValidationError(f"Message parameter(s) {shown} cannot become environment variables: a name "
                              "must be non-empty and contain no '=' or NUL, and a value no NUL. Rename "
                              "or drop them.")
    if refused:
        field = allow_field_name(case)
        names = sorted(set(refused))
        raise ValidationError(
            f"Message parameter(s) {', '.join(names)} may not be set by a message: they would change how "
            "the actor's program is loaded or what it trusts, or override the actor's default_environment. "
            f"Send the message without them, or ask the actor's owner to allow them by adding the names "
            f"to the actor's {field} (PUT /actors/{{id}} with \"{field}\": {json.dumps(names)}; a trailing "
            "'*' allows a prefix).")
    return out


def runtime_filter(actor: Any, message_env: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Defence in depth when an execution starts: drop dangerous names the owner has not allowed (a
    message queued before this rule existed, or by a path that skipped `check`). Returns (kept,
    dropped names)."""
    allow = getattr(actor, "message_env_allow", None) or []
    kept: dict[str, Any] = {}
    dropped: list[str] = []
    for key, value in message_env.items():
        name = str(key)
        if invalid_name(name) or (value is not None and "\0" in str(value)):
            dropped.append(name)
        elif is_dangerous(name) and name not in CONTROL_PARAMETERS and not allowed_by(name, allow):
            dropped.append(name)
        else:
            kept[name] = value
    return kept, dropped


def validate_allow_list(value: Any, prefix: str) -> list[str]:
    """The owner's `message_env_allow`: a list of at most 100 names or `PREFIX*` entries."""
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or len(value) > 100:
        raise ValidationError(f"{prefix}: message_env_allow must be a list of at most 100 variable names "
                              "or prefixes ending in '*', e.g. [\"PYTHONPATH\", \"MYAPP_*\"].")
    out = []
    for entry in value:
        if not isinstance(entry, str) or invalid_name(entry) or len(entry) > 256:
            raise ValidationError(f"{prefix}: message_env_allow entry {entry!r} is not a variable name or "
                                  "prefix: use a non-empty string without '=' or NUL, e.g. \"PYTHONPATH\" "
                                  "or \"MYAPP_*\".")
        out.append(entry)
    return out
