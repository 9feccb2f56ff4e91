from __future__ import annotations

import json
import logging
import math
import random
from datetime import datetime, timedelta
from typing import Any

import pytest

import shared.delivery
from shared.activity import ActivityEvent
from shared.blobs import LargeMessageSlots, body_blob_name
from shared.delivery import (
    CLAIM_MARGIN_SECONDS,
    SENT_WRITE_ATTEMPTS,
    Delivery,
    DeliveryOutcome,
    retry_delay_seconds,
)
from shared.errors import (
    DeliveryError,
    PermanentDeliveryError,
    RetryableDeliveryError,
    StorageUnavailable,
)
from shared.message_ids import new_message_id
from shared.models import ProviderError, QueueEnvelope, StoredBody
from shared.replay_advice import (
    API_KEY,
    CAUSES,
    INVALID_REQUEST,
    OUTCOME_UNKNOWN,
    SENDER_IDENTITY,
    SENDER_NOT_ALLOWED,
    TOO_LARGE,
    UNAVAILABLE,
    Replay,
)
from shared.sendgrid_client import build_payload
from shared.settings import MAX_RETRY_DELAY_SECONDS, Settings
from shared.status import MessageState, MessageStatus
from tests.fakes import (
    FakeActivityLog,
    FakeMailQueue,
    FakeMailSender,
    FakeMessageBodyStore,
    FakeStatusStore,
    JitterAt,
    Journal,
)
from tests.samples import CLIENT, NOW, envelope, sendgrid_envelope, sendgrid_mail, settings_with

LATER = NOW + timedelta(minutes=5)
SERVER_ERROR = RetryableDeliveryError(
    "SendGrid answered 503", status_code=503, provider_error="unavailable"
)
TIMEOUT = RetryableDeliveryError("no answer from SendGrid: ReadTimeout", ambiguous=True)
REFUSAL = PermanentDeliveryError(
    "SendGrid refused the message with 400: not valid (field from)",
    status_code=400,
    provider_error='{"errors":[{"field":"from","message":"not valid"}]}',
    provider_errors=(ProviderError(message="not valid", field="from"),),
)
UNVERIFIED_SENDER = ProviderError(
    message="The from address does not match a verified Sender Identity.", field="from"
)
# host.json's visibilityTimeout: the host retries a message whose function raised after this.
HOST_RETRY = timedelta(seconds=30)
# The backoff at its ceiling, so that delays are those of the plain exponential schedule.
CEILING = JitterAt(1.0)


def deliver(
    content: bytes | QueueEnvelope,
    sender: FakeMailSender,
    queue: FakeMailQueue,
    settings: Settings,
    statuses: FakeStatusStore | None = None,
    rng: random.Random = CEILING,
    now: datetime = LATER,
    bodies: FakeMessageBodyStore | None = None,
    activity: FakeActivityLog | None = None,
) -> DeliveryOutcome:
    raw = content.to_json().encode() if isinstance(content, QueueEnvelope) else content
    delivery = Delivery(
        sender=sender,
        queue=queue,
        bodies=bodies if bodies is not None else FakeMessageBodyStore(journal=queue.journal),
        statuses=statuses if statuses is not None else FakeStatusStore(queue.journal),
        activity=activity if activity is not None else FakeActivityLog(),
        settings=settings,
        now=lambda: now,
        rng=rng,
    )
    return delivery.deliver(raw)


def put_back(queue: FakeMailQueue, original: bytes | QueueEnvelope) -> int:
    """The delay of the one message on the mail queue, checked to be `original` put back for
    later: every field as it was, `postponed` one more."""
    raw = original.to_json() if isinstance(original, QueueEnvelope) else original.decode()
    expected = json.loads(raw)
    expected["postponed"] = expected.get("postponed", 0) + 1
    [queued] = queue.messages
    assert json.loads(queued.text) == expected
    assert queue.journal.count("queue.put_back") == 1
    return queued.delay_seconds


def poison_record(queue: FakeMailQueue) -> dict[str, Any]:
    [text] = queue.poison_texts
    record: dict[str, Any] = json.loads(text)
    return record


def status_of(
    queued: QueueEnvelope,
    state: MessageState,
    *,
    attempts: int = 0,
    updated_at: Any = None,
) -> MessageStatus:
    return MessageStatus(
        id=queued.id,
        state=state,
        accepted_at=queued.accepted_at,
        updated_at=updated_at or queued.accepted_at,
        attempts=attempts,
    )


@pytest.fixture(autouse=True)
def _no_pause_between_sent_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    # The pause only spaces out the retries of the `sent` write; it proves nothing here.
    monkeypatch.setattr(shared.delivery, "SENT_WRITE_PAUSE_SECONDS", 0.0)


# --- sending, retrying and dead-lettering ---------------------------------------------------


def test_should_send_and_queue_nothing(settings: Settings, fake_queue: FakeMailQueue) -> None:
    sender = FakeMailSender("sg-123")
    queued = envelope(id="msg-1", attempt=2)

    outcome = deliver(queued, sender, fake_queue, settings)

    assert outcome == DeliveryOutcome(
        "sent", "msg-1", 2, provider_message_id="sg-123", provider="sendgrid"
    )
    assert sender.payloads == [build_payload(queued)]
    assert sender.payloads[0]["personalizations"][0]["custom_args"]["mailgate_id"] == "msg-1"
    assert (fake_queue.messages, fake_queue.poison_texts) == ([], [])


def test_should_send_a_queued_message_whose_send_at_has_passed(
    settings: Settings, fake_queue: FakeMailQueue
) -> None:
    sender = FakeMailSender()
    queued = envelope(send_at=(NOW + timedelta(minutes=1)).isoformat())

    outcome = deliver(queued, sender, fake_queue, settings)

    assert outcome.result == "sent"
    assert sender.payloads[0]["send_at"] == int((NOW + timedelta(minutes=1)).timestamp())


@pytest.mark.parametrize("attempt", [1, 3, 8])
def test_should_dead_letter_a_permanent_failure_at_once(
    attempt: int, settings: Settings, fake_queue: FakeMailQueue
) -> None:
    queued = envelope(id="msg-2", attempt=attempt)

    outcome = deliver(queued, FakeMailSender(REFUSAL), fake_queue, settings)

    assert outcome == DeliveryOutcome(
        "dead_lettered", "msg-2", attempt, reason=REFUSAL.reason, provider="sendgrid"
    )
    assert fake_queue.messages == []
    record = poison_record(fake_queue)
    assert record["dead_letter"] == {
        "reason": "SendGrid refused the message with 400: not valid (field from)",
        "status_code": 400,
        "provider_error": '{"errors":[{"field":"from","message":"not valid"}]}',
        "attempts": attempt,
        "at": "2026-03-02T09:35:00Z",
        "cause": INVALID_REQUEST,
        "provider_errors": [{"message": "not valid", "field": "from"}],
    }
    assert {k: v for k, v in record.items() if k != "dead_letter"} == json.loads(queued.to_json())


@pytest.mark.parametrize(
    ("failure", "attempt", "cause"),
    [
        (REFUSAL, 1, INVALID_REQUEST),
        (
            PermanentDeliveryError(
                "SendGrid refused the message with 403: ... (field from)",
                status_code=403,
                provider_errors=(UNVERIFIED_SENDER,),
            ),
            1,
            SENDER_IDENTITY,
        ),
        (
            PermanentDeliveryError("SendGrid refused the message with 401", status_code=401),
            1,
            API_KEY,
        ),
        (
            PermanentDeliveryError("SendGrid refused the message with 413", status_code=413),
            1,
            TOO_LARGE,
        ),
        (SERVER_ERROR, 8, UNAVAILABLE),
        (RetryableDeliveryError("cannot connect to SendGrid: ConnectError"), 8, UNAVAILABLE),
        (TIMEOUT, 8, OUTCOME_UNKNOWN),
    ],
    ids=["400", "unverified sender", "401", "413", "503 to the end", "no connection", "timeout"],
)
def test_should_record_the_cause_with_sendgrids_errors_in_the_dead_letter_and_the_status(
    failure: DeliveryError,
    attempt: int,
    cause: str,
    settings: Settings,
    fake_queue: FakeMailQueue,
    fake_statuses: FakeStatusStore,
) -> None:
    queued = envelope(id="msg-2c", attempt=attempt)

    deliver(queued, FakeMailSender(failure), fake_queue, settings, fake_statuses)

    dead_letter = poison_record(fake_queue)["dead_letter"]
    assert dead_letter["cause"] == cause
    shown = [e.model_dump() for e in failure.provider_errors]
    assert dead_letter.get("provider_errors") == (shown or None)
    failed = fake_statuses.records["msg-2c"]
    assert (failed.last_error_cause, failed.provider_errors) == (cause, failure.provider_errors)
    last_error = failed.to_document()["last_error"]
    assert {k: last_error[k] for k in ("cause", "replay", "action")} == (
        CAUSES[cause].to_document()
    )
    assert last_error.get("provider_errors") == (shown or None)


def test_should_dead_letter_a_sender_outside_allowed_senders_as_fixable_by_the_setting(
    fake_queue: FakeMailQueue, fake_statuses: FakeStatusStore
) -> None:
    # ALLOWED_SENDERS changed since the accept: the sender's domain is no longer in it.
    settings = settings_with(ALLOWED_SENDERS="@example.org")
    sender = FakeMailSender()

    outcome = deliver(envelope(id="msg-2d"), sender, fake_queue, settings, fake_statuses)

    assert outcome.result == "dead_lettered"
    assert sender.payloads == []
    assert poison_record(fake_queue)["dead_letter"]["cause"] == SENDER_NOT_ALLOWED
    advice = fake_statuses.records["msg-2d"].advice()
    assert advice is not None
    assert (advice.cause, advice.replay) == (SENDER_NOT_ALLOWED, Replay.AFTER_FIX)


