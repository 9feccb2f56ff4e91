"""The provider circuit breaker: its state machine on a fake clock, and the shared row it keeps
in an in-memory table with the service's ETag semantics."""

from __future__ import annotations

import logging
from typing import cast

import pytest
from azure.data.tables import TableClient

from shared.breaker import (
    BREAKER_REFRESH_SECONDS,
    BREAKER_ROW,
    BREAKER_WINDOW_SECONDS,
    PARTITION_PREFIX,
    Breaker,
    BreakerPolicy,
    BreakerState,
    ProviderBreakers,
    Verdict,
)
from tests.fakes import Clock, FakeTableClient

POLICY = BreakerPolicy(failures=3, cooldown_seconds=30.0)
TRIAL_SECONDS = 45.0
T0 = 1_800_000_000.0


def failed_times(
    policy: BreakerPolicy, row: Breaker, *times: float, last_success: float = 0.0
) -> Breaker:
    for at in times:
        row = policy.after_failure(row, at, last_success) or row
    return row


# ---- the state machine ---------------------------------------------------------------------


def test_should_stay_closed_below_the_threshold_and_open_at_it() -> None:
    two = failed_times(POLICY, Breaker(), T0, T0 + 1)
    three = failed_times(POLICY, two, T0 + 2)

    assert (two.state, two.failures) == (BreakerState.CLOSED, 2)
    assert POLICY.verdict(two, T0 + 2) is Verdict.SEND
    assert (three.state, three.opened_at, three.opened) == (BreakerState.OPEN, T0 + 2, 1)
    assert POLICY.verdict(three, T0 + 3) is Verdict.SKIP


def test_should_start_the_count_again_after_the_window() -> None:
    row = failed_times(POLICY, Breaker(), T0, T0 + 1, T0 + 1 + BREAKER_WINDOW_SECONDS + 1)

    assert (row.state, row.failures) == (BreakerState.CLOSED, 1)


def test_should_start_the_count_again_after_a_success_the_failing_instance_saw() -> None:
    row = failed_times(POLICY, Breaker(), T0, T0 + 1)

    after = POLICY.after_failure(row, T0 + 3, last_success=T0 + 2)

    assert after is not None
    assert (after.state, after.failures, after.run_started_at) == (BreakerState.CLOSED, 1, T0 + 3)


def test_should_let_one_trial_through_after_the_cooldown_only() -> None:
    opened = failed_times(POLICY, Breaker(), T0, T0, T0)

    assert POLICY.take_trial(opened, T0 + 29.9, TRIAL_SECONDS) is None
    trial = POLICY.take_trial(opened, T0 + 30, TRIAL_SECONDS)
    assert trial is not None
    assert (trial.state, trial.trial_until) == (BreakerState.HALF_OPEN, T0 + 30 + TRIAL_SECONDS)
    # Nobody else gets one while it runs.
    assert POLICY.verdict(trial, T0 + 31) is Verdict.SKIP
    assert POLICY.take_trial(trial, T0 + 31, TRIAL_SECONDS) is None


def test_should_give_a_new_trial_once_an_unreported_one_is_over() -> None:
    trial = POLICY.take_trial(failed_times(POLICY, Breaker(), T0, T0, T0), T0 + 30, TRIAL_SECONDS)
    assert trial is not None

    assert POLICY.verdict(trial, T0 + 30 + TRIAL_SECONDS) is Verdict.TRIAL


def test_should_close_on_the_trials_success_and_reopen_on_its_failure() -> None:
    trial = POLICY.take_trial(failed_times(POLICY, Breaker(), T0, T0, T0), T0 + 30, TRIAL_SECONDS)
    assert trial is not None

    closed = POLICY.after_success(trial)
    reopened = POLICY.after_failure(trial, T0 + 31, 0.0)

    assert closed is not None
    assert (closed.state, closed.failures) == (BreakerState.CLOSED, 0)
    assert reopened is not None
    assert (reopened.state, reopened.opened_at, reopened.opened) == (BreakerState.OPEN, T0 + 31, 2)
    assert POLICY.verdict(reopened, T0 + 60) is Verdict.SKIP
    assert POLICY.verdict(reopened, T0 + 61) is Verdict.TRIAL


def test_should_change_nothing_on_a_success_while_closed_or_a_failure_while_open() -> None:
    opened = failed_times(POLICY, Breaker(), T0, T0, T0)

    assert POLICY.after_success(Breaker(failures=2, run_started_at=T0)) is None
    assert POLICY.after_failure(opened, T0 + 1, 0.0) is None


def test_should_make_an_unused_trial_due_again_at_once() -> None:
    trial = POLICY.take_trial(failed_times(POLICY, Breaker(), T0, T0, T0), T0 + 30, TRIAL_SECONDS)
    assert trial is not None

    given_back = POLICY.after_unused_trial(trial, T0 + 31)

    assert given_back is not None
    assert given_back.state is BreakerState.OPEN
    assert POLICY.verdict(given_back, T0 + 31) is Verdict.TRIAL


