"""Activity rows expiring in Azurite's table: only rows of minutes before the cutoff go, the
status records, delivery rows and idempotency rows beside them stay, and a run's bound holds."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from azure.data.tables import TableClient

from devstack.azurite import ACCOUNT_KEY
from shared.activity import MAX_TRANSACTION_OPERATIONS, ActivityEvent, ActivityLog, partition_of
from shared.delivery_events import DeliveryEventStore, TimelineEntry
from shared.errors import StorageUnavailable
from shared.idempotency import IdempotencyStore
from shared.retention import expire_activity, expiry_range
from shared.status import MessageState, MessageStatus, StatusStore

NOW = datetime(2026, 3, 9, 12, 0, 30, tzinfo=timezone.utc)
WEEK = timedelta(days=7)
# UUIDs that start as close to "activity-" as a UUID can, and one at the far end.
NEAR_IDS = (
    "acffffff-ffff-4fff-bfff-ffffffffffff",
    "a0000000-0000-4000-8000-000000000000",
    "ffffffff-ffff-4fff-bfff-ffffffffffff",
)


def insert_activity(table: TableClient, at: datetime, count: int, prefix: str = "m") -> None:
    """`count` activity rows in the partition of `at`'s minute, in transactions."""
    rows = [
        {
            "PartitionKey": partition_of(at),
            "RowKey": f"{prefix}{i:06d}-0001-sent",
            "state": "sent",
            "attempt": 1,
            "at": at,
        }
        for i in range(count)
    ]
    for start in range(0, count, MAX_TRANSACTION_OPERATIONS):
        table.submit_transaction(
            [("upsert", row) for row in rows[start : start + MAX_TRANSACTION_OPERATIONS]]
        )


def partitions(table: TableClient) -> dict[str, int]:
    """Rows per partition in the whole table."""
    found: dict[str, int] = {}
    for entity in table.list_entities(select=["PartitionKey"]):
        found[entity["PartitionKey"]] = found.get(entity["PartitionKey"], 0) + 1
    return found


def test_should_bound_the_range_by_activity_partitions_only() -> None:
    after, oldest = expiry_range(NOW - WEEK)

    assert after == partition_of(NOW - WEEK)
    assert oldest == "activity-9999999999"
    # Every other partition the table holds sorts outside the range.
    others = (*NEAR_IDS, "idempotency-" + "0" * 64, "idem-" + "9" * 11, "health", "activity-")
    for other in others:
        assert not after < other <= oldest, other


def test_should_delete_rows_older_than_the_cutoff_and_keep_everything_else(
    status_table: TableClient, statuses: StatusStore, keys: IdempotencyStore
) -> None:
    old, just_old = NOW - timedelta(days=30), NOW - WEEK - timedelta(minutes=1)
    log = ActivityLog(status_table)
    log.record(ActivityEvent(NEAR_IDS[0], MessageState.SENT, 1, old))
    log.record(ActivityEvent(None, MessageState.FAILED, 1, just_old))
    log.record(ActivityEvent(NEAR_IDS[0], MessageState.SENT, 1, NOW - WEEK + timedelta(minutes=1)))
    log.record(ActivityEvent(NEAR_IDS[1], MessageState.SENT, 1, NOW))
    # Status records, delivery rows and events, and an idempotency key in the same table, all old.
    for message_id in NEAR_IDS:
        statuses.put(MessageStatus(message_id, MessageState.SENT, old, old, attempts=1))
    delivered = TimelineEntry(event="delivered", at=old, sg_event_id="sg-event-1")
    DeliveryEventStore(status_table).record(NEAR_IDS[0], [delivered], old)
    keys.claim("order-42", b"{}", NEAR_IDS[0], old)
    before = partitions(status_table)

    result = expire_activity(status_table, NOW, WEEK, max_rows=1000)

    assert (result.deleted, result.failed, result.more_left) == (2, 0, False)
    # One page read, one delete per partition (a single row each).
    assert result.calls == 3
    after = partitions(status_table)
    assert set(before) - set(after) == {partition_of(old), partition_of(just_old)}
    assert {k: v for k, v in before.items() if k in after} == after
    assert all(k in after for k in NEAR_IDS)
    assert any(k.startswith("idem-") for k in after)
    assert after[NEAR_IDS[0]] >= 3  # status, delivery record, event


