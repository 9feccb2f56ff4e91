from __future__ import annotations

import base64
import json
import logging
import uuid
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any, Literal

import pytest

from shared.clients import Client
from shared.errors import (
    IdempotencyKeyInUse,
    IdempotencyKeyReused,
    InvalidMessage,
    PayloadTooLarge,
    RequestRejected,
    SenderNotAllowed,
    StorageUnavailable,
    UnsupportedMediaType,
)
from shared.idempotency import PENDING_TIMEOUT
from shared.message_ids import accepted_at, new_message_id
from shared.models import MailRequest, QueueEnvelope
from shared.settings import Settings, sender_allowed
from shared.submission import (
    MAX_QUEUED_JSON_BYTES,
    AcceptedMessage,
    Submission,
)
from tests.fakes import (
    FakeIdempotencyStore,
    FakeMailQueue,
    FakeMessageBodyStore,
    Unmetered,
)
from tests.samples import (
    ACCEPTED,
    CLIENT,
    NOW,
    REFUSED,
    Refusal,
    body,
    custom_args_totalling,
    message,
    sendgrid_mail,
    settings_with,
)

JSON = "application/json"


def submit(
    content: bytes,
    settings: Settings,
    queue: FakeMailQueue,
    content_type: str | None = JSON,
    new_id: str = "msg-0001",
    *,
    bodies: FakeMessageBodyStore | None = None,
    keys: FakeIdempotencyStore | None = None,
    idempotency_key: str | None = None,
    now: datetime = NOW,
    client: Client = CLIENT,
    api: Literal["v1", "v3"] = "v1",
) -> AcceptedMessage:
    """Submit with in-memory stores, to the v1 or the SendGrid v3 entry point."""
    submission = Submission(
        settings=settings,
        queue=queue,
        bodies=bodies if bodies is not None else FakeMessageBodyStore(journal=queue.journal),
        keys=keys if keys is not None else FakeIdempotencyStore(),
        now=lambda: now,
        new_id=lambda _at, _client: new_id,
        rate=Unmetered(),
    )
    accept = submission.message if api == "v1" else submission.sendgrid_mail
    return accept(content, content_type, client, idempotency_key)


def refused(
    content: bytes,
    settings: Settings,
    queue: FakeMailQueue,
    content_type: str | None = JSON,
    new_id: str = "msg-0001",
    **options: Any,
) -> RequestRejected:
    bodies = options.pop("bodies", None) or FakeMessageBodyStore(journal=queue.journal)
    with pytest.raises(RequestRejected) as caught:
        submit(content, settings, queue, content_type, new_id, bodies=bodies, **options)
    assert queue.messages == [], "a refused message must not be queued"
    assert bodies.blobs == {}, "a refused message must leave no body behind"
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


def test_should_accept_an_attachment_that_fits_one_queue_message_without_a_blob(
    settings: Settings, fake_queue: FakeMailQueue, fake_bodies: FakeMessageBodyStore
) -> None:
    attachment = {"filename": "ok.bin", "content": base64.b64encode(bytes(20_000)).decode()}

    submit(body(message(attachments=[attachment])), settings, fake_queue, bodies=fake_bodies)

    # 64 KiB of base64 on the queue is 48 KiB of JSON.
    assert len(fake_queue.messages[0].text.encode()) <= 48 * 1024
    [queued] = fake_queue.envelopes
    assert (queued.blob, queued.message is not None) == (None, True)
    assert fake_bodies.blobs == {}


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


# --- one storage call: the status record is delivery's to write ------------------------------


def test_should_queue_the_message_in_one_storage_call_writing_no_status_record(
    settings: Settings, fake_queue: FakeMailQueue
) -> None:
    accepted = submit(body(message()), settings, fake_queue, new_id="msg-q1")

    assert accepted == AcceptedMessage(id="msg-q1", status="queued")
    assert fake_queue.journal == ["queue.enqueue"]
    # Delivery's first attempt claims the message by inserting its record.
    assert [(e.id, e.status_etag) for e in fake_queue.envelopes] == [("msg-q1", None)]


