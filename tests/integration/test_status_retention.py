"""Status records and idempotency keys expiring in Azurite's table: whole message partitions of
ids older than the cutoff go, legacy uuid4 partitions and every other kind stay, the watermark
keeps runs from reading twice, and the read paths work across a cutoff and a period's end."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from azure.data.tables import TableClient

from shared import status_retention
from shared.activity import ActivityEvent, ActivityLog, partition_of
from shared.blobs import MessageBodyStore
from shared.clients import Client, ClientStore
from shared.delivery_events import (
    DeliveryEventStore,
    SendGridEvent,
    TimelineEntry,
    record_event_batch,
)
from shared.errors import MessageNotFound
from shared.gateway import Gateway
from shared.idempotency import IdempotencyStore
from shared.queue import MailQueue
from shared.settings import Settings
from shared.status import MessageState, MessageStatus, StatusStore
from shared.status_retention import (
    WATERMARK_PARTITION,
    WATERMARK_ROW,
    expire_keys,
    expire_statuses,
    id_prefix,
)
from tests.fakes import FakeMailSender
from tests.samples import ALL_FEATURES, CLIENT, body, message
from tests.shared.test_status_retention import v7_id

NOW = datetime(2027, 1, 15, 12, 0, 30, tzinfo=timezone.utc)
MONTH = timedelta(days=30)
DAY = timedelta(hours=24)


def legacy_id(at: datetime) -> str:
    """A uuid4 id whose first digits happen to read as `at`: in range, but not a v7 id."""
    return id_prefix(at) + "-4abc-8def-" + uuid.uuid4().hex[:12]


def add_message(
    statuses: StatusStore, table: TableClient, message_id: str, at: datetime, events: int = 2
) -> int:
    """A message's rows as delivery and the webhook leave them: status, delivery, events."""
    statuses.put(MessageStatus(message_id, MessageState.SENT, at, at, attempts=1))
    if events:
        entries = [
            TimelineEntry(event="delivered", at=at, sg_event_id=f"sg-{message_id}-{n}")
            for n in range(events)
        ]
        DeliveryEventStore(table).record(message_id, entries, at)
    return 1 + (1 + events if events else 0)


def partitions(table: TableClient) -> dict[str, int]:
    """Rows per partition in the whole table."""
    found: dict[str, int] = {}
    for entity in table.list_entities(select=["PartitionKey"]):
        found[entity["PartitionKey"]] = found.get(entity["PartitionKey"], 0) + 1
    return found


def watermark(table: TableClient) -> str | None:
    """Where the next status expiry starts, as the table keeps it."""
    rows = list(
        table.query_entities(
            "PartitionKey eq @p and RowKey eq @r",
            parameters={"p": WATERMARK_PARTITION, "r": WATERMARK_ROW},
        )
    )
    return rows[0]["resume_at"] if rows else None


def test_should_delete_old_messages_whole_and_keep_everything_else(
    status_table: TableClient, statuses: StatusStore, keys: IdempotencyStore
) -> None:
    old = [v7_id(NOW - MONTH - timedelta(days=days)) for days in (1, 5, 14)]
    just_old = v7_id(NOW - MONTH - timedelta(milliseconds=1))
    kept = [v7_id(NOW - MONTH), v7_id(NOW - timedelta(hours=1))]
    legacy = legacy_id(NOW - MONTH - timedelta(days=3))
    rows = sum(add_message(statuses, status_table, m, NOW - MONTH) for m in [*old, just_old])
    for message_id in [*kept, legacy]:
        add_message(statuses, status_table, message_id, NOW)
    ActivityLog(status_table).record(ActivityEvent(old[0], MessageState.SENT, 1, NOW))
    keys.claim("order-42", b"{}", kept[0], NOW)
    status_table.upsert_entity({"PartitionKey": "idempotency-" + "0" * 64, "RowKey": "key"})
    status_table.upsert_entity({"PartitionKey": "health", "RowKey": "probe"})
    before = partitions(status_table)

    result = expire_statuses(status_table, NOW, MONTH)

    assert (result.partitions, result.deleted, result.failed, result.more_left) == (
        4,
        rows,
        0,
        False,
    )
    # The legacy id's 4 rows were read and left.
    assert result.skipped == 4
    # Watermark and replay marks read, one page, one transaction per message, watermark written.
    assert result.calls == 2 + 1 + 4 + 1
    after = partitions(status_table)
    assert set(before) - set(after) == {*old, just_old}
    assert {k: v for k, v in before.items() if k in after} == {
        k: v for k, v in after.items() if k != WATERMARK_PARTITION
    }
    assert watermark(status_table) == id_prefix(NOW - MONTH)


