"""SendGrid's delivery events: parsed, kept free of addresses and query strings, recorded once
each (the insert of the event's row is the dedupe), and folded into a state that late or
out-of-order events never move back."""

from __future__ import annotations

import itertools
import json
from datetime import datetime, timedelta, timezone
from typing import Any, cast

import pytest
from azure.data.tables import TableClient, TableErrorCode

from shared.delivery_events import (
    DELIVERY_ROW,
    MAX_TIMELINE_CHARS,
    MAX_TIMELINE_EVENTS,
    MAX_WRITE_CONFLICTS,
    DeliveryEventStore,
    DeliveryRecord,
    DeliveryState,
    TimelineEntry,
    apply_events,
    event_row_key,
    parse_event_batch,
    recipient_domain,
    record_event_batch,
    safe_text,
    safe_url,
)
from shared.errors import ConcurrentUpdate, InvalidEventBatch, StorageUnavailable
from shared.status import MessageState, MessageStatus
from tests.event_webhook_samples import sendgrid_event
from tests.fakes import FakeStatusStore, FakeTableClient, transaction_error
from tests.samples import NOW

MESSAGE = "5d0c6a52-7c9e-4a57-9a4e-1f1f6d3b2c10"
OTHER = "0a1b2c3d-7c9e-4a57-9a4e-1f1f6d3b2c11"
LATER = NOW + timedelta(minutes=1)


def events(*documents: dict[str, Any]) -> list[Any]:
    return parse_event_batch(json.dumps(list(documents)).encode())


def entry(event: str, sg_event_id: str, at: datetime = NOW, **fields: Any) -> TimelineEntry:
    [parsed] = events(sendgrid_event(event, MESSAGE, sg_event_id, at, **fields))
    return TimelineEntry.from_event(parsed)


def known_statuses(*ids: str) -> FakeStatusStore:
    statuses = FakeStatusStore()
    for message_id in ids:
        statuses.add(
            MessageStatus(id=message_id, state=MessageState.SENT, accepted_at=NOW, updated_at=NOW)
        )
    return statuses


@pytest.fixture
def table() -> FakeTableClient:
    return FakeTableClient("mailstatus")


@pytest.fixture
def store(table: FakeTableClient) -> DeliveryEventStore:
    return DeliveryEventStore(cast(TableClient, table))


# -- parsing --


def test_should_parse_a_batch_keeping_fields_it_does_not_know() -> None:
    [parsed] = events(
        sendgrid_event("open", MESSAGE, "ev-1", NOW, useragent="Mail/1.0", sg_machine_open=False)
    )

    assert (parsed.event, parsed.sg_event_id, parsed.mailgate_id) == ("open", "ev-1", MESSAGE)
    assert parsed.timestamp == int(NOW.timestamp())
    assert parsed.model_extra == {
        "category": ["billing"],
        "useragent": "Mail/1.0",
        "sg_machine_open": False,
    }


def test_should_parse_an_empty_batch() -> None:
    assert parse_event_batch(b"[]") == []


@pytest.mark.parametrize(
    ("body", "pointer"),
    [
        (b"", "#"),
        (b"not json", "#"),
        (b'{"event": "delivered"}', "#"),
        (b"[1]", "#/0"),
        (b'[{"sg_event_id": "e", "timestamp": 1}]', "#/0/event"),
        (b'[{"event": "open", "timestamp": 1}]', "#/0/sg_event_id"),
        (b'[{"event": "open", "sg_event_id": "e"}]', "#/0/timestamp"),
        (b'[{"event": "open", "sg_event_id": "e", "timestamp": -1}]', "#/0/timestamp"),
        (b'[{"event": "open", "sg_event_id": "e", "timestamp": 1e20}]', "#/0/timestamp"),
        (b'[{"event": "open", "sg_event_id": "a b", "timestamp": 1}]', "#/0/sg_event_id"),
        (b'[{"event": "open", "sg_event_id": "e", "timestamp": 1, "url": 5}]', "#/0/url"),
        (b'[{"event": "open", "sg_event_id": "\\ud800", "timestamp": 1}]', "#"),
    ],
    ids=[
        "empty",
        "not json",
        "object",
        "not an object",
        "no event",
        "no sg_event_id",
        "no timestamp",
        "negative time",
        "time past 9999",
        "id with a space",
        "url not a string",
        "lone surrogate",
    ],
)
def test_should_refuse_what_is_not_a_batch_of_events(body: bytes, pointer: str) -> None:
    with pytest.raises(InvalidEventBatch) as caught:
        parse_event_batch(body)

    assert caught.value.status == 400
    assert pointer in [problem.pointer for problem in caught.value.problems]


