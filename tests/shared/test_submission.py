from __future__ import annotations

import base64
import json
import uuid
from typing import Any

import pytest

from shared.errors import (
    InvalidMessage,
    PayloadTooLarge,
    RequestRejected,
    SenderNotAllowed,
    StorageUnavailable,
    UnsupportedMediaType,
)
from shared.models import MailRequest
from shared.settings import Settings
from shared.submission import AcceptedMessage, sender_allowed, submit_message
from tests.fakes import FakeMailQueue
from tests.samples import (
    ACCEPTED,
    NOW,
    REFUSED,
    Refusal,
    body,
    custom_args_totalling,
    message,
    settings_with,
)

JSON = "application/json"


def submit(
    content: bytes,
    settings: Settings,
    queue: FakeMailQueue,
    content_type: str | None = JSON,
    new_id: str = "msg-0001",
) -> AcceptedMessage:
    return submit_message(
        content,
        content_type,
        settings=settings,
        queue=queue,
        now=lambda: NOW,
        new_id=lambda: new_id,
    )


def refused(
    content: bytes,
    settings: Settings,
    queue: FakeMailQueue,
    content_type: str | None = JSON,
    new_id: str = "msg-0001",
) -> RequestRejected:
    with pytest.raises(RequestRejected) as caught:
        submit(content, settings, queue, content_type, new_id)
    assert queue.messages == [], "a refused message must not be queued"
    return caught.value


def test_should_queue_a_valid_message_under_a_new_id(
    settings: Settings, fake_queue: FakeMailQueue
) -> None:
    accepted = submit(body(message()), settings, fake_queue, new_id="0b7c0f3e")

    assert accepted == AcceptedMessage(id="0b7c0f3e", status="queued")
    [queued] = fake_queue.envelopes
    assert (queued.id, queued.accepted_at, queued.attempt) == ("0b7c0f3e", NOW, 1)
    assert queued.message == MailRequest.model_validate(message())
    assert fake_queue.messages[0].delay_seconds == 0


@pytest.mark.parametrize("document", ACCEPTED.values(), ids=ACCEPTED.keys())
def test_should_queue_each_valid_message_unchanged(
    document: dict[str, Any], settings: Settings, fake_queue: FakeMailQueue
) -> None:
    submit(body(document), settings, fake_queue)

    [queued] = fake_queue.envelopes
    assert queued.message == MailRequest.model_validate(document, context={"now": NOW})


@pytest.mark.parametrize("case", REFUSED.values(), ids=REFUSED.keys())
def test_should_refuse_an_invalid_message_and_queue_nothing(
    case: Refusal, settings: Settings, fake_queue: FakeMailQueue
) -> None:
    rejection = refused(body(case.document), settings, fake_queue)

    assert isinstance(rejection, InvalidMessage)
    assert rejection.status == 400
    assert [p.pointer for p in rejection.problems] == [case.pointer]
    assert case.detail in rejection.problems[0].detail
    assert "1 invalid field" in rejection.detail


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "",
        "text/plain",
        "text/json",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/jsonp",
        "application/xml",
    ],
)
def test_should_refuse_a_body_that_is_not_json_with_415(
    content_type: str | None, settings: Settings, fake_queue: FakeMailQueue
) -> None:
    rejection = refused(body(message()), settings, fake_queue, content_type)

    assert isinstance(rejection, UnsupportedMediaType)
    assert rejection.status == 415
    assert "application/json" in rejection.detail


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json",
        "application/json; charset=utf-8",
        "Application/JSON;charset=UTF-8",
        " application/json ",
    ],
)
def test_should_accept_json_content_types(
    content_type: str, settings: Settings, fake_queue: FakeMailQueue
) -> None:
    submit(body(message()), settings, fake_queue, content_type)

    assert len(fake_queue.messages) == 1


def padded_to(size: int) -> bytes:
    """A valid message body of exactly `size` bytes."""
    empty = body(message(text=""))
    return body(message(text="x" * (size - len(empty))))


def test_should_accept_a_body_of_exactly_max_request_bytes(fake_queue: FakeMailQueue) -> None:
    settings = settings_with(MAX_REQUEST_BYTES="2048")
    content = padded_to(2048)
    assert len(content) == 2048

    submit(content, settings, fake_queue)

    assert len(fake_queue.messages) == 1


def test_should_refuse_a_body_over_max_request_bytes_with_413(fake_queue: FakeMailQueue) -> None:
    settings = settings_with(MAX_REQUEST_BYTES="2048")

    rejection = refused(padded_to(2049), settings, fake_queue)

    assert isinstance(rejection, PayloadTooLarge)
    assert rejection.status == 413
    assert "2049" in rejection.detail
    assert "MAX_REQUEST_BYTES" in rejection.detail


def test_should_check_the_content_type_before_the_size(fake_queue: FakeMailQueue) -> None:
    settings = settings_with(MAX_REQUEST_BYTES="1024")

    rejection = refused(b"x" * 5000, settings, fake_queue, "text/plain")

    assert rejection.status == 415


