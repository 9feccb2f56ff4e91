"""The retention timer function: what it logs for a run, for storage down and for bad settings.

What it deletes is tested against Azurite (tests/integration/test_retention.py) and on the
local host (tests/e2e/test_retention.py).
"""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest
from azure.functions.timer import TimerRequest

import functions.retention
from functions.retention import expire_data
from shared.errors import StorageUnavailable
from shared.retention import BodyExpiryResult, ExpiryResult, PartitionExpiry

LOGGER = "functions.retention"


def run_timer(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """Run the function once, as the timer does; the records it logged."""
    with caplog.at_level(logging.INFO):
        expire_data(TimerRequest(past_due=False))
    return list(caplog.records)


def answering(monkeypatch: pytest.MonkeyPatch, result: ExpiryResult) -> None:
    """The gateway's expiry, answering `result`."""
    monkeypatch.setattr(functions.retention, "expire_due_data", lambda: result)


def test_should_log_one_info_line_with_the_rows_deleted_and_the_calls(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    answering(monkeypatch, ExpiryResult(250, 4, 0, False, timedelta(days=7)))

    [record] = run_timer(caplog)

    assert record.levelno == logging.INFO
    assert record.getMessage() == (
        "Retention: deleted 250 activity row(s) older than 7 day(s) in 4 call(s)"
    )


def test_should_say_when_rows_are_left_for_the_next_run_and_some_failed(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    answering(monkeypatch, ExpiryResult(1000, 12, 100, True, timedelta(minutes=2)))

    [record] = run_timer(caplog)

    assert record.getMessage() == (
        "Retention: deleted 1000 activity row(s) older than 0.00138889 day(s) in 12 call(s); "
        "100 could not be deleted; more left for the next run"
    )


def test_should_log_a_second_info_line_with_the_leftover_bodies_deleted(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    bodies = BodyExpiryResult(3, True, timedelta(days=8, hours=8))
    answering(monkeypatch, ExpiryResult(0, 1, 0, False, timedelta(days=7), bodies=bodies))

    [_, record] = run_timer(caplog)

    assert record.levelno == logging.INFO
    assert record.getMessage() == (
        "Retention: deleted 3 leftover message body blob(s) older than 200 hour(s); "
        "more left for the next run"
    )


def test_should_say_in_the_same_line_what_was_deleted_of_each_kind(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    answering(
        monkeypatch,
        ExpiryResult(
            250,
            4,
            0,
            False,
            timedelta(days=7),
            statuses=PartitionExpiry(partitions=12, deleted=40, skipped=3, calls=15),
            status_retention=timedelta(days=30),
            keys=PartitionExpiry(partitions=5, deleted=5, calls=6),
        ),
    )

    [record] = run_timer(caplog)

    assert record.levelno == logging.INFO
    assert record.getMessage() == (
        "Retention: deleted 250 activity row(s) older than 7 day(s) in 4 call(s); 12 message(s) "
        "older than 30 day(s) (40 row(s)) in 15 call(s), 3 row(s) of older ids skipped; "
        "5 idempotency key(s) in 6 call(s)"
    )
    assert (record.deleted, record.calls, record.failed) == (295, 25, 0)  # type: ignore[attr-defined]


def test_should_sum_the_failures_and_say_more_is_left_when_any_kind_stopped_at_its_bound(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    answering(
        monkeypatch,
        ExpiryResult(
            0,
            1,
            0,
            False,
            timedelta(days=7),
            statuses=PartitionExpiry(partitions=1, deleted=3, failed=4, calls=4, more_left=True),
            status_retention=timedelta(minutes=2),
            keys=PartitionExpiry(failed=1, calls=2),
        ),
    )

    [record] = run_timer(caplog)

    assert record.getMessage() == (
        "Retention: deleted 0 activity row(s) older than 7 day(s) in 1 call(s); 1 message(s) "
        "older than 0.00138889 day(s) (3 row(s)) in 4 call(s); 0 idempotency key(s) in 2 "
        "call(s); 5 could not be deleted; more left for the next run"
    )


def test_should_log_an_error_and_return_when_storage_is_unavailable(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def unavailable() -> ExpiryResult:
        raise StorageUnavailable("table mailstatus: ServiceRequestError")

    monkeypatch.setattr(functions.retention, "expire_due_data", unavailable)

    [record] = run_timer(caplog)

    assert record.levelno == logging.ERROR
    assert record.getMessage() == (
        "Retention: expired rows could not be deleted: table mailstatus: ServiceRequestError"
    )


@pytest.mark.usefixtures("misconfigured")
def test_should_log_the_gateway_not_configured_error_on_every_run_and_delete_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO):
        for _ in range(2):
            expire_data(TimerRequest(past_due=False))

    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2
    assert all(e.startswith("Gateway not configured: SENDGRID_API_KEY: unresolved") for e in errors)
    assert not [r for r in caplog.records if r.name == LOGGER]
