"""Search over actors, workers, executions and logs (spec §2.11), scoped to what the caller may read.

Records are built from the caller's tenant and readable actors only, then filtered in Python with
Abaco's query language: `field[.op]=value` (ops eq, neq, gt, gte, lt, lte, in, nin, like, nlike,
between; dotted paths such as `final_state.StartedAt`), `search=` (any word), `exactsearch=` (phrase),
`skip`, `limit` (default 100). Values are typed as Abaco types them (bools, none, times, numbers,
JSON lists, strings).

Every search is bounded: `.like` patterns run on RE2 (linear time in the text, bounded memory; never
Python's backtracking `re` on a caller's pattern), the query's length and its lists are capped, and the
filtering stops with 503 after `search_timeout_s` (it runs in a worker thread, never on the event loop).
"""

from __future__ import annotations

import datetime as dt
import json
import re
import time
from typing import Any, Callable, Iterable, Mapping

from lightabaco.sharing import permissions as perms
from lightabaco.protocol.errors import AbacoError
from lightabaco.sharing.identity import Identity
from lightabaco.protocol.serialize import camel_to_under, display_time, to_case

KINDS = ("actors", "workers", "executions", "logs")
DEFAULT_LIMIT = 100
OPS = ("eq", "neq", "gt", "gte", "lt", "lte", "in", "nin", "like", "nlike", "between")
IGNORED_KEYS = {"x-nonce", "skip", "limit", "search", "exactsearch", "pretty"}
TIME_FIELDS = ("start_time", "message_received_time", "last_execution_time", "last_update_time", "StartedAt",
               "FinishedAt", "create_time", "last_health_check_time", "finish_time")
_ISO = re.compile(r"^(\d{4})(?:-(\d{1,2})(?:-(\d{1,2})(?:[T ](\d{1,2})(?::(\d{2})(?::(\d{2})(?:\.(\d+))?)?)?)?)?)?$")
_OFFSET = re.compile(r"([+-])(\d{2}):(\d{2})$")


class SearchError(AbacoError):
    code = 400


class SearchTimeout(AbacoError):
    code = 503


# RE2's memory for one compiled pattern (its DFA cache); a pattern that needs more fails to compile.
_RE2_MAX_MEM = 8 << 20
# Used when a setting is missing (core callers built without the availability settings).
_DEFAULTS = {"search_max_query_chars": 8192, "search_max_list_items": 200, "search_timeout_s": 5.0}


# -- typing query values -------------------------------------------------------------------------------


def parse_time(text: str) -> dt.datetime | None:
    """Broad ISO-8601 → naive UTC: 2020, 2020-04, 2020-04-29, ...T20, ...T20:15, ...:52.246Z, -05:00."""
    text = text.strip()
    offset = dt.timedelta(0)
    if text.endswith(("Z", "z")):
        text = text[:-1]
    else:
        m = _OFFSET.search(text)
        if m and len(text) > 6:
            sign = 1 if m.group(1) == "+" else -1
            offset = sign * dt.timedelta(hours=int(m.group(2)), minutes=int(m.group(3)))
            text = text[:m.start()]
    m = _ISO.match(text)
    if not m:
        return None
    year, month, day, hour, minute, second, frac = m.groups()
    try:
        value = dt.datetime(int(year), int(month or 1), int(day or 1), int(hour or 0), int(minute or 0),
                            int(second or 0), int((frac or "0")[:6].ljust(6, "0")))
    except ValueError:
        return None
    return value - offset


def is_time_field(path: str) -> bool:
    return any(name in path for name in TIME_FIELDS)


def typed_value(path: str, raw: str) -> Any:
    lower = raw.strip().lower()
    if lower in ("true", "false"):
        return lower == "true"
    if lower == "none":
        return None
    if is_time_field(path):
        parsed = parse_time(raw)
        if parsed is not None:
            return parsed
    try:
        return float(raw)
    except ValueError:
        pass
    text = raw.strip()
    if text.startswith("["):
        for candidate in (text, text.replace("'", '"')):
            try:
                value = json.loads(candidate)
            except (ValueError, RecursionError):  # [[[[... nested past the parser's depth: a string
                continue
            if isinstance(value, list):
                return value
    return raw


