"""The send-rate brake: its lease arithmetic, and instances sharing one row per provider on a
fake clock."""

from __future__ import annotations

from collections import Counter
from typing import cast

import pytest
from azure.data.tables import TableClient

from shared.brake import (
    BRAKE_ROW,
    MAX_LEASE_FRACTION,
    SendRateBrake,
    Window,
    lease_grant,
    window_of,
)
from shared.breaker import PARTITION_PREFIX
from shared.errors import StorageUnavailable
from tests.fakes import Clock, FakeTableClient

T0 = 1_800_000_000.0


class SleepingClock(Clock):
    """A clock that a brake's waits move forward, recording each wait."""

    def __init__(self, now: float) -> None:
        super().__init__(now)
        self.waits: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.now += seconds


def brake(table: FakeTableClient, clock: SleepingClock, **rates: float) -> SendRateBrake:
    return SendRateBrake(cast("TableClient", table), rates, clock=clock, sleep=clock.sleep)


@pytest.mark.parametrize(
    ("rate", "count", "previous", "grant"),
    [
        (5, 0, 0, 1),  # a small rate: one at a time, the block never passes rate // 10
        (5, 0, 1, 1),
        (100, 0, 0, 1),  # the first block of a second is 1
        (100, 1, 1, 2),  # then twice the last
        (100, 3, 8, 10),  # at most rate // MAX_LEASE_FRACTION
        (100, 95, 8, 5),  # never more than is left
        (100, 100, 8, 0),  # nothing when it is spent
    ],
)
def test_should_lease_blocks_that_double_up_to_a_fraction_of_the_rate(
    rate: int, count: int, previous: int, grant: int
) -> None:
    assert lease_grant(rate, count, previous) == grant
    assert lease_grant(rate, count, previous) <= max(1, rate // MAX_LEASE_FRACTION)


def test_should_take_nothing_and_cost_nothing_for_a_provider_without_a_brake() -> None:
    table, clock = FakeTableClient(), SleepingClock(T0)

    assert brake(table, clock, sendgrid=5).take("smtp")
    assert sum(table.calls.values()) == 0


def test_should_not_write_for_every_mail_once_the_blocks_grow() -> None:
    table, clock = FakeTableClient(), SleepingClock(T0)
    instance = brake(table, clock, sendgrid=100)

    for _ in range(50):
        assert instance.take("sendgrid")

    # 1 + 2 + 4 + 8 + 10 + 10 + 10 + 10 = 55 tokens in 8 writes (the first a create).
    assert table.calls["create"] + table.calls["update"] == 8
    row = table.rows[(PARTITION_PREFIX + "sendgrid", BRAKE_ROW)]
    assert (row["window"], row["count"]) == (window_of(T0), 55)


def test_should_wait_for_the_next_second_when_this_one_is_spent() -> None:
    table, clock = FakeTableClient(), SleepingClock(T0 + 0.75)
    instance = brake(table, clock, smtp=2)

    taken_at = []
    for _ in range(5):
        assert instance.take("smtp")
        taken_at.append(window_of(clock.now))

    assert Counter(taken_at) == {window_of(T0): 2, window_of(T0) + 1: 2, window_of(T0) + 2: 1}
    assert all(0 < w <= 1.0 for w in clock.waits)


def test_should_give_up_after_at_most_a_second_of_waiting() -> None:
    table, clock = FakeTableClient(), SleepingClock(T0 + 0.5)
    other = brake(table, clock, smtp=1)
    assert other.take("smtp")

    def sleep_while_the_other_takes_each_second(seconds: float) -> None:
        clock.sleep(seconds)
        assert other.take("smtp")

    waiting = SendRateBrake(
        cast("TableClient", table),
        {"smtp": 1},
        clock=clock,
        sleep=sleep_while_the_other_takes_each_second,
    )

    assert not waiting.take("smtp")
    assert sum(clock.waits) <= 1.0


def test_should_hold_the_rate_across_instances_sharing_the_row() -> None:
    table, clock = FakeTableClient(), SleepingClock(T0)
    instances = [brake(table, clock, sendgrid=20) for _ in range(3)]

    taken: Counter[int] = Counter()
    for step in range(300):
        clock.now += 0.01
        if instances[step % 3].take("sendgrid"):
            taken[window_of(clock.now)] += 1

    assert max(taken.values()) <= 20
    # The lease's leftovers are lost when a second ends, but most of the rate is used.
    assert sum(taken.values()) >= 20 * (len(taken) - 1)


def test_should_count_in_the_rows_second_when_this_instances_clock_is_behind() -> None:
    table = FakeTableClient()
    ahead, behind = SleepingClock(T0 + 5), SleepingClock(T0)
    brake(table, ahead, smtp=1).take("smtp")

    late = brake(table, behind, smtp=1)

    # The row's second is spent, and the next one is further off than a delivery waits.
    assert not late.take("smtp")
    row = table.rows[(PARTITION_PREFIX + "smtp", BRAKE_ROW)]
    assert (row["window"], row["count"]) == (window_of(T0 + 5), 1)
    assert behind.waits == []


def test_should_answer_storage_unavailable_when_the_row_cannot_be_written() -> None:
    table, clock = FakeTableClient(), SleepingClock(T0)
    table.make_unavailable({"create", "update", "get"})

    with pytest.raises(StorageUnavailable, match="send-rate brake of smtp"):
        brake(table, clock, smtp=3).take("smtp")


@pytest.mark.parametrize(
    ("rate", "seconds", "mails"),
    [
        (5, 1, 5),
        (2.5, 1, 2),  # never more than the rate in any window
        (0.5, 2, 1),  # ACS Email's first limit, 30 a minute
        (0.3, 4, 1),
        (100 / 3600, 36, 1),  # 100 an hour
    ],
)
def test_should_count_a_rate_in_whole_second_windows_never_above_it(
    rate: float, seconds: int, mails: int
) -> None:
    window = Window.for_rate(rate)

    assert (window.seconds, window.mails) == (seconds, mails)
    assert window.mails / window.seconds <= rate


def test_should_send_one_mail_every_two_seconds_at_half_a_mail_a_second() -> None:
    table, clock = FakeTableClient(), SleepingClock(T0)
    one, other = brake(table, clock, acs=0.5), brake(table, clock, acs=0.5)

    assert one.take("acs")
    clock.now += 0.5
    # The window of two seconds is spent, and the next is more than a delivery waits away.
    assert not other.take("acs")
    clock.now += 1.0
    # Now it is half a second away: worth the wait.
    assert other.take("acs")
    assert clock.waits == [0.5]
    row = table.rows[(PARTITION_PREFIX + "acs", BRAKE_ROW)]
    assert (row["window"], row["count"]) == (T0 + 2, 1)
