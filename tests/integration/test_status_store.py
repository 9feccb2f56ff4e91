from __future__ import annotations

import threading
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest
from azure.data.tables import TableClient

from shared.errors import ConcurrentUpdate, StorageUnavailable
from shared.models import ProviderError
from shared.replay_advice import SENDER_IDENTITY
from shared.status import MessageState, MessageStatus, Outcome, StatusStore

ACCEPTED = datetime(2026, 3, 2, 9, 30, 0, 123456, tzinfo=timezone.utc)
LATER = ACCEPTED + timedelta(seconds=42, microseconds=654321)


def queued(id: str = "msg-i1") -> MessageStatus:
    return MessageStatus(
        id=id, state=MessageState.QUEUED, accepted_at=ACCEPTED, updated_at=ACCEPTED
    )


def test_should_insert_a_record_once(statuses: StatusStore) -> None:
    created = statuses.claim(queued())
    assert created.etag
    with pytest.raises(ConcurrentUpdate):
        statuses.claim(queued().moved(MessageState.SENT, LATER))

    stored = statuses.get("msg-i1")

    assert stored is not None
    assert stored.state is MessageState.QUEUED
    # Inserted without the entity echoed back, the answer still carries the row's ETag.
    assert stored.etag == created.etag


def test_should_read_an_unknown_id_as_none(statuses: StatusStore) -> None:
    statuses.claim(queued())

    assert statuses.get("msg-unknown") is None


@pytest.mark.parametrize("message_id", ["it's", "a b", "%41", "a+b", "idempotency-x"])
def test_should_read_awkward_ids_as_unknown_rather_than_fail(
    message_id: str, statuses: StatusStore
) -> None:
    assert statuses.get(message_id) is None


def test_should_round_trip_every_field(statuses: StatusStore) -> None:
    status = MessageStatus(
        id="msg-i2",
        state=MessageState.RETRYING,
        accepted_at=ACCEPTED,
        updated_at=LATER,
        attempts=7,
        next_attempt_at=LATER + timedelta(minutes=16),
        last_status_code=503,
        last_error="SendGrid answered 503: Service Unavailable",
        ambiguous=True,
        provider_message_id="sg-\u00e9-42",
        outcomes=(
            Outcome(MessageState.RETRYING, 6, LATER - timedelta(minutes=8)),
            Outcome(MessageState.RETRYING, 7, LATER),
        ),
    )

    written = statuses.put(status)
    read = statuses.get("msg-i2")

    assert read is not None
    assert read == replace(status, etag=read.etag)
    assert read.etag == written.etag
    for moment in (read.accepted_at, read.updated_at, read.next_attempt_at):
        assert moment is not None
        assert moment.utcoffset() == timedelta(0)
    assert read.to_document() == status.to_document()


def test_should_round_trip_sendgrids_errors_and_the_cause_of_a_failed_message(
    statuses: StatusStore,
) -> None:
    status = MessageStatus(
        id="msg-i4",
        state=MessageState.FAILED,
        accepted_at=ACCEPTED,
        updated_at=LATER,
        attempts=1,
        last_status_code=403,
        last_error="SendGrid refused the message with 403: not verified (field from)",
        provider_errors=(
            ProviderError(message="not verified", field="from"),
            ProviderError(message="and \u00e9 more"),
        ),
        last_error_cause=SENDER_IDENTITY,
    )

    statuses.put(status)
    read = statuses.get("msg-i4")

    assert read is not None
    assert read == replace(status, etag=read.etag)
    assert read.to_document() == status.to_document()


def test_should_read_a_failed_row_written_before_errors_and_causes_were_kept(
    statuses: StatusStore,
) -> None:
    # As an older gateway wrote it: no provider_errors, no last_error_cause.
    statuses.table.upsert_entity(
        {
            "PartitionKey": "msg-i5",
            "RowKey": "status",
            "state": "failed",
            "accepted_at": ACCEPTED,
            "updated_at": LATER,
            "attempts": 1,
            "last_status_code": 413,
            "last_error": "SendGrid refused the message with 413",
            "ambiguous": False,
        }
    )

    read = statuses.get("msg-i5")

    assert read is not None
    assert (read.provider_errors, read.last_error_cause) == ((), None)
    last_error = read.to_document()["last_error"]
    assert last_error["reason"] == "SendGrid refused the message with 413"
    assert (last_error["cause"], last_error["replay"]) == ("too_large", "no")