def test_should_log_the_reason_with_sendgrids_message_and_whether_a_replay_helps(
    settings: Settings, fake_queue: FakeMailQueue, caplog: pytest.LogCaptureFixture
) -> None:
    refusal = PermanentDeliveryError(
        "SendGrid refused the message with 403: "
        + f"{UNVERIFIED_SENDER.message} (field {UNVERIFIED_SENDER.field})",
        status_code=403,
        provider_errors=(UNVERIFIED_SENDER,),
    )

    with caplog.at_level(logging.ERROR, logger="shared.delivery"):
        deliver(envelope(id="msg-2e"), FakeMailSender(refusal), fake_queue, settings)

    [record] = [r for r in caplog.records if "dead-lettered" in r.getMessage()]
    assert record.getMessage() == (
        f"Message msg-2e dead-lettered to {fake_queue.poison_name}: {refusal.reason} "
        "(cause sender_identity, replay after_fix)"
    )
    assert record.__dict__["cause"] == SENDER_IDENTITY


def test_should_keep_a_dead_letter_readable_as_an_envelope(
    settings: Settings, fake_queue: FakeMailQueue
) -> None:
    queued = envelope(id="msg-3")

    deliver(queued, FakeMailSender(REFUSAL), fake_queue, settings)

    decoded = QueueEnvelope.model_validate_json(fake_queue.poison_texts[0])
    assert decoded.model_copy(update={"dead_letter": None}) == queued
    assert decoded.dead_letter is not None
    assert decoded.dead_letter.at == LATER


def test_should_write_dead_letters_that_never_expire(
    settings: Settings, fake_queue: FakeMailQueue
) -> None:
    deliver(envelope(), FakeMailSender(REFUSAL), fake_queue, settings)

    assert fake_queue.poison_client.time_to_live == [-1]


@pytest.mark.parametrize(
    ("attempt", "delay"),
    [(1, 30), (2, 60), (3, 120), (4, 240), (5, 480), (6, 960), (7, 1920)],
)
def test_should_requeue_a_retryable_failure_with_exponential_backoff(
    attempt: int, delay: int, settings: Settings, fake_queue: FakeMailQueue
) -> None:
    queued = envelope(id="msg-4", attempt=attempt)

    outcome = deliver(queued, FakeMailSender(SERVER_ERROR), fake_queue, settings)

    assert outcome == DeliveryOutcome(
        "retry_scheduled",
        "msg-4",
        attempt,
        retry_in_seconds=delay,
        reason=SERVER_ERROR.reason,
        provider="sendgrid",
        next_provider="sendgrid",
    )
    [retry] = fake_queue.messages
    assert retry.delay_seconds == delay
    assert fake_queue.envelopes == [queued.model_copy(update={"attempt": attempt + 1})]
    assert fake_queue.poison_texts == []


def test_should_draw_the_retry_delay_from_the_delivery_random_source(
    settings: Settings, fake_queue: FakeMailQueue
) -> None:
    halfway = JitterAt(0.5)

    outcome = deliver(
        envelope(attempt=3), FakeMailSender(SERVER_ERROR), fake_queue, settings, rng=halfway
    )

    assert halfway.calls == [(0, 120)]
    assert outcome.retry_in_seconds == fake_queue.messages[0].delay_seconds == 60


def test_should_cap_the_backoff_at_retry_max_delay(fake_queue: FakeMailQueue) -> None:
    settings = settings_with(
        RETRY_BASE_DELAY_SECONDS="100", RETRY_MAX_DELAY_SECONDS="250", MAX_DELIVERY_ATTEMPTS="10"
    )

    deliver(envelope(attempt=3), FakeMailSender(SERVER_ERROR), fake_queue, settings)

    assert fake_queue.messages[0].delay_seconds == 250


def test_should_wait_as_long_as_sendgrid_asks_when_longer_than_the_backoff(
    settings: Settings, fake_queue: FakeMailQueue
) -> None:
    throttled = RetryableDeliveryError(
        "SendGrid answered 429", status_code=429, retry_after_seconds=600
    )

    outcome = deliver(envelope(attempt=1), FakeMailSender(throttled), fake_queue, settings)

    assert outcome.retry_in_seconds == 600
    assert fake_queue.messages[0].delay_seconds == 600


def test_should_keep_the_backoff_when_sendgrid_asks_for_less(
    settings: Settings, fake_queue: FakeMailQueue
) -> None:
    throttled = RetryableDeliveryError(
        "SendGrid answered 429", status_code=429, retry_after_seconds=5
    )

    deliver(envelope(attempt=3), FakeMailSender(throttled), fake_queue, settings)

    assert fake_queue.messages[0].delay_seconds == 120


def test_should_retry_an_ambiguous_timeout(settings: Settings, fake_queue: FakeMailQueue) -> None:
    outcome = deliver(envelope(attempt=1), FakeMailSender(TIMEOUT), fake_queue, settings)

    assert outcome.result == "retry_scheduled"
    assert [e.attempt for e in fake_queue.envelopes] == [2]


@pytest.mark.parametrize(("max_attempts", "attempt"), [(8, 8), (8, 9), (1, 1), (3, 3)])
def test_should_dead_letter_when_the_attempts_run_out(
    max_attempts: int, attempt: int, fake_queue: FakeMailQueue
) -> None:
    settings = settings_with(MAX_DELIVERY_ATTEMPTS=str(max_attempts))

    outcome = deliver(
        envelope(id="msg-5", attempt=attempt), FakeMailSender(SERVER_ERROR), fake_queue, settings
    )

    reason = f"gave up after {attempt} attempt(s): SendGrid answered 503"
    assert outcome == DeliveryOutcome(
        "dead_lettered", "msg-5", attempt, reason=reason, provider="sendgrid"
    )
    assert fake_queue.messages == []
    dead_letter = poison_record(fake_queue)["dead_letter"]
    assert dead_letter["reason"] == reason
    assert (dead_letter["status_code"], dead_letter["attempts"]) == (503, attempt)
    assert dead_letter["provider_error"] == "unavailable"


def test_should_retry_on_the_attempt_before_the_last(fake_queue: FakeMailQueue) -> None:
    settings = settings_with(MAX_DELIVERY_ATTEMPTS="3")

    outcome = deliver(envelope(attempt=2), FakeMailSender(SERVER_ERROR), fake_queue, settings)

    assert outcome.result == "retry_scheduled"
    assert [e.attempt for e in fake_queue.envelopes] == [3]


def test_should_deliver_a_message_through_every_attempt_then_dead_letter_it(
    fake_queue: FakeMailQueue, fake_statuses: FakeStatusStore
) -> None:
    settings = settings_with(MAX_DELIVERY_ATTEMPTS="4")
    sender = FakeMailSender(*([SERVER_ERROR] * 4))
    content = envelope(id="msg-6").to_json().encode()

    results = []
    for _ in range(4):
        results.append(deliver(content, sender, fake_queue, settings, fake_statuses).result)
        if fake_queue.messages:
            content = fake_queue.messages.pop().text.encode()

    assert results == ["retry_scheduled"] * 3 + ["dead_lettered"]
    assert len(sender.payloads) == 4
    assert poison_record(fake_queue)["dead_letter"]["attempts"] == 4
    assert fake_statuses.records["msg-6"].state is MessageState.FAILED
    assert fake_statuses.records["msg-6"].attempts == 4


# --- a SendGrid v3 body takes the same path ------------------------------------------------


def test_should_send_a_v3_body_as_the_client_sent_it_with_the_gateway_id(
    settings: Settings, fake_queue: FakeMailQueue, fake_statuses: FakeStatusStore
) -> None:
    sender = FakeMailSender("sg-v3")
    queued = sendgrid_envelope(id="msg-v3")

    outcome = deliver(queued, sender, fake_queue, settings, fake_statuses)

    assert outcome == DeliveryOutcome(
        "sent", "msg-v3", 1, provider_message_id="sg-v3", provider="sendgrid"
    )
    [payload] = sender.payloads
    assert {k: v for k, v in payload.items() if k != "personalizations"} == {
        k: v for k, v in sendgrid_mail().items() if k != "personalizations"
    }
    assert [p["custom_args"]["mailgate_id"] for p in payload["personalizations"]] == ["msg-v3"] * 2
    assert fake_statuses.records["msg-v3"].state is MessageState.SENT


def test_should_requeue_a_v3_body_unchanged_for_its_retry(
    settings: Settings, fake_queue: FakeMailQueue
) -> None:
    queued = sendgrid_envelope(id="msg-v3", attempt=2)

    outcome = deliver(queued, FakeMailSender(SERVER_ERROR), fake_queue, settings)

    assert outcome.result == "retry_scheduled"
    [retry] = fake_queue.envelopes
    assert retry == queued.model_copy(update={"attempt": 3})
    assert json.loads(fake_queue.messages[0].text)["sendgrid"] == sendgrid_mail()


def test_should_send_the_same_v3_payload_on_every_attempt(
    fake_queue: FakeMailQueue, fake_statuses: FakeStatusStore
) -> None:
    settings = settings_with(MAX_DELIVERY_ATTEMPTS="3")
    sender = FakeMailSender(SERVER_ERROR, SERVER_ERROR, "sg-v3")
    content = sendgrid_envelope(id="msg-v3").to_json().encode()

    results = []
    for _ in range(3):
        results.append(deliver(content, sender, fake_queue, settings, fake_statuses).result)
        if fake_queue.messages:
            content = fake_queue.messages.pop().text.encode()

    assert results == ["retry_scheduled", "retry_scheduled", "sent"]
    assert sender.payloads == [build_payload(sendgrid_envelope(id="msg-v3"))] * 3


