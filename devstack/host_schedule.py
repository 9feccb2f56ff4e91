"""Timer schedules as the host's timer extension reads them: six-field NCRONTAB, or a TimeSpan.

An NCRONTAB expression has six fields, seconds first:

    {second} {minute} {hour} {day} {month} {day-of-week}
     0-59     0-59     0-23   1-31  1-12    0-6 (Sunday = 0)

Each field is `*`, a value, a range `a-b`, any of them with a step (`*/5`, `10-40/10`, and
`5/15`, which means 5 to the field's maximum in steps of 15), or a comma-separated list of
those. Months and days of the week may also be written as names or any prefix of one
(`Jan`, `Mon`, `tues`), case-insensitively. There is no `?`, `L`, `W`, `#` or `@daily`.

croniter computes the occurrences; what it is given is first read the way NCrontab, the host's
library, reads an expression with `IncludingSeconds` (atifaziz/NCrontab: CrontabSchedule.cs
TryParse, CrontabFieldImpl.cs InternalParse, CrontabField.cs Accumulate), because the two
differ and croniter would otherwise run schedules that the host reads otherwise or refuses:

- fields are separated by spaces only (NCrontab splits on ' '), and there must be six;
- a name is any prefix of a month or day name (croniter knows three-letter ones only);
- a reversed range (`5-1`) is the range put right (`1-5`; croniter wraps it: 5,6,0,1);
- a range of one value (`5-5`, `Jan-Jan`) is that value (croniter reads the whole cycle);
- a step below 1 (`*/0`, `*/-2`: int.Parse takes a sign) is 1 (croniter refuses it);
- a day of the week is 0-6 (croniter also takes 7 for Sunday), and croniter's `?`, `L`, `W`,
  `#`, `H` and `@` aliases are refused;
- a day of the month and a day of the week must BOTH match (croniter's `day_or=False`):
  `0 0 0 13 * 5` is Friday the 13th only, where Vixie cron fires on either.

A whole-string `TimeSpan` (`00:05:00`) is a constant interval, which the host accepts on App
Service plans only (WebJobs Extensions Timers: TimerSchedule.Create tries NCRONTAB first).

`next_after(moment)` is the first occurrence strictly after `moment`, at whole seconds, in the
moment's own time zone (the local host runs schedules in UTC, as Azure does by default).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from croniter import CroniterBadDateError, CroniterError, croniter

from devstack.host_invoke import HostError
from devstack.host_queue import parse_timespan

# No occurrence within this many years: the schedule never fires (say, `0 0 0 30 2 *`). The
# Gregorian calendar repeats its days of the week every 400 years. (NCrontab searches on to
# the year 9999 and hands back DateTime.MaxValue, which never comes either.)
SEARCH_YEARS = 400

MONTH_NAMES = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)
DAY_NAMES = ("Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday")


@dataclass(frozen=True)
class _FieldKind:
    name: str
    low: int
    high: int
    names: tuple[str, ...] = ()


_SECOND = _FieldKind("Second", 0, 59)
_MINUTE = _FieldKind("Minute", 0, 59)
_HOUR = _FieldKind("Hour", 0, 23)
_DAY = _FieldKind("Day", 1, 31)
_MONTH = _FieldKind("Month", 1, 12, MONTH_NAMES)
_DAY_OF_WEEK = _FieldKind("DayOfWeek", 0, 6, DAY_NAMES)
_FIELDS = (_SECOND, _MINUTE, _HOUR, _DAY, _MONTH, _DAY_OF_WEEK)
_DIGITS = re.compile(r"[0-9]+")
# A step is read with .NET's int.Parse, which takes a sign; past Int32 it throws an
# OverflowException that NCrontab does not catch, so the host cannot start the timer.
_STEP = re.compile(r"[+-]?[0-9]+")
_INT32_MAX = 2**31 - 1
# croniter keeps the seconds last in its expanded fields, whatever the order it was given.
_CRONITER_ORDER = (5, 0, 1, 2, 3, 4)


class Schedule(Protocol):
    """When a timer fires."""

    def next_after(self, moment: datetime) -> datetime | None:
        """The first occurrence after `moment`, or None if there is none."""

    def __str__(self) -> str:
        """The schedule as the host prints it: `Cron: '...'` or `Constant: ...`."""


def _value(kind: _FieldKind, text: str) -> int:
    if not text:
        raise HostError(f"a {kind.name} value cannot be empty")
    if _DIGITS.fullmatch(text):
        value = int(text)
        if not kind.low <= value <= kind.high:
            raise HostError(
                f"{value} is out of range for the {kind.name} field ({kind.low}-{kind.high})"
            )
        return value
    # NCrontab compares with IsPrefix(name, text, IgnoreCase): any prefix of a name, `T` too,
    # the first name that fits winning.
    lowered = text.lower() if text.isascii() else None
    for index, name in enumerate(kind.names):
        if lowered is not None and name.lower().startswith(lowered):
            return kind.low + index
    if kind.names:
        raise HostError(f"'{text}' is not a {kind.name} name ({', '.join(kind.names)})")
    raise HostError(f"'{text}' is not a number from {kind.low} to {kind.high}")


def _step(text: str) -> int:
    if not _STEP.fullmatch(text) or abs(int(text)) > _INT32_MAX:
        raise HostError(f"'{text}' is not a step (a whole number)")
    return max(1, int(text))


def _element(kind: _FieldKind, text: str) -> str:
    """One list element (`*`, `v`, `a-b`, each optionally `/step`) in croniter's terms."""
    if not text:
        raise HostError(f"a {kind.name} value cannot be empty")
    step: int | None = None
    # NCrontab looks for a '/' and a '-' after the first character only.
    if "/" in text[1:]:
        text, _, raw_step = text.partition("/")
        step = _step(raw_step)
    if text == "*":
        return "*" if step in (None, 1) else f"*/{step}"
    if "-" in text[1:]:
        start, _, end = text.partition("-")
        first, last = sorted((_value(kind, start), _value(kind, end)))
    else:
        first = _value(kind, text)
        last = kind.high if step is not None else first
    if first == last:
        return str(first)
    return f"{first}-{last}/{step or 1}"


