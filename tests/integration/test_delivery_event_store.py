"""Delivery events in a real (Azurite) status table: one transaction per write, the event row's
insert as the dedupe, the ETag on the delivery record, and the status row left to delivery."""

from __future__ import annotations

import json
import threading
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from azure.data.tables import TableClient

from shared.delivery_events import (
    DELIVERY_ROW,
    EVENT_ROW_PREFIX,
    DeliveryEventStore,
    DeliveryState,
    TimelineEntry,
    event_row_key,
    parse_event_batch,
    record_event_batch,
)
from shared.status import STATUS_ROW, MessageState, MessageStatus, StatusStore
from tests.event_webhook_samples import sendgrid_event

MESSAGE = "5d0c6a52-7c9e-4a57-9a4e-1f1f6d3b2c10"
ACCEPTED = datetime(2026, 3, 2, 9, 30, tzinfo=timezone.utc)
LATER = ACCEPTED + timedelta(minutes=5)


def entry(event: str, sg_event_id: str, at: datetime = ACCEPTED, **fields: Any) -> TimelineEntry:
    [parsed] = parse_event_batch(
        json.dumps([sendgrid_event(event, MESSAGE, sg_event_id, at, **fields)]).encode()
    )
    return TimelineEntry.from_event(parsed)


@pytest.fixture
def events(status_table: TableClient) -> DeliveryEventStore:
    return DeliveryEventStore(status_table)


@pytest.fixture
def sent(statuses: StatusStore) -> MessageStatus:
    """A message the gateway sent: its status row exists."""
    return statuses.put(
        MessageStatus(
            id=MESSAGE,
            state=MessageState.SENT,
            accepted_at=ACCEPTED,
            updated_at=ACCEPTED,
            attempts=1,
            provider_message_id="sg-1",
            client="app",
        )
    )


def event_rows(table: TableClient) -> list[dict[str, Any]]:
    return [
        dict(row)
        for row in table.query_entities(
            "PartitionKey eq @id and RowKey gt @prefix",
            parameters={"id": MESSAGE, "prefix": EVENT_ROW_PREFIX},
        )
        if row["RowKey"].startswith(EVENT_ROW_PREFIX)
    ]


def test_should_record_events_and_read_them_back(
    events: DeliveryEventStore, status_table: TableClient
) -> None:
    outcome = events.record(
        MESSAGE,
        [
            entry("processed", "ev-1"),
            entry("delivered", "ev-2", ACCEPTED + timedelta(seconds=3)),
            entry(
                "click",
                "ev-3",
                ACCEPTED + timedelta(minutes=2),
                url="https://shop.example.com/o/42?t=secret",
            ),
        ],
        LATER,
    )

    assert (outcome.recorded, outcome.duplicates) == (3, 0)
    record = events.get(MESSAGE)
    assert record is not None
    assert record.state is DeliveryState.DELIVERED
    assert record.updated_at == LATER
    assert [e.sg_event_id for e in record.timeline] == ["ev-1", "ev-2", "ev-3"]
    assert record.timeline[2].url == "https://shop.example.com/o/42"
    assert record.timeline[0].at == ACCEPTED
    rows = event_rows(status_table)
    assert sorted(row["sg_event_id"] for row in rows) == ["ev-1", "ev-2", "ev-3"]
    assert all("someone" not in json.dumps(row, default=str) for row in rows)


def test_should_change_nothing_when_the_same_events_come_again(
    events: DeliveryEventStore, status_table: TableClient
) -> None:
    batch = [entry("processed", "ev-1"), entry("delivered", "ev-2")]
    events.record(MESSAGE, batch, ACCEPTED)
    before = events.get(MESSAGE)

    outcome = events.record(MESSAGE, batch, LATER)

    assert (outcome.recorded, outcome.duplicates) == (0, 2)
    assert events.get(MESSAGE) == before
    assert len(event_rows(status_table)) == 2


def test_should_write_nothing_of_a_transaction_that_meets_an_existing_event_row(
    events: DeliveryEventStore, status_table: TableClient
) -> None:
    # An event recorded long ago, no longer in the timeline, comes again with a new one.
    events.record(MESSAGE, [entry("processed", "ev-old")], ACCEPTED)
    record = events.get(MESSAGE)
    assert record is not None
    status_table.update_entity({"PartitionKey": MESSAGE, "RowKey": DELIVERY_ROW, "timeline": "[]"})

    outcome = events.record(MESSAGE, [entry("processed", "ev-old"), entry("open", "ev-new")], LATER)

    assert (outcome.recorded, outcome.duplicates) == (1, 1)
    after = events.get(MESSAGE)
    assert after is not None
    assert [e.sg_event_id for e in after.timeline] == ["ev-new"]
    assert len(event_rows(status_table)) == 2