@pytest.mark.parametrize(
    ("failure", "attempt"), [(REFUSAL, 1), (SERVER_ERROR, 8)], ids=["refused", "attempts run out"]
)
def test_should_dead_letter_a_v3_body_unchanged(
    failure: DeliveryError, attempt: int, settings: Settings, fake_queue: FakeMailQueue
) -> None:
    queued = sendgrid_envelope(id="msg-v3", attempt=attempt)

    outcome = deliver(queued, FakeMailSender(failure), fake_queue, settings)

    assert outcome.result == "dead_lettered"
    record = poison_record(fake_queue)
    assert record["sendgrid"] == sendgrid_mail()
    assert "mailgate_id" not in json.dumps(record["sendgrid"])
    assert {k: v for k, v in record.items() if k != "dead_letter"} == json.loads(queued.to_json())
    decoded = QueueEnvelope.model_validate_json(fake_queue.poison_texts[0])
    assert decoded.model_copy(update={"dead_letter": None}) == queued


def test_should_dead_letter_a_queued_v3_body_that_lost_its_personalizations(
    settings: Settings, fake_queue: FakeMailQueue
) -> None:
    sender = FakeMailSender()
    queued = QueueEnvelope(
        id="msg-v3",
        accepted_at=NOW,
        sendgrid={"from": {"email": "app@example.org"}, "personalizations": "none"},
    )

    outcome = deliver(queued, sender, fake_queue, settings)

    assert outcome.result == "dead_lettered"
    assert sender.payloads == []
    assert poison_record(fake_queue)["dead_letter"]["reason"] == (
        "the queued SendGrid body has no valid personalizations"
    )


@pytest.mark.parametrize(
    "content",
    [
        b"not json at all",
        b'{"hello": "world"}',
        b"[]",
        b"",
        b'{"version": 1, "id": "x", "accepted_at": "2026-03-02T09:30:00Z", "message": {}}',
        b'{"version": "2", "id": "x"}',
        b'{"version": true, "id": "x"}',
    ],
)
def test_should_dead_letter_an_unreadable_message_keeping_it_intact(
    content: bytes, settings: Settings, fake_queue: FakeMailQueue, fake_statuses: FakeStatusStore
) -> None:
    sender = FakeMailSender()

    outcome = deliver(content, sender, fake_queue, settings, fake_statuses)

    assert (outcome.result, outcome.message_id) == ("dead_lettered", None)
    assert sender.payloads == []
    assert fake_queue.messages == []
    assert fake_statuses.records == {}
    record = poison_record(fake_queue)
    assert record["raw_message"] == content.decode()
    assert record["dead_letter"]["reason"].startswith("not a mailgate envelope")
    assert record["dead_letter"]["attempts"] == 1
    assert record["dead_letter"]["at"] == "2026-03-02T09:35:00Z"


def test_should_dead_letter_a_message_that_is_not_utf8(
    settings: Settings, fake_queue: FakeMailQueue
) -> None:
    outcome = deliver(b"\xff\xfe{}", FakeMailSender(), fake_queue, settings)

    assert outcome.result == "dead_lettered"
    assert poison_record(fake_queue)["raw_message"].endswith("{}")


@pytest.mark.parametrize(
    ("failure", "operations"),
    [
        (SERVER_ERROR, ["enqueue", "put_back"]),
        (REFUSAL, ["dead_letter", "put_back"]),
        (None, ["dead_letter"]),
    ],
    ids=["retry cannot be queued", "dead letter cannot be written", "unreadable message"],
)
def test_should_let_storage_unavailable_through_when_the_queue_cannot_take_the_message_back(
    failure: DeliveryError | None,
    operations: list[str],
    settings: Settings,
    fake_queue: FakeMailQueue,
) -> None:
    fake_queue.make_unavailable(operations)
    content = envelope().to_json().encode() if failure is not None else b"garbage"

    with pytest.raises(StorageUnavailable):
        deliver(content, FakeMailSender(*([failure] if failure else [])), fake_queue, settings)

    assert (fake_queue.messages, fake_queue.poison_texts) == ([], [])


@pytest.mark.parametrize(
    ("failure", "operation"),
    [(SERVER_ERROR, "enqueue"), (REFUSAL, "dead_letter")],
    ids=["retry cannot be queued", "dead letter cannot be written"],
)
def test_should_put_the_message_back_when_its_outcome_cannot_be_queued(
    failure: DeliveryError, operation: str, settings: Settings, fake_queue: FakeMailQueue
) -> None:
    fake_queue.make_unavailable([operation])
    queued = envelope(id="msg-back")

    outcome = deliver(queued, FakeMailSender(failure), fake_queue, settings)

    assert (outcome.result, outcome.message_id) == ("postponed", "msg-back")
    assert put_back(fake_queue, queued) == outcome.retry_in_seconds
    assert fake_queue.poison_texts == []


@pytest.mark.parametrize(
    ("failure", "unavailable"),
    [(SERVER_ERROR, []), (REFUSAL, []), (SERVER_ERROR, ["enqueue"])],
    ids=["retry", "dead letter", "put back"],
)
def test_should_name_the_message_in_the_queue_write_its_outcome_makes(
    failure: DeliveryError,
    unavailable: list[str],
    settings: Settings,
    fake_queue: FakeMailQueue,
    fake_statuses: FakeStatusStore,
) -> None:
    # Its id is the request's client request id, which Storage's logs keep (shared/message_ids.py).
    message_id = new_message_id(NOW, CLIENT.name)
    fake_queue.make_unavailable(unavailable)

    deliver(envelope(id=message_id), FakeMailSender(failure), fake_queue, settings, fake_statuses)

    written = [m.request_id for m in fake_queue.messages] + fake_queue.poison_request_ids
    assert written == [message_id]


# --- put back for later: what cannot be worked on now waits, without the host's budget ------


def test_should_wait_twice_as_long_each_time_a_message_is_put_back_up_to_five_minutes(
    settings: Settings, fake_queue: FakeMailQueue, fake_statuses: FakeStatusStore
) -> None:
    fake_statuses.make_unavailable(["claim"])
    text = envelope(id="msg-wait").to_json().encode()

    delays = []
    for _ in range(8):
        outcome = deliver(text, FakeMailSender(), fake_queue, settings, fake_statuses)
        [back] = fake_queue.messages
        fake_queue.messages.clear()
        assert outcome.retry_in_seconds == back.delay_seconds
        delays.append(back.delay_seconds)
        text = back.text.encode()

    assert delays == [15, 30, 60, 120, 240, 300, 300, 300]
    assert json.loads(text)["postponed"] == 8
    # Never sooner than half the wait, so that an outage is not hammered by every message.
    assert shared.delivery.postpone_delay_seconds(3, JitterAt(0.0)) == 30