def test_should_count_late_events_of_an_expired_message_as_unknown_and_write_nothing(
    status_table: TableClient, statuses: StatusStore
) -> None:
    message_id = v7_id(NOW - MONTH - DAY)
    add_message(statuses, status_table, message_id, NOW - MONTH - DAY)
    expire_statuses(status_table, NOW, MONTH)
    late = SendGridEvent(
        event="open",
        sg_event_id="sg-late-1",
        timestamp=int(NOW.timestamp()),
        mailgate_id=message_id,
    )

    report = record_event_batch([late], statuses, DeliveryEventStore(status_table), NOW)

    assert (report.recorded, report.unknown) == (0, 1)
    assert message_id not in partitions(status_table)


def test_should_read_a_skipped_legacy_partition_only_once(
    status_table: TableClient, statuses: StatusStore
) -> None:
    legacy = legacy_id(NOW - MONTH - timedelta(days=2))
    add_message(statuses, status_table, legacy, NOW, events=0)
    first = expire_statuses(status_table, NOW, MONTH)
    add_message(statuses, status_table, v7_id(NOW - MONTH + timedelta(minutes=30)), NOW)

    # An hour later the cutoff has moved on: only the hour since is read.
    second = expire_statuses(status_table, NOW + timedelta(hours=1), MONTH)

    assert (first.skipped, first.deleted) == (1, 0)
    assert (second.skipped, second.partitions, second.deleted) == (0, 1, 4)
    assert legacy in partitions(status_table)
    assert watermark(status_table) == id_prefix(NOW + timedelta(hours=1) - MONTH)


def test_should_keep_a_message_replayed_within_the_retention_however_old_its_id(
    status_table: TableClient, statuses: StatusStore
) -> None:
    replayed = v7_id(NOW - MONTH - timedelta(days=10))
    rows = add_message(statuses, status_table, replayed, NOW - MONTH - timedelta(days=10))
    statuses.mark_replayed(replayed, NOW - DAY)
    old = v7_id(NOW - MONTH - timedelta(days=9))
    add_message(statuses, status_table, old, NOW - MONTH - timedelta(days=9))

    result = expire_statuses(status_table, NOW, MONTH)

    # Its copy may still be queued: the record stays; the other message of its day goes.
    assert partitions(status_table).get(replayed) == rows
    assert old not in partitions(status_table)
    assert (result.partitions, result.skipped) == (1, rows)
    # The watermark passes it: from now on its mark alone brings it back to expiry.
    assert watermark(status_table) == id_prefix(NOW - MONTH)

    # Its retention counted from the replay: a month after it, it goes, mark and all.
    later = expire_statuses(status_table, NOW - DAY + MONTH + timedelta(seconds=1), MONTH)

    assert (later.partitions, later.deleted, later.failed) == (1, rows, 0)
    assert replayed not in partitions(status_table)
    assert (
        list(status_table.query_entities("RowKey ge 'replayed-' and RowKey lt 'replayed.'")) == []
    )


def test_should_expire_a_record_a_replay_wrote_behind_the_watermark(
    status_table: TableClient, statuses: StatusStore
) -> None:
    message_id = v7_id(NOW - MONTH - DAY)
    add_message(statuses, status_table, message_id, NOW - MONTH - DAY)
    expire_statuses(status_table, NOW, MONTH)
    assert message_id not in partitions(status_table)
    # Its dead letter is replayed after its record expired: the record is written again, under
    # an id the watermark has passed.
    statuses.mark_replayed(message_id, NOW)
    statuses.put(MessageStatus(message_id, MessageState.SENT, NOW - MONTH - DAY, NOW))

    kept = expire_statuses(status_table, NOW + DAY, MONTH)
    gone = expire_statuses(status_table, NOW + MONTH + timedelta(seconds=1), MONTH)

    assert kept.partitions == 0
    assert gone.partitions == 1
    assert message_id not in partitions(status_table)