def test_should_keep_the_furthest_state_whatever_order_events_come_in(
    events: DeliveryEventStore,
) -> None:
    events.record(MESSAGE, [entry("bounce", "ev-3", ACCEPTED + timedelta(seconds=9))], ACCEPTED)
    events.record(MESSAGE, [entry("delivered", "ev-2", ACCEPTED + timedelta(seconds=5))], LATER)
    events.record(MESSAGE, [entry("processed", "ev-1")], LATER)

    record = events.get(MESSAGE)

    assert record is not None
    assert record.state is DeliveryState.BOUNCED
    assert [e.event for e in record.timeline] == ["processed", "delivered", "bounce"]


def test_should_record_each_event_once_when_instances_race(
    status_table: TableClient, storage_settings: Any
) -> None:
    # Six "instances", each with its own table client, record overlapping events at once:
    # SendGrid retrying a batch while the first delivery of it is still being recorded.
    batches = [
        [entry("open", f"ev-{n}", ACCEPTED + timedelta(seconds=n)) for n in range(start, start + 8)]
        for start in (0, 4, 8, 0, 4, 8)
    ]
    stores = [
        DeliveryEventStore(StatusStore.from_settings(storage_settings).table) for _ in batches
    ]
    outcomes: list[Any] = [None] * len(batches)
    start = threading.Barrier(len(batches))

    def record(index: int) -> None:
        start.wait()
        outcomes[index] = stores[index].record(MESSAGE, batches[index], LATER)

    threads = [threading.Thread(target=record, args=(i,)) for i in range(len(batches))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert sum(o.recorded for o in outcomes) == 16
    assert sum(o.recorded + o.duplicates for o in outcomes) == 48
    record_ = DeliveryEventStore(status_table).get(MESSAGE)
    assert record_ is not None
    assert [e.sg_event_id for e in record_.timeline] == [f"ev-{n}" for n in range(16)]
    assert len(event_rows(status_table)) == 16


def test_should_leave_the_status_row_to_delivery_and_keep_events_when_it_is_rewritten(
    events: DeliveryEventStore, statuses: StatusStore, sent: MessageStatus
) -> None:
    events.record(MESSAGE, [entry("delivered", "ev-1")], LATER)

    # The delivery function writes the status row whole and unconditionally.
    statuses.put(replace(sent, updated_at=LATER, etag=None))

    stored = statuses.get(MESSAGE)
    assert stored is not None
    assert stored == replace(sent, updated_at=LATER, etag=stored.etag)
    record = events.get(MESSAGE)
    assert record is not None
    assert record.state is DeliveryState.DELIVERED


def test_should_record_a_batch_only_for_messages_that_have_a_status(
    events: DeliveryEventStore, statuses: StatusStore, sent: MessageStatus
) -> None:
    unknown = "7f000000-0000-4000-8000-000000000000"
    batch = parse_event_batch(
        json.dumps(
            [
                sendgrid_event("delivered", MESSAGE, "ev-1", ACCEPTED),
                sendgrid_event("delivered", unknown, "ev-2", ACCEPTED),
                sendgrid_event("delivered", "it's", "ev-3", ACCEPTED),
            ]
        ).encode()
    )

    report = record_event_batch(batch, statuses, events, LATER)

    assert (report.recorded, report.unknown) == (1, 2)
    assert events.get(unknown) is None
    assert statuses.table.get_entity(MESSAGE, STATUS_ROW)["state"] == "sent"


def test_should_key_event_rows_whatever_characters_the_id_holds(
    events: DeliveryEventStore, status_table: TableClient
) -> None:
    awkward = ["a/b", "c#d", "e?f", "g\\h", "'quoted'", "x" * 256]

    outcome = events.record(MESSAGE, [entry("open", sg_id) for sg_id in awkward], LATER)

    assert outcome.recorded == len(awkward)
    assert {row["RowKey"] for row in event_rows(status_table)} == {
        event_row_key(sg_id) for sg_id in awkward
    }