def test_should_list_at_most_twenty_problems() -> None:
    with pytest.raises(InvalidEventBatch) as caught:
        parse_event_batch(json.dumps([{}] * 50).encode())

    assert len(caught.value.problems) == 20
    assert "150 problem(s)" in caught.value.detail


# -- what is kept of an event --


def test_should_keep_the_recipients_domain_never_the_address() -> None:
    kept = entry("delivered", "ev-1", email="Someone.Else@Example.NET")

    assert kept.recipient_domain == "example.net"
    assert "someone" not in json.dumps(kept.to_document()).lower()


def test_should_keep_a_bounces_status_reason_and_type_without_the_address() -> None:
    kept = entry(
        "bounce",
        "ev-1",
        status="5.1.1",
        type="bounce",
        reason="550 5.1.1 <someone@example.net>: Recipient address rejected: "
        "see https://support.example.com/mail/?p=NoSuchUser&u=someone%40example.net",
    )

    assert kept.to_document() == {
        "event": "bounce",
        "at": NOW.isoformat(),
        "sg_event_id": "ev-1",
        "recipient_domain": "example.net",
        "status": "5.1.1",
        "reason": "550 5.1.1 <*@example.net>: Recipient address rejected: "
        "see https://support.example.com/mail/",
        "bounce_type": "bounce",
    }


def test_should_keep_a_deferrals_response_as_its_reason() -> None:
    kept = entry("deferred", "ev-1", response="400 4.2.2 mailbox full", attempt="2")

    assert kept.reason == "400 4.2.2 mailbox full"


def test_should_keep_a_clicked_link_without_query_fragment_or_credentials() -> None:
    kept = entry(
        "click", "ev-1", url="https://user:pw@shop.example.com:8443/orders/42?token=secret#top"
    )

    assert kept.url == "https://shop.example.com:8443/orders/42"


def test_should_keep_no_url_but_a_clicks() -> None:
    assert entry("open", "ev-1", url="https://example.com/").url is None


@pytest.mark.parametrize(
    "url", ["javascript:alert(1)", "mailto:someone@example.net", "https://", "http://[::1"]
)
def test_should_drop_a_link_that_is_not_http(url: str) -> None:
    assert safe_url(url) is None


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        ("550 no such user someone@example.net", "550 no such user *@example.net"),
        ('"First Last" <first.last+tag@mail.example.org>', '"First Last" <*@mail.example.org>'),
        ("line one\r\nline two\x00", "line one line two"),
        (
            "https://x.example/unsubscribe/someone%40example.net",
            "https://x.example/unsubscribe/*@example.net",
        ),
        ("first%2Blast%40example.net bounced", "*@example.net bounced"),
        (
            "see http://example.com/a?b=c#d and HTTPS://x.example/?q",
            "see http://example.com/a and HTTPS://x.example/",
        ),
        ("   ", None),
        ("", None),
        (None, None),
        ("x" * 300, "x" * 199 + "…"),
    ],
)
def test_should_reduce_text_to_one_line_without_addresses_or_queries(
    text: str | None, kept: str | None
) -> None:
    assert safe_text(text) == kept


@pytest.mark.parametrize(
    ("email", "domain"),
    [
        ("a@example.net", "example.net"),
        ("A@Example.NET ", "example.net"),
        ("<a@example.net>", "example.net"),
        ("no-at-sign", None),
        ("a@", None),
        ("a@exa mple.net", None),
        (None, None),
    ],
)
def test_should_read_the_recipient_domain(email: str | None, domain: str | None) -> None:
    assert recipient_domain(email) == domain


# -- the state --


@pytest.mark.parametrize(
    ("sequence", "state"),
    [
        (["processed"], DeliveryState.PROCESSED),
        (["processed", "deferred"], DeliveryState.DEFERRED),
        (["processed", "deferred", "delivered"], DeliveryState.DELIVERED),
        (["delivered", "deferred", "processed"], DeliveryState.DELIVERED),
        (["open"], DeliveryState.DELIVERED),
        (["processed", "click"], DeliveryState.DELIVERED),
        (["spamreport"], DeliveryState.DELIVERED),
        (["unsubscribe"], DeliveryState.DELIVERED),
        (["group_unsubscribe"], DeliveryState.DELIVERED),
        (["dropped"], DeliveryState.DROPPED),
        (["processed", "bounce"], DeliveryState.BOUNCED),
        (["delivered", "bounce"], DeliveryState.BOUNCED),
        (["bounce", "delivered", "open"], DeliveryState.BOUNCED),
        (["dropped", "processed"], DeliveryState.DROPPED),
    ],
)
def test_should_move_the_state_forward_only(sequence: list[str], state: DeliveryState) -> None:
    record = None
    for number, event in enumerate(sequence):
        record = apply_events(record, MESSAGE, [entry(event, f"ev-{number}")], NOW)

    assert record is not None
    assert record.state is state