def test_should_say_how_long_until_a_provider_may_be_tried_again() -> None:
    opened = failed_times(POLICY, Breaker(), T0, T0, T0)

    assert POLICY.reopens_in(opened, T0 + 10) == 20.0
    assert POLICY.reopens_in(opened, T0 + 40) == 0.0
    assert POLICY.reopens_in(Breaker(), T0) == 0.0


# ---- the shared row ------------------------------------------------------------------------


def breakers(
    table: FakeTableClient, clock: Clock, policy: BreakerPolicy = POLICY
) -> ProviderBreakers:
    return ProviderBreakers(cast("TableClient", table), policy, clock=clock)


def test_should_cost_a_closed_breakers_successes_no_storage_call_past_a_read_per_interval() -> None:
    table, clock = FakeTableClient(), Clock(T0)
    instance = breakers(table, clock)

    for _ in range(50):
        assert instance.verdict("sendgrid", TRIAL_SECONDS) is Verdict.SEND
        instance.succeeded("sendgrid")
        clock.now += 0.05

    # 2.5 s: one read, and nothing written.
    assert dict(table.calls) == {"get": 1}
    clock.now += BREAKER_REFRESH_SECONDS
    instance.verdict("sendgrid", TRIAL_SECONDS)
    assert dict(table.calls) == {"get": 2}


def test_should_share_an_open_breaker_with_another_instance_within_the_refresh_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    table, clock = FakeTableClient(), Clock(T0)
    one, other = breakers(table, clock), breakers(table, clock)
    assert other.verdict("sendgrid", TRIAL_SECONDS) is Verdict.SEND

    with caplog.at_level(logging.WARNING, logger="shared.breaker"):
        for _ in range(3):
            one.failed("sendgrid")

    row = table.rows[(PARTITION_PREFIX + "sendgrid", BREAKER_ROW)]
    assert (row["state"], row["failures"]) == ("open", 3)
    assert one.verdict("sendgrid", TRIAL_SECONDS) is Verdict.SKIP
    clock.now += BREAKER_REFRESH_SECONDS
    assert other.verdict("sendgrid", TRIAL_SECONDS) is Verdict.SKIP
    [line] = [r.getMessage() for r in caplog.records]
    assert line.startswith("Provider sendgrid breaker opened after 3 retryable failure(s)")


def test_should_count_failures_of_two_instances_without_losing_one() -> None:
    table, clock = FakeTableClient(), Clock(T0)
    one, other = breakers(table, clock), breakers(table, clock)
    one.verdict("smtp", TRIAL_SECONDS)
    other.verdict("smtp", TRIAL_SECONDS)

    one.failed("smtp")
    # The other's copy is stale: its write conflicts, it reads again and counts on top.
    other.failed("smtp")
    one.failed("smtp")

    row = table.rows[(PARTITION_PREFIX + "smtp", BREAKER_ROW)]
    assert (row["state"], row["failures"]) == ("open", 3)


def test_should_give_the_trial_to_one_instance_only() -> None:
    table, clock = FakeTableClient(), Clock(T0)
    one, other = breakers(table, clock), breakers(table, clock)
    for _ in range(3):
        one.failed("sendgrid")
    other.verdict("sendgrid", TRIAL_SECONDS)
    clock.now += 30

    verdicts = [one.verdict("sendgrid", TRIAL_SECONDS), other.verdict("sendgrid", TRIAL_SECONDS)]

    assert sorted(verdicts) == [Verdict.SKIP, Verdict.TRIAL]


def test_should_close_for_every_instance_once_the_trial_is_sent() -> None:
    table, clock = FakeTableClient(), Clock(T0)
    one, other = breakers(table, clock), breakers(table, clock)
    for _ in range(3):
        one.failed("sendgrid")
    clock.now += 30
    assert one.verdict("sendgrid", TRIAL_SECONDS) is Verdict.TRIAL

    one.succeeded("sendgrid")

    assert table.rows[(PARTITION_PREFIX + "sendgrid", BREAKER_ROW)]["state"] == "closed"
    assert other.verdict("sendgrid", TRIAL_SECONDS) is Verdict.SEND


def test_should_never_open_with_the_breaker_turned_off() -> None:
    table, clock = FakeTableClient(), Clock(T0)
    off = breakers(table, clock, BreakerPolicy(failures=0, cooldown_seconds=30))

    for _ in range(10):
        off.failed("sendgrid")

    assert off.verdict("sendgrid", TRIAL_SECONDS) is Verdict.SEND
    assert sum(table.calls.values()) == 0


def test_should_go_by_its_copy_when_the_row_cannot_be_read_or_written() -> None:
    table, clock = FakeTableClient(), Clock(T0)
    instance = breakers(table, clock)
    table.make_unavailable({"get", "update", "create"})

    instance.failed("sendgrid")

    assert instance.verdict("sendgrid", TRIAL_SECONDS) is Verdict.SEND