def test_should_leave_a_message_replayed_again_while_its_expiry_ran(
    status_table: TableClient, statuses: StatusStore
) -> None:
    message_id = v7_id(NOW - MONTH - DAY)
    add_message(statuses, status_table, message_id, NOW - MONTH - DAY, events=0)
    statuses.mark_replayed(message_id, NOW - MONTH - timedelta(hours=1))
    [stale] = status_retention._replay_marks(status_table, 10)
    # Replayed again after the run read the marks, before it deleted anything.
    statuses.mark_replayed(message_id, NOW)

    result = status_retention._expire_replayed(status_table, stale)

    assert (result.partitions, result.deleted, result.skipped) == (0, 0, 1)
    assert message_id in partitions(status_table)


def test_should_stop_at_its_bound_and_go_on_from_there_next_run(
    status_table: TableClient, statuses: StatusStore
) -> None:
    ids = sorted(v7_id(NOW - MONTH - timedelta(minutes=n)) for n in range(1, 1401))
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda m: statuses.put(MessageStatus(m, MessageState.SENT, NOW, NOW)), ids))

    first = expire_statuses(status_table, NOW, MONTH, max_rows=1000)
    left = set(partitions(status_table)) - {WATERMARK_PARTITION}
    second = expire_statuses(status_table, NOW, MONTH, max_rows=1000)

    # One page of 1,000: the run stops there and the next starts at that page's last partition.
    assert (first.deleted, first.more_left) == (1000, True)
    assert left == set(ids[1000:])
    assert (second.deleted, second.more_left) == (400, False)
    assert set(partitions(status_table)) == {WATERMARK_PARTITION}


def test_should_take_no_page_after_its_time_is_up(
    status_table: TableClient, statuses: StatusStore
) -> None:
    message_id = v7_id(NOW - MONTH - DAY)
    add_message(statuses, status_table, message_id, NOW)
    clock = iter([0.0, 1_000.0])

    result = expire_statuses(status_table, NOW, MONTH, seconds=10, clock=lambda: next(clock))

    assert (result.deleted, result.more_left) == (0, True)
    assert message_id in partitions(status_table)
    assert (watermark(status_table) or "") <= message_id