def test_should_reach_the_same_state_and_timeline_whatever_the_order() -> None:
    batch = [
        entry(event, f"ev-{n}", NOW + timedelta(seconds=n))
        for n, event in enumerate(["processed", "deferred", "delivered", "open", "click"])
    ]
    outcomes = set()
    for order in itertools.permutations(batch):
        record = None
        for one in order:
            record = apply_events(record, MESSAGE, [one], NOW)
        assert record is not None
        outcomes.add((record.state, record.timeline))

    assert len(outcomes) == 1
    [(state, timeline)] = outcomes
    assert state is DeliveryState.DELIVERED
    assert [e.event for e in timeline] == ["processed", "deferred", "delivered", "open", "click"]


def test_should_keep_the_newest_events_in_time_order() -> None:
    many = [entry("open", f"ev-{n:03}", NOW + timedelta(seconds=n)) for n in range(150)]

    record = apply_events(None, MESSAGE, list(reversed(many)), NOW)

    assert len(record.timeline) == MAX_TIMELINE_EVENTS
    assert record.timeline == tuple(many[-MAX_TIMELINE_EVENTS:])


def test_should_keep_the_timeline_small_enough_for_one_table_property() -> None:
    long_reason = "r" * 180
    many = [
        entry("deferred", f"ev-{n:03}-" + "i" * 200, NOW + timedelta(seconds=n), reason=long_reason)
        for n in range(100)
    ]

    record = apply_events(None, MESSAGE, many, NOW)
    stored = json.dumps([e.to_document() for e in record.timeline], separators=(",", ":"))

    assert len(stored) <= MAX_TIMELINE_CHARS
    assert record.timeline[-1] == many[-1]
    assert len(record.timeline) < 100


# -- the store --


def test_should_record_events_with_their_rows_and_the_record_in_one_transaction(
    store: DeliveryEventStore, table: FakeTableClient
) -> None:
    outcome = store.record(MESSAGE, [entry("processed", "ev-1"), entry("delivered", "ev-2")], LATER)

    assert (outcome.recorded, outcome.duplicates) == (2, 0)
    assert table.transactions == 1
    assert set(table.rows) == {
        (MESSAGE, DELIVERY_ROW),
        (MESSAGE, event_row_key("ev-1")),
        (MESSAGE, event_row_key("ev-2")),
    }
    row = table.rows[(MESSAGE, event_row_key("ev-2"))]
    assert row["sg_event_id"] == "ev-2"
    assert row["at"] == NOW
    assert row["received_at"] == LATER
    assert "email" not in row
    record = store.get(MESSAGE)
    assert record is not None
    assert record.state is DeliveryState.DELIVERED
    assert record.updated_at == LATER
    assert [e.sg_event_id for e in record.timeline] == ["ev-1", "ev-2"]


def test_should_read_no_record_before_the_first_event(store: DeliveryEventStore) -> None:
    assert store.get(MESSAGE) is None


def test_should_change_nothing_when_the_same_events_come_again(
    store: DeliveryEventStore, table: FakeTableClient
) -> None:
    batch = [entry("processed", "ev-1"), entry("delivered", "ev-2")]
    store.record(MESSAGE, batch, NOW)
    before = dict(table.rows)

    outcome = store.record(MESSAGE, batch, LATER)

    assert (outcome.recorded, outcome.duplicates) == (0, 2)
    assert table.rows == before
    assert table.transactions == 1


def test_should_count_an_event_twice_in_one_batch_as_a_duplicate(
    store: DeliveryEventStore,
) -> None:
    outcome = store.record(MESSAGE, [entry("open", "ev-1"), entry("open", "ev-1")], NOW)

    assert (outcome.recorded, outcome.duplicates) == (1, 1)