def _field(kind: _FieldKind, text: str) -> str:
    return ",".join(_element(kind, element) for element in text.split(","))


def _format_field(kind: _FieldKind, values: list[int]) -> str:
    """NCrontab's CrontabField.ToString(): runs as `a-b`, the whole range as `*`, no names."""
    if values == list(range(kind.low, kind.high + 1)):
        return "*"
    runs: list[list[int]] = []
    for value in values:
        if runs and value == runs[-1][-1] + 1:
            runs[-1].append(value)
        else:
            runs.append([value])
    return ",".join(str(r[0]) if len(r) == 1 else f"{r[0]}-{r[-1]}" for r in runs)


def _croniter(expression: str, start: datetime) -> croniter[datetime]:
    return croniter(
        expression,
        start,
        ret_type=datetime,
        day_or=False,
        second_at_beginning=True,
        max_years_between_matches=SEARCH_YEARS,
    )


@dataclass(frozen=True)
class CronSchedule:
    """A six-field NCRONTAB schedule, computed by croniter."""

    # The expression as NCrontab prints it back: the host shows this one (`Cron: '...'`).
    expression: str
    # The same schedule in croniter's terms (numbers, ranges in order, steps of 1 or more).
    croniter_expression: str

    @classmethod
    def parse(cls, expression: str) -> CronSchedule:
        """Parse an expression; HostError says what is wrong with it."""
        parts = [part for part in expression.split(" ") if part]
        if len(parts) == len(_FIELDS) - 1:
            # The timer extension itself reads five fields as minutes first (CronSchedule.cs
            # HasSeconds), but Azure's scale controller parses with seconds only, fails, and
            # does not wake the app for the timer (Azure/azure-functions-host#7123); Microsoft's
            # timer trigger page says six fields. So this host refuses what Azure would not run.
            raise HostError(
                f"'{expression}' is not a valid NCRONTAB expression: it needs 6 fields "
                "(second minute hour day month day-of-week), not 5: the seconds come first"
            )
        if len(parts) != len(_FIELDS):
            raise HostError(
                f"'{expression}' is not a valid NCRONTAB expression: it needs 6 fields "
                "(second minute hour day month day-of-week), not "
                f"{len(parts)}"
            )
        fields = []
        for kind, text in zip(_FIELDS, parts, strict=True):
            try:
                fields.append(_field(kind, text))
            except HostError as error:
                raise HostError(
                    f"'{expression}' is not a valid NCRONTAB expression: '{text}' is not a "
                    f"valid {kind.name} field: {error}"
                ) from None
        normalized = " ".join(fields)
        try:
            # Any start will do: croniter expands the fields when it is built.
            expanded = _croniter(normalized, datetime(2000, 1, 1)).expanded
        except CroniterError as error:
            # Not expected once the fields are read as above; still an answer naming the input.
            raise HostError(f"'{expression}' is not a valid NCRONTAB expression: {error}") from None
        printed = []
        for kind, index in zip(_FIELDS, _CRONITER_ORDER, strict=True):
            values = expanded[index]
            # croniter keeps a `*` among the values of a list (`*/3,*`).
            whole = "*" in values
            printed.append("*" if whole else _format_field(kind, sorted(int(v) for v in values)))
        return cls(" ".join(printed), normalized)

    def __str__(self) -> str:
        return f"Cron: '{self.expression}'"

    @property
    def restricts_only_seconds(self) -> bool:
        """Whether every field but the seconds is `*` as NCrontab prints it (`0-59` is `*`)."""
        return all(field == "*" for field in self.expression.split(" ")[1:])

    def next_after(self, moment: datetime) -> datetime | None:
        """The first occurrence after `moment` (whole seconds, in `moment`'s time zone)."""
        # NCrontab's GetNextOccurrence starts from the next whole second: fractions do not
        # count. A croniter is built per call because it keeps its position between calls.
        try:
            return _croniter(self.croniter_expression, moment.replace(microsecond=0)).get_next()
        except CroniterBadDateError:
            return None


