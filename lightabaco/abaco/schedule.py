"""Cron schedules: Abaco's `<start> + <n> <unit>` format and, as an extension, five-field cron (spec §7).

`validate()` checks a schedule with Abaco's messages and returns the first `cron_next_ex`;
`next_after_due()` moves `cron_next_ex` to the first slot on the original cadence that lies after now,
so missed slots are caught up once and the schedule never drifts. The lifecycle validates an actor's
`cron_schedule` with this module; firing due actors is lightabaco.automation.cron's job.
"""

from __future__ import annotations

import calendar
import datetime as dt
import re
from dataclasses import dataclass
from typing import Any

from lightabaco.protocol.errors import AbacoError, ValidationError

CRON_MESSAGE = "This is your cron execution"
UNITS = {"hour": "hours", "hours": "hours", "day": "days", "days": "days", "week": "weeks", "weeks": "weeks",
         "month": "months", "months": "months"}
_ABACO_RE = re.compile(r"^\s*(.+?)\s+\+\s+(\S+)\s+(\S+)\s*$")
_START_RE = re.compile(r"^(\d{1,4})-(\d{1,2})-(\d{1,2}) (\d{1,2})$")
_NEXT_MINUTE_RE = re.compile(r"^(\d{4})-(\d{2})-(\d{2}) (\d{2}):(\d{2})$")


class CronError(ValidationError):
    """A schedule Abaco would refuse (400; 500 for a bad unit in strict compatibility mode)."""


def _utc(now: float | dt.datetime) -> dt.datetime:
    """Naive UTC datetime from epoch seconds or a datetime (aware ones are converted)."""
    if isinstance(now, dt.datetime):
        if now.tzinfo is not None:
            now = now.astimezone(dt.timezone.utc).replace(tzinfo=None)
        return now
    return dt.datetime.fromtimestamp(float(now), dt.timezone.utc).replace(tzinfo=None)


def _hour(d: dt.datetime) -> dt.datetime:
    return d.replace(minute=0, second=0, microsecond=0)


def format_next(d: dt.datetime) -> str:
    """Abaco's cron_next_ex: "Y-M-D H" without zero padding."""
    return f"{d.year}-{d.month}-{d.day} {d.hour}"


# -- Abaco's format ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AbacoSchedule:
    start: str  # as given: "2078-09-6 20" or "now"
    increment: int
    unit: str  # hours | days | weeks | months

    def add(self, d: dt.datetime, k: int = 1, anchor_day: int | None = None) -> dt.datetime:
        if self.unit == "hours":
            return d + dt.timedelta(hours=self.increment * k)
        if self.unit == "days":
            return d + dt.timedelta(days=self.increment * k)
        if self.unit == "weeks":
            return d + dt.timedelta(weeks=self.increment * k)
        months = d.month - 1 + self.increment * k
        year, month = d.year + months // 12, months % 12 + 1
        # Keep the anchor's day of month where the month has it (Jan 31 → Feb 29 → Mar 31, no drift).
        day = min(anchor_day or d.day, calendar.monthrange(year, month)[1])
        return d.replace(year=year, month=month, day=day)


def parse_start(start: str) -> dt.datetime | None:
    m = _START_RE.match(start.strip())
    if not m:
        return None
    year, month, day, hour = (int(x) for x in m.groups())
    try:
        return dt.datetime(year, month, day, hour)
    except ValueError:
        return None


def parse_abaco(schedule: str, now: float | dt.datetime, strict_500: bool = False,
                check_old: bool = True) -> tuple[AbacoSchedule, dt.datetime]:
    """(schedule, first execution hour) with Abaco's checks in Abaco's order."""
    m = _ABACO_RE.match(schedule or "")
    if not m:
        raise CronError("The cron is not in the correct format")
    start, n, unit = m.groups()
    current = _hour(_utc(now))
    if start.lower() == "now":
        first = current
    else:
        parsed = parse_start(start)
        if parsed is None:
            raise CronError(f"The starting date {start} is not in the correct format")
        first = parsed
        if check_old and first < current:
            raise CronError(f"The starting datetime is old. The current UTC time is {current:%Y-%m-%d %H}:00:00")
    if unit.lower() not in UNITS:
        raise AbacoError(f"{unit} is an invalid unit of time; use one of: hour(s), day(s), week(s), month(s).",
                         500 if strict_500 else 400)
    try:
        increment = int(n)
    except ValueError:
        raise AbacoError(f"The increment {n} is not an integer; write e.g. 'now + 1 hour'.",
                         500 if strict_500 else 400) from None
    if increment < 1:
        raise CronError(f"The increment {n} must be a positive integer.")
    return AbacoSchedule(start.strip(), increment, UNITS[unit.lower()]), first