def _record_value(record: Mapping[str, Any], path: str) -> tuple[bool, Any]:
    """(found, value) for a dotted path; time-like values become datetimes for comparisons."""
    value: Any = record
    for part in path.split("."):
        if isinstance(value, Mapping) and part in value:
            value = value[part]
        else:
            return False, None
    if is_time_field(path):
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value:
            value = dt.datetime.fromtimestamp(float(value), dt.timezone.utc).replace(tzinfo=None)
        elif isinstance(value, str):
            value = parse_time(value) or value
    return True, value


def _compare(op: str, have: Any, want: Any) -> bool:
    try:
        if op == "eq":
            return have == want or (isinstance(have, list) and want in have)
        if op == "neq":
            return have != want
        if op == "gt":
            return have is not None and have > want
        if op == "gte":
            return have is not None and have >= want
        if op == "lt":
            return have is not None and have < want
        if op == "lte":
            return have is not None and have <= want
    except TypeError:  # a string field compared with a number or a time: no match, as in Mongo
        return False
    return False


class Pattern:
    """A `.like` pattern matched in linear time: RE2 when it accepts the pattern, else a plain substring.

    Abaco's `.like` is Mongo's `$regex` (unanchored, case-sensitive). RE2 speaks the same syntax except
    back-references and look-around, which are what make backtracking engines exponential; a pattern
    RE2 refuses is matched literally (as Abaco's code does for a pattern Python cannot compile)."""

    def __init__(self, pattern: str) -> None:
        self.text = pattern
        self._rx: Any = None
        try:
            import re2
        except ImportError:  # no RE2 on this platform: substring matching only, still linear
            return
        options = re2.Options()
        options.max_mem = _RE2_MAX_MEM
        options.log_errors = False
        try:
            self._rx = re2.compile(pattern, options)
        except re2.error:
            self._rx = None

    def search(self, value: str) -> bool:
        if self._rx is not None:
            return self._rx.search(value) is not None
        return self.text in value


def _check_list(key: str, value: Any, max_items: int) -> None:
    if isinstance(value, list) and len(value) > max_items:
        raise SearchError(f"{key} lists {len(value)} values; a search accepts at most {max_items} "
                          "(search_max_list_items): split the query into several searches.")


def build_filter(key: str, raw: str, max_items: int = _DEFAULTS["search_max_list_items"]
                 ) -> Callable[[Mapping[str, Any]], bool]:
    path, op = key, "eq"
    if "." in key and key.rsplit(".", 1)[1] in OPS:
        path, op = key.rsplit(".", 1)
    first, _, rest = path.partition(".")
    path = camel_to_under(first) + ("." + rest if rest else "")  # camel query keys match stored snake keys
    if op in ("like", "nlike"):
        rx = Pattern(raw)

        def like(record: Mapping[str, Any]) -> bool:
            found, value = _record_value(record, path)
            hit = found and value is not None and bool(rx.search(str(value)))
            return hit if op == "like" else not hit
        return like
    if op in ("in", "nin"):
        want = typed_value(path, raw)
        _check_list(key, want, max_items)
        options = want if isinstance(want, list) else [want]
        if is_time_field(path):
            options = [parse_time(o) or o if isinstance(o, str) else o for o in options]

        def member(record: Mapping[str, Any]) -> bool:
            _, value = _record_value(record, path)
            hit = value in options
            return hit if op == "in" else not hit
        return member
    if op == "between":
        parts = raw.split(",")
        if len(parts) != 2:
            raise SearchError(f"{key} needs two comma-separated values, e.g. {key}=2020-01-01,2021-01-01.")
        low, high = typed_value(path, parts[0]), typed_value(path, parts[1])

        def between(record: Mapping[str, Any]) -> bool:
            _, value = _record_value(record, path)
            return _compare("gte", value, low) and _compare("lte", value, high)
        return between
    want = typed_value(path, raw)
    _check_list(key, want, max_items)

    def compare(record: Mapping[str, Any]) -> bool:
        found, value = _record_value(record, path)
        if not found:
            return op == "neq" or (op == "eq" and want is None)
        if op in ("eq", "neq") and isinstance(want, float) and isinstance(value, str):
            want_s = raw  # '3' stays comparable to a stored string
            return (value == want_s) == (op == "eq")
        return _compare(op, value, want)
    return compare