def test_should_refuse_a_message_too_large_for_one_queue_message_with_413(
    settings: Settings, fake_queue: FakeMailQueue
) -> None:
    attachment = {"filename": "big.bin", "content": base64.b64encode(bytes(45_000)).decode()}

    rejection = refused(body(message(attachments=[attachment])), settings, fake_queue)

    assert isinstance(rejection, PayloadTooLarge)
    assert [p.pointer for p in rejection.problems] == ["#/attachments"]
    assert "queue message" in rejection.detail


def test_should_refuse_a_large_message_without_attachments_pointing_at_the_whole(
    settings: Settings, fake_queue: FakeMailQueue
) -> None:
    rejection = refused(body(message(html="<p>" + "x" * 60_000 + "</p>")), settings, fake_queue)

    assert isinstance(rejection, PayloadTooLarge)
    assert [p.pointer for p in rejection.problems] == ["#"]


def test_should_accept_an_attachment_that_fits_one_queue_message(
    settings: Settings, fake_queue: FakeMailQueue
) -> None:
    attachment = {"filename": "ok.bin", "content": base64.b64encode(bytes(20_000)).decode()}

    submit(body(message(attachments=[attachment])), settings, fake_queue)

    # 64 KiB of base64 on the queue is 48 KiB of JSON.
    assert len(fake_queue.messages[0].text.encode()) <= 48 * 1024


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"{",
        b"{'from': 'x'}",
        b"not json",
        b'{"to": [}',
        b"\xff\xfe{}",
        b"[]",
        b'"text"',
        b"null",
    ],
)
def test_should_refuse_a_body_that_is_not_a_json_object_pointing_at_the_whole(
    content: bytes, settings: Settings, fake_queue: FakeMailQueue
) -> None:
    rejection = refused(content, settings, fake_queue)

    assert isinstance(rejection, InvalidMessage)
    assert [p.pointer for p in rejection.problems] == ["#"]
    assert rejection.problems[0].detail


@pytest.mark.parametrize(
    "sender",
    [
        "noreply@example.com",
        "NoReply@Example.COM",
        "Mailgate <noreply@example.com>",
        {"email": "noreply@example.com", "name": "Mailgate"},
        "anyone@example.org",
        "Anyone@EXAMPLE.ORG",
    ],
)
def test_should_accept_a_sender_listed_by_address_or_domain(
    sender: Any, settings: Settings, fake_queue: FakeMailQueue
) -> None:
    submit(body(message(**{"from": sender})), settings, fake_queue)

    assert len(fake_queue.messages) == 1


@pytest.mark.parametrize(
    "sender",
    [
        "other@example.com",
        "noreply@mail.example.com",
        "anyone@mail.example.org",
        "anyone@notexample.org",
        "anyone@example.org.attacker.net",
        "noreply@example.com.attacker.net",
        "example.org@attacker.net",
    ],
)
def test_should_refuse_sender_outside_allowed_senders_with_403(
    sender: str, settings: Settings, fake_queue: FakeMailQueue
) -> None:
    rejection = refused(body(message(**{"from": sender})), settings, fake_queue)

    assert isinstance(rejection, SenderNotAllowed)
    assert rejection.status == 403
    assert [p.pointer for p in rejection.problems] == ["#/from"]
    assert "ALLOWED_SENDERS" in rejection.detail


def test_should_check_the_message_before_the_sender(
    settings: Settings, fake_queue: FakeMailQueue
) -> None:
    rejection = refused(
        body(message(**{"from": "other@example.com", "subject": ""})), settings, fake_queue
    )

    assert rejection.status == 400


@pytest.mark.parametrize(
    ("address", "allowed", "expected"),
    [
        ("a@example.com", ("a@example.com",), True),
        ("A@Example.com", ("a@example.com",), True),
        ("b@example.com", ("a@example.com",), False),
        ("b@example.com", ("@example.com",), True),
        ("b@sub.example.com", ("@example.com",), False),
        ("b@example.com", ("@sub.example.com",), False),
        ("b@example.com", ("a@example.com", "@example.com"), True),
    ],
)
def test_should_match_senders_by_address_or_exact_domain(
    address: str, allowed: tuple[str, ...], expected: bool
) -> None:
    assert sender_allowed(address, allowed) is expected


def test_should_let_storage_unavailable_through_without_accepting(
    settings: Settings, fake_queue: FakeMailQueue
) -> None:
    fake_queue.make_unavailable(["enqueue"])

    with pytest.raises(StorageUnavailable):
        submit(body(message()), settings, fake_queue)

    assert fake_queue.messages == []


def test_should_refuse_custom_args_that_reach_10000_bytes_once_the_gateway_id_is_added(
    settings: Settings, fake_queue: FakeMailQueue
) -> None:
    # Gateway ids are UUIDs (36 characters) but the size rule reserves room for only 32, so
    # this message is accepted, then SendGrid answers 400 and it is dead-lettered.
    gateway_id = str(uuid.uuid4())
    document = message(custom_args=custom_args_totalling(10_000))
    sent_args = {**document["custom_args"], "mailgate_id": gateway_id}
    assert len(json.dumps(sent_args).encode()) == 10_000

    rejection = refused(body(document), settings, fake_queue, new_id=gateway_id)

    assert [p.pointer for p in rejection.problems] == ["#/custom_args"]
    assert "10000 bytes" in rejection.problems[0].detail
