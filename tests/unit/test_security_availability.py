"""Availability bounds (issue 8, items 4, 5, 12) on the parts themselves: search matching and deadline,
request body parsing, the database-busy mapping and the corrupted-database check."""

from __future__ import annotations

import time

import pytest

from lightabaco.queries import search


def test_like_pattern_is_linear_on_catastrophic_input():
    text = "a" * 50_000 + "!"
    for pattern in (r"^(a+)+$", r"(a|aa)+$", r"(.*a){30}$", r"^(a|a?)+$"):
        started = time.monotonic()
        assert not search.Pattern(pattern).search(text)
        assert time.monotonic() - started < 0.5, pattern


def test_like_keeps_regex_semantics_and_falls_back_to_substring():
    assert search.Pattern(r"^abc\d+$").search("abc123")
    assert not search.Pattern(r"^abc\d+$").search("xabc123")
    # Back-references and look-around (what makes backtracking engines exponential) are matched literally.
    assert search.Pattern(r"(a)\1").search(r"x(a)\1y")
    assert not search.Pattern(r"(a)\1").search("aa")


def test_search_stops_at_its_deadline(sharing_env):
    owner = sharing_env.owner
    for n in range(3):
        sharing_env.make_actor(owner, image="abacosamples/test", name=f"deadline_{n}")
    sharing_env.services.settings.search_timeout_s = 0.0
    with pytest.raises(search.SearchTimeout) as caught:
        search.search(sharing_env.services, owner, "actors", {"name.like": "dead"})
    assert caught.value.code == 503 and "search_timeout_s" in caught.value.message


def test_list_and_query_bounds(sharing_env):
    owner = sharing_env.owner
    with pytest.raises(search.SearchError, match="at most 200"):
        search.search(sharing_env.services, owner, "actors", {"id.in": str(list(range(500)))})
    with pytest.raises(search.SearchError, match="search_max_query_chars"):
        search.search(sharing_env.services, owner, "actors", {"name.like": "x" * 9000})


# -- request bodies ------------------------------------------------------------------------------------

def test_deep_json_is_a_validation_error_not_a_recursion():
    from lightabaco.protocol.errors import ValidationError
    from lightabaco.http import parsing

    for body in ("[" * 100_000 + "]" * 100_000, "{\"a\":" * 300 + "1" + "}" * 300):
        with pytest.raises(ValidationError, match="nests deeper"):
            parsing.parse_json(body.encode())
    assert parsing.parse_json(b'{"a": [[[1]]]}') == {"a": [[[1]]]}
    assert parsing.json_depth_ok([[1]] * 10, max_depth=2) and not parsing.json_depth_ok([[[1]]], max_depth=2)


# -- the database --------------------------------------------------------------------------------------

def test_a_held_write_lock_becomes_database_busy_within_the_bound(sharing_env):
    import sqlite3

    from lightabaco.abaco import busy
    from lightabaco.store import db
    from lightabaco.store.models import Actor

    holder = sqlite3.connect(sharing_env.home / "lightabaco.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    busy.configure(0.3)
    try:
        for write in (lambda: Actor.update(description="x").execute(),  # a plain statement
                      lambda: db.write_tx().__enter__()):                # our own lock wait
            started = time.monotonic()
            with pytest.raises(busy.DatabaseBusy):
                busy.bounded(write)
            assert time.monotonic() - started < 2
        assert busy.bounded(lambda: Actor.select().count()) == 0  # reads go on (WAL)
    finally:
        busy.configure(busy.DEFAULT_WAIT_S)
        holder.execute("ROLLBACK")
        holder.close()
    assert busy.bounded(lambda: Actor.update(description="y").execute()) == 0


def test_a_damaged_file_is_refused_with_a_recovery_hint(tmp_path):
    import sqlite3

    from lightabaco.store import db

    path = tmp_path / "lightabaco.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE t (x TEXT)")
    conn.executemany("INSERT INTO t VALUES (?)", [("row %d" % i * 20,) for i in range(2000)])
    conn.commit()
    conn.close()
    db.check_integrity(path)  # a sound file passes
    data = bytearray(path.read_bytes())
    data[4096:] = bytes((i * 7) & 0xFF for i in range(len(data) - 4096))
    path.write_bytes(bytes(data))
    with pytest.raises(db.DatabaseCorrupt) as caught:
        db.check_integrity(path)
    assert str(path) in str(caught.value) and ".recover" in str(caught.value)