def test_should_give_the_message_an_id_that_says_when_and_for_whom_it_was_accepted(
    settings: Settings, fake_queue: FakeMailQueue
) -> None:
    # The id keeps milliseconds: the envelope's time is the id's, so its record says the same.
    now = NOW + timedelta(microseconds=123_456)
    submission = Submission(
        settings=settings,
        queue=fake_queue,
        bodies=FakeMessageBodyStore(journal=fake_queue.journal),
        keys=FakeIdempotencyStore(),
        now=lambda: now,
        new_id=new_message_id,
        rate=Unmetered(),
    )

    accepted = submission.message(body(message()), JSON, CLIENT)

    [queued] = fake_queue.envelopes
    assert queued.id == accepted.id
    assert queued.accepted_at == NOW + timedelta(microseconds=123_000)
    assert accepted_at(accepted.id, CLIENT.name) == queued.accepted_at
    assert accepted_at(accepted.id, "another client") is None


# --- Idempotency-Key -----------------------------------------------------------------------


def test_should_replay_the_first_answer_for_the_same_key_and_body(
    settings: Settings,
    fake_queue: FakeMailQueue,
    fake_keys: FakeIdempotencyStore,
) -> None:
    content = body(message())
    options: dict[str, Any] = {
        "keys": fake_keys,
        "idempotency_key": "order-42",
    }

    first = submit(content, settings, fake_queue, new_id="msg-k1", **options)
    again = submit(content, settings, fake_queue, new_id="msg-k2", **options)

    assert first == AcceptedMessage(id="msg-k1", status="queued", replayed=False)
    assert again == AcceptedMessage(id="msg-k1", status="queued", replayed=True)
    assert [e.id for e in fake_queue.envelopes] == ["msg-k1"]


def test_should_give_different_keys_different_messages(
    settings: Settings, fake_queue: FakeMailQueue, fake_keys: FakeIdempotencyStore
) -> None:
    content = body(message())

    first = submit(
        content, settings, fake_queue, new_id="msg-k3", keys=fake_keys, idempotency_key="a"
    )
    other = submit(
        content, settings, fake_queue, new_id="msg-k4", keys=fake_keys, idempotency_key="b"
    )

    assert (first.id, other.id) == ("msg-k3", "msg-k4")
    assert not other.replayed
    assert len(fake_queue.messages) == 2


def test_should_refuse_the_same_key_with_another_body_with_422(
    settings: Settings, fake_queue: FakeMailQueue, fake_keys: FakeIdempotencyStore
) -> None:
    submit(body(message()), settings, fake_queue, keys=fake_keys, idempotency_key="order-43")
    fake_queue.messages.clear()

    rejection = refused(
        body(message(subject="Another")),
        settings,
        fake_queue,
        keys=fake_keys,
        idempotency_key="order-43",
    )

    assert isinstance(rejection, IdempotencyKeyReused)
    assert rejection.status == 422


def test_should_refuse_a_key_still_being_accepted_with_409_then_finish_it_under_the_same_id(
    settings: Settings, fake_queue: FakeMailQueue, fake_keys: FakeIdempotencyStore
) -> None:
    # The first request queued its message but could not mark the key complete.
    fake_keys.make_unavailable(["complete"])
    content = body(message())
    first = submit(
        content, settings, fake_queue, new_id="msg-k5", keys=fake_keys, idempotency_key="k"
    )
    fake_keys.make_available()
    fake_queue.messages.clear()

    rejection = refused(
        content, settings, fake_queue, new_id="msg-k6", keys=fake_keys, idempotency_key="k"
    )
    taken_over = submit(
        content,
        settings,
        fake_queue,
        new_id="msg-k7",
        keys=fake_keys,
        idempotency_key="k",
        now=NOW + PENDING_TIMEOUT + timedelta(seconds=1),
    )

    assert first.id == "msg-k5"
    assert isinstance(rejection, IdempotencyKeyInUse)
    assert rejection.status == 409
    # The same id again: a copy already queued is the same message, and is sent once.
    assert taken_over == AcceptedMessage(id="msg-k5", status="queued", replayed=False)
    assert [e.id for e in fake_queue.envelopes] == ["msg-k5"]


