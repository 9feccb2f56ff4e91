from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest

from shared.delivery import DeliveryOutcome, deliver_message, retry_delay_seconds
from shared.errors import (
    DeliveryError,
    PermanentDeliveryError,
    RetryableDeliveryError,
    StorageUnavailable,
)
from shared.models import QueueEnvelope
from shared.sendgrid_client import build_payload
from shared.settings import Settings
from tests.fakes import FakeMailQueue, FakeMailSender
from tests.samples import NOW, envelope, settings_with

LATER = NOW + timedelta(minutes=5)
SERVER_ERROR = RetryableDeliveryError(
    "SendGrid answered 503", status_code=503, provider_error="unavailable"
)
REFUSAL = PermanentDeliveryError(
    "SendGrid refused the message with 400",
    status_code=400,
    provider_error='{"errors":[{"field":"from","message":"not verified"}]}',
)


def deliver(
    content: bytes | QueueEnvelope,
    sender: FakeMailSender,
    queue: FakeMailQueue,
    settings: Settings,
) -> DeliveryOutcome:
    raw = content.to_json().encode() if isinstance(content, QueueEnvelope) else content
    return deliver_message(raw, sender=sender, queue=queue, settings=settings, now=lambda: LATER)


def poison_record(queue: FakeMailQueue) -> dict[str, Any]:
    [text] = queue.poison
    record: dict[str, Any] = json.loads(text)
    return record


def test_should_send_and_queue_nothing(settings: Settings, fake_queue: FakeMailQueue) -> None:
    sender = FakeMailSender("sg-123")
    queued = envelope(id="msg-1", attempt=2)

    outcome = deliver(queued, sender, fake_queue, settings)

    assert outcome == DeliveryOutcome("sent", "msg-1", 2, provider_message_id="sg-123")
    assert sender.payloads == [build_payload(queued)]
    assert sender.payloads[0]["personalizations"][0]["custom_args"]["mailgate_id"] == "msg-1"
    assert (fake_queue.messages, fake_queue.poison) == ([], [])


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

    assert outcome == DeliveryOutcome("dead_lettered", "msg-2", attempt, reason=REFUSAL.reason)
    assert fake_queue.messages == []
    record = poison_record(fake_queue)
    assert record["dead_letter"] == {
        "reason": "SendGrid refused the message with 400",
        "status_code": 400,
        "provider_error": '{"errors":[{"field":"from","message":"not verified"}]}',
        "attempts": attempt,
        "at": "2026-03-02T09:35:00Z",
    }
    assert {k: v for k, v in record.items() if k != "dead_letter"} == json.loads(queued.to_json())


def test_should_keep_a_dead_letter_readable_as_an_envelope(
    settings: Settings, fake_queue: FakeMailQueue
) -> None:
    queued = envelope(id="msg-3")

    deliver(queued, FakeMailSender(REFUSAL), fake_queue, settings)

    decoded = QueueEnvelope.model_validate_json(fake_queue.poison[0])
    assert decoded.model_copy(update={"dead_letter": None}) == queued
    assert decoded.dead_letter is not None
    assert decoded.dead_letter.at == LATER


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
        "retry_scheduled", "msg-4", attempt, retry_in_seconds=delay, reason=SERVER_ERROR.reason
    )
    [retry] = fake_queue.messages
    assert retry.delay_seconds == delay
    assert fake_queue.envelopes == [queued.model_copy(update={"attempt": attempt + 1})]
    assert fake_queue.poison == []


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
    timeout = RetryableDeliveryError("no answer from SendGrid: ReadTimeout", ambiguous=True)

    outcome = deliver(envelope(attempt=1), FakeMailSender(timeout), fake_queue, settings)

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
    assert outcome == DeliveryOutcome("dead_lettered", "msg-5", attempt, reason=reason)
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
    fake_queue: FakeMailQueue,
) -> None:
    settings = settings_with(MAX_DELIVERY_ATTEMPTS="4")
    sender = FakeMailSender(*([SERVER_ERROR] * 4))
    content = envelope(id="msg-6").to_json().encode()

    results = []
    for _ in range(4):
        results.append(deliver(content, sender, fake_queue, settings).result)
        if fake_queue.messages:
            content = fake_queue.messages.pop().text.encode()

    assert results == ["retry_scheduled"] * 3 + ["dead_lettered"]
    assert len(sender.payloads) == 4
    assert poison_record(fake_queue)["dead_letter"]["attempts"] == 4


@pytest.mark.parametrize(
    "content",
    [
        b"not json at all",
        b'{"hello": "world"}',
        b"[]",
        b"",
        b'{"version": 2, "id": "x"}',
        b'{"version": 1, "id": "x", "accepted_at": "2026-03-02T09:30:00Z", "message": {}}',
    ],
)
def test_should_dead_letter_an_unreadable_message_keeping_it_intact(
    content: bytes, settings: Settings, fake_queue: FakeMailQueue
) -> None:
    sender = FakeMailSender()

    outcome = deliver(content, sender, fake_queue, settings)

    assert (outcome.result, outcome.message_id) == ("dead_lettered", None)
    assert sender.payloads == []
    assert fake_queue.messages == []
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
    ("failure", "operation"),
    [
        (SERVER_ERROR, "enqueue"),
        (REFUSAL, "dead_letter"),
        (None, "dead_letter"),
    ],
    ids=["retry cannot be queued", "dead letter cannot be written", "unreadable message"],
)
def test_should_let_storage_unavailable_through_so_the_host_retries(
    failure: DeliveryError | None, operation: str, settings: Settings, fake_queue: FakeMailQueue
) -> None:
    fake_queue.make_unavailable([operation])
    content = envelope().to_json().encode() if failure is not None else b"garbage"

    with pytest.raises(StorageUnavailable):
        deliver(content, FakeMailSender(*([failure] if failure else [])), fake_queue, settings)

    assert (fake_queue.messages, fake_queue.poison) == ([], [])


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
def test_should_compute_the_retry_delay(
    attempt: int, base: float, maximum: float, retry_after: float | None, expected: int
) -> None:
    settings = settings_with(
        RETRY_BASE_DELAY_SECONDS=str(base), RETRY_MAX_DELAY_SECONDS=str(maximum)
    )

    assert retry_delay_seconds(attempt, settings, retry_after) == expected


def test_should_never_retry_sooner_than_sendgrid_asked_even_past_the_backoff_cap() -> None:
    # retry_delay_seconds promises "never sooner than SendGrid asked"; RETRY_MAX_DELAY_SECONDS
    # bounds the gateway's own backoff, but a retry before Retry-After only earns another 429
    # and burns an attempt.
    settings = settings_with(RETRY_BASE_DELAY_SECONDS="30", RETRY_MAX_DELAY_SECONDS="3600")

    assert retry_delay_seconds(1, settings, 7200) >= 7200