# -- five-field cron (extension) -----------------------------------------------------------------------

_FIELD_RANGES = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)]
_FIELD_NAMES = ["minute", "hour", "day of month", "month", "day of week"]
_MONTHS = {m.lower(): i for i, m in enumerate(calendar.month_abbr) if m}
_DAYS = {"sun": 0, "mon": 1, "tue": 2, "wed": 3, "thu": 4, "fri": 5, "sat": 6}


@dataclass(frozen=True)
class CronExpr:
    minutes: frozenset[int]
    hours: frozenset[int]
    doms: frozenset[int]
    months: frozenset[int]
    dows: frozenset[int]  # 0 = Sunday
    dom_any: bool
    dow_any: bool

    def _day_matches(self, d: dt.date) -> bool:
        if d.month not in self.months:
            return False
        dow = (d.weekday() + 1) % 7
        dom_ok, dow_ok = d.day in self.doms, dow in self.dows
        if self.dom_any or self.dow_any:  # standard cron: both restricted → either may match
            return dom_ok and dow_ok
        return dom_ok or dow_ok

    def next_after(self, after: dt.datetime) -> dt.datetime:
        """The first matching minute strictly after `after` (naive UTC)."""
        start = after.replace(second=0, microsecond=0) + dt.timedelta(minutes=1)
        day = start.date()
        for _ in range(366 * 5):  # a valid expression matches within 5 years (Feb 29 needs 4)
            if self._day_matches(day):
                for h in sorted(self.hours):
                    for mi in sorted(self.minutes):
                        cand = dt.datetime(day.year, day.month, day.day, h, mi)
                        if cand >= start:
                            return cand
            day += dt.timedelta(days=1)
        raise CronError("This cron expression never matches a real date (e.g. 30 February).")


def _parse_value(text: str, index: int) -> int:
    lower = text.lower()
    if index == 3 and lower in _MONTHS:
        return _MONTHS[lower]
    if index == 4 and lower in _DAYS:
        return _DAYS[lower]
    return int(text)


def _parse_field(text: str, index: int) -> frozenset[int]:
    lo, hi = _FIELD_RANGES[index]
    values: set[int] = set()
    for part in text.split(","):
        step = 1
        if "/" in part:
            part, step_text = part.split("/", 1)
            step = int(step_text)
            if step < 1:
                raise ValueError("step must be at least 1")
        if part == "*":
            a, b = lo, hi
        elif "-" in part:
            a_text, b_text = part.split("-", 1)
            a, b = _parse_value(a_text, index), _parse_value(b_text, index)
        else:
            a = _parse_value(part, index)
            b = hi if step > 1 else a
        if not (lo <= a <= hi and lo <= b <= hi and a <= b):
            raise ValueError(f"{part} is outside {lo}-{hi}")
        values.update(range(a, b + 1, step))
    if index == 4 and 7 in values:  # 7 is Sunday too
        values.discard(7)
        values.add(0)
    return frozenset(values)


def parse_cron5(expr: str) -> CronExpr:
    parts = expr.split()
    if len(parts) != 5:
        raise CronError("The cron is not in the correct format")
    sets = []
    for i, part in enumerate(parts):
        try:
            sets.append(_parse_field(part, i))
        except ValueError as exc:
            raise CronError(f"Invalid cron expression '{expr}': bad {_FIELD_NAMES[i]} field '{part}' ({exc}). "
                            "Use five fields 'MIN HOUR DOM MON DOW' or Abaco's 'YYYY-MM-DD HH + N hours'.") from None
    minutes, hours, doms, months, dows = sets
    return CronExpr(minutes, hours, doms, months, dows, dom_any=parts[2] == "*", dow_any=parts[4] == "*")


def is_cron5(schedule: str) -> bool:
    return "+" not in schedule and len(schedule.split()) == 5