def test_should_release_the_key_when_the_enqueue_fails_so_a_retry_is_accepted(
    settings: Settings,
    fake_queue: FakeMailQueue,
    fake_keys: FakeIdempotencyStore,
) -> None:
    content = body(message())
    options: dict[str, Any] = {
        "keys": fake_keys,
        "idempotency_key": "order-44",
    }
    fake_queue.make_unavailable(["enqueue"])
    with pytest.raises(StorageUnavailable):
        submit(content, settings, fake_queue, new_id="msg-k8", **options)

    assert [r.message_id for r in fake_keys.released] == ["msg-k8"]
    assert fake_keys.record_for("order-44") is None

    fake_queue.make_available()
    retried = submit(content, settings, fake_queue, new_id="msg-k9", **options)

    assert retried == AcceptedMessage(id="msg-k9", status="queued", replayed=False)


def test_should_still_refuse_with_503_when_the_key_cannot_be_released(
    settings: Settings, fake_queue: FakeMailQueue, fake_keys: FakeIdempotencyStore
) -> None:
    fake_queue.make_unavailable(["enqueue"])
    fake_keys.make_unavailable(["release"])

    with pytest.raises(StorageUnavailable, match="mail-outbound"):
        submit(body(message()), settings, fake_queue, keys=fake_keys, idempotency_key="k")


def test_should_queue_nothing_when_the_key_cannot_be_claimed(
    settings: Settings, fake_queue: FakeMailQueue, fake_keys: FakeIdempotencyStore
) -> None:
    fake_keys.make_unavailable(["claim"])

    with pytest.raises(StorageUnavailable):
        submit(body(message()), settings, fake_queue, keys=fake_keys, idempotency_key="k")

    assert fake_queue.messages == []


def test_should_accept_a_queued_message_whose_key_could_not_be_completed(
    settings: Settings, fake_queue: FakeMailQueue, fake_keys: FakeIdempotencyStore
) -> None:
    fake_keys.make_unavailable(["complete"])

    accepted = submit(body(message()), settings, fake_queue, keys=fake_keys, idempotency_key="k")

    assert accepted.id == "msg-0001"
    assert len(fake_queue.messages) == 1


@pytest.mark.parametrize(
    "key",
    ["", "x" * 256, "order\x0142", "tab\there", "line\nbreak", "caf\u00e9", "nul\x00", "\x7f"],
    ids=["empty", "256 chars", "SOH", "tab", "LF", "non-ASCII", "NUL", "DEL"],
)
def test_should_refuse_an_idempotency_key_that_is_not_1_to_255_printable_characters(
    key: str, settings: Settings, fake_queue: FakeMailQueue, fake_keys: FakeIdempotencyStore
) -> None:
    rejection = refused(body(message()), settings, fake_queue, keys=fake_keys, idempotency_key=key)

    assert isinstance(rejection, InvalidMessage)
    assert rejection.status == 400
    assert "Idempotency-Key" in rejection.detail
    assert fake_keys.records == {}


@pytest.mark.parametrize("key", ["k", "x" * 255, " ", "~!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}"])
def test_should_accept_any_idempotency_key_of_1_to_255_printable_characters(
    key: str, settings: Settings, fake_queue: FakeMailQueue, fake_keys: FakeIdempotencyStore
) -> None:
    submit(body(message()), settings, fake_queue, keys=fake_keys, idempotency_key=key)

    assert fake_keys.record_for(f"{CLIENT.name}:{key}") is not None
    assert len(fake_queue.messages) == 1