def test_should_log_each_wait_with_the_id_and_the_reason_but_no_content(
    settings: Settings,
    fake_queue: FakeMailQueue,
    fake_statuses: FakeStatusStore,
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake_statuses.make_unavailable(["claim"])

    with caplog.at_level(logging.WARNING, logger="shared.delivery"):
        deliver(
            envelope(id="msg-log", subject="Secret plans"),
            FakeMailSender(),
            fake_queue,
            settings,
            fake_statuses,
        )

    [record] = [r for r in caplog.records if "put back" in r.getMessage()]
    assert record.getMessage().startswith(
        "Message msg-log put back for 15s (time 1; nothing was sent): table mailstatus"
    )
    assert "Secret plans" not in record.getMessage()
    assert getattr(record, "mailgate_id", None) == "msg-log"


def test_should_start_a_retry_copy_with_no_waits_counted(
    settings: Settings, fake_queue: FakeMailQueue
) -> None:
    waited = envelope(id="msg-fresh").model_copy(update={"postponed": 4})

    deliver(waited, FakeMailSender(SERVER_ERROR), fake_queue, settings)

    [retry] = fake_queue.envelopes
    assert (retry.attempt, retry.postponed) == (2, None)


# --- envelopes across versions: a rolling deploy runs old and new workers on one queue ------

UNKNOWN_FIELDS = {"priority": "high", "routing": {"provider": "acs", "weight": 2}}


def test_should_send_an_envelope_with_fields_this_version_does_not_know(
    settings: Settings, fake_queue: FakeMailQueue
) -> None:
    text = json.dumps({**json.loads(envelope(id="msg-new").to_json()), **UNKNOWN_FIELDS})
    sender = FakeMailSender("sg-new")

    outcome = deliver(text.encode(), sender, fake_queue, settings)

    assert (outcome.result, outcome.message_id) == ("sent", "msg-new")
    assert "priority" not in json.dumps(sender.payloads[0])


@pytest.mark.parametrize(
    "failure", [SERVER_ERROR, REFUSAL, None], ids=["retry", "dead letter", "wait"]
)
def test_should_keep_fields_this_version_does_not_know_in_every_copy_it_writes(
    failure: DeliveryError | None,
    settings: Settings,
    fake_queue: FakeMailQueue,
    fake_statuses: FakeStatusStore,
) -> None:
    text = json.dumps({**json.loads(envelope(id="msg-keep").to_json()), **UNKNOWN_FIELDS})
    if failure is None:
        fake_statuses.make_unavailable(["claim"])

    deliver(
        text.encode(),
        FakeMailSender(*[f for f in [failure] if f]),
        fake_queue,
        settings,
        fake_statuses,
    )

    [copy] = [m.text for m in fake_queue.messages] + fake_queue.poison_texts
    document = json.loads(copy)
    assert {name: document[name] for name in UNKNOWN_FIELDS} == UNKNOWN_FIELDS


def test_should_leave_an_envelope_of_a_newer_version_for_a_newer_worker(
    settings: Settings,
    fake_queue: FakeMailQueue,
    fake_statuses: FakeStatusStore,
    caplog: pytest.LogCaptureFixture,
) -> None:
    text = json.dumps({"version": 3, "id": "msg-v3", "body": {"anything": "new"}}).encode()
    sender = FakeMailSender()

    with caplog.at_level(logging.WARNING, logger="shared.delivery"):
        outcome = deliver(text, sender, fake_queue, settings, fake_statuses)

    assert outcome.result == "postponed"
    # Unchanged, to the byte: this worker cannot know what a version 3 field means.
    assert [(m.text.encode(), m.delay_seconds) for m in fake_queue.messages] == [
        (text, shared.delivery.NEWER_VERSION_DELAY_SECONDS)
    ]
    assert (sender.payloads, fake_queue.poison_texts, fake_statuses.records) == ([], [], {})
    assert any(
        "version 3, newer than this worker reads (2)" in r.getMessage() for r in caplog.records
    )


def test_should_leave_a_message_whose_stored_body_a_newer_version_wrote(
    settings: Settings,
    fake_queue: FakeMailQueue,
    fake_bodies: FakeMessageBodyStore,
    fake_statuses: FakeStatusStore,
) -> None:
    _, queued = claim_checked(fake_bodies, id="msg-bv2")
    fake_bodies.blobs["live/msg-bv2.json"] = b'{"version": 2, "id": "msg-bv2", "parts": []}'
    sender = FakeMailSender()

    outcome = deliver(queued, sender, fake_queue, settings, fake_statuses, bodies=fake_bodies)

    assert outcome.result == "postponed"
    assert [m.text for m in fake_queue.messages] == [queued.to_json()]
    assert (sender.payloads, fake_queue.poison_texts) == ([], [])
    assert "live/msg-bv2.json" in fake_bodies.blobs


# --- the status record: transitions --------------------------------------------------------


def test_should_move_the_status_from_queued_through_sending_to_sent(
    settings: Settings,
    fake_queue: FakeMailQueue,
    fake_statuses: FakeStatusStore,
    journal: Journal,
) -> None:
    queued = envelope(id="msg-20")
    fake_statuses.add(status_of(queued, MessageState.QUEUED))

    deliver(queued, FakeMailSender("sg-20", journal=journal), fake_queue, settings, fake_statuses)

    assert journal == ["status.claim sending", "sendgrid.send", "status.put sent"]
    sent = fake_statuses.records["msg-20"]
    assert (sent.state, sent.attempts, sent.provider_message_id) == (MessageState.SENT, 1, "sg-20")
    assert (sent.accepted_at, sent.updated_at, sent.next_attempt_at) == (NOW, LATER, None)
    assert (sent.last_status_code, sent.last_error, sent.ambiguous) == (None, None, False)


def test_should_clear_the_last_error_once_a_retry_is_sent(
    settings: Settings, fake_queue: FakeMailQueue, fake_statuses: FakeStatusStore
) -> None:
    queued = envelope(id="msg-21", attempt=2)
    fake_statuses.add(
        MessageStatus(
            id="msg-21",
            state=MessageState.RETRYING,
            accepted_at=NOW,
            updated_at=NOW,
            attempts=1,
            next_attempt_at=NOW + timedelta(seconds=30),
            last_status_code=503,
            last_error="SendGrid answered 503: busy",
            provider_errors=(ProviderError(message="busy"),),
            ambiguous=True,
        )
    )

    deliver(queued, FakeMailSender("sg-21"), fake_queue, settings, fake_statuses)

    sent = fake_statuses.records["msg-21"]
    assert (sent.state, sent.attempts, sent.next_attempt_at) == (MessageState.SENT, 2, None)
    assert (sent.last_status_code, sent.last_error, sent.ambiguous) == (None, None, False)
    assert (sent.provider_errors, sent.last_error_cause) == ((), None)
    assert sent.to_document()["sendgrid_message_id"] == "sg-21"
    assert "last_error" not in sent.to_document()


@pytest.mark.parametrize(
    ("failure", "ambiguous"), [(SERVER_ERROR, False), (TIMEOUT, True)], ids=["503", "timeout"]
)
def test_should_record_a_retry_with_its_time_error_and_ambiguity(
    failure: RetryableDeliveryError,
    ambiguous: bool,
    settings: Settings,
    fake_queue: FakeMailQueue,
    fake_statuses: FakeStatusStore,
    journal: Journal,
) -> None:
    queued = envelope(id="msg-22", attempt=2)
    fake_statuses.add(status_of(queued, MessageState.RETRYING, attempts=1))

    outcome = deliver(queued, FakeMailSender(failure), fake_queue, settings, fake_statuses)

    retrying = fake_statuses.records["msg-22"]
    assert retrying.state is MessageState.RETRYING
    assert retrying.attempts == 2
    assert outcome.retry_in_seconds == 60
    assert retrying.next_attempt_at == LATER + timedelta(seconds=60)
    assert (retrying.last_status_code, retrying.last_error) == (failure.status_code, failure.reason)
    assert retrying.ambiguous is ambiguous
    # Retrying is no failure yet: no cause, no advice to replay.
    assert retrying.last_error_cause is None
    assert retrying.to_document()["last_error"] == {
        "status_code": failure.status_code,
        "reason": failure.reason,
        "ambiguous": ambiguous,
    }
    # The next copy is queued before the status says retrying: a failed enqueue then leaves
    # this copy on the queue instead of a `retrying` record that makes it look stale.
    assert journal == ["status.claim sending", "queue.enqueue", "status.put retrying"]


@pytest.mark.parametrize(("failure", "attempt"), [(REFUSAL, 1), (SERVER_ERROR, 8), (TIMEOUT, 8)])
def test_should_write_the_dead_letter_before_the_failed_status(
    failure: DeliveryError,
    attempt: int,
    settings: Settings,
    fake_queue: FakeMailQueue,
    fake_statuses: FakeStatusStore,
    journal: Journal,
) -> None:
    queued = envelope(id="msg-23", attempt=attempt)

    outcome = deliver(queued, FakeMailSender(failure), fake_queue, settings, fake_statuses)

    assert outcome.result == "dead_lettered"
    assert journal == ["status.claim sending", "queue.dead_letter", "status.put failed"]
    failed = fake_statuses.records["msg-23"]
    assert (failed.state, failed.attempts, failed.last_status_code) == (
        MessageState.FAILED,
        attempt,
        failure.status_code,
    )
    assert failed.last_error == outcome.reason
    assert failed.ambiguous is (failure is TIMEOUT)


def test_should_not_mark_a_message_failed_when_its_dead_letter_cannot_be_written(
    settings: Settings, fake_queue: FakeMailQueue, fake_statuses: FakeStatusStore
) -> None:
    fake_queue.make_unavailable(["dead_letter"])

    outcome = deliver(
        envelope(id="msg-24"), FakeMailSender(REFUSAL), fake_queue, settings, fake_statuses
    )

    assert outcome.result == "postponed"
    assert fake_statuses.records["msg-24"].state is MessageState.SENDING


def test_should_claim_a_first_attempt_by_inserting_its_record_without_reading(
    settings: Settings,
    fake_queue: FakeMailQueue,
    fake_statuses: FakeStatusStore,
    journal: Journal,
) -> None:
    # The accept writes no record (shared/message_ids.py): the first attempt's insert is the claim.
    queued = envelope(id="msg-25", accepted_at=NOW - timedelta(minutes=1))
    fake_statuses.make_unavailable(["get"])  # a read would fail the delivery

    outcome = deliver(queued, FakeMailSender(), fake_queue, settings, fake_statuses)

    assert outcome.result == "sent"
    assert journal == ["status.claim sending", "status.put sent"]
    sent = fake_statuses.records["msg-25"]
    assert (sent.state, sent.accepted_at, sent.attempts) == (
        MessageState.SENT,
        NOW - timedelta(minutes=1),
        1,
    )


# --- the status record: the double-send guard -----------------------------------------------


def rival_writes(statuses: FakeStatusStore, status: MessageStatus) -> None:
    """Another worker writes the record between this worker's read and its claim."""
    statuses.add(status)


@pytest.mark.parametrize("state", [MessageState.SENT, MessageState.FAILED])
@pytest.mark.parametrize("attempt", [1, 2, 9])
def test_should_never_send_a_message_already_sent_or_failed(
    state: MessageState,
    attempt: int,
    settings: Settings,
    fake_queue: FakeMailQueue,
    fake_statuses: FakeStatusStore,
) -> None:
    queued = envelope(id="msg-30", attempt=attempt)
    before = fake_statuses.add(status_of(queued, state, attempts=1))
    sender = FakeMailSender()

    outcome = deliver(queued, sender, fake_queue, settings, fake_statuses)

    assert (outcome.result, outcome.message_id, outcome.attempt) == ("skipped", "msg-30", attempt)
    assert outcome.reason == f"it is already {state.value}"
    assert sender.payloads == []
    assert (fake_queue.messages, fake_queue.poison_texts) == ([], [])
    assert fake_statuses.records["msg-30"] == before


@pytest.mark.parametrize("attempt", [1, 2])
def test_should_skip_a_stale_copy_of_a_message_whose_next_attempt_is_scheduled(
    attempt: int, settings: Settings, fake_queue: FakeMailQueue, fake_statuses: FakeStatusStore
) -> None:
    queued = envelope(id="msg-31", attempt=attempt)
    before = fake_statuses.add(status_of(queued, MessageState.RETRYING, attempts=2))
    sender = FakeMailSender()

    outcome = deliver(queued, sender, fake_queue, settings, fake_statuses)

    assert outcome.result == "skipped"
    assert outcome.reason == "a later attempt (3) is already scheduled"
    assert sender.payloads == []
    assert fake_statuses.records["msg-31"] == before


def test_should_send_the_scheduled_attempt_of_a_retrying_message(
    settings: Settings, fake_queue: FakeMailQueue, fake_statuses: FakeStatusStore
) -> None:
    queued = envelope(id="msg-32", attempt=3)
    fake_statuses.add(status_of(queued, MessageState.RETRYING, attempts=2))

    outcome = deliver(queued, FakeMailSender(), fake_queue, settings, fake_statuses)

    assert outcome.result == "sent"
    assert fake_statuses.records["msg-32"].attempts == 3


# The default settings' SendGrid call: connect (5 s) plus read (30 s) timeouts.
SENDGRID_CALL = timedelta(seconds=35)
# A claim older than a whole call plus this margin belongs to a worker that died.
CLAIM_TIMEOUT = SENDGRID_CALL + timedelta(seconds=CLAIM_MARGIN_SECONDS)


@pytest.mark.parametrize(
    "age", [timedelta(0), SENDGRID_CALL, CLAIM_TIMEOUT - timedelta(microseconds=1)]
)
def test_should_leave_a_message_another_worker_is_sending(
    age: timedelta, settings: Settings, fake_queue: FakeMailQueue, fake_statuses: FakeStatusStore
) -> None:
    queued = envelope(id="msg-33")
    before = fake_statuses.add(
        status_of(queued, MessageState.SENDING, attempts=1, updated_at=LATER - age)
    )
    sender = FakeMailSender()

    outcome = deliver(queued, sender, fake_queue, settings, fake_statuses)

    assert outcome.result == "postponed"
    assert outcome.reason == "message msg-33 is being sent by another worker"
    assert sender.payloads == []
    assert fake_statuses.records["msg-33"] == before
    put_back(fake_queue, queued)
    assert fake_queue.poison_texts == []


@pytest.mark.parametrize("age", [CLAIM_TIMEOUT, timedelta(hours=1)])
def test_should_send_again_when_the_claim_is_older_than_a_whole_sendgrid_call(
    age: timedelta,
    settings: Settings,
    fake_queue: FakeMailQueue,
    fake_statuses: FakeStatusStore,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The documented crash window: the claimant died after SendGrid's answer, before `sent`.
    queued = envelope(id="msg-34")
    fake_statuses.add(status_of(queued, MessageState.SENDING, attempts=1, updated_at=LATER - age))
    sender = FakeMailSender("sg-34")

    with caplog.at_level(logging.WARNING, logger="shared.delivery"):
        outcome = deliver(queued, sender, fake_queue, settings, fake_statuses)

    assert outcome.result == "sent"
    assert len(sender.payloads) == 1
    assert fake_statuses.records["msg-34"].state is MessageState.SENT
    assert any("may duplicate" in r.getMessage() for r in caplog.records)


def test_should_wait_longer_for_a_claim_when_sendgrid_calls_may_take_longer(
    fake_queue: FakeMailQueue, fake_statuses: FakeStatusStore
) -> None:
    # 150 s is long past a default claim, but not past one 200 s SendGrid call.
    settings = settings_with(SENDGRID_TIMEOUT_SECONDS="200")
    queued = envelope(id="msg-35")
    fake_statuses.add(
        status_of(queued, MessageState.SENDING, updated_at=LATER - timedelta(seconds=150))
    )

    outcome = deliver(queued, FakeMailSender(), fake_queue, settings, fake_statuses)

    assert outcome.result == "postponed"
    assert outcome.reason is not None
    assert "another worker" in outcome.reason


def test_should_not_send_when_another_worker_claims_the_message_first(
    settings: Settings, fake_queue: FakeMailQueue, fake_statuses: FakeStatusStore
) -> None:
    queued = envelope(id="msg-36")
    fake_statuses.add(status_of(queued, MessageState.QUEUED))
    rival = status_of(queued, MessageState.SENDING, attempts=1, updated_at=LATER)
    fake_statuses.after_get = lambda _id: rival_writes(fake_statuses, rival)
    sender = FakeMailSender()

    outcome = deliver(queued, sender, fake_queue, settings, fake_statuses)

    assert outcome.result == "postponed"
    assert sender.payloads == []
    assert fake_statuses.records["msg-36"].state is MessageState.SENDING
    put_back(fake_queue, queued)


def test_should_not_send_when_another_worker_creates_the_missing_status_first(
    settings: Settings, fake_queue: FakeMailQueue, fake_statuses: FakeStatusStore
) -> None:
    # A retry whose record is missing reads it, then inserts it: the rival's insert came between.
    queued = envelope(id="msg-37", attempt=2)
    rival = status_of(queued, MessageState.SENDING, attempts=2, updated_at=LATER)
    fake_statuses.after_get = lambda _id: rival_writes(fake_statuses, rival)
    sender = FakeMailSender()

    outcome = deliver(queued, sender, fake_queue, settings, fake_statuses)

    assert outcome.result == "postponed"
    assert sender.payloads == []


def test_should_not_send_a_first_attempt_when_another_worker_inserted_its_record_first(
    settings: Settings, fake_queue: FakeMailQueue, fake_statuses: FakeStatusStore
) -> None:
    # A copy of the same queue message, picked up by another instance: its insert came first.
    queued = envelope(id="msg-37b")
    fake_statuses.add(status_of(queued, MessageState.SENDING, attempts=1, updated_at=LATER))
    sender = FakeMailSender()

    outcome = deliver(queued, sender, fake_queue, settings, fake_statuses)

    assert outcome.result == "postponed"
    assert sender.payloads == []
    assert fake_statuses.records["msg-37b"].updated_at == LATER


@pytest.mark.parametrize("operation", ["get", "claim"])
def test_should_send_nothing_when_the_status_cannot_be_read_or_claimed(
    operation: str, settings: Settings, fake_queue: FakeMailQueue, fake_statuses: FakeStatusStore
) -> None:
    queued = envelope(id="msg-38")
    fake_statuses.add(status_of(queued, MessageState.QUEUED))
    fake_statuses.make_unavailable([operation])
    sender = FakeMailSender()

    outcome = deliver(queued, sender, fake_queue, settings, fake_statuses)

    assert outcome.result == "postponed"
    assert sender.payloads == []
    put_back(fake_queue, queued)
    assert fake_queue.poison_texts == []
    assert fake_statuses.records["msg-38"].state is MessageState.QUEUED


def test_should_retry_the_sent_write_until_it_succeeds(
    settings: Settings, fake_queue: FakeMailQueue, fake_statuses: FakeStatusStore
) -> None:
    fake_statuses.fail_next("put", times=SENT_WRITE_ATTEMPTS - 1)
    sender = FakeMailSender("sg-39")

    outcome = deliver(envelope(id="msg-39"), sender, fake_queue, settings, fake_statuses)

    assert outcome.result == "sent"
    assert len(sender.payloads) == 1
    assert fake_statuses.records["msg-39"].state is MessageState.SENT
    assert fake_statuses.records["msg-39"].provider_message_id == "sg-39"


def test_should_log_but_not_raise_when_the_sent_write_fails_for_good(
    settings: Settings,
    fake_queue: FakeMailQueue,
    fake_statuses: FakeStatusStore,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Raising would make the host deliver the queue message again: a second mail.
    fake_statuses.make_unavailable(["put"])
    sender = FakeMailSender("sg-40")

    with caplog.at_level(logging.ERROR, logger="shared.delivery"):
        outcome = deliver(envelope(id="msg-40"), sender, fake_queue, settings, fake_statuses)

    assert outcome == DeliveryOutcome(
        "sent", "msg-40", 1, provider_message_id="sg-40", provider="sendgrid"
    )
    assert len(sender.payloads) == 1
    assert fake_queue.messages == []
    [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "msg-40" in record.getMessage()
    assert "could not be recorded" in record.getMessage()
    assert getattr(record, "mailgate_id", None) == "msg-40"


def test_should_not_lose_a_message_whose_retry_could_not_be_enqueued(
    settings: Settings, fake_queue: FakeMailQueue, fake_statuses: FakeStatusStore
) -> None:
    # The retry's status is written first so that, if the enqueue fails, "the host retries
    # this same attempt". But the host's redelivery of that same queue message (attempt 1)
    # then meets status `retrying` with attempts 1, is skipped as a stale copy and deleted:
    # the attempt-2 copy was never queued, and the message is gone while its status says
    # retrying.
    queued = envelope(id="msg-41")
    sender = FakeMailSender(SERVER_ERROR, "sg-41")
    fake_queue.fail_next("enqueue")
    first = deliver(queued, sender, fake_queue, settings, fake_statuses)
    assert first.result == "postponed"

    # The copy put back comes round again each time its wait is over.
    outcomes: list[str] = []
    now = LATER
    while len(outcomes) < 10:
        [back] = fake_queue.messages
        fake_queue.messages.clear()
        now += timedelta(seconds=back.delay_seconds)
        outcome = deliver(back.text.encode(), sender, fake_queue, settings, fake_statuses, now=now)
        outcomes.append(f"{outcome.result}: {outcome.reason}")
        if outcome.result != "postponed":
            break

    assert outcomes[-1].startswith("sent"), outcomes
    assert len(sender.payloads) == 2
    assert fake_statuses.records["msg-41"].state is MessageState.SENT


# --- a message an older accept queued with a record: claimed by its ETag, unread ---------------


def accepted_record(statuses: FakeStatusStore, queued: QueueEnvelope) -> QueueEnvelope:
    """Write the `queued` record as the accept did before it stopped writing one; the envelope
    carrying its ETag."""
    created = statuses.claim(MessageStatus.queued(queued.id, queued.accepted_at, queued.client))
    return queued.model_copy(update={"status_etag": created.etag})


def test_should_claim_the_accepted_record_by_its_etag_without_reading_it(
    settings: Settings, fake_queue: FakeMailQueue
) -> None:
    statuses = FakeStatusStore(fake_queue.journal)
    queued = accepted_record(statuses, envelope(id="msg-e1"))
    statuses.make_unavailable(["get"])  # a read would fail the delivery

    outcome = deliver(queued, FakeMailSender("sg-e1"), fake_queue, settings, statuses=statuses)

    assert outcome.result == "sent"
    assert fake_queue.journal == ["status.claim queued", "status.claim sending", "status.put sent"]
    record = statuses.records["msg-e1"]
    assert (record.state, record.attempts, record.client) == (MessageState.SENT, 1, CLIENT.name)
    assert record.accepted_at == queued.accepted_at


@pytest.mark.parametrize(
    ("written", "result"),
    [
        (MessageState.SENT, "skipped"),  # a copy that outlived the send
        (MessageState.FAILED, "skipped"),  # dead-lettered meanwhile
        (MessageState.QUEUED, "sent"),  # rewritten (a replay): read, then claimed again
    ],
)
def test_should_read_the_record_when_it_changed_since_the_accept(
    settings: Settings, fake_queue: FakeMailQueue, written: MessageState, result: str
) -> None:
    statuses = FakeStatusStore(fake_queue.journal)
    queued = accepted_record(statuses, envelope(id="msg-e2"))
    statuses.add(status_of(queued, written, attempts=1))
    sender = FakeMailSender("sg-e2")

    outcome = deliver(queued, sender, fake_queue, settings, statuses=statuses)

    assert outcome.result == result
    assert len(sender.payloads) == (1 if result == "sent" else 0)


def test_should_wait_for_another_worker_that_claimed_the_accepted_record_first(
    settings: Settings, fake_queue: FakeMailQueue
) -> None:
    statuses = FakeStatusStore(fake_queue.journal)
    queued = accepted_record(statuses, envelope(id="msg-e3"))
    statuses.add(status_of(queued, MessageState.SENDING, attempts=1, updated_at=LATER))
    sender = FakeMailSender("sg-e3")

    outcome = deliver(queued, sender, fake_queue, settings, statuses=statuses)

    assert outcome.result == "postponed"
    assert sender.payloads == []


def test_should_not_use_the_etag_on_a_later_attempt(
    settings: Settings, fake_queue: FakeMailQueue
) -> None:
    statuses = FakeStatusStore(fake_queue.journal)
    queued = accepted_record(statuses, envelope(id="msg-e4"))
    statuses.add(status_of(queued, MessageState.RETRYING, attempts=1))
    retry = queued.model_copy(update={"attempt": 2})
    statuses.make_unavailable(["get"])

    outcome = deliver(retry, FakeMailSender("sg-e4"), fake_queue, settings, statuses=statuses)

    # Had it claimed by the accept's ETag, the claim would have gone through unread.
    assert outcome.result == "postponed"
    assert statuses.journal.count("status.claim sending") == 0


# --- claim-check: a body kept in a blob ----------------------------------------------------


def claim_checked(
    bodies: FakeMessageBodyStore, *, id: str = "msg-c1", attempt: int = 1, **fields: Any
) -> tuple[QueueEnvelope, QueueEnvelope]:
    """A message whose body is in a blob, as submit leaves it: the full and the queued envelope."""
    full = envelope(id=id, attempt=attempt, **fields)
    queued, body = full.claim_checked(body_blob_name(id))
    bodies.put(body_blob_name(id), body.to_json())
    bodies.journal.clear()
    return full, queued


def test_should_send_the_body_from_its_blob_then_delete_the_blob_once_sent_is_recorded(
    settings: Settings,
    fake_queue: FakeMailQueue,
    fake_bodies: FakeMessageBodyStore,
    fake_statuses: FakeStatusStore,
    journal: Journal,
) -> None:
    full, queued = claim_checked(
        fake_bodies, attachments=[{"filename": "a.pdf", "content": "JVBE"}]
    )
    sender = FakeMailSender("sg-c1", journal=journal)

    outcome = deliver(queued, sender, fake_queue, settings, fake_statuses, bodies=fake_bodies)

    assert outcome == DeliveryOutcome(
        "sent", "msg-c1", 1, provider_message_id="sg-c1", provider="sendgrid"
    )
    assert sender.payloads == [build_payload(full)]
    assert sender.payloads[0]["attachments"][0]["content"] == "JVBE"
    assert fake_bodies.blobs == {}
    assert journal == ["status.claim sending", "sendgrid.send", "status.put sent", "blobs.delete"]
    assert fake_statuses.records["msg-c1"].state is MessageState.SENT


def test_should_dead_letter_a_message_whose_blob_is_missing_without_sending(
    settings: Settings,
    fake_queue: FakeMailQueue,
    fake_bodies: FakeMessageBodyStore,
    fake_statuses: FakeStatusStore,
) -> None:
    _, queued = claim_checked(fake_bodies, id="msg-c2")
    fake_bodies.blobs.clear()
    sender = FakeMailSender()

    outcome = deliver(queued, sender, fake_queue, settings, fake_statuses, bodies=fake_bodies)

    assert (outcome.result, outcome.message_id) == ("dead_lettered", "msg-c2")
    assert outcome.reason is not None
    assert "live/msg-c2.json" in outcome.reason
    assert "missing" in outcome.reason
    assert sender.payloads == []
    record = poison_record(fake_queue)
    assert (record["blob"], record["dead_letter"]["reason"]) == ("live/msg-c2.json", outcome.reason)
    assert "message" not in record
    failed = fake_statuses.records["msg-c2"]
    assert (failed.state, failed.last_error) == (MessageState.FAILED, outcome.reason)
    assert fake_queue.messages == []


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"not json", "not a mailgate message body"),
        (b'{"version": 1, "id": "msg-c3"}', "not a mailgate message body"),
        (
            StoredBody(id="msg-other", sendgrid={"personalizations": []}).to_json(),
            "belongs to message msg-other",
        ),
    ],
    ids=["not JSON", "no body", "another message's body"],
)
def test_should_dead_letter_a_message_whose_blob_is_not_its_body(
    content: bytes,
    expected: str,
    settings: Settings,
    fake_queue: FakeMailQueue,
    fake_bodies: FakeMessageBodyStore,
) -> None:
    _, queued = claim_checked(fake_bodies, id="msg-c3")
    fake_bodies.blobs["live/msg-c3.json"] = content
    sender = FakeMailSender()

    outcome = deliver(queued, sender, fake_queue, settings, bodies=fake_bodies)

    assert outcome.result == "dead_lettered"
    assert outcome.reason is not None
    assert expected in outcome.reason
    assert sender.payloads == []
    # Kept for the operator to look at, out of retention's way.
    assert fake_bodies.blobs == {"dead-letters/msg-c3.json": content}
    assert poison_record(fake_queue)["blob"] == "dead-letters/msg-c3.json"


def test_should_leave_the_message_on_the_queue_when_its_blob_cannot_be_read(
    settings: Settings,
    fake_queue: FakeMailQueue,
    fake_bodies: FakeMessageBodyStore,
    fake_statuses: FakeStatusStore,
) -> None:
    _, queued = claim_checked(fake_bodies, id="msg-c4")
    before = fake_statuses.add(status_of(queued, MessageState.QUEUED))
    fake_bodies.make_unavailable(["get"])
    sender = FakeMailSender()

    outcome = deliver(queued, sender, fake_queue, settings, fake_statuses, bodies=fake_bodies)

    assert outcome.result == "postponed"
    assert outcome.reason is not None
    assert "mail-large" in outcome.reason
    assert sender.payloads == []
    # No claim: the copy put back finds the message as it was, not "being sent".
    assert fake_statuses.records["msg-c4"] == before
    put_back(fake_queue, queued)
    assert fake_queue.poison_texts == []
    assert "live/msg-c4.json" in fake_bodies.blobs


def with_slots(
    slots: LargeMessageSlots,
    sender: FakeMailSender,
    queue: FakeMailQueue,
    bodies: FakeMessageBodyStore,
    settings: Settings,
) -> Delivery:
    """A delivery whose large messages take turns in `slots`."""
    return Delivery(
        sender=sender,
        queue=queue,
        bodies=bodies,
        statuses=FakeStatusStore(queue.journal),
        activity=FakeActivityLog(),
        settings=settings,
        now=lambda: LATER,
        rng=CEILING,
        large_messages=slots,
    )


def test_should_put_back_a_large_message_while_every_large_message_slot_is_taken(
    settings: Settings, fake_queue: FakeMailQueue, fake_bodies: FakeMessageBodyStore
) -> None:
    _, large = claim_checked(fake_bodies, id="msg-big")
    slots = LargeMessageSlots(1, wait_seconds=0)
    sender = FakeMailSender("sg-small")
    delivery = with_slots(slots, sender, fake_queue, fake_bodies, settings)

    with slots.slot() as held:
        assert held
        waited = delivery.deliver(large.to_json().encode())
        # A message sent inside its queue message needs no slot.
        small = delivery.deliver(envelope(id="msg-small").to_json().encode())

    assert waited.result == "postponed"
    assert waited.reason is not None
    assert "LARGE_MESSAGES_AT_ONCE" in waited.reason
    assert small.result == "sent"
    assert len(sender.payloads) == 1
    put_back(fake_queue, large)
    fake_queue.messages.clear()
    sender.will("sg-big")
    # The slot is free again: now it goes.
    assert delivery.deliver(large.to_json().encode()).result == "sent"


def test_should_give_the_slot_back_when_a_large_delivery_fails(
    settings: Settings, fake_queue: FakeMailQueue, fake_bodies: FakeMessageBodyStore
) -> None:
    _, large = claim_checked(fake_bodies, id="msg-big2")
    slots = LargeMessageSlots(1, wait_seconds=0)
    delivery = with_slots(slots, FakeMailSender(REFUSAL), fake_queue, fake_bodies, settings)

    assert delivery.deliver(large.to_json().encode()).result == "dead_lettered"
    with slots.slot() as free:
        assert free


def test_should_retry_with_the_blob_reference_and_keep_the_blob(
    settings: Settings, fake_queue: FakeMailQueue, fake_bodies: FakeMessageBodyStore
) -> None:
    full, queued = claim_checked(fake_bodies, id="msg-c5")
    sender = FakeMailSender(SERVER_ERROR, "sg-c5")

    first = deliver(queued, sender, fake_queue, settings, bodies=fake_bodies)

    assert first.result == "retry_scheduled"
    [retry] = fake_queue.envelopes
    assert (retry.attempt, retry.blob, retry.message) == (2, "live/msg-c5.json", None)
    assert len(fake_queue.messages[0].text) < 200
    assert fake_bodies.stored("live/msg-c5.json").message == full.message


def test_should_send_a_claim_checked_retry_intact_on_its_next_attempt(
    settings: Settings,
    fake_queue: FakeMailQueue,
    fake_bodies: FakeMessageBodyStore,
    fake_statuses: FakeStatusStore,
) -> None:
    full, queued = claim_checked(fake_bodies, id="msg-c6")
    sender = FakeMailSender(SERVER_ERROR, "sg-c6")
    deliver(queued, sender, fake_queue, settings, fake_statuses, bodies=fake_bodies)
    [retry] = fake_queue.messages

    outcome = deliver(
        retry.text.encode(), sender, fake_queue, settings, fake_statuses, bodies=fake_bodies
    )

    assert (outcome.result, outcome.attempt) == ("sent", 2)
    assert sender.payloads == [build_payload(full), build_payload(full)]
    assert fake_bodies.blobs == {}


def test_should_dead_letter_a_refused_message_naming_its_body_moved_out_of_the_live_prefix(
    settings: Settings,
    fake_queue: FakeMailQueue,
    fake_bodies: FakeMessageBodyStore,
    fake_statuses: FakeStatusStore,
    journal: Journal,
) -> None:
    _, queued = claim_checked(fake_bodies, id="msg-c7")
    content = fake_bodies.blobs["live/msg-c7.json"]
    fake_statuses.journal = fake_queue.journal = fake_bodies.journal = journal

    outcome = deliver(
        queued, FakeMailSender(REFUSAL), fake_queue, settings, fake_statuses, bodies=fake_bodies
    )

    assert outcome.result == "dead_lettered"
    record = poison_record(fake_queue)
    assert (record["id"], record["blob"], record["dead_letter"]["status_code"]) == (
        "msg-c7",
        "dead-letters/msg-c7.json",
        400,
    )
    assert "message" not in record
    # Retention deletes old bodies under live/ only: the dead letter's stays for the operator.
    assert fake_bodies.blobs == {"dead-letters/msg-c7.json": content}
    # The copy before the dead letter names it, the live blob deleted only after the status.
    assert [e for e in journal if e.startswith(("blobs", "queue.dead", "status.put"))] == [
        "blobs.copy",
        "queue.dead_letter",
        "status.put failed",
        "blobs.delete",
    ]


def test_should_put_a_message_back_unsent_to_dead_letter_later_when_its_body_cannot_be_kept(
    settings: Settings,
    fake_queue: FakeMailQueue,
    fake_bodies: FakeMessageBodyStore,
    fake_statuses: FakeStatusStore,
) -> None:
    _, queued = claim_checked(fake_bodies, id="msg-c7b")
    fake_bodies.make_unavailable(["copy"])

    outcome = deliver(
        queued, FakeMailSender(REFUSAL), fake_queue, settings, fake_statuses, bodies=fake_bodies
    )

    # As when the poison queue refuses it: nothing is dead-lettered naming a body in live/.
    assert outcome.result == "postponed"
    assert fake_queue.poison_texts == []
    assert list(fake_bodies.blobs) == ["live/msg-c7b.json"]
    assert fake_statuses.records["msg-c7b"].state is not MessageState.FAILED


def test_should_take_the_kept_copy_back_when_the_poison_queue_refuses_the_dead_letter(
    settings: Settings,
    fake_queue: FakeMailQueue,
    fake_bodies: FakeMessageBodyStore,
    fake_statuses: FakeStatusStore,
) -> None:
    _, queued = claim_checked(fake_bodies, id="msg-c7e")
    fake_queue.make_unavailable(["dead_letter"])

    outcome = deliver(
        queued, FakeMailSender(REFUSAL), fake_queue, settings, fake_statuses, bodies=fake_bodies
    )

    assert outcome.result == "postponed"
    # The live body stays for the copy put back; no copy is left that nothing would delete.
    assert list(fake_bodies.blobs) == ["live/msg-c7e.json"]


@pytest.mark.parametrize(
    "name", ["dead-letters/msg-c7c.json", "msg-c7c.json"], ids=["kept", "older root name"]
)
def test_should_send_a_body_kept_under_its_other_names_and_delete_it_once_sent(
    name: str,
    settings: Settings,
    fake_queue: FakeMailQueue,
    fake_bodies: FakeMessageBodyStore,
    fake_statuses: FakeStatusStore,
) -> None:
    full = envelope(id="msg-c7c")
    queued, body = full.claim_checked(name)
    fake_bodies.put(name, body.to_json())
    sender = FakeMailSender("sg-c7c")

    outcome = deliver(queued, sender, fake_queue, settings, fake_statuses, bodies=fake_bodies)

    assert outcome.result == "sent"
    assert sender.payloads == [build_payload(full)]
    assert fake_bodies.blobs == {}


def test_should_leave_a_body_under_an_older_root_name_where_it_is_when_dead_lettering(
    settings: Settings, fake_queue: FakeMailQueue, fake_bodies: FakeMessageBodyStore
) -> None:
    queued, body = envelope(id="msg-c7d").claim_checked("msg-c7d.json")
    fake_bodies.put("msg-c7d.json", body.to_json())

    deliver(queued, FakeMailSender(REFUSAL), fake_queue, settings, bodies=fake_bodies)

    # Never deleted by age: no move needed.
    assert poison_record(fake_queue)["blob"] == "msg-c7d.json"
    assert list(fake_bodies.blobs) == ["msg-c7d.json"]


def test_should_count_a_sent_message_whose_blob_cannot_be_deleted_as_sent(
    settings: Settings,
    fake_queue: FakeMailQueue,
    fake_bodies: FakeMessageBodyStore,
    fake_statuses: FakeStatusStore,
    caplog: pytest.LogCaptureFixture,
) -> None:
    _, queued = claim_checked(fake_bodies, id="msg-c8")
    fake_bodies.make_unavailable(["delete"])

    with caplog.at_level(logging.WARNING, logger="shared.delivery"):
        outcome = deliver(
            queued, FakeMailSender("sg-c8"), fake_queue, settings, fake_statuses, bodies=fake_bodies
        )

    assert outcome.result == "sent"
    assert fake_statuses.records["msg-c8"].state is MessageState.SENT
    assert "live/msg-c8.json" in fake_bodies.blobs
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "live/msg-c8.json" in warning.getMessage()


def test_should_keep_the_blob_when_sent_could_not_be_recorded(
    settings: Settings,
    fake_queue: FakeMailQueue,
    fake_bodies: FakeMessageBodyStore,
    fake_statuses: FakeStatusStore,
) -> None:
    # The record still says `sending`: a later copy must find the body to send, not a hole.
    _, queued = claim_checked(fake_bodies, id="msg-c9")
    fake_statuses.make_unavailable(["put"])

    outcome = deliver(
        queued, FakeMailSender("sg-c9"), fake_queue, settings, fake_statuses, bodies=fake_bodies
    )

    assert outcome.result == "sent"
    assert "live/msg-c9.json" in fake_bodies.blobs


def test_should_delete_a_leftover_blob_when_a_copy_of_a_sent_message_comes_back(
    settings: Settings,
    fake_queue: FakeMailQueue,
    fake_bodies: FakeMessageBodyStore,
    fake_statuses: FakeStatusStore,
) -> None:
    _, queued = claim_checked(fake_bodies, id="msg-c10")
    fake_statuses.add(status_of(queued, MessageState.SENT, attempts=1))
    sender = FakeMailSender()

    outcome = deliver(queued, sender, fake_queue, settings, fake_statuses, bodies=fake_bodies)

    assert outcome.result == "skipped"
    assert sender.payloads == []
    assert fake_bodies.blobs == {}


@pytest.mark.parametrize(
    ("state", "attempts"),
    [(MessageState.FAILED, 1), (MessageState.RETRYING, 2)],
    ids=["failed: the dead letter needs it", "retrying: the next attempt needs it"],
)
def test_should_keep_the_blob_when_skipping_a_copy_of_a_message_not_sent(
    state: MessageState,
    attempts: int,
    settings: Settings,
    fake_queue: FakeMailQueue,
    fake_bodies: FakeMessageBodyStore,
    fake_statuses: FakeStatusStore,
) -> None:
    _, queued = claim_checked(fake_bodies, id="msg-c11")
    fake_statuses.add(status_of(queued, state, attempts=attempts))

    outcome = deliver(
        queued, FakeMailSender(), fake_queue, settings, fake_statuses, bodies=fake_bodies
    )

    assert outcome.result == "skipped"
    assert "live/msg-c11.json" in fake_bodies.blobs


def test_should_not_read_the_blob_of_a_message_already_sent(
    settings: Settings,
    fake_queue: FakeMailQueue,
    fake_bodies: FakeMessageBodyStore,
    fake_statuses: FakeStatusStore,
) -> None:
    # A later attempt reads the record first. (A first attempt reads the body first, to choose
    # its provider before its claim: a copy of a sent message finds the claim taken, then skips.)
    _, queued = claim_checked(fake_bodies, id="msg-c12", attempt=2)
    fake_statuses.add(status_of(queued, MessageState.SENT, attempts=2))
    fake_bodies.make_unavailable(["get"])

    outcome = deliver(
        queued, FakeMailSender(), fake_queue, settings, fake_statuses, bodies=fake_bodies
    )

    assert outcome.result == "skipped"


def test_should_keep_the_claim_checked_body_out_of_the_logs(
    settings: Settings,
    fake_queue: FakeMailQueue,
    fake_bodies: FakeMessageBodyStore,
    caplog: pytest.LogCaptureFixture,
) -> None:
    _, queued = claim_checked(fake_bodies, id="msg-c13", subject="Secret subject")

    with caplog.at_level(logging.DEBUG):
        deliver(queued, FakeMailSender(REFUSAL), fake_queue, settings, bodies=fake_bodies)
        fake_bodies.blobs["live/msg-c13.json"] = (
            b'{"version": 1, "id": "msg-c13", "to": "x@y.example"}'
        )
        deliver(queued, FakeMailSender(), FakeMailQueue(), settings, bodies=fake_bodies)

    assert "msg-c13" in caplog.text
    for secret in ("Secret subject", "someone@example.net", "x@y.example"):
        assert secret not in caplog.text


# --- the retry delay -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attempt", "base", "maximum", "retry_after", "expected"),
    [
        (1, 30, 3600, None, 30),
        (2, 30, 3600, None, 60),
        (3, 30, 3600, None, 120),
        (7, 30, 3600, None, 1920),
        (8, 30, 3600, None, 3600),
        (20, 30, 3600, None, 3600),
        (100, 30, 3600, None, 3600),
        (1, 1, 1, None, 1),
        (1, 2.5, 3600, None, 3),
        (1, 30, 3600, 90, 90),
        (1, 30, 3600, 45.2, 46),
        (3, 30, 3600, 10, 120),
        (2, 30, 3600, 0, 60),
        (5, 30, 3600, 3600, 3600),
    ],
)
def test_should_compute_the_retry_delay_at_the_top_of_its_jitter(
    attempt: int, base: float, maximum: float, retry_after: float | None, expected: int
) -> None:
    settings = settings_with(
        RETRY_BASE_DELAY_SECONDS=str(base), RETRY_MAX_DELAY_SECONDS=str(maximum)
    )

    assert retry_delay_seconds(attempt, settings, retry_after, JitterAt(1.0)) == expected