def _int_param(params: Mapping[str, Any], name: str, default: int) -> int:
    raw = params.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(str(raw))
    except ValueError:
        raise SearchError(f"The {name} parameter must be an integer >= 0, not {raw!r}.") from None
    if value < 0:
        raise SearchError(f"The {name} parameter must be an integer >= 0, not {raw!r}.")
    return value


def _text(record: Mapping[str, Any]) -> str:
    parts: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, Mapping):
            for v in value.values():
                walk(v)
        elif isinstance(value, (list, tuple)):
            for v in value:
                walk(v)
        elif isinstance(value, str):
            parts.append(value)
    walk({k: v for k, v in record.items() if k != "_links"})
    return "\n".join(parts).lower()


# -- records per kind ----------------------------------------------------------------------------------


def _actor_records(services: Any, identity: Identity, dbids: set[str] | None) -> Iterable[dict[str, Any]]:
    from lightabaco.abaco.actors import display
    from lightabaco.store.models import Actor

    q = Actor.select().where(Actor.tenant == identity.tenant).order_by(Actor.seq, Actor.create_time)
    for row in q:
        if dbids is not None and row.dbid not in dbids:
            continue
        record = display(services, identity, row)
        # Search compares raw times (display_time is applied to the results afterwards); its records
        # keep Abaco v2's stored field set, without run_as_executor (v3) and max_run_time (ours).
        record["create_time"], record["last_update_time"] = row.create_time, row.last_update_time
        del record["run_as_executor"], record["max_run_time"]
        yield record


def _actor_rows(identity: Identity, dbids: set[str] | None) -> dict[str, Any]:
    from lightabaco.store.models import Actor

    q = Actor.select().where(Actor.tenant == identity.tenant)
    return {r.dbid: r for r in q if dbids is None or r.dbid in dbids}


def _execution_records(services: Any, identity: Identity, dbids: set[str] | None) -> Iterable[dict[str, Any]]:
    from lightabaco.abaco.actors import base_url
    from lightabaco.store.models import Execution

    actors = _actor_rows(identity, dbids)
    if not actors:
        return
    q = Execution.select().where(Execution.actor_dbid << list(actors)).order_by(Execution.seq)
    for row in q:
        actor = actors[row.actor_dbid]
        base = base_url(services, identity, actor)
        yield {
            "id": row.id, "actor_id": actor.id, "executor": row.executor, "worker_id": row.worker_id,
            "status": row.status, "message_received_time": row.message_received_time,
            "start_time": row.start_time, "finish_time": row.finish_time, "runtime": row.runtime,
            "cpu": row.cpu, "io": row.io, "exit_code": row.exit_code, "final_state": row.final_state,
            "_links": {"self": f"{base}/actors/{actor.id}/executions/{row.id}",
                       "owner": f"{base}/profiles/{row.executor or actor.owner}",
                       "logs": f"{base}/actors/{actor.id}/executions/{row.id}/logs"},
        }


def _worker_records(services: Any, identity: Identity, dbids: set[str] | None) -> Iterable[dict[str, Any]]:
    from lightabaco.store.models import Worker

    actors = _actor_rows(identity, dbids)
    if not actors:
        return
    q = Worker.select().where(Worker.actor_dbid << list(actors)).order_by(Worker.create_time)
    for row in q:
        yield {
            "id": row.id, "actor_id": actors[row.actor_dbid].id, "actor_dbid": row.actor_dbid,
            "status": row.status, "image": row.image, "location": row.location, "cid": row.cid,
            "ch_name": row.ch_name, "host_id": row.host_id, "host_ip": row.host_ip,
            "create_time": row.create_time, "last_execution_time": row.last_execution_time,
            "last_health_check_time": row.last_health_check_time,
        }