def test_should_keep_each_clients_idempotency_keys_apart(
    settings: Settings, fake_queue: FakeMailQueue, fake_keys: FakeIdempotencyStore
) -> None:
    other = replace(CLIENT, name="other-app")
    first = submit(
        body(message()),
        settings,
        fake_queue,
        "application/json",
        "m-1",
        keys=fake_keys,
        idempotency_key="order-7",
    )
    second = submit(
        body(message()),
        settings,
        fake_queue,
        "application/json",
        "m-2",
        keys=fake_keys,
        idempotency_key="order-7",
        client=other,
    )

    assert (first.replayed, second.replayed) == (False, False)
    assert [m.id for m in fake_queue.envelopes] == ["m-1", "m-2"]


def test_should_refuse_a_sender_the_gateway_allows_but_the_client_does_not(
    settings: Settings, fake_queue: FakeMailQueue
) -> None:
    narrow = replace(CLIENT, senders=("@example.org",))
    rejection = refused(body(message()), settings, fake_queue, client=narrow)

    assert isinstance(rejection, SenderNotAllowed)
    assert [p.pointer for p in rejection.problems] == ["#/from"]
    assert "'app' may not send as that address" in rejection.detail


def test_should_bound_a_clients_senders_by_allowed_senders(
    settings: Settings, fake_queue: FakeMailQueue
) -> None:
    wide = replace(CLIENT, senders=("@example.com", "@elsewhere.net"))
    rejection = refused(
        body(message(**{"from": "me@elsewhere.net"})), settings, fake_queue, client=wide
    )

    assert "ALLOWED_SENDERS" in rejection.detail


def test_should_record_the_submitting_client_on_the_envelope(
    settings: Settings, fake_queue: FakeMailQueue
) -> None:
    submit(body(message()), settings, fake_queue)

    assert [e.client for e in fake_queue.envelopes] == ["app"]


def test_should_check_the_message_before_the_idempotency_key(
    settings: Settings, fake_queue: FakeMailQueue, fake_keys: FakeIdempotencyStore
) -> None:
    # A request refused for its body must not use up its key.
    rejection = refused(
        body(message(subject="")), settings, fake_queue, keys=fake_keys, idempotency_key="k"
    )

    assert [p.pointer for p in rejection.problems] == ["#/subject"]
    assert fake_keys.records == {}


def test_should_leave_keys_alone_without_an_idempotency_key(
    settings: Settings, fake_queue: FakeMailQueue, fake_keys: FakeIdempotencyStore
) -> None:
    fake_keys.make_unavailable()

    accepted = submit(body(message()), settings, fake_queue, keys=fake_keys)

    assert not accepted.replayed
    assert len(fake_queue.messages) == 1


# --- claim-check: a body too large for one queue message goes to a blob ----------------------


def big_attachment(size: int = 45_000) -> dict[str, str]:
    return {"filename": "big.bin", "content": base64.b64encode(bytes(size)).decode()}


def envelope_size(document: dict[str, Any], message_id: str = "msg-0001") -> int:
    """How many bytes of JSON the document's envelope would take on the queue."""
    request = MailRequest.model_validate(document, context={"now": NOW})
    queued = QueueEnvelope(id=message_id, accepted_at=NOW, client=CLIENT.name, message=request)
    return len(queued.to_json().encode())


def test_should_keep_the_body_of_a_message_too_large_for_a_queue_message_in_a_blob(
    settings: Settings,
    fake_queue: FakeMailQueue,
    fake_bodies: FakeMessageBodyStore,
) -> None:
    document = message(attachments=[big_attachment()])

    accepted = submit(
        body(document),
        settings,
        fake_queue,
        new_id="msg-b1",
        bodies=fake_bodies,
    )

    assert accepted == AcceptedMessage(id="msg-b1", status="queued")
    [queued] = fake_queue.envelopes
    assert (queued.id, queued.accepted_at, queued.attempt) == ("msg-b1", NOW, 1)
    assert (queued.blob, queued.message, queued.sendgrid) == ("live/msg-b1.json", None, None)
    assert len(fake_queue.messages[0].text.encode()) < 200
    stored = fake_bodies.stored("live/msg-b1.json")
    assert (stored.version, stored.id) == (1, "msg-b1")
    assert stored.message == MailRequest.model_validate(document, context={"now": NOW})
    # The body is in place before anything on the queue points at it.
    assert fake_queue.journal == ["blobs.put", "queue.enqueue"]