@pytest.mark.parametrize(
    ("attempt", "retry_after", "expected"),
    [(1, None, 1), (8, None, 1), (1, 0, 1), (1, 0.2, 1), (1, 90, 90), (3, 45.2, 46)],
)
def test_should_compute_the_retry_delay_at_the_bottom_of_its_jitter(
    attempt: int, retry_after: float | None, expected: int, settings: Settings
) -> None:
    # Full jitter may draw 0: the delay is then at least 1 s, and never before Retry-After.
    assert retry_delay_seconds(attempt, settings, retry_after, JitterAt(0.0)) == expected


@pytest.mark.parametrize(("attempt", "ceiling"), [(1, 30), (3, 120), (7, 1920), (9, 3600)])
def test_should_spread_retry_delays_over_the_whole_backoff_window(
    attempt: int, ceiling: int, settings: Settings
) -> None:
    rng = random.Random(20260302)

    delays = [retry_delay_seconds(attempt, settings, None, rng) for _ in range(2000)]

    assert min(delays) >= 1
    assert max(delays) <= ceiling
    # Full jitter, not "equal jitter": both halves of the window are used.
    assert min(delays) <= ceiling * 0.05 + 1
    assert max(delays) >= ceiling * 0.95
    assert abs(sum(delays) / len(delays) - ceiling / 2) <= ceiling * 0.05