def _log_records(services: Any, identity: Identity, dbids: set[str] | None) -> Iterable[dict[str, Any]]:
    from lightabaco.abaco.actors import base_url
    from lightabaco.store.models import Execution, Log

    actors = _actor_rows(identity, dbids)
    if not actors:
        return
    now = services.now()
    executions = {e.dbid: e for e in Execution.select(Execution.dbid, Execution.id, Execution.actor_dbid)
                  .where(Execution.actor_dbid << list(actors))}
    q = Log.select().where(Log.actor_dbid << list(actors))
    for row in q:
        if row.expires is not None and row.expires < now:
            continue
        execution = executions.get(row.execution_dbid)
        if execution is None:
            continue
        actor = actors[row.actor_dbid]
        base = base_url(services, identity, actor)
        yield {
            "execution_id": execution.id, "logs": row.text,
            "_links": {"self": f"{base}/actors/{actor.id}/executions/{execution.id}/logs",
                       "owner": f"{base}/profiles/{actor.owner}",
                       "execution": f"{base}/actors/{actor.id}/executions/{execution.id}"},
        }


_RECORDS = {"actors": _actor_records, "executions": _execution_records, "workers": _worker_records,
            "logs": _log_records}


def _display(record: dict[str, Any]) -> dict[str, Any]:
    out = dict(record)
    for key, value in record.items():
        if is_time_field(key) and (value is None or isinstance(value, (int, float))):
            out[key] = display_time(value)
    return out


# -- bounds ----------------------------------------------------------------------------------------


class Deadline:
    """Stops an iteration with SearchTimeout once `seconds` have passed since it was made."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def each(self, items: Iterable[Any]) -> Iterable[Any]:
        for item in items:
            if time.monotonic() > self.end:
                raise SearchTimeout(f"The search did not finish within {self.seconds:g} s "
                                    "(search_timeout_s); narrow it with more specific filters, or a "
                                    "smaller limit, and retry.")
            yield item


def _bounds(services: Any) -> dict[str, Any]:
    settings = getattr(services, "settings", None)
    return {name: getattr(settings, name, default) for name, default in _DEFAULTS.items()}


def _check_query(params: Mapping[str, Any], max_chars: int) -> None:
    size = sum(len(str(k)) + len(str(v)) for k, v in params.items())
    if size > max_chars:
        raise SearchError(f"The search query is {size} characters long; at most {max_chars} are accepted "
                          "(search_max_query_chars): use shorter patterns or fewer filters.")


# -- the seam ----------------------------------------------------------------------------------------


def search(services: Any, identity: Identity, kind: str, query_params: Mapping[str, Any],
           actor: Any = None) -> dict[str, Any]:
    """`{"_metadata": {...}, "search": [...]}` for one kind, limited to what the caller may read."""
    if kind not in KINDS:
        raise SearchError(f"Unknown search type {kind!r}; use one of: {', '.join(KINDS)}.", 400)
    params = {k: (v[-1] if isinstance(v, (list, tuple)) else v) for k, v in query_params.items()}
    bounds = _bounds(services)
    _check_query(params, bounds["search_max_query_chars"])
    skip = _int_param(params, "skip", 0)
    limit = _int_param(params, "limit", DEFAULT_LIMIT)
    filters = [build_filter(k, str(v), bounds["search_max_list_items"]) for k, v in params.items()
               if k not in IGNORED_KEYS]
    deadline = Deadline(bounds["search_timeout_s"])
    visible = perms.visible_actor_dbids(services, identity)
    if actor is not None:
        key = perms.actor_dbid(actor)
        visible = {key} if (identity.is_admin or key in visible) else set()
    records = [r for r in deadline.each(_RECORDS[kind](services, identity, visible))
               if all(f(r) for f in filters)]
    words = str(params.get("search") or "").lower().split()
    if words:
        scored = [(sum(_text(r).count(w) for w in words), i, r) for i, r in deadline.each(enumerate(records))]
        records = [r for score, _, r in sorted(scored, key=lambda t: (-t[0], t[1])) if score > 0]
    phrase = str(params.get("exactsearch") or "").lower()
    if phrase:
        records = [r for r in deadline.each(records) if phrase in _text(r)]
    page = [_display(r) for r in records[skip:skip + limit]]
    metadata = {"total_count": len(records), "records_skipped": skip, "record_limit": limit,
                "count_returned": len(page)}
    case = getattr(services.settings, "case", "snake")
    if case == "camel":
        return {"_metadata": to_case(metadata, case), "search": [to_case(r, case) for r in page]}
    return {"_metadata": metadata, "search": page}


__all__ = ["KINDS", "Pattern", "SearchError", "SearchTimeout", "search"]