def test_should_round_trip_a_time_given_in_another_timezone_as_the_same_instant(
    statuses: StatusStore,
) -> None:
    paris = timezone(timedelta(hours=1))
    statuses.put(replace(queued(), accepted_at=ACCEPTED.astimezone(paris)))

    read = statuses.get("msg-i1")

    assert read is not None
    assert read.accepted_at == ACCEPTED


@pytest.mark.parametrize("state", list(MessageState))
def test_should_round_trip_every_state(state: MessageState, statuses: StatusStore) -> None:
    statuses.put(replace(queued(), state=state))

    read = statuses.get("msg-i1")

    assert read is not None
    assert read.state is state


def test_should_claim_a_record_read_with_a_current_etag(statuses: StatusStore) -> None:
    statuses.claim(queued())
    read = statuses.get("msg-i1")
    assert read is not None

    claimed = statuses.claim(read.moved(MessageState.SENDING, LATER, attempts=1))

    assert claimed.etag not in (None, read.etag)
    again = statuses.get("msg-i1")
    assert again is not None
    assert (again.state, again.attempts, again.etag) == (MessageState.SENDING, 1, claimed.etag)


def test_should_refuse_a_claim_with_a_stale_etag(statuses: StatusStore) -> None:
    statuses.claim(queued())
    read = statuses.get("msg-i1")
    assert read is not None
    statuses.claim(read.moved(MessageState.SENDING, LATER, attempts=1))

    with pytest.raises(ConcurrentUpdate, match="msg-i1"):
        statuses.claim(read.moved(MessageState.SENDING, LATER, attempts=2))

    current = statuses.get("msg-i1")
    assert current is not None
    assert current.attempts == 1


def test_should_refuse_a_claim_without_an_etag_when_a_record_exists(
    statuses: StatusStore,
) -> None:
    statuses.claim(queued())

    with pytest.raises(ConcurrentUpdate):
        statuses.claim(queued().moved(MessageState.SENDING, LATER))


def test_should_insert_a_claim_without_an_etag_when_there_is_no_record(
    statuses: StatusStore,
) -> None:
    claimed = statuses.claim(queued("msg-i3").moved(MessageState.SENDING, LATER, attempts=1))

    read = statuses.get("msg-i3")
    assert read is not None
    assert (read.state, read.etag) == (MessageState.SENDING, claimed.etag)


def test_should_let_exactly_one_of_many_workers_claim_the_same_read(
    statuses: StatusStore,
) -> None:
    statuses.claim(queued())
    read = statuses.get("msg-i1")
    assert read is not None
    start = threading.Barrier(10)
    outcomes: list[str] = []

    def claim(worker: int) -> None:
        start.wait()
        try:
            statuses.claim(read.moved(MessageState.SENDING, LATER, attempts=worker))
            outcomes.append("claimed")
        except ConcurrentUpdate:
            outcomes.append("lost")

    workers = [threading.Thread(target=claim, args=(n,)) for n in range(10)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=30)

    assert sorted(outcomes) == ["claimed"] + ["lost"] * 9


def test_should_put_a_record_whatever_its_etag_replacing_every_field(
    statuses: StatusStore,
) -> None:
    statuses.put(replace(queued(), last_status_code=429, last_error="SendGrid answered 429"))
    sent = queued().moved(MessageState.SENT, LATER, provider_message_id="sg-1")

    statuses.put(replace(sent, etag="W/\"datetime'2000-01-01T00%3A00%3A00Z'\""))

    read = statuses.get("msg-i1")
    assert read is not None
    assert (read.state, read.provider_message_id) == (MessageState.SENT, "sg-1")
    assert (read.last_status_code, read.last_error) == (None, None)


def test_should_keep_each_message_in_its_own_row(
    statuses: StatusStore, status_table: TableClient
) -> None:
    statuses.claim(queued("msg-i4"))
    statuses.claim(queued("msg-i5"))

    rows = sorted((e["PartitionKey"], e["RowKey"]) for e in status_table.list_entities())

    assert rows == [("msg-i4", "status"), ("msg-i5", "status")]


def test_should_answer_the_health_check_on_an_existing_table(statuses: StatusStore) -> None:
    statuses.check()


def test_should_accept_creating_the_table_again(statuses: StatusStore) -> None:
    statuses.ensure_exists()


def test_should_report_storage_unavailable_when_nothing_listens() -> None:
    # A port nothing listens on: connection refused at once, after the store's own retries.
    table = TableClient.from_connection_string(
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a2V5;"
        "TableEndpoint=http://127.0.0.1:9/devstoreaccount1;",
        "unreachable",
        retry_total=0,
    )

    with pytest.raises(StorageUnavailable, match="msg-i1"):
        StatusStore(table).get("msg-i1")