def test_should_draw_the_same_delays_from_the_same_seed(settings: Settings) -> None:
    first = [retry_delay_seconds(4, settings, None, random.Random(7)) for _ in range(3)]
    again = [retry_delay_seconds(4, settings, None, random.Random(7)) for _ in range(3)]
    drawn = random.Random(7).uniform(0, 240)

    assert first == again == [math.ceil(drawn)] * 3


def test_should_stay_within_the_window_without_a_random_source(settings: Settings) -> None:
    delays = {retry_delay_seconds(2, settings, None) for _ in range(200)}

    assert delays <= set(range(1, 61))
    assert len(delays) > 1


@pytest.mark.parametrize("fraction", [0.0, 0.5, 1.0])
def test_should_never_retry_sooner_than_sendgrid_asked_even_past_the_backoff_cap(
    fraction: float,
) -> None:
    # RETRY_MAX_DELAY_SECONDS bounds the gateway's own backoff, but a retry before
    # Retry-After only earns another 429 and burns an attempt.
    settings = settings_with(RETRY_BASE_DELAY_SECONDS="30", RETRY_MAX_DELAY_SECONDS="3600")

    assert retry_delay_seconds(1, settings, 7200, JitterAt(fraction)) == 7200
    assert retry_delay_seconds(1, settings, 7200.4, JitterAt(fraction)) == 7201