def test_should_claim_check_a_large_message_without_attachments(
    settings: Settings, fake_queue: FakeMailQueue, fake_bodies: FakeMessageBodyStore
) -> None:
    document = message(html="<p>" + "x" * 60_000 + "</p>")

    submit(body(document), settings, fake_queue, bodies=fake_bodies)

    [queued] = fake_queue.envelopes
    assert queued.blob == "live/msg-0001.json"
    stored = fake_bodies.stored("live/msg-0001.json").message
    assert stored is not None
    assert stored.html == document["html"]


def test_should_queue_a_message_of_exactly_the_queue_limit_and_claim_check_one_byte_more(
    settings: Settings, fake_queue: FakeMailQueue, fake_bodies: FakeMessageBodyStore
) -> None:
    padding = MAX_QUEUED_JSON_BYTES - envelope_size(message(text="x"))
    fits, over = message(text="x" * (padding + 1)), message(text="x" * (padding + 2))
    assert (envelope_size(fits), envelope_size(over)) == (
        MAX_QUEUED_JSON_BYTES,
        MAX_QUEUED_JSON_BYTES + 1,
    )

    submit(body(fits), settings, fake_queue, new_id="msg-0001", bodies=fake_bodies)
    submit(body(over), settings, fake_queue, new_id="msg-0002", bodies=fake_bodies)

    first, second = fake_queue.envelopes
    assert (first.blob, first.message is not None) == (None, True)
    assert (second.blob, second.message) == ("live/msg-0002.json", None)
    assert list(fake_bodies.blobs) == ["live/msg-0002.json"]


@pytest.mark.parametrize(
    ("recipients", "claim_checked"),
    [
        ([f"user{i}@example.net" for i in range(1000)], False),
        (
            [f"Recipient Number {i} <recipient.{i}@customers.example.net>" for i in range(1000)],
            True,
        ),
    ],
    ids=["short addresses fit the queue", "named addresses take a blob"],
)
def test_should_carry_1000_recipients_intact_in_the_queue_or_a_blob(
    recipients: list[str],
    claim_checked: bool,
    settings: Settings,
    fake_queue: FakeMailQueue,
    fake_bodies: FakeMessageBodyStore,
) -> None:
    document = message(to=recipients)

    submit(body(document), settings, fake_queue, bodies=fake_bodies)

    [queued] = fake_queue.envelopes
    carried = fake_bodies.stored("live/msg-0001.json").message if claim_checked else queued.message
    assert (queued.blob is not None) is claim_checked
    assert carried == MailRequest.model_validate(document, context={"now": NOW})
    assert carried is not None
    assert len(carried.to) == 1000


def test_should_delete_the_blob_and_record_nothing_when_the_enqueue_fails(
    settings: Settings,
    fake_queue: FakeMailQueue,
    fake_bodies: FakeMessageBodyStore,
    fake_keys: FakeIdempotencyStore,
) -> None:
    fake_queue.make_unavailable(["enqueue"])

    with pytest.raises(StorageUnavailable, match="mail-outbound"):
        submit(
            body(message(attachments=[big_attachment()])),
            settings,
            fake_queue,
            new_id="msg-b2",
            bodies=fake_bodies,
            keys=fake_keys,
            idempotency_key="order-b2",
        )

    assert fake_bodies.blobs == {}
    assert fake_queue.journal == ["blobs.put", "blobs.delete"]
    assert fake_keys.record_for("order-b2") is None


