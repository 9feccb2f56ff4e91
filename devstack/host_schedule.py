"""Timer schedules as the host's timer extension reads them: six-field NCRONTAB, or a TimeSpan.

An NCRONTAB expression has six fields, seconds first:

    {second} {minute} {hour} {day} {month} {day-of-week}
     0-59     0-59     0-23   1-31  1-12    0-6 (Sunday = 0)

Each field is `*`, a value, a range `a-b`, any of them with a step (`*/5`, `10-40/10`, and
`5/15`, which means 5 to the field's maximum in steps of 15), or a comma-separated list of
those. Months and days of the week may also be written as names or any prefix of one
(`Jan`, `Mon`, `tues`), case-insensitively. This is what NCrontab, the host's library, accepts
with `IncludingSeconds`, with its particulars kept: a reversed range (`5-2`) is read as `2-5`,
a step of 0 as 1, day-of-week stops at 6 (7 is refused), and a day of the month and a day of
the week must BOTH match (`0 0 0 13 * 5` is Friday the 13th only), unlike Vixie cron where
either may. There is no `?`, `L`, `W` or `#`. A whole-string `TimeSpan` (`00:05:00`) is a
constant interval, which the host accepts on App Service plans only.

`next_after(moment)` is the first occurrence strictly after `moment`, at whole seconds, in the
moment's own time zone (the local host runs schedules in UTC, as Azure does by default).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from devstack.host_invoke import HostError
from devstack.host_queue import parse_timespan

# No occurrence within this many years: the schedule never fires (say, `0 0 0 30 2 *`). The
# Gregorian calendar repeats its days of the week every 400 years.
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
    lowered = text.lower()
    for index, name in enumerate(kind.names):
        if name.lower().startswith(lowered):
            return kind.low + index
    if kind.names:
        raise HostError(f"'{text}' is not a {kind.name} name ({', '.join(kind.names)})")
    raise HostError(f"'{text}' is not a number from {kind.low} to {kind.high}")


def _element(kind: _FieldKind, text: str) -> set[int]:
    """The values of one list element: `*`, `v`, `a-b`, each optionally `/step`."""
    step: int | None = None
    if "/" in text[1:]:
        text, _, raw_step = text.partition("/")
        if not _DIGITS.fullmatch(raw_step):
            raise HostError(f"'{raw_step}' is not a step (a whole number)")
        # NCrontab reads a step of 0 as 1.
        step = max(1, int(raw_step))
    if text == "*":
        first, last = kind.low, kind.high
    elif "-" in text[1:]:
        start, _, end = text.partition("-")
        first, last = sorted((_value(kind, start), _value(kind, end)))
    else:
        first = _value(kind, text)
        # `5/15` runs from 5 to the maximum; a bare value is just itself.
        last = kind.high if step is not None else first
    return set(range(first, last + 1, step or 1))


def _field(kind: _FieldKind, text: str) -> frozenset[int]:
    values: set[int] = set()
    for element in text.split(","):
        values |= _element(kind, element)
    return frozenset(values)


def _first_at_least(values: tuple[int, ...], start: int) -> int | None:
    return next((v for v in values if v >= start), None)


@dataclass(frozen=True)
class CronSchedule:
    """A six-field NCRONTAB schedule."""

    expression: str
    seconds: tuple[int, ...]
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days: frozenset[int]
    months: tuple[int, ...]
    days_of_week: frozenset[int]

    @classmethod
    def parse(cls, expression: str) -> CronSchedule:
        """Parse an expression; HostError says what is wrong with it."""
        parts = expression.split()
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
        seconds, minutes, hours, days, months, days_of_week = fields
        return cls(
            " ".join(parts),
            tuple(sorted(seconds)),
            tuple(sorted(minutes)),
            tuple(sorted(hours)),
            days,
            tuple(sorted(months)),
            days_of_week,
        )

    def __str__(self) -> str:
        return f"Cron: '{self.expression}'"

    def next_after(self, moment: datetime) -> datetime | None:
        """The first occurrence after `moment` (whole seconds, in `moment`'s time zone)."""
        candidate = moment.replace(microsecond=0) + timedelta(seconds=1)
        limit = candidate.year + SEARCH_YEARS
        while candidate.year <= limit:
            month = _first_at_least(self.months, candidate.month)
            if month is None:
                candidate = candidate.replace(year=candidate.year + 1, month=1, day=1)
                candidate = candidate.replace(hour=0, minute=0, second=0)
                continue
            if month != candidate.month:
                candidate = candidate.replace(month=month, day=1, hour=0, minute=0, second=0)
            if not self._day_matches(candidate):
                candidate = candidate.replace(hour=0, minute=0, second=0) + timedelta(days=1)
                continue
            hour = _first_at_least(self.hours, candidate.hour)
            if hour is None:
                candidate = candidate.replace(hour=0, minute=0, second=0) + timedelta(days=1)
                continue
            if hour != candidate.hour:
                candidate = candidate.replace(hour=hour, minute=0, second=0)
            minute = _first_at_least(self.minutes, candidate.minute)
            if minute is None:
                candidate = candidate.replace(minute=0, second=0) + timedelta(hours=1)
                continue
            if minute != candidate.minute:
                candidate = candidate.replace(minute=minute, second=0)
            second = _first_at_least(self.seconds, candidate.second)
            if second is None:
                candidate = candidate.replace(second=0) + timedelta(minutes=1)
                continue
            return candidate.replace(second=second)
        return None

    def _day_matches(self, moment: datetime) -> bool:
        # Python's weekday() is Monday = 0; cron's is Sunday = 0.
        weekday = (moment.weekday() + 1) % 7
        return moment.day in self.days and weekday in self.days_of_week


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
        if len(expression.split()) == len(_FIELDS):
            raise
        try:
            seconds = parse_timespan(expression)
        except HostError:
            raise cron_error from None
        if seconds <= 0:
            raise HostError(f"'{expression}': a TimeSpan schedule must be positive") from None
        return ConstantSchedule(timedelta(seconds=seconds))


def fires_more_than_once_a_minute(schedule: Schedule, now: datetime) -> bool:
    """Whether two occurrences fall within a minute of `now`: the host then keeps no status."""
    if isinstance(schedule, ConstantSchedule):
        return schedule.interval < timedelta(minutes=1)
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
