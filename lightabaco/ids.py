"""Abaco-style identifiers: Hashids of the top 64 bits of a uuid1, with Abaco's own salt.

Using the same salt keeps `is_hashid()` compatible: an identifier that decodes is an id, anything else
is an alias name (spec §1.6).
"""

from __future__ import annotations

import functools
import uuid

from hashids import Hashids

SALT = "eJa5wZlEX4eWU"
_hashids = Hashids(salt=SALT)


def new_id() -> str:
    return _hashids.encode(uuid.uuid1().int >> 64)


@functools.lru_cache(maxsize=4096)  # asked on every request that names an actor
def is_hashid(identifier: str) -> bool:
    try:
        return bool(_hashids.decode(identifier))
    except Exception:  # hashids raises on characters outside its alphabet
        return False


def dbid(tenant: str, identifier: str) -> str:
    """Tenant-scoped storage key, `{tenant}_{id}`."""
    return f"{tenant}_{identifier}"


def display_id(db_id: str) -> str:
    """The id part of a `{tenant}_{id}` key (tenants may contain '_', ids never do)."""
    return db_id.rsplit("_", 1)[-1]