def test_should_answer_503_with_the_enqueue_failure_when_the_blob_cannot_be_deleted_either(
    settings: Settings,
    fake_queue: FakeMailQueue,
    fake_bodies: FakeMessageBodyStore,
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake_queue.make_unavailable(["enqueue"])
    fake_bodies.make_unavailable(["delete"])

    with (
        caplog.at_level(logging.WARNING, logger="shared.submission"),
        pytest.raises(StorageUnavailable, match="mail-outbound"),
    ):
        submit(
            body(message(attachments=[big_attachment()])),
            settings,
            fake_queue,
            new_id="msg-b3",
            bodies=fake_bodies,
        )

    assert fake_queue.messages == []
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "msg-b3" in warning.getMessage()
    assert "live/msg-b3.json" in warning.getMessage()


def test_should_queue_nothing_when_the_blob_cannot_be_written(
    settings: Settings,
    fake_queue: FakeMailQueue,
    fake_bodies: FakeMessageBodyStore,
    fake_keys: FakeIdempotencyStore,
) -> None:
    fake_bodies.make_unavailable(["put"])

    with pytest.raises(StorageUnavailable, match="mail-large"):
        submit(
            body(message(attachments=[big_attachment()])),
            settings,
            fake_queue,
            bodies=fake_bodies,
            keys=fake_keys,
            idempotency_key="order-b4",
        )

    assert fake_queue.messages == []
    assert fake_keys.record_for("order-b4") is None


def test_should_not_touch_blob_storage_for_a_message_that_fits_one_queue_message(
    settings: Settings, fake_queue: FakeMailQueue, fake_bodies: FakeMessageBodyStore
) -> None:
    fake_bodies.make_unavailable()

    accepted = submit(body(message()), settings, fake_queue, bodies=fake_bodies)

    assert accepted.id == "msg-0001"
    assert len(fake_queue.messages) == 1


def test_should_accept_a_body_of_sendgrids_limit_by_default_and_refuse_one_byte_more(
    settings: Settings, fake_queue: FakeMailQueue, fake_bodies: FakeMessageBodyStore
) -> None:
    assert settings.max_request_bytes == 30_000_000

    submit(padded_to(30_000_000), settings, fake_queue, bodies=fake_bodies)
    rejection = refused(padded_to(30_000_001), settings, FakeMailQueue())

    [queued] = fake_queue.envelopes
    assert queued.blob is not None
    stored = fake_bodies.stored(queued.blob).message
    assert stored is not None
    assert stored.text is not None
    assert len(stored.text) == 30_000_000 - len(body(message(text="")))
    assert isinstance(rejection, PayloadTooLarge)
    assert "30000001" in rejection.detail


def test_should_replay_a_claim_checked_message_once_per_idempotency_key(
    settings: Settings,
    fake_queue: FakeMailQueue,
    fake_bodies: FakeMessageBodyStore,
    fake_keys: FakeIdempotencyStore,
) -> None:
    content = body(message(attachments=[big_attachment()]))
    options: dict[str, Any] = {"bodies": fake_bodies, "keys": fake_keys, "idempotency_key": "k"}

    first = submit(content, settings, fake_queue, new_id="msg-b5", **options)
    again = submit(content, settings, fake_queue, new_id="msg-b6", **options)

    assert (again.id, again.replayed) == (first.id, True)
    assert [e.blob for e in fake_queue.envelopes] == ["live/msg-b5.json"]
    assert list(fake_bodies.blobs) == ["live/msg-b5.json"]


def test_should_keep_the_body_out_of_the_logs(
    settings: Settings,
    fake_queue: FakeMailQueue,
    fake_bodies: FakeMessageBodyStore,
    caplog: pytest.LogCaptureFixture,
) -> None:
    document = message(subject="Secret subject", attachments=[big_attachment()])

    with caplog.at_level(logging.DEBUG):
        submit(body(document), settings, fake_queue, new_id="msg-b7", bodies=fake_bodies)

    log = caplog.text
    assert "msg-b7" in log
    assert "live/msg-b7.json" in log
    for secret in ("Secret subject", "someone@example.net", big_attachment()["content"][:100]):
        assert secret not in log


# --- SendGrid v3 bodies: checked their own way, then the same queue, status and keys --------


def submit_sendgrid(
    content: bytes,
    settings: Settings,
    queue: FakeMailQueue,
    content_type: str | None = JSON,
    new_id: str = "msg-v3",
    **options: Any,
) -> AcceptedMessage:
    return submit(
        content,
        settings,
        queue,
        content_type,
        new_id,
        api="v3",
        **options,
    )


def refused_sendgrid(
    content: bytes,
    settings: Settings,
    queue: FakeMailQueue,
    content_type: str | None = JSON,
    **options: Any,
) -> RequestRejected:
    with pytest.raises(RequestRejected) as caught:
        submit_sendgrid(content, settings, queue, content_type, **options)
    assert queue.messages == [], "a refused mail must not be queued"
    return caught.value


def test_should_queue_a_v3_body_exactly_as_the_client_sent_it(
    settings: Settings, fake_queue: FakeMailQueue
) -> None:
    accepted = submit_sendgrid(body(sendgrid_mail()), settings, fake_queue, new_id="msg-v3")

    assert accepted == AcceptedMessage(id="msg-v3", status="queued")
    [queued] = fake_queue.envelopes
    assert (queued.id, queued.accepted_at, queued.attempt) == ("msg-v3", NOW, 1)
    assert queued.message is None
    assert queued.sendgrid == sendgrid_mail()
    assert "mailgate_id" not in fake_queue.messages[0].text
    assert fake_queue.journal == ["queue.enqueue"]


def test_should_refuse_an_invalid_v3_body_with_sendgrids_wording(
    settings: Settings, fake_queue: FakeMailQueue
) -> None:
    document = sendgrid_mail(categories=["a", "a"])
    document["personalizations"][0]["to"][1]["email"] = "bob(at)example.net"

    rejection = refused_sendgrid(body(document), settings, fake_queue)

    assert isinstance(rejection, InvalidMessage)
    assert rejection.status == 400
    assert [p.pointer for p in rejection.problems] == [
        "#/personalizations/0/to/1/email",
        "#/categories",
    ]
    assert rejection.problems[0].detail == "Does not contain a valid address."


def test_should_refuse_a_callers_mailgate_id_in_a_v3_body(
    settings: Settings, fake_queue: FakeMailQueue
) -> None:
    rejection = refused_sendgrid(
        body(sendgrid_mail(custom_args={"mailgate_id": "mine"})), settings, fake_queue
    )

    assert isinstance(rejection, InvalidMessage)
    assert [p.pointer for p in rejection.problems] == ["#/custom_args/mailgate_id"]


def test_should_check_send_at_of_a_v3_body_against_the_accept_time(
    settings: Settings, fake_queue: FakeMailQueue
) -> None:
    too_far = int((NOW + timedelta(hours=72, seconds=1)).timestamp())
    content = body(sendgrid_mail(send_at=too_far))

    rejection = refused_sendgrid(content, settings, fake_queue)
    submit_sendgrid(content, settings, fake_queue, now=NOW + timedelta(seconds=1))

    assert [p.pointer for p in rejection.problems] == ["#/send_at"]
    assert len(fake_queue.messages) == 1


@pytest.mark.parametrize(
    "sender", ["noreply@example.com", "NoReply@Example.COM", "anyone@example.org"]
)
def test_should_accept_a_v3_sender_listed_by_address_or_domain(
    sender: str, settings: Settings, fake_queue: FakeMailQueue
) -> None:
    document = sendgrid_mail(**{"from": {"email": sender}})
    document["personalizations"][1]["from"] = {"email": "other@example.org", "name": "Other"}

    submit_sendgrid(body(document), settings, fake_queue)

    assert len(fake_queue.messages) == 1


def test_should_refuse_a_v3_sender_outside_allowed_senders_with_403(
    settings: Settings, fake_queue: FakeMailQueue
) -> None:
    document = sendgrid_mail(**{"from": {"email": "ceo@elsewhere.net"}})

    rejection = refused_sendgrid(body(document), settings, fake_queue)

    assert isinstance(rejection, SenderNotAllowed)
    assert rejection.status == 403
    assert [p.pointer for p in rejection.problems] == ["#/from"]
    assert "ALLOWED_SENDERS" in rejection.detail


def test_should_refuse_a_v3_personalization_from_outside_allowed_senders_with_403(
    settings: Settings, fake_queue: FakeMailQueue
) -> None:
    # SendGrid sends a personalization with its own `from`: it is checked like the top one.
    document = sendgrid_mail()
    document["personalizations"][1]["from"] = {"email": "noreply@example.com.attacker.net"}

    rejection = refused_sendgrid(body(document), settings, fake_queue)

    assert isinstance(rejection, SenderNotAllowed)
    assert [p.pointer for p in rejection.problems] == ["#/personalizations/1/from"]


def test_should_check_a_v3_body_before_its_senders(
    settings: Settings, fake_queue: FakeMailQueue
) -> None:
    document = sendgrid_mail(**{"from": {"email": "ceo@elsewhere.net"}}, subject="")

    assert refused_sendgrid(body(document), settings, fake_queue).status == 400


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded"])
def test_should_refuse_a_v3_body_not_sent_as_json_with_415_before_reading_it(
    content_type: str | None, settings: Settings, fake_queue: FakeMailQueue
) -> None:
    rejection = refused_sendgrid(b"not even json", settings, fake_queue, content_type)

    assert isinstance(rejection, UnsupportedMediaType)


def test_should_refuse_a_v3_body_over_max_request_bytes_with_413_before_reading_it(
    fake_queue: FakeMailQueue,
) -> None:
    settings = settings_with(MAX_REQUEST_BYTES="1024")

    rejection = refused_sendgrid(b"{" * 1025, settings, fake_queue)

    assert isinstance(rejection, PayloadTooLarge)
    assert "MAX_REQUEST_BYTES" in rejection.detail


def test_should_keep_a_v3_body_too_large_for_one_queue_message_in_a_blob(
    settings: Settings, fake_queue: FakeMailQueue, fake_bodies: FakeMessageBodyStore
) -> None:
    attachment = {"content": base64.b64encode(bytes(45_000)).decode(), "filename": "a.bin"}
    document = sendgrid_mail(attachments=[attachment])

    submit_sendgrid(body(document), settings, fake_queue, new_id="msg-v3big", bodies=fake_bodies)

    [queued] = fake_queue.envelopes
    assert (queued.blob, queued.sendgrid, queued.client) == ("live/msg-v3big.json", None, "app")
    stored = fake_bodies.stored("live/msg-v3big.json")
    assert stored.sendgrid == json.loads(body(document))


def test_should_replay_a_v3_body_sent_again_with_the_same_idempotency_key(
    settings: Settings, fake_queue: FakeMailQueue, fake_keys: FakeIdempotencyStore
) -> None:
    content = body(sendgrid_mail())

    first = submit_sendgrid(content, settings, fake_queue, keys=fake_keys, idempotency_key="k1")
    again = submit_sendgrid(
        content, settings, fake_queue, new_id="other", keys=fake_keys, idempotency_key="k1"
    )

    assert (first.id, first.replayed) == ("msg-v3", False)
    assert (again.id, again.replayed) == ("msg-v3", True)
    assert len(fake_queue.messages) == 1
    with pytest.raises(IdempotencyKeyReused):
        submit_sendgrid(
            body(sendgrid_mail(subject="Changed")),
            settings,
            fake_queue,
            keys=fake_keys,
            idempotency_key="k1",
        )


def test_should_log_only_the_recipient_domains_of_a_v3_body(
    settings: Settings, fake_queue: FakeMailQueue, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="shared.submission"):
        submit_sendgrid(body(sendgrid_mail()), settings, fake_queue)

    [record] = caplog.records
    assert record.getMessage() == (
        "Message msg-v3 queued for 4 recipient domain(s) "
        "elsewhere.example,example.com,example.net,partner.example.org"
    )
    assert "ann@" not in caplog.text
    assert "Your order" not in caplog.text