@pytest.mark.parametrize("retry_after", [MAX_RETRY_DELAY_SECONDS, 30 * 24 * 3600, 1e12])
def test_should_cap_retry_after_at_the_seven_days_a_queue_message_can_wait(
    retry_after: float, settings: Settings
) -> None:
    assert retry_delay_seconds(1, settings, retry_after, JitterAt(1.0)) == 7 * 24 * 3600
    assert MAX_RETRY_DELAY_SECONDS == 7 * 24 * 3600


def test_should_keep_the_longest_configured_backoff_within_seven_days() -> None:
    settings = settings_with(
        RETRY_BASE_DELAY_SECONDS="604800",
        RETRY_MAX_DELAY_SECONDS="604800",
        # Status records must outlive 8 attempts a week apart.
        STATUS_RETENTION_DAYS="60",
    )

    assert retry_delay_seconds(100, settings, None, JitterAt(1.0)) == 604_800


# --- the activity log: one row per outcome, for the operator console ------------------------


@pytest.mark.parametrize(
    ("outcome", "state"),
    [
        ("sg-1", MessageState.SENT),
        (SERVER_ERROR, MessageState.RETRYING),
        (REFUSAL, MessageState.FAILED),
    ],
    ids=["sent", "retried", "dead-lettered"],
)
def test_should_log_each_outcome_with_its_attempt_and_time(
    outcome: str | DeliveryError, state: MessageState, settings: Settings, fake_queue: FakeMailQueue
) -> None:
    activity = FakeActivityLog()

    deliver(
        envelope(id="msg-a1", attempt=2),
        FakeMailSender(outcome),
        fake_queue,
        settings,
        activity=activity,
    )

    assert activity.events == [ActivityEvent("msg-a1", state, 2, LATER)]


