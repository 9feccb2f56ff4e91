"""The local host's timer schedules: six-field NCRONTAB as the host's NCrontab reads it.

croniter computes the occurrences; these tests pin what NCrontab (atifaziz/NCrontab) and the
timer extension (Azure/azure-webjobs-sdk-extensions, Extensions/Timers) do, so that each place
where croniter on its own would differ is covered.
"""

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


@pytest.mark.parametrize(
    ("expression", "start", "expected"),
    [
        # Cases of NCrontab's own tests (NCrontab.Tests/CrontabScheduleTests.cs), with seconds.
        # Its issue #90: the seconds start again from 0 when the hour moves on.
        (
            "* 0-1 10 * * *",
            "2021-02-24 09:50:35",
            ["2021-02-24 10:00:00 Wed", "2021-02-24 10:00:01 Wed"],
        ),
        # The 1st of a month that is a Monday: both must match.
        (
            "0 45 16 1 * Mon",
            "2003-01-01 12:00:00",
            ["2003-09-01 16:45:00 Mon", "2003-12-01 16:45:00 Mon"],
        ),
        # The 30th and 31st are skipped where the month has none.
        (
            "0 0 0 15,30,31 * *",
            "2000-01-31 00:00:00",
            ["2000-02-15 00:00:00 Tue", "2000-03-15 00:00:00 Wed", "2000-03-30 00:00:00 Thu"],
        ),
        (
            "0 20 * * january,FeB,Mar,april,May,JuNE,July,Augu,SEPT-October,Nov,DECEM *",
            "1988-03-11 14:23:00",
            ["1988-03-11 15:20:00 Fri"],
        ),
    ],
)
def test_should_agree_with_ncrontabs_own_cases(
    expression: str, start: str, expected: list[str]
) -> None:
    assert following(expression, start, len(expected)) == expected


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
        # A name is any prefix of one: T is Tuesday, S Sunday, J January (the first to match).
        ("0 0 0 1 J * ", "0 0 0 1 1 *"),
        ("0 0 0 * * T,S", "0 0 0 * * 2,0"),
        # NCrontab's particulars where croniter on its own reads otherwise. A reversed range is
        # put right (croniter wraps it round: Sat-Sun would be the weekend, here it is 0-6).
        ("0 0 0 * * 5-1", "0 0 0 * * 1-5"),
        ("0 0 0 * * Sat-Sun", "0 0 0 * * *"),
        # A step below 1 is 1 (croniter refuses it); int.Parse takes a sign.
        ("*/0 * * * * *", "* * * * * *"),
        ("*/-5 * * * * *", "* * * * * *"),
        ("*/+5 * * * * *", "*/5 * * * * *"),
        # A range of one value is that value, with or without a step (croniter reads the whole
        # cycle), and so is a value at the field's maximum with a step.
        ("5-5 * * * * *", "5 * * * * *"),
        ("5-5/3 * * * * *", "5 * * * * *"),
        ("0 0 0 1 Jan-Jan *", "0 0 0 1 1 *"),
        ("59/15 * * * * *", "59 * * * * *"),
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


@pytest.mark.parametrize(
    ("expression", "printed"),
    [
        # The host prints NCrontab's CrontabSchedule.ToString(): the values of each field,
        # runs as ranges, a whole range as `*`, no names (NCrontab's Formatting tests; the
        # extension's CronScheduleTests expect "Cron: '0 59 11 * * 1-5'").
        ("0 */5 * * * *", "Cron: '0 0,5,10,15,20,25,30,35,40,45,50,55 * * * *'"),
        ("0  59 11 * * Mon-Fri", "Cron: '0 59 11 * * 1-5'"),
        ("1 * 1-2,3 * * *", "Cron: '1 * 1-3 * * *'"),
        ("33 10-40/15 * * * *", "Cron: '33 10,25,40 * * * *'"),
        ("55 * * * Mar,Jan,Aug Fri,Mon-Tue", "Cron: '55 * * * 1,3,8 1-2,5'"),
        ("0-59 0-59/1 */1 1-31 Jan-December 0-6", "Cron: '* * * * * *'"),
        ("0 0 0 13 * 5", "Cron: '0 0 0 13 * 5'"),
    ],
)
def test_should_print_like_the_host(expression: str, printed: str) -> None:
    assert str(CronSchedule.parse(expression)) == printed


def test_should_print_a_timespan_like_the_host() -> None:
    assert str(parse_schedule("00:05:00")) == "Constant: 0:05:00"


# ---------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("expression", "complaint"),
    [
        # Five fields: the extension would take them, Azure's scale controller does not (see
        # CronSchedule.parse).
        ("*/5 * * * *", "needs 6 fields .*not 5: the seconds come first"),
        ("0 0 */5 * * * *", "needs 6 fields"),
        ("", "needs 6 fields"),
        # NCrontab splits on spaces only: a tab is part of a field (croniter splits on both).
        ("0\t*/5\t*\t*\t*\t*", "needs 6 fields"),
        ("0 */5 * * *\t*", "needs 6 fields"),
        # croniter's aliases and extensions, which NCrontab does not have.
        ("@hourly", "needs 6 fields"),
        ("0 0 0 15W * *", "not a number"),
        ("H * * * * *", "not a number"),
        ("0 0 0 * * L", "not a DayOfWeek name"),
        ("0 0 0 * * 7", "out of range for the DayOfWeek field"),
        ("0 0 0 * * 0-7", "out of range for the DayOfWeek field"),
        # A step past Int32 overflows NCrontab's int.Parse: the host cannot start the timer.
        ("*/2147483648 * * * * *", "is not a step"),
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
        # `0-59` prints as `*`: the rule reads the fields as NCrontab prints them.
        ("*/10 0-59 * 1-31 * Sun-Sat", True),
        ("0 * * * * *", False),
        ("0 */5 * * * *", False),
        ("0 0 0 30 2 *", False),
        # Every 10 seconds, but only from 12:00 to 12:59: the host keeps its status.
        ("*/10 * 12 * * *", False),
    ],
)
def test_should_tell_schedules_that_fire_more_than_once_a_minute(
    expression: str, frequent: bool
) -> None:
    # The host keeps no schedule status for those (TimerSchedule.ShouldDisableScheduleMonitor):
    # only seconds restricted, and two occurrences within a minute of now, excluding its end.
    for start in ("2025-01-01 12:00:10", "2025-01-01 12:00:59.5"):
        assert fires_more_than_once_a_minute(parse_schedule(expression), at(start)) is frequent


def test_should_tell_frequent_timespan_schedules() -> None:
    assert fires_more_than_once_a_minute(parse_schedule("00:00:30"), at("2025-01-01 00:00:00"))
    assert not fires_more_than_once_a_minute(parse_schedule("00:01:00"), at("2025-01-01 00:00:00"))