def test_should_find_a_duplicate_by_its_row_once_it_left_the_timeline(
    store: DeliveryEventStore, table: FakeTableClient
) -> None:
    oldest = entry("processed", "ev-old", NOW - timedelta(hours=1))
    store.record(MESSAGE, [oldest], NOW)
    newer = [entry("open", f"ev-{n:03}", NOW + timedelta(seconds=n)) for n in range(100)]
    store.record(MESSAGE, newer, NOW)
    record = store.get(MESSAGE)
    assert record is not None
    assert oldest not in record.timeline

    newest = entry("click", "ev-new", NOW + timedelta(hours=1))

    outcome = store.record(MESSAGE, [oldest, newest], LATER)

    assert (outcome.recorded, outcome.duplicates) == (1, 1)
    after = store.get(MESSAGE)
    assert after is not None
    assert oldest not in after.timeline
    assert after.timeline[-1].sg_event_id == "ev-new"


def test_should_not_drop_an_event_the_service_names_by_mistake(
    store: DeliveryEventStore, table: FakeTableClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # "Entity already exists" at index 0, but no such event row: treated as a lost race.
    submit = table.submit_transaction
    answers = iter([transaction_error(0, TableErrorCode.ENTITY_ALREADY_EXISTS)])

    def misreporting(operations: Any, **options: Any) -> Any:
        error = next(answers, None)
        if error is not None:
            raise error
        return submit(operations, **options)

    monkeypatch.setattr(table, "submit_transaction", misreporting)

    outcome = store.record(MESSAGE, [entry("delivered", "ev-1")], NOW)

    assert (outcome.recorded, outcome.duplicates) == (1, 0)
    assert (MESSAGE, event_row_key("ev-1")) in table.rows


def test_should_write_many_events_in_transactions_of_at_most_a_hundred_operations(
    store: DeliveryEventStore, table: FakeTableClient
) -> None:
    many = [entry("open", f"ev-{n:03}", NOW + timedelta(seconds=n)) for n in range(250)]

    outcome = store.record(MESSAGE, many, NOW)

    assert outcome.recorded == 250
    assert table.transactions == 3
    assert len(table.rows) == 251


def test_should_read_again_and_keep_both_writers_events_when_the_record_changed(
    store: DeliveryEventStore, table: FakeTableClient
) -> None:
    store.record(MESSAGE, [entry("processed", "ev-1")], NOW)
    other_instance = DeliveryEventStore(cast(TableClient, table))

    def another_writer_first() -> None:
        table.before_transaction = None
        other_instance.record(MESSAGE, [entry("bounce", "ev-2")], NOW)

    table.before_transaction = another_writer_first

    outcome = store.record(MESSAGE, [entry("delivered", "ev-3")], LATER)

    assert outcome.recorded == 1
    record = store.get(MESSAGE)
    assert record is not None
    assert record.state is DeliveryState.BOUNCED
    assert {e.sg_event_id for e in record.timeline} == {"ev-1", "ev-2", "ev-3"}


def test_should_count_an_event_another_writer_recorded_meanwhile_as_a_duplicate(
    store: DeliveryEventStore, table: FakeTableClient
) -> None:
    other_instance = DeliveryEventStore(cast(TableClient, table))

    def same_event_first() -> None:
        table.before_transaction = None
        other_instance.record(MESSAGE, [entry("delivered", "ev-1")], NOW)

    table.before_transaction = same_event_first

    outcome = store.record(MESSAGE, [entry("delivered", "ev-1")], NOW)

    assert (outcome.recorded, outcome.duplicates) == (0, 1)


def test_should_give_up_with_concurrent_update_when_the_record_keeps_changing(
    store: DeliveryEventStore, table: FakeTableClient
) -> None:
    store.record(MESSAGE, [entry("processed", "ev-1")], NOW)
    counter = itertools.count()

    def touch() -> None:
        row = table.rows[(MESSAGE, DELIVERY_ROW)]
        table.rows[(MESSAGE, DELIVERY_ROW)] = {**row}
        table._etags[(MESSAGE, DELIVERY_ROW)] = f'W/"other-{next(counter)}"'

    table.before_transaction = touch

    with pytest.raises(ConcurrentUpdate):
        store.record(MESSAGE, [entry("delivered", "ev-2")], NOW)

    assert next(counter) == MAX_WRITE_CONFLICTS
    assert (MESSAGE, event_row_key("ev-2")) not in table.rows


@pytest.mark.parametrize("operation", ["get", "transaction"])
def test_should_raise_storage_unavailable_and_write_nothing_when_the_table_fails(
    operation: str, store: DeliveryEventStore, table: FakeTableClient
) -> None:
    table.fail_next(operation)

    with pytest.raises(StorageUnavailable):
        store.record(MESSAGE, [entry("delivered", "ev-1")], NOW)

    assert table.rows == {}


# -- a batch --


def test_should_record_a_batch_for_known_messages_and_count_the_rest() -> None:
    statuses = known_statuses(MESSAGE, OTHER)
    table = FakeTableClient()
    store = DeliveryEventStore(cast(TableClient, table))
    batch = events(
        sendgrid_event("processed", MESSAGE, "ev-1", NOW),
        sendgrid_event("delivered", MESSAGE, "ev-2", NOW),
        sendgrid_event("bounce", OTHER, "ev-3", NOW),
        sendgrid_event("delivered", "7f000000-0000-4000-8000-000000000000", "ev-4", NOW),
        sendgrid_event("delivered", None, "ev-5", NOW),
        sendgrid_event("delivered", "not/an id", "ev-6", NOW),
        sendgrid_event("group_resubscribe", MESSAGE, "ev-7", NOW),
        sendgrid_event("machine_open", None, "ev-8", NOW),
    )

    report = record_event_batch(batch, statuses, store, LATER)

    assert report.to_document() == {
        "received": 8,
        "recorded": 3,
        "duplicates": 0,
        "unknown": 3,
        "ignored": 2,
    }
    assert report.unknown_ids == ("7f000000-0000-4000-8000-000000000000", "not/an id")
    assert store.get(MESSAGE) == DeliveryRecord(
        MESSAGE,
        DeliveryState.DELIVERED,
        LATER,
        (entry("processed", "ev-1"), entry("delivered", "ev-2")),
        etag=table._etags[(MESSAGE, DELIVERY_ROW)],
    )
    other = store.get(OTHER)
    assert other is not None
    assert other.state is DeliveryState.BOUNCED


def test_should_change_nothing_when_a_batch_comes_twice() -> None:
    statuses = known_statuses(MESSAGE, OTHER)
    table = FakeTableClient()
    store = DeliveryEventStore(cast(TableClient, table))
    batch = events(
        sendgrid_event("processed", MESSAGE, "ev-1", NOW),
        sendgrid_event("delivered", MESSAGE, "ev-2", NOW),
        sendgrid_event("open", OTHER, "ev-3", NOW),
    )
    record_event_batch(batch, statuses, store, NOW)
    before = dict(table.rows)

    again = record_event_batch(batch, statuses, store, LATER)

    assert (again.recorded, again.duplicates) == (0, 3)
    assert table.rows == before


def test_should_leave_the_status_record_untouched() -> None:
    statuses = known_statuses(MESSAGE)
    status_before = statuses.records[MESSAGE]
    store = DeliveryEventStore(cast(TableClient, FakeTableClient()))

    record_event_batch(
        events(sendgrid_event("delivered", MESSAGE, "ev-1", NOW)), statuses, store, NOW
    )

    assert statuses.records[MESSAGE] == status_before
    assert statuses.journal == []


def test_should_record_the_other_messages_and_then_fail_when_one_cannot_be_written() -> None:
    messages = [f"{n:08x}-7c9e-4a57-9a4e-1f1f6d3b2c10" for n in range(12)]
    statuses = known_statuses(*messages)
    table = FakeTableClient()
    store = DeliveryEventStore(cast(TableClient, table))
    batch = events(*(sendgrid_event("delivered", m, f"ev-{m}", NOW) for m in messages))
    table.fail_next("transaction")

    with pytest.raises(StorageUnavailable):
        record_event_batch(batch, statuses, store, NOW)

    recorded = {key[0] for key in table.rows}
    assert len(recorded) == 11
    # SendGrid sends the batch again: only the missing message's event is written then.
    report = record_event_batch(batch, statuses, store, LATER)
    assert (report.recorded, report.duplicates) == (1, 11)


def test_should_count_events_of_a_message_whose_status_cannot_be_read_as_a_failure() -> None:
    statuses = known_statuses(MESSAGE)
    statuses.make_unavailable(["get"])
    store = DeliveryEventStore(cast(TableClient, FakeTableClient()))

    with pytest.raises(StorageUnavailable):
        record_event_batch(
            events(sendgrid_event("delivered", MESSAGE, "ev-1", NOW)), statuses, store, NOW
        )


def test_should_time_entries_in_utc_from_sendgrids_seconds() -> None:
    kept = entry("delivered", "ev-1", datetime(2026, 3, 2, 10, 30, 5, tzinfo=timezone.utc))

    assert kept.at == datetime(2026, 3, 2, 10, 30, 5, tzinfo=timezone.utc)
    assert kept.to_document()["at"] == "2026-03-02T10:30:05+00:00"