@dataclass(frozen=True)
class ConstantSchedule:
    """A TimeSpan schedule: every `interval` from the last occurrence (App Service plans only)."""

    interval: timedelta

    def __str__(self) -> str:
        return f"Constant: {self.interval}"

    def next_after(self, moment: datetime) -> datetime | None:
        """`moment` plus the interval."""
        return moment + self.interval


def parse_schedule(expression: str) -> CronSchedule | ConstantSchedule:
    """An NCRONTAB expression, else a TimeSpan, as the host tries them; HostError if neither."""
    try:
        return CronSchedule.parse(expression)
    except HostError as cron_error:
        if len([part for part in expression.split(" ") if part]) == len(_FIELDS):
            raise
        try:
            seconds = parse_timespan(expression)
        except HostError:
            raise cron_error from None
        if seconds <= 0:
            raise HostError(f"'{expression}': a TimeSpan schedule must be positive") from None
        return ConstantSchedule(timedelta(seconds=seconds))


def fires_more_than_once_a_minute(schedule: Schedule, now: datetime) -> bool:
    """Whether the host keeps no schedule status for it (`use_monitor` left unset is off).

    As TimerSchedule.ShouldDisableScheduleMonitor decides (WebJobs Extensions Timers): a
    TimeSpan under a minute; a cron schedule only if every field but the seconds is `*` and
    two occurrences fall within the minute after `now`. `*/10 * 5 * * *` keeps its status.
    """
    if isinstance(schedule, ConstantSchedule):
        return schedule.interval < timedelta(minutes=1)
    if isinstance(schedule, CronSchedule) and not schedule.restricts_only_seconds:
        return False
    first = schedule.next_after(now)
    if first is None:
        return False
    second = schedule.next_after(first)
    return second is not None and second < now + timedelta(minutes=1)


def next_occurrences(schedule: Schedule, start: datetime, count: int) -> list[datetime]:
    """Up to `count` occurrences after `start`."""
    occurrences: list[datetime] = []
    moment: datetime | None = start
    while len(occurrences) < count:
        moment = schedule.next_after(moment) if moment is not None else None
        if moment is None:
            break
        occurrences.append(moment)
    return occurrences
