"""Cron: Abaco's format and messages, the catch-up arithmetic, five-field expressions."""

from __future__ import annotations

import datetime as dt

import pytest

from lightabaco.abaco import schedule as cron
from lightabaco.protocol.errors import AbacoError

NOW = dt.datetime(2026, 11, 28, 4, 30)


def test_validate_returns_start_as_given():
    assert cron.validate("2026-11-29 23 + 6 hours", NOW) == "2026-11-29 23"
    assert cron.validate("2099-09-6 20 + 3 months", NOW) == "2099-09-6 20"
    assert cron.validate("now + 1 hour", NOW) == "2026-11-28 4"
    assert cron.validate("NOW + 2 days", NOW) == "2026-11-28 4"
    # the current hour is not "old"
    assert cron.validate("2026-11-28 04 + 1 week", NOW) == "2026-11-28 04"


@pytest.mark.parametrize("schedule, message, code", [
    ("garbage", "The cron is not in the correct format", 400),
    ("2026-11-29 + 1 hour", "The starting date 2026-11-29 is not in the correct format", 400),
    ("2020-06-21 14 + 6 flimflams", "The starting datetime is old. The current UTC time is 2026-11-28 04:00:00",
     400),
    ("2099-06-21 14 + 6 flimflams", "flimflams is an invalid unit of time", 400),
    ("2099-06-21 14 + six hours", "The increment six is not an integer", 400),
    ("2099-06-21 14 + 0 hours", "must be a positive integer", 400),
])
def test_validate_messages(schedule, message, code):
    with pytest.raises(AbacoError) as info:
        cron.validate(schedule, NOW)
    assert message in info.value.message
    assert info.value.code == code


def test_strict_mode_answers_500_for_a_bad_unit_like_abaco():
    with pytest.raises(AbacoError) as info:
        cron.validate("2099-06-21 14 + 6 flimflams", NOW, strict_500=True)
    assert info.value.code == 500


def test_epoch_and_aware_clocks_agree():
    epoch = dt.datetime(2026, 11, 28, 4, 30, tzinfo=dt.timezone.utc).timestamp()
    assert cron.validate("now + 1 hour", epoch) == cron.validate("now + 1 hour", NOW)


# Abaco's tests/test_setnextexpast, with a fixed clock instead of utcnow().
def test_set_next_ex_past_one_hour_is_this_hour():
    assert cron.set_next_ex_past("2021-01-31 05 + 1 hour", "2021-05-20 12", NOW) == "2026-11-28 4"


@pytest.mark.parametrize("n", [2, 5, 7, 24, 999])
def test_set_next_ex_past_n_hours(n):
    last = dt.datetime(2021, 5, 20, 12)
    hour = dt.datetime(2026, 11, 28, 4)
    modulus = int((hour - last).total_seconds() // 3600) % n
    expected = hour + dt.timedelta(hours=(n - modulus) % n)
    assert cron.set_next_ex_past(f"2021-01-31 05 + {n} hours", "2021-05-20 12", NOW) == cron.format_next(expected)


def test_set_next_ex_past_days_keep_the_hour():
    # 04:30 now, the daily slot is at 12: later today
    assert cron.set_next_ex_past("2021-01-31 05 + 1 day", "2021-05-20 12", NOW) == "2026-11-28 12"
    late = dt.datetime(2026, 11, 28, 13, 5)
    assert cron.set_next_ex_past("2021-01-31 05 + 1 day", "2021-05-20 12", late) == "2026-11-29 12"


def test_set_next_ex_past_months_keep_the_day():
    assert cron.set_next_ex_past("2021-01-31 05 + 1 month", "2021-05-20 12", NOW) == "2026-12-20 12"


def test_months_do_not_drift_after_a_short_month():
    # anchor day 31: Feb 28 (clamped) is followed by Mar 31, not Mar 28
    due = dt.datetime(2026, 2, 28, 5)
    nxt = cron.next_after_due("2026-01-31 05 + 1 month", due, dt.datetime(2026, 2, 28, 5, 10))
    assert nxt == dt.datetime(2026, 3, 31, 5)


def test_next_after_due_skips_missed_slots_on_the_original_cadence():
    due = dt.datetime(2026, 11, 27, 1)  # missed 1:00, 7:00, 13:00, 19:00, 1:00 ...
    nxt = cron.next_after_due("2026-11-20 01 + 6 hours", due, NOW)
    assert nxt == dt.datetime(2026, 11, 28, 7)  # the 6-hour grid, not now + 6 h


@pytest.mark.parametrize("expr, after, expected", [
    ("*/15 * * * *", dt.datetime(2026, 11, 28, 4, 30), dt.datetime(2026, 11, 28, 4, 45)),
    ("0 9 * * 1-5", dt.datetime(2026, 11, 28, 4, 30), dt.datetime(2026, 11, 30, 9, 0)),  # Sat → Mon
    ("30 2 1 * *", dt.datetime(2026, 11, 28, 4, 30), dt.datetime(2026, 12, 1, 2, 30)),
    ("0 0 29 2 *", dt.datetime(2026, 11, 28, 4, 30), dt.datetime(2028, 2, 29, 0, 0)),
    ("0 12 * jan sun", dt.datetime(2026, 11, 28, 4, 30), dt.datetime(2027, 1, 3, 12, 0)),
    ("5 4 * * 7", dt.datetime(2026, 11, 28, 4, 30), dt.datetime(2026, 11, 29, 4, 5)),
    # day of month and day of week both restricted: either matches (standard cron)
    ("0 0 1 * fri", dt.datetime(2026, 11, 28, 4, 30), dt.datetime(2026, 12, 1, 0, 0)),
])
def test_cron5_next(expr, after, expected):
    assert cron.parse_cron5(expr).next_after(after) == expected


@pytest.mark.parametrize("expr", ["61 * * * *", "* 24 * * *", "* * 0 * *", "*/0 * * * *", "a * * * *"])
def test_cron5_errors_name_the_field(expr):
    with pytest.raises(AbacoError, match="field"):
        cron.validate(expr, NOW)


def test_cron5_impossible_date():
    with pytest.raises(AbacoError, match="never matches"):
        cron.validate("0 0 30 2 *", NOW)


def test_put_with_an_unchanged_old_schedule_keeps_its_cadence():
    assert cron.revalidate("2026-11-01 01 + 6 hours", NOW, "2026-11-01 01 + 6 hours", "2026-11-28 7") == "2026-11-28 7"
    with pytest.raises(AbacoError, match="old"):
        cron.revalidate("2026-11-01 01 + 6 hours", NOW, "2026-11-01 01 + 1 day", "2026-11-28 1")
    assert cron.revalidate("now + 1 day", NOW, None, None) == "2026-11-28 4"