def test_should_delete_more_than_a_transaction_of_one_partition_and_many_partitions(
    status_table: TableClient,
) -> None:
    old = NOW - timedelta(days=8)
    insert_activity(status_table, old, 250)
    for minutes in range(1, 31):
        insert_activity(status_table, old - timedelta(minutes=minutes), 3)
    insert_activity(status_table, NOW - timedelta(hours=1), 120)

    result = expire_activity(status_table, NOW, WEEK, max_rows=100_000)

    assert (result.deleted, result.failed, result.more_left) == (340, 0, False)
    # 250 rows: 3 transactions; 30 partitions of 3: one each; 340 rows read in one page.
    assert result.calls == 3 + 30 + 1
    assert partitions(status_table) == {partition_of(NOW - timedelta(hours=1)): 120}


def test_should_stop_at_max_rows_and_continue_on_the_next_run(status_table: TableClient) -> None:
    old = NOW - timedelta(days=10)
    for minutes in range(5):
        insert_activity(status_table, old - timedelta(minutes=minutes), 60)
    insert_activity(status_table, NOW, 10)

    first = expire_activity(status_table, NOW, WEEK, max_rows=130)
    second = expire_activity(status_table, NOW, WEEK, max_rows=130)
    third = expire_activity(status_table, NOW, WEEK, max_rows=130)

    assert (first.deleted, first.more_left) == (130, True)
    assert (second.deleted, second.more_left) == (130, True)
    assert (third.deleted, third.more_left) == (40, False)
    assert sum(partitions(status_table).values()) == 10


def test_should_apply_a_retention_of_minutes(status_table: TableClient) -> None:
    insert_activity(status_table, NOW - timedelta(minutes=3), 2)
    insert_activity(status_table, NOW - timedelta(minutes=1), 2)

    result = expire_activity(status_table, NOW, timedelta(minutes=2), max_rows=10)

    assert result.deleted == 2
    assert set(partitions(status_table)) == {partition_of(NOW - timedelta(minutes=1))}


def test_should_do_nothing_when_the_table_does_not_exist_and_count_its_one_query(
    azurite: Any,
) -> None:
    table = TableClient.from_connection_string(azurite.connection_string, "retentionnotable")

    result = expire_activity(table, NOW, WEEK, max_rows=10)

    # The query was made and answered 404: one call, as the status expiry counts it.
    assert (result.deleted, result.calls, result.failed, result.more_left) == (0, 1, 0, False)


def test_should_count_and_log_a_failed_transaction_without_ids(
    status_table: TableClient, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = NOW - timedelta(days=9)
    insert_activity(status_table, old, 5, prefix=NEAR_IDS[0])
    insert_activity(status_table, old - timedelta(minutes=1), 5)
    real_submit = status_table.submit_transaction
    calls: list[int] = []

    def delete_one_first(operations: Any, **kwargs: Any) -> Any:
        # The first transaction finds a row already gone: the service fails it whole (404).
        operations = list(operations)
        if not calls:
            status_table.delete_entity(operations[0][1]["PartitionKey"], operations[0][1]["RowKey"])
        calls.append(len(operations))
        return real_submit(operations, **kwargs)

    monkeypatch.setattr(status_table, "submit_transaction", delete_one_first)

    with caplog.at_level(logging.WARNING, logger="shared.retention"):
        result = expire_activity(status_table, NOW, WEEK, max_rows=100)

    assert (result.deleted, result.failed) == (5, 5)
    [warning] = caplog.records
    assert warning.getMessage().startswith(
        "Retention: a transaction deleting 5 activity row(s) failed, they stay for the next run"
    )
    assert NEAR_IDS[0] not in warning.getMessage()
    assert "activity-" not in warning.getMessage()
    # The failed rows (but the one deleted meanwhile) go on the next run.
    assert expire_activity(status_table, NOW, WEEK, max_rows=100).deleted == 4


def test_should_raise_storage_unavailable_when_storage_cannot_be_reached() -> None:
    # Nothing listens on port 9 (discard) of the loopback: the connection is refused.
    table = TableClient.from_connection_string(
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
        f"AccountKey={ACCOUNT_KEY};TableEndpoint=http://127.0.0.1:9/devstoreaccount1;",
        "mailstatus",
        retry_total=0,
    )

    with pytest.raises(StorageUnavailable, match="table mailstatus: ServiceRequestError"):
        expire_activity(table, NOW, WEEK, max_rows=10)


def test_should_refuse_a_bound_below_one(status_table: TableClient) -> None:
    with pytest.raises(ValueError, match="max_rows"):
        expire_activity(status_table, NOW, WEEK, max_rows=0)
