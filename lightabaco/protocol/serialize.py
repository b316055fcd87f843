"""Display helpers: Abaco's time format and the snake/camel case modes (spec §1.5, §1.7)."""

from __future__ import annotations

import datetime as _dt
from typing import Any


def display_time(t: float | None) -> str:
    """ISO-8601 UTC with milliseconds and Z; the string "None" when unset (as Abaco shows it)."""
    if not t:
        return "None"
    d = _dt.datetime.fromtimestamp(t, _dt.timezone.utc)
    return d.strftime("%Y-%m-%dT%H:%M:%S.") + f"{d.microsecond // 1000:03d}Z"


def display_time_or_null(t: float | None) -> str | None:
    return display_time(t) if t else None


def under_to_camel(name: str) -> str:
    """snake → camel; a leading underscore is kept (`_links` stays `_links`)."""
    lead = "_" if name.startswith("_") else ""
    parts = name.lstrip("_").split("_")
    return lead + parts[0] + "".join(p[:1].upper() + p[1:] for p in parts[1:])


def camel_to_under(name: str) -> str:
    out = []
    for ch in name:
        if ch.isupper():
            out.append("_" + ch.lower())
        else:
            out.append(ch)
    return "".join(out)


def to_case(obj: Any, case: str, drop_none: bool = True, deep: bool = False) -> Any:
    """Convert a displayed object's keys for the instance's case mode.

    Camel mode renames the object's own keys and, like Abaco, drops keys whose value is None. Nested
    dicts (final_state, default_environment, _links) keep their keys unless `deep` is set.
    """
    if case != "camel":
        return obj
    if isinstance(obj, list):
        return [to_case(o, case, drop_none, deep) for o in obj]
    if not isinstance(obj, dict):
        return obj
    out = {}
    for key, value in obj.items():
        if drop_none and value is None:
            continue
        if deep and isinstance(value, (dict, list)):
            value = to_case(value, case, drop_none, deep)
        out[under_to_camel(key)] = value
    return out