def test_should_keep_the_watermark_before_a_partition_that_failed_to_delete(
    status_table: TableClient, statuses: StatusStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = sorted(v7_id(NOW - MONTH - timedelta(days=n)) for n in (1, 2, 3))
    for message_id in ids:
        add_message(statuses, status_table, message_id, NOW, events=0)
    real_submit = status_table.submit_transaction

    def fail_the_middle_one(operations: Any, **kwargs: Any) -> Any:
        operations = list(operations)
        if operations[0][1]["PartitionKey"] == ids[1]:
            # Deleted meanwhile: the service fails the whole transaction (404).
            status_table.delete_entity(ids[1], "status")
        return real_submit(operations, **kwargs)

    monkeypatch.setattr(status_table, "submit_transaction", fail_the_middle_one)
    first = expire_statuses(status_table, NOW, MONTH)
    monkeypatch.setattr(status_table, "submit_transaction", real_submit)
    status_table.upsert_entity({"PartitionKey": ids[1], "RowKey": "status", "state": "sent"})
    second = expire_statuses(status_table, NOW, MONTH)

    assert (first.deleted, first.failed) == (2, 1)
    assert (second.deleted, second.failed) == (1, 0)
    assert set(partitions(status_table)) == {WATERMARK_PARTITION}


def test_should_do_nothing_when_the_table_does_not_exist(azurite: Any) -> None:
    table = TableClient.from_connection_string(azurite.connection_string, "statusexpirynotable")

    statuses = expire_statuses(table, NOW, MONTH)
    keys = expire_keys(table, NOW, DAY)

    assert (statuses.deleted, statuses.failed, keys.deleted, keys.failed) == (0, 0, 0, 0)


def test_should_delete_keys_of_periods_no_claim_reads_and_keep_the_rest(
    status_table: TableClient, keys: IdempotencyStore
) -> None:
    for n, days in enumerate((3, 4, 10)):
        keys.claim(f"old-{n}", b"{}", f"msg-{n}", NOW - timedelta(days=days))
    # Today's, yesterday's and the day before's periods stay.
    for n, days in enumerate((0, 1, 2)):
        keys.complete(keys.claim(f"new-{n}", b"{}", f"new-{n}", NOW - timedelta(days=days)).record)
    status_table.upsert_entity({"PartitionKey": "idempotency-" + "0" * 64, "RowKey": "key"})
    status_table.upsert_entity({"PartitionKey": partition_of(NOW - MONTH), "RowKey": "x"})

    result = expire_keys(status_table, NOW, DAY)

    assert (result.deleted, result.failed, result.more_left) == (3, 0, False)
    assert result.calls == 1 + 3
    left = partitions(status_table)
    assert len([k for k in left if k.startswith("idem-")]) == 3
    assert "idempotency-" + "0" * 64 in left
    assert partition_of(NOW - MONTH) in left
    # Yesterday's key still replays.
    assert keys.claim("new-1", b"{}", "msg-9", NOW).replay is True


# --- the read paths across a cutoff and a period's end ---------------------------------------


@pytest.fixture
def clock() -> list[datetime]:
    """The gateway's time, which a test moves."""
    return [NOW]


@pytest.fixture
def gateway(storage_settings: Settings, clock: list[datetime]) -> Gateway:
    """The gateway on Azurite at the test's time, giving v7 ids of that time."""
    return Gateway(
        storage_settings,
        MailQueue.from_settings(storage_settings),
        MessageBodyStore.from_settings(storage_settings),
        StatusStore.from_settings(storage_settings),
        FakeMailSender(),
        ClientStore.from_settings(storage_settings),
        now=lambda: clock[0],
    )


@pytest.fixture
def client(gateway: Gateway) -> Client:
    """A client allowed the samples' senders, in Azurite."""
    gateway.ensure_storage()
    created, _ = gateway.clients.create("app", ",".join(CLIENT.senders), features=ALL_FEATURES)
    return created


def test_should_find_a_message_accepted_just_after_the_cutoff_and_not_one_just_before(
    gateway: Gateway, client: Client, clock: list[datetime]
) -> None:
    retention = timedelta(days=gateway.settings.status_retention_days)

    def accepted_and_claimed(at: datetime) -> str:
        clock[0] = at
        message_id = gateway.accept(body(message()), "application/json", client).id
        # Its record, as the first delivery attempt inserts it.
        gateway.statuses.claim(MessageStatus.queued(message_id, at, client.name))
        return message_id

    gone = accepted_and_claimed(NOW - retention - timedelta(milliseconds=1))
    kept = accepted_and_claimed(NOW - retention)
    clock[0] = NOW

    result = gateway.expire_statuses()

    assert (result.partitions, result.deleted) == (1, 1)
    assert gateway.status_document(kept, client)["status"] == "queued"
    with pytest.raises(MessageNotFound):
        gateway.status(gone, client)


def test_should_replay_an_idempotent_request_made_just_before_a_period_ended(
    gateway: Gateway, client: Client, clock: list[datetime]
) -> None:
    period = timedelta(hours=gateway.settings.idempotency_retention_hours)
    midnight = datetime(2027, 1, 16, tzinfo=timezone.utc)
    assert period == DAY
    clock[0] = midnight - timedelta(milliseconds=1)
    first = gateway.accept(body(message()), "application/json", client, "order-7")
    clock[0] = midnight
    gateway.expire_keys()

    again = gateway.accept(body(message()), "application/json", client, "order-7")

    assert (again.id, again.replayed) == (first.id, True)
