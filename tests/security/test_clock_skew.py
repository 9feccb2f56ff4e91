"""Threat: instances whose clocks differ reset a client's count by writing alternate minutes.

Attacker: an app holding a valid client key whose requests land on several gateway instances
(the platform spreads them; the app need not even know). The count of a client's emails lives
in one table row, as a minute (`window`) and a count. Instance clocks drift apart by a second or
two. If each instance counted in its own minute, then in the seconds where one instance's clock
has passed into the next minute and another's has not, each write would move the row's minute
forward or back and restart the count: a client with a rate of 100 sends 100, 100 more, 100
more... (1,100 in one minute, simulated below, with five requests to each instance).

What the gateway does: the row's minute only moves forward. An instance whose clock is behind
the row counts in the row's minute, so every minute the row ever counts holds at most the rate.
(A fixed window still lets a client send its rate at the end of one minute and again at the
start of the next: at most twice the rate in any 60 seconds, never more.)
"""

from __future__ import annotations

import pytest

from shared.clients import CLIENT_ROW, WINDOW_SECONDS, ClientStore
from shared.errors import RateLimited
from tests.fakes import Clock, FakeTableClient, client_store

RATE = 100
SKEW_SECONDS = 2.0
# A minute, on the clock of the instance that is behind.
MINUTE = 29_833_333


def send(store: ClientStore, key: str, emails: int) -> bool:
    """Accept one request of `emails` on that instance: key check, then the rate; passed?"""
    try:
        store.take(store.authenticate(f"Bearer {key}", counted=True), emails)
    except RateLimited:
        return False
    return True


def test_should_never_let_two_instances_with_skewed_clocks_reset_the_count() -> None:
    table = FakeTableClient("mailclients")
    ahead, behind = Clock(0.0), Clock(0.0)
    one, two = client_store(table, ahead), client_store(table, behind)

    def at(seconds_into_minute: float) -> None:
        behind.now = MINUTE * WINDOW_SECONDS + seconds_into_minute
        ahead.now = behind.now + SKEW_SECONDS

    at(10)
    _, key = one.create("bulk", "@example.com", RATE)
    admitted = RATE if send(two, key, RATE) else 0

    # The 2 s at the minute's end when one instance's clock says it is the next minute already.
    at(58.5)
    windows: list[int] = []
    for _ in range(5):
        for store in (one, two):
            admitted += RATE if send(store, key, RATE) else 0
            windows.append(table.rows[("bulk", CLIENT_ROW)]["window"])

    # 100 in the minute both clocks agreed on, 100 in the next: not 1,100.
    assert admitted == 2 * RATE
    assert windows == sorted(windows)
    row = table.rows[("bulk", CLIENT_ROW)]
    assert (row["window"], row["count"]) == (MINUTE + 1, RATE)


@pytest.mark.parametrize("first", ["ahead", "behind"])
def test_should_count_an_instance_behind_in_the_rows_minute_token_by_token(first: str) -> None:
    table = FakeTableClient("mailclients")
    ahead, behind = Clock(MINUTE * WINDOW_SECONDS + 59.0 + SKEW_SECONDS), Clock(0.0)
    behind.now = MINUTE * WINDOW_SECONDS + 59.0
    one, two = client_store(table, ahead), client_store(table, behind)
    _, key = one.create("steady", "@example.com", RATE)
    stores = (one, two) if first == "ahead" else (two, one)

    # One email at a time, alternating, until both instances answer 429.
    admitted = 0
    for _ in range(10 * RATE):
        passed = [send(store, key, 1) for store in stores]
        admitted += sum(passed)
        if not any(passed):
            break

    # If the instance behind wrote first, its minute had 0 counted when the other moved the
    # row on: at most one minute's rate more, never a reset per write.
    assert admitted <= 2 * RATE
    row = table.rows[("steady", CLIENT_ROW)]
    assert (row["window"], row["count"]) == (MINUTE + 1, RATE)
