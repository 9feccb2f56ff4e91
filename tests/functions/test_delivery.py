from __future__ import annotations

import json
import logging

import pytest
from azure.functions.queue import QueueMessage

from functions.delivery import deliver_message
from shared.errors import (
    PermanentDeliveryError,
    RetryableDeliveryError,
    StorageUnavailable,
)
from shared.status import MessageState, MessageStatus
from tests.fakes import FakeMailQueue, FakeMailSender, FakeStatusStore
from tests.samples import NOW, envelope


def queue_message(content: bytes, dequeue_count: int = 1) -> QueueMessage:
    return QueueMessage(
        id="3f0e7d4c-queue-message", body=content, dequeue_count=dequeue_count, pop_receipt="pr-1"
    )


@pytest.mark.usefixtures("gateway")
def test_should_send_a_queued_message(
    fake_queue: FakeMailQueue, fake_sender: FakeMailSender
) -> None:
    queued = envelope(id="msg-11")

    deliver_message(queue_message(queued.to_json().encode()))

    [payload] = fake_sender.payloads
    assert payload["personalizations"][0]["custom_args"]["mailgate_id"] == "msg-11"
    assert (fake_queue.messages, fake_queue.poison_texts) == ([], [])
    assert fake_queue.ensure_exists_calls == 1


@pytest.mark.usefixtures("gateway")
def test_should_requeue_a_retryable_failure_and_return_normally(
    fake_queue: FakeMailQueue, fake_sender: FakeMailSender
) -> None:
    fake_sender.will(RetryableDeliveryError("SendGrid answered 503"))

    deliver_message(queue_message(envelope(id="msg-12").to_json().encode()))

    assert [(e.id, e.attempt) for e in fake_queue.envelopes] == [("msg-12", 2)]
    assert fake_queue.messages[0].delay_seconds == 30


@pytest.mark.usefixtures("gateway")
def test_should_dead_letter_a_permanent_failure_and_return_normally(
    fake_queue: FakeMailQueue, fake_sender: FakeMailSender
) -> None:
    fake_sender.will(
        PermanentDeliveryError("SendGrid refused the message with 400", status_code=400)
    )

    deliver_message(queue_message(envelope(id="msg-13").to_json().encode()))

    [record] = [json.loads(text) for text in fake_queue.poison_texts]
    assert (record["id"], record["dead_letter"]["status_code"]) == ("msg-13", 400)
    assert fake_queue.messages == []


@pytest.mark.usefixtures("gateway")
def test_should_dead_letter_an_unreadable_message_and_return_normally(
    fake_queue: FakeMailQueue, fake_sender: FakeMailSender
) -> None:
    deliver_message(queue_message(b"hello"))

    [record] = [json.loads(text) for text in fake_queue.poison_texts]
    assert record["raw_message"] == "hello"
    assert fake_sender.payloads == []


@pytest.mark.usefixtures("gateway")
@pytest.mark.parametrize("operation", ["ensure_exists", "enqueue"])
def test_should_put_the_message_back_for_later_when_storage_is_unavailable(
    operation: str, fake_queue: FakeMailQueue, fake_sender: FakeMailSender
) -> None:
    fake_sender.will(RetryableDeliveryError("SendGrid answered 503"))
    fake_queue.make_unavailable([operation])
    queued = envelope(id="msg-10")

    deliver_message(queue_message(queued.to_json().encode()))

    [back] = fake_queue.messages
    assert json.loads(back.text) == {**json.loads(queued.to_json()), "postponed": 1}
    assert back.delay_seconds >= 8


@pytest.mark.usefixtures("gateway")
def test_should_raise_for_the_host_to_retry_when_the_queue_cannot_take_the_message_back(
    fake_queue: FakeMailQueue, fake_statuses: FakeStatusStore, fake_sender: FakeMailSender
) -> None:
    fake_statuses.make_unavailable(["claim"])
    fake_queue.make_unavailable(["put_back"])

    with pytest.raises(StorageUnavailable):
        deliver_message(queue_message(envelope().to_json().encode()))

    assert fake_sender.payloads == []


@pytest.mark.usefixtures("gateway")
# A first attempt claims without reading (it inserts the record); a retry reads first.
@pytest.mark.parametrize(
    ("operation", "attempt"), [("ensure_exists", 1), ("claim", 1), ("get", 2), ("claim", 2)]
)
def test_should_put_back_without_sending_when_the_status_store_is_unavailable(
    operation: str,
    attempt: int,
    fake_statuses: FakeStatusStore,
    fake_queue: FakeMailQueue,
    fake_sender: FakeMailSender,
) -> None:
    fake_statuses.make_unavailable([operation])

    deliver_message(queue_message(envelope(id="msg-17", attempt=attempt).to_json().encode()))

    assert fake_sender.payloads == []
    assert [json.loads(m.text)["id"] for m in fake_queue.messages] == ["msg-17"]


@pytest.mark.usefixtures("gateway")
def test_should_put_back_a_message_another_worker_is_sending(
    fake_statuses: FakeStatusStore, fake_queue: FakeMailQueue, fake_sender: FakeMailSender
) -> None:
    queued = envelope(id="msg-14")
    fake_statuses.add(
        MessageStatus(
            id="msg-14",
            state=MessageState.SENDING,
            accepted_at=NOW,
            updated_at=NOW,
            attempts=1,
        )
    )

    deliver_message(queue_message(queued.to_json().encode()))

    assert fake_sender.payloads == []
    assert [json.loads(m.text)["postponed"] for m in fake_queue.messages] == [1]


@pytest.mark.usefixtures("gateway")
@pytest.mark.parametrize("dequeue_count", [1, 2, 5])
def test_should_return_normally_without_sending_a_message_already_sent(
    dequeue_count: int, fake_statuses: FakeStatusStore, fake_sender: FakeMailSender
) -> None:
    fake_statuses.add(
        MessageStatus(
            id="msg-15", state=MessageState.SENT, accepted_at=NOW, updated_at=NOW, attempts=1
        )
    )

    deliver_message(queue_message(envelope(id="msg-15").to_json().encode(), dequeue_count))

    assert fake_sender.payloads == []


@pytest.mark.usefixtures("gateway")
def test_should_record_the_sent_status(
    fake_statuses: FakeStatusStore, fake_sender: FakeMailSender
) -> None:
    fake_sender.will("sg-16")

    deliver_message(queue_message(envelope(id="msg-16").to_json().encode()))

    status = fake_statuses.records["msg-16"]
    assert (status.state, status.provider_message_id) == (MessageState.SENT, "sg-16")
    assert fake_statuses.ensure_exists_calls == 1


@pytest.mark.usefixtures("gateway")
def test_should_warn_when_the_host_delivers_a_message_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="shared.delivery"):
        deliver_message(queue_message(envelope(id="msg-again").to_json().encode(), dequeue_count=3))

    [record] = [r for r in caplog.records if "delivered again" in r.getMessage()]
    assert record.getMessage() == "Message msg-again attempt 1 is delivered again (dequeue count 3)"
    assert getattr(record, "mailgate_id", None) == "msg-again"


@pytest.mark.usefixtures("gateway")
def test_should_not_warn_on_a_first_delivery(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="shared.delivery"):
        deliver_message(queue_message(envelope().to_json().encode(), dequeue_count=1))

    assert [r for r in caplog.records if "delivered again" in r.getMessage()] == []