def test_should_log_the_last_attempt_that_runs_out_as_failed(fake_queue: FakeMailQueue) -> None:
    activity = FakeActivityLog()
    settings = settings_with(MAX_DELIVERY_ATTEMPTS="3")

    deliver(
        envelope(id="msg-a2", attempt=3),
        FakeMailSender(SERVER_ERROR),
        fake_queue,
        settings,
        activity=activity,
    )

    assert activity.events == [ActivityEvent("msg-a2", MessageState.FAILED, 3, LATER)]


def test_should_log_an_unreadable_message_as_failed_under_no_id(
    settings: Settings, fake_queue: FakeMailQueue
) -> None:
    activity = FakeActivityLog()

    deliver(b"not json", FakeMailSender(), fake_queue, settings, activity=activity)

    assert activity.events == [ActivityEvent(None, MessageState.FAILED, 1, LATER)]


def test_should_log_nothing_for_a_copy_that_is_skipped(
    settings: Settings, fake_queue: FakeMailQueue, fake_statuses: FakeStatusStore
) -> None:
    activity = FakeActivityLog()
    queued = envelope(id="msg-a3")
    fake_statuses.add(status_of(queued, MessageState.SENT, attempts=1))

    deliver(queued, FakeMailSender(), fake_queue, settings, fake_statuses, activity=activity)

    assert activity.events == []


def test_should_send_and_record_sent_even_when_the_activity_log_is_down(
    settings: Settings, fake_queue: FakeMailQueue, fake_statuses: FakeStatusStore
) -> None:
    activity = FakeActivityLog()
    activity.make_unavailable(["record"])
    sender = FakeMailSender()

    outcome = deliver(
        envelope(id="msg-a4"), sender, fake_queue, settings, fake_statuses, activity=activity
    )

    assert outcome.result == "sent"
    assert fake_statuses.records["msg-a4"].state is MessageState.SENT
    assert activity.events == []


def test_should_read_a_claim_checked_body_once_when_the_accepted_record_changed(
    settings: Settings,
    fake_queue: FakeMailQueue,
    fake_bodies: FakeMessageBodyStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    statuses = FakeStatusStore(fake_queue.journal)
    full, queued = claim_checked(fake_bodies, id="msg-c9")
    queued = accepted_record(statuses, queued)
    statuses.add(status_of(queued, MessageState.QUEUED))  # rewritten since: a replay, say
    reads: list[str] = []
    read = fake_bodies.get

    def counted_read(name: str) -> bytes | None:
        reads.append(name)
        return read(name)

    monkeypatch.setattr(fake_bodies, "get", counted_read)
    sender = FakeMailSender("sg-c9")

    outcome = deliver(queued, sender, fake_queue, settings, statuses, bodies=fake_bodies)

    assert outcome.result == "sent"
    assert sender.payloads == [build_payload(full)]
    assert reads == ["live/msg-c9.json"]


def test_should_add_each_outcome_to_the_record_a_retry_then_a_send(
    settings: Settings, fake_queue: FakeMailQueue, fake_statuses: FakeStatusStore
) -> None:
    first = envelope(id="msg-31", attempt=1)
    sender = FakeMailSender(SERVER_ERROR, "sg-31")

    deliver(first, sender, fake_queue, settings, fake_statuses)
    deliver(first.model_copy(update={"attempt": 2}), sender, fake_queue, settings, fake_statuses)

    record = fake_statuses.records["msg-31"]
    assert [(o.state, o.attempt) for o in record.outcomes] == [
        (MessageState.RETRYING, 1),
        (MessageState.SENT, 2),
    ]
