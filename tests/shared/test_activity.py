"""The buffered activity log against the in-memory table: its bound, a refused row, and what
close() leaves. Azurite's side (packed rows, the background flusher, many threads) is in
tests/integration/test_activity_log.py."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any, cast

import pytest
from azure.core.exceptions import HttpResponseError
from azure.data.tables import TableClient

from shared import activity as activity_module
from shared.activity import ActivityEvent, ActivityLog
from shared.status import MessageState
from tests.fakes import FakeTableClient

NOW = datetime(2026, 3, 2, 9, 30, 40, tzinfo=timezone.utc)
SENT = MessageState.SENT


def sent(n: int, at: datetime = NOW) -> ActivityEvent:
    return ActivityEvent(f"msg-{n}", SENT, 1, at)


@pytest.fixture
def table() -> FakeTableClient:
    return FakeTableClient("mailstatus")


@pytest.fixture
def log(table: FakeTableClient) -> Iterator[ActivityLog]:
    # Far longer than any test: only flush() writes.
    built = ActivityLog(cast(TableClient, table), flush_seconds=60)
    yield built
    built.close()


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def written(table: FakeTableClient) -> list[str]:
    """Every outcome in the table, packed or a row of its own, as `<message>-<attempt>-<state>`."""
    outcomes = []
    for row in table.rows.values():
        packed = json.loads(row["events"]) if "events" in row else None
        for message, state, attempt, _ in packed or [
            [row["message_id"], row["state"], row["attempt"], 0]
        ]:
            outcomes.append(f"{message}-{attempt:04d}-{state}")
    return sorted(outcomes)


def test_should_drop_outcomes_past_the_bound_with_one_warning_per_flush(
    log: ActivityLog,
    table: FakeTableClient,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(activity_module, "MAX_PENDING_EVENTS", 5)

    for n in range(8):
        log.record(sent(n))
    # A row already buffered is still replaced when the buffer is full: it takes no room.
    log.record(sent(0, NOW + timedelta(seconds=5)))
    log.flush()

    assert written(table) == [f"msg-{n}-0001-sent" for n in range(5)]
    [row] = table.rows.values()
    assert json.loads(row["events"])[0] == [
        "msg-0",
        "sent",
        1,
        (NOW + timedelta(seconds=5)).isoformat(),
    ]
    [warning] = warnings(caplog)
    assert "3 outcome(s) were dropped" in warning
    assert "msg-" not in warning

    # The flush made room again, and the count started over.
    log.record(sent(8))
    log.flush()

    assert len(written(table)) == 6
    assert len(warnings(caplog)) == 1


def test_should_log_a_refused_row_with_its_size_and_go_on_with_the_next(
    log: ActivityLog, table: FakeTableClient, caplog: pytest.LogCaptureFixture
) -> None:
    for n in range(3):
        log.record(sent(n))
    for n in range(3, 7):
        log.record(sent(n, NOW - timedelta(minutes=1)))
    refused = {"done": False}
    create = table.create_entity

    def refuse_first(entity: dict[str, Any], **options: Any) -> dict[str, Any]:
        if not refused["done"]:
            refused["done"] = True
            raise HttpResponseError("InvalidInput")
        return create(entity, **options)

    table.create_entity = refuse_first  # type: ignore[method-assign]

    log.flush()

    # The first minute's row was refused; the other minute's was still written.
    assert written(table) == [f"msg-{n}-0001-sent" for n in range(3, 7)]
    [warning] = warnings(caplog)
    assert "3 outcome(s) were not written" in warning
    assert "HttpResponseError" in warning
    assert "msg-" not in warning


def test_should_write_at_once_after_close(log: ActivityLog, table: FakeTableClient) -> None:
    log.record(sent(1))
    log.close()

    assert written(table) == ["msg-1-0001-sent"]
    log.record(sent(2))
    assert written(table) == ["msg-1-0001-sent", "msg-2-0001-sent"]


@pytest.mark.parametrize("flush_seconds", [0, -0.5])
def test_should_refuse_a_flush_delay_that_is_not_positive(
    table: FakeTableClient, flush_seconds: float
) -> None:
    with pytest.raises(ValueError, match="flush_seconds"):
        ActivityLog(cast(TableClient, table), flush_seconds=flush_seconds)
