"""Availability bounds (issue 8, items 4, 5, 12) on the parts themselves: search matching and deadline,
request body parsing, the database-busy mapping and the corrupted-database check."""

from __future__ import annotations

import time

import pytest

from lightabaco.core import search


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
