"""Delivering one queued message: send it, schedule a retry, or dead-letter it with its reason."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol

from pydantic import ValidationError

from shared.errors import DeliveryError, PermanentDeliveryError, RetryableDeliveryError
from shared.models import DeadLetter, QueueEnvelope
from shared.queue import MailQueue
from shared.sendgrid_client import build_payload
from shared.settings import MAX_RETRY_DELAY_SECONDS, Settings

logger = logging.getLogger(__name__)


class MailSender(Protocol):
    """What delivery needs from a provider client: send one payload, return its provider id."""

    def send(self, payload: dict[str, Any]) -> str | None: ...


@dataclass(frozen=True)
class DeliveryOutcome:
    """What became of one delivery attempt."""

    result: Literal["sent", "retry_scheduled", "dead_lettered"]
    message_id: str | None
    attempt: int
    provider_message_id: str | None = None
    retry_in_seconds: int | None = None
    reason: str | None = None


def retry_delay_seconds(attempt: int, settings: Settings, retry_after: float | None) -> int:
    """Exponential backoff from the attempt that failed, never sooner than SendGrid asked."""
    backoff = min(
        settings.retry_base_delay_seconds * 2.0 ** (attempt - 1), settings.retry_max_delay_seconds
    )
    # Retrying before SendGrid's own Retry-After only earns another 429 and wastes an attempt.
    asked = min(retry_after or 0.0, MAX_RETRY_DELAY_SECONDS)
    return math.ceil(max(backoff, asked))


def deliver_message(
    body: bytes,
    *,
    sender: MailSender,
    queue: MailQueue,
    settings: Settings,
    now: Callable[[], datetime],
) -> DeliveryOutcome:
    """Try to send one queue message; the queue carries any retry or dead letter it leads to.

    Raises StorageUnavailable when a retry or dead letter cannot be written: the caller must
    then leave the message on the queue so that the host tries again.
    """
    try:
        envelope = QueueEnvelope.model_validate_json(body)
    except ValidationError as error:
        return _dead_letter_unreadable(body, error, queue, now)
    log_extra = {"mailgate_id": envelope.id, "attempt": envelope.attempt}
    try:
        provider_id = sender.send(build_payload(envelope))
    except PermanentDeliveryError as error:
        return _dead_letter(envelope, error, queue, now)
    except RetryableDeliveryError as error:
        if envelope.attempt >= settings.max_delivery_attempts:
            return _dead_letter(envelope, error, queue, now, gave_up=True)
        delay = retry_delay_seconds(envelope.attempt, settings, error.retry_after_seconds)
        queue.enqueue(
            envelope.model_copy(update={"attempt": envelope.attempt + 1}), delay_seconds=delay
        )
        logger.warning(
            "Message %s attempt %s failed (%s%s); retrying in %ss",
            envelope.id,
            envelope.attempt,
            error.reason,
            ", outcome unknown" if error.ambiguous else "",
            delay,
            extra=log_extra,
        )
        return DeliveryOutcome(
            "retry_scheduled",
            envelope.id,
            envelope.attempt,
            retry_in_seconds=delay,
            reason=error.reason,
        )
    logger.info(
        "Message %s sent on attempt %s to %s recipient domain(s) %s, SendGrid id %s",
        envelope.id,
        envelope.attempt,
        len(envelope.message.recipient_domains()),
        ",".join(envelope.message.recipient_domains()),
        provider_id,
        extra=log_extra,
    )
    return DeliveryOutcome("sent", envelope.id, envelope.attempt, provider_message_id=provider_id)


def _dead_letter(
    envelope: QueueEnvelope,
    error: DeliveryError,
    queue: MailQueue,
    now: Callable[[], datetime],
    *,
    gave_up: bool = False,
) -> DeliveryOutcome:
    reason = (
        f"gave up after {envelope.attempt} attempt(s): {error.reason}" if gave_up else error.reason
    )
    record = DeadLetter(
        reason=reason,
        status_code=error.status_code,
        provider_error=error.provider_error,
        attempts=envelope.attempt,
        at=now(),
    )
    queue.dead_letter(envelope.model_copy(update={"dead_letter": record}).to_json())
    logger.error(
        "Message %s dead-lettered to %s: %s",
        envelope.id,
        queue.poison_name,
        reason,
        extra={"mailgate_id": envelope.id, "attempt": envelope.attempt},
    )
    return DeliveryOutcome("dead_lettered", envelope.id, envelope.attempt, reason=reason)


def _dead_letter_unreadable(
    body: bytes, error: ValidationError, queue: MailQueue, now: Callable[[], datetime]
) -> DeliveryOutcome:
    reason = f"not a mailgate envelope: {error.error_count()} problem(s), first at " + (
        ".".join(str(p) for p in error.errors()[0]["loc"]) or "the top level"
    )
    record = DeadLetter(reason=reason, attempts=1, at=now())
    queue.dead_letter(
        json.dumps(
            {
                "dead_letter": record.model_dump(mode="json", exclude_none=True),
                "raw_message": body.decode("utf-8", errors="replace"),
            }
        )
    )
    logger.error("Unreadable queue message dead-lettered: %s", reason)
    return DeliveryOutcome("dead_lettered", None, 1, reason=reason)
