"""The activity log in Azurite's table: per-minute partitions read newest first, one message's
rows found by key range, and status records and idempotency rows never mistaken for activity."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from azure.core.exceptions import ServiceRequestError
from azure.data.tables import TableClient

from shared.activity import PARTITION_PREFIX, ActivityEvent, ActivityLog, partition_of
from shared.idempotency import IdempotencyStore
from shared.status import MessageState, MessageStatus, StatusStore

NOW = datetime(2026, 3, 2, 9, 30, 40, 250000, tzinfo=timezone.utc)
HOUR_START = NOW.replace(second=0, microsecond=0) - timedelta(minutes=59)
SENT, RETRYING, FAILED = MessageState.SENT, MessageState.RETRYING, MessageState.FAILED


def at(minutes_ago: float) -> datetime:
    return NOW - timedelta(minutes=minutes_ago)


@pytest.fixture
def activity(statuses: StatusStore) -> ActivityLog:
    return ActivityLog(statuses.table)


def test_should_sort_later_minutes_first() -> None:
    keys = [partition_of(at(m)) for m in (0, 1, 59, 60 * 24 * 365)]

    assert keys == sorted(keys)
    assert all(k.startswith(PARTITION_PREFIX) for k in keys)
    assert partition_of(NOW) == partition_of(NOW.replace(second=0, microsecond=0))


def test_should_read_the_hour_newest_first_with_every_field(
    activity: ActivityLog, statuses: StatusStore, keys: IdempotencyStore
) -> None:
    events = [
        ActivityEvent("msg-1", SENT, 1, at(0.1)),
        ActivityEvent("msg-2", RETRYING, 3, at(30)),
        ActivityEvent("msg-3", FAILED, 8, at(59)),
        ActivityEvent(None, FAILED, 1, at(0.2)),
        ActivityEvent("msg-old", SENT, 1, at(61)),
    ]
    for event in events:
        activity.record(event)
    # A status record and an idempotency row share the table; neither is activity.
    statuses.put(MessageStatus("msg-1", SENT, NOW, NOW, attempts=1))
    keys.claim("order-42", b"{}", "msg-1", NOW)

    window = activity.between(HOUR_START, NOW, limit=100)

    assert window.complete is True
    assert window.covers_from == HOUR_START
    assert window.events == [events[0], events[3], events[1], events[2]]


def test_should_stop_at_the_limit_and_say_from_when_the_hour_is_whole(
    activity: ActivityLog,
) -> None:
    for n in range(6):
        activity.record(ActivityEvent(f"msg-{n}", SENT, 1, at(n)))

    window = activity.between(HOUR_START, NOW, limit=4)

    assert [e.message_id for e in window.events] == ["msg-0", "msg-1", "msg-2", "msg-3"]
    assert window.complete is False
    # The minute of msg-3 may hold rows not read: the whole minutes are the later ones.
    assert window.covers_from == at(2).replace(second=0, microsecond=0)


def test_should_write_one_row_per_message_attempt_and_outcome(
    activity: ActivityLog, status_table: TableClient
) -> None:
    activity.record(ActivityEvent("msg-1", RETRYING, 1, at(1)))
    activity.record(ActivityEvent("msg-1", RETRYING, 1, at(1)))  # a redelivered copy
    activity.record(ActivityEvent("msg-1", SENT, 2, at(1)))

    rows = list(status_table.query_entities(f"PartitionKey eq '{partition_of(at(1))}'"))

    assert sorted(r["RowKey"] for r in rows) == ["msg-1-0001-retrying", "msg-1-0002-sent"]


def test_should_find_one_messages_outcomes_oldest_first(activity: ActivityLog) -> None:
    activity.record(ActivityEvent("msg-1", SENT, 2, at(1)))
    activity.record(ActivityEvent("msg-1", RETRYING, 1, at(2)))
    activity.record(ActivityEvent("msg-10", SENT, 1, at(1)))  # an id that starts the same
    activity.record(ActivityEvent("msg-1", FAILED, 1, at(70)))  # before the hour

    events = activity.of_message("msg-1", HOUR_START, NOW, limit=10)

    assert [(e.state, e.attempt) for e in events] == [(RETRYING, 1), (SENT, 2)]


@pytest.mark.parametrize("message_id", ["it's", "a b", "%41", "a+b'--"])
def test_should_find_nothing_for_awkward_ids_rather_than_fail(
    message_id: str, activity: ActivityLog
) -> None:
    activity.record(ActivityEvent("msg-1", SENT, 1, at(1)))

    assert activity.of_message(message_id, HOUR_START, NOW, limit=10) == []


def test_should_read_no_events_before_the_table_exists(status_table: TableClient) -> None:
    status_table.delete_table()

    window = ActivityLog(status_table).between(HOUR_START, NOW, limit=10)

    assert (window.events, window.complete) == ([], True)


class UnreachableTable:
    table_name = "mailstatus"

    def upsert_entity(self, *args: object, **kwargs: object) -> None:
        raise ServiceRequestError("connection refused")


def test_should_log_but_not_raise_when_an_outcome_cannot_be_written(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = ActivityLog(UnreachableTable())  # type: ignore[arg-type]

    log.record(ActivityEvent("msg-1", SENT, 1, NOW))

    assert "msg-1: its sent outcome was not added to the activity log" in caplog.text
