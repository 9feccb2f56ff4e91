"""On Azurite: every storage request about one message carries its id as the client request id
(`x-ms-client-request-id`, kept by Storage's logs as ClientRequestId; shared/message_ids.py),
as the request leaves the gateway's transport, after every policy of the SDK's pipeline."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from azure.core.rest import HttpRequest

from shared.delivery_events import DeliveryEventStore, TimelineEntry
from shared.idempotency import IdempotencyStore
from shared.message_ids import new_message_id
from shared.queue import MailQueue
from shared.status import MessageState, MessageStatus, StatusStore
from shared.storage_transport import StorageTransport
from tests.samples import envelope

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=timezone.utc)
MESSAGE_ID = new_message_id(NOW, "app")


@dataclass(frozen=True)
class SentRequest:
    """One request as it went out: method, path and its client request id."""

    method: str
    path: str
    request_id: str | None


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[SentRequest]:
    """The requests the gateway's transport sends from now on from this thread, in order (not
    those of another test's background thread still running, such as an activity log's)."""
    requests: list[SentRequest] = []
    send = StorageTransport.send
    test_thread = threading.get_ident()

    def recording(self: StorageTransport, request: HttpRequest, **kwargs: Any) -> Any:
        if threading.get_ident() == test_thread:
            path = request.url.split("?")[0].split("/", 4)[-1]
            requests.append(
                SentRequest(request.method, path, request.headers.get("x-ms-client-request-id"))
            )
        return send(self, request, **kwargs)

    monkeypatch.setattr(StorageTransport, "send", recording)
    return requests


def test_should_name_the_message_in_its_queue_writes(
    mail_queue: MailQueue, sent: list[SentRequest]
) -> None:
    mail_queue.enqueue(envelope(id=MESSAGE_ID))
    mail_queue.put_back("{}", delay_seconds=60, message_id=MESSAGE_ID)
    mail_queue.dead_letter("{}", message_id=MESSAGE_ID)
    mail_queue.put_back("not an envelope", delay_seconds=60)

    assert [(r.method, r.path.endswith("/messages")) for r in sent] == [("POST", True)] * 4
    assert [r.request_id for r in sent[:3]] == [MESSAGE_ID] * 3
    # Without a message id the SDK makes one up (a uuid1), as for every other call.
    assert sent[3].request_id not in (None, MESSAGE_ID)
    assert mail_queue.depths() == {mail_queue.name: 3, mail_queue.poison_name: 1}


def test_should_name_the_message_in_every_call_on_its_status_record(
    statuses: StatusStore, sent: list[SentRequest]
) -> None:
    record = MessageStatus(
        id=MESSAGE_ID, state=MessageState.SENDING, accepted_at=NOW, updated_at=NOW, attempts=1
    )

    claimed = statuses.claim(record)  # an insert: the only call whose URL does not name it
    statuses.claim(claimed.moved(MessageState.RETRYING, NOW))  # a replace by ETag
    stored = statuses.get(MESSAGE_ID)
    statuses.put(record.moved(MessageState.SENT, NOW + timedelta(seconds=1)))
    statuses.mark_replayed(MESSAGE_ID, NOW)

    assert stored is not None
    assert stored.state is MessageState.RETRYING
    assert [r.method for r in sent] == ["POST", "PUT", "GET", "PUT", "PUT"]
    assert {r.request_id for r in sent} == {MESSAGE_ID}


def test_should_name_the_message_in_its_event_transaction(
    statuses: StatusStore, sent: list[SentRequest]
) -> None:
    events = DeliveryEventStore(statuses.table)
    delivered = TimelineEntry(event="delivered", at=NOW, sg_event_id="ev-1")

    outcome = events.record(MESSAGE_ID, [delivered], NOW)

    assert (outcome.recorded, outcome.duplicates) == (1, 0)
    assert [r.path.rsplit("/", 1)[-1] for r in sent][-1] == "$batch"
    assert {r.request_id for r in sent} == {MESSAGE_ID}


def test_should_name_the_message_in_the_calls_on_its_idempotency_key(
    statuses: StatusStore, sent: list[SentRequest]
) -> None:
    keys = IdempotencyStore(statuses.table, timedelta(hours=24))

    claim = keys.claim("key-1", b"{}", MESSAGE_ID, NOW)
    keys.complete(claim.record)
    again = keys.claim("key-2", b"{}", MESSAGE_ID, NOW)
    keys.release(again.record)

    # The key's reads find whichever message the key already stands for: not this one's.
    writes = [r for r in sent if r.method != "GET"]
    assert [r.method for r in writes] == ["POST", "PATCH", "POST", "DELETE"]
    assert {r.request_id for r in writes} == {MESSAGE_ID}
