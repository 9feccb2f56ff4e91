"""The local host's timer schedules: six-field NCRONTAB as the host's NCrontab reads it."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from devstack.host_invoke import HostError
from devstack.host_schedule import (
    ConstantSchedule,
    CronSchedule,
    fires_more_than_once_a_minute,
    next_occurrences,
    parse_schedule,
)


def at(text: str) -> datetime:
    """A UTC time from `YYYY-MM-DD HH:MM:SS[.ffffff]`."""
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc)


def following(expression: str, start: str, count: int = 1) -> list[str]:
    """The next `count` occurrences of `expression` after `start`, as text."""
    schedule = CronSchedule.parse(expression)
    return [
        m.strftime("%Y-%m-%d %H:%M:%S %a") for m in next_occurrences(schedule, at(start), count)
    ]


# ---------------------------------------------------------------- next occurrences


@pytest.mark.parametrize(
    ("expression", "start", "expected"),
    [
        # Every five minutes, on the minute: the monitor's schedule.
        ("0 */5 * * * *", "2025-01-01 12:03:17", ["2025-01-01 12:05:00 Wed"]),
        # Strictly after: an occurrence at the start itself is not the next one.
        ("0 */5 * * * *", "2025-01-01 12:05:00", ["2025-01-01 12:10:00 Wed"]),
        # Fractions of a second count as the whole second they are in.
        ("0 */5 * * * *", "2025-01-01 12:04:59.999999", ["2025-01-01 12:05:00 Wed"]),
        ("* * * * * *", "2025-01-01 12:00:00.500000", ["2025-01-01 12:00:01 Wed"]),
        # Crossing the hour, the day, the month and the year.
        ("0 */5 * * * *", "2025-12-31 23:58:00", ["2026-01-01 00:00:00 Thu"]),
        ("0 0 * * * *", "2025-01-31 23:30:00", ["2025-02-01 00:00:00 Sat"]),
        ("30 15 10 * * *", "2025-03-01 10:15:30", ["2025-03-02 10:15:30 Sun"]),
    ],
)
def test_should_find_the_next_occurrence(expression: str, start: str, expected: list[str]) -> None:
    assert following(expression, start) == expected


def test_should_read_lists_ranges_and_steps() -> None:
    assert following("0 0 9,17 * * *", "2025-01-01 10:00:00", 3) == [
        "2025-01-01 17:00:00 Wed",
        "2025-01-02 09:00:00 Thu",
        "2025-01-02 17:00:00 Thu",
    ]
    assert following("0 10-40/10 8 * * *", "2025-01-01 00:00:00", 5) == [
        "2025-01-01 08:10:00 Wed",
        "2025-01-01 08:20:00 Wed",
        "2025-01-01 08:30:00 Wed",
        "2025-01-01 08:40:00 Wed",
        "2025-01-02 08:10:00 Thu",
    ]


def test_should_read_a_value_with_a_step_as_from_the_value_to_the_maximum() -> None:
    assert following("5/15 * * * * *", "2025-01-01 00:00:00", 5) == [
        "2025-01-01 00:00:05 Wed",
        "2025-01-01 00:00:20 Wed",
        "2025-01-01 00:00:35 Wed",
        "2025-01-01 00:00:50 Wed",
        "2025-01-01 00:01:05 Wed",
    ]


def test_should_skip_to_the_next_working_day_with_a_day_of_week_range() -> None:
    # From Friday evening to Monday morning.
    assert following("0 30 9 * * 1-5", "2025-01-03 18:00:00", 2) == [
        "2025-01-06 09:30:00 Mon",
        "2025-01-07 09:30:00 Tue",
    ]


@pytest.mark.parametrize(
    ("expression", "same_as"),
    [
        # Names, and any prefix of one, in any case.
        ("0 0 12 * * Mon-Fri", "0 0 12 * * 1-5"),
        ("0 0 12 * * tues,THU", "0 0 12 * * 2,4"),
        ("0 0 0 1 jan,Jul *", "0 0 0 1 1,7 *"),
        ("0 0 0 1 February *", "0 0 0 1 2 *"),
        # NCrontab's particulars: a reversed range is put right, a step of 0 is 1.
        ("0 0 0 * * 5-1", "0 0 0 * * 1-5"),
        ("*/0 * * * * *", "* * * * * *"),
        # Blanks between fields do not matter.
        ("  0   */5 * * *  *  ", "0 */5 * * * *"),
    ],
)
def test_should_read_equivalent_forms_alike(expression: str, same_as: str) -> None:
    start = "2025-01-01 00:00:00"

    assert following(expression, start, 10) == following(same_as, start, 10)


def test_should_require_both_the_day_of_month_and_the_day_of_week_as_ncrontab_does() -> None:
    # Vixie cron would fire on every 13th and every Friday; the host only on Friday the 13th.
    assert following("0 0 0 13 * 5", "2025-01-01 00:00:00", 2) == [
        "2025-06-13 00:00:00 Fri",
        "2026-02-13 00:00:00 Fri",
    ]


def test_should_skip_months_too_short_for_the_day() -> None:
    assert following("0 0 0 31 * *", "2025-04-01 00:00:00", 2) == [
        "2025-05-31 00:00:00 Sat",
        "2025-07-31 00:00:00 Thu",
    ]
    assert following("0 0 0 29 2 *", "2025-03-01 00:00:00") == ["2028-02-29 00:00:00 Tue"]


def test_should_find_no_occurrence_for_a_day_that_never_comes() -> None:
    assert CronSchedule.parse("0 0 0 30 2 *").next_after(at("2025-01-01 00:00:00")) is None
    assert next_occurrences(CronSchedule.parse("0 0 0 31 4 *"), at("2025-01-01 00:00:00"), 5) == []


def test_should_keep_the_time_zone_of_the_start() -> None:
    nearly = datetime(2025, 1, 1, 12, 3, tzinfo=timezone(timedelta(hours=2)))

    found = CronSchedule.parse("0 */5 * * * *").next_after(nearly)

    assert found == datetime(2025, 1, 1, 12, 5, tzinfo=timezone(timedelta(hours=2)))


def test_should_print_like_the_host() -> None:
    assert str(CronSchedule.parse("0  */5 * * * *")) == "Cron: '0 */5 * * * *'"
    assert str(parse_schedule("00:05:00")) == "Constant: 0:05:00"


# ---------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("expression", "complaint"),
    [
        ("*/5 * * * *", "needs 6 fields"),  # five-field cron: no seconds
        ("0 0 */5 * * * *", "needs 6 fields"),
        ("60 * * * * *", "60 is out of range for the Second field"),
        ("* 60 * * * *", "out of range for the Minute field"),
        ("* * 24 * * *", "out of range for the Hour field"),
        ("* * * 0 * *", "out of range for the Day field"),
        ("* * * 32 * *", "out of range for the Day field"),
        ("* * * * 13 *", "out of range for the Month field"),
        ("* * * * 0 *", "out of range for the Month field"),
        ("* * * * * 7", "out of range for the DayOfWeek field"),
        ("* * * * * Funday", "not a DayOfWeek name"),
        ("* * * * Smarch *", "not a Month name"),
        ("* * mon * * *", "not a number from 0 to 23"),
        ("*/x * * * * *", "is not a step"),
        ("*/ * * * * *", "is not a step"),
        ("1- * * * * *", "cannot be empty"),
        ("-1 * * * * *", "not a number"),
        ("1,,2 * * * * *", "cannot be empty"),
        (",1 * * * * *", "cannot be empty"),
        ("0 0 0 ? * *", "not a number"),
        ("0 0 0 L * *", "not a number"),
        ("0 0 0 * * 5#3", "not a DayOfWeek name"),
    ],
)
def test_should_refuse_what_ncrontab_refuses_naming_the_field(
    expression: str, complaint: str
) -> None:
    with pytest.raises(HostError, match=complaint):
        parse_schedule(expression)


# ---------------------------------------------------------------- TimeSpan schedules


def test_should_read_a_timespan_as_a_constant_interval() -> None:
    schedule = parse_schedule("00:05:00")

    assert schedule == ConstantSchedule(timedelta(minutes=5))
    assert schedule.next_after(at("2025-01-01 12:03:17")) == at("2025-01-01 12:08:17")
    # As TimeSpan.Parse: a bare number is days.
    assert parse_schedule("2") == ConstantSchedule(timedelta(days=2))


def test_should_refuse_an_empty_interval_and_explain_a_bad_cron_first() -> None:
    with pytest.raises(HostError, match="must be positive"):
        parse_schedule("00:00:00")
    with pytest.raises(HostError, match="needs 6 fields"):
        parse_schedule("every five minutes")


# ---------------------------------------------------------------- schedule monitoring


@pytest.mark.parametrize(
    ("expression", "frequent"),
    [
        ("*/30 * * * * *", True),
        ("* * * * * *", True),
        ("0 * * * * *", False),
        ("0 */5 * * * *", False),
        ("0 0 0 30 2 *", False),
    ],
)
def test_should_tell_schedules_that_fire_more_than_once_a_minute(
    expression: str, frequent: bool
) -> None:
    # The host keeps no schedule status for those (use_monitor defaults to off). It counts the
    # occurrences within a minute of now, excluding the minute's end.
    for start in ("2025-01-01 12:00:10", "2025-01-01 12:00:59.5"):
        assert fires_more_than_once_a_minute(parse_schedule(expression), at(start)) is frequent


def test_should_tell_frequent_timespan_schedules() -> None:
    assert fires_more_than_once_a_minute(parse_schedule("00:00:30"), at("2025-01-01 00:00:00"))
    assert not fires_more_than_once_a_minute(parse_schedule("00:01:00"), at("2025-01-01 00:00:00"))