def format_minute(d: dt.datetime) -> str:
    return f"{d:%Y-%m-%d %H:%M}"


# -- the seam ----------------------------------------------------------------------------------------


def validate(schedule: str, now: float | dt.datetime, strict_500: bool = False) -> str:
    """Check a cron schedule; return the first cron_next_ex. Raises AbacoError with Abaco's messages."""
    schedule = (schedule or "").strip()
    if is_cron5(schedule):
        return format_minute(parse_cron5(schedule).next_after(_utc(now) - dt.timedelta(minutes=1)))
    sched, first = parse_abaco(schedule, now, strict_500)
    return sched.start if sched.start.lower() != "now" else format_next(first)


def revalidate(schedule: str, now: float | dt.datetime, previous_schedule: str | None,
               previous_next_ex: str | None, strict_500: bool = False) -> str:
    """cron_next_ex for a PUT: an unchanged schedule keeps its cadence (its start may be long past, which
    a fresh validation would refuse as "old"); a new schedule is validated as on POST."""
    if previous_next_ex and (schedule or "").strip() == (previous_schedule or "").strip():
        return previous_next_ex
    return validate(schedule, now, strict_500)


def parse_next_ex(text: str) -> tuple[dt.datetime, bool] | None:
    """(time, minute_granularity) of a stored cron_next_ex, or None if unparsable."""
    m = _NEXT_MINUTE_RE.match(text or "")
    if m:
        year, month, day, hour, minute = (int(x) for x in m.groups())
        return dt.datetime(year, month, day, hour, minute), True
    start = parse_start(text or "")
    return (start, False) if start else None


def _slot_at_or_after(sched: AbacoSchedule, due: dt.datetime, target: dt.datetime,
                      anchor_day: int | None) -> dt.datetime:
    """The first time `due + k * increment` (k >= 0) that is at or after `target`."""
    if due >= target:
        return due
    if sched.unit != "months":
        step = sched.add(dt.datetime(2000, 1, 1)) - dt.datetime(2000, 1, 1)
        k = -((due - target) // step)  # ceil((target - due) / step)
        return due + step * k
    k = 1
    found = sched.add(due, k, anchor_day)
    while found < target:
        k += 1
        found = sched.add(due, k, anchor_day)
    return found


def _anchor_day(sched: AbacoSchedule, due: dt.datetime) -> int:
    """The day of month monthly slots keep: the start's day when `due` was clamped at a month's end."""
    anchor = parse_start(sched.start)
    clamped = due.day == calendar.monthrange(due.year, due.month)[1]
    return anchor.day if anchor and clamped and anchor.day > due.day else due.day


def next_after_due(schedule: str, due: dt.datetime, now: dt.datetime) -> dt.datetime:
    """The first slot on the schedule's own cadence (counted from `due`) after the current hour."""
    if is_cron5(schedule):
        return parse_cron5(schedule).next_after(now)
    sched, _ = parse_abaco(schedule, now, check_old=False)
    return _slot_at_or_after(sched, due, _hour(now) + dt.timedelta(hours=1), _anchor_day(sched, due))


def set_next_ex_past(schedule: str, cron_next_ex: str, now: float | dt.datetime) -> str:
    """Abaco's realignment of a past cron_next_ex: the first slot on its cadence at or after this hour."""
    current = _utc(now)
    sched, _ = parse_abaco(schedule, current, check_old=False)
    parsed = parse_next_ex(cron_next_ex)
    if parsed is None:
        raise CronError(f"The cron_next_ex {cron_next_ex!r} is not in the format 'YYYY-M-D H'.")
    due = parsed[0]
    return format_next(_slot_at_or_after(sched, due, _hour(current), _anchor_day(sched, due)))


def next_ex_for(services: Any, schedule: str, now: float, previous_schedule: str | None = None,
                previous_next_ex: str | None = None) -> str:
    """The actor's next cron slot (`cron_next_ex`) for a schedule; AbacoError when malformed.

    On a PUT that keeps the schedule, its cadence is kept (a fresh validation would refuse its start
    as "old")."""
    strict = bool(getattr(services.settings, "strict_cron_500", False))
    return revalidate(schedule, now, previous_schedule, previous_next_ex, strict_500=strict)
