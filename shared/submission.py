"""Accepting a message: check the request, wrap it in an envelope and queue it durably."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from pydantic import ValidationError

from shared.errors import (
    FieldProblem,
    InvalidMessage,
    PayloadTooLarge,
    SenderNotAllowed,
    StorageUnavailable,
    UnsupportedMediaType,
    json_pointer,
)
from shared.idempotency import IdempotencyStore, check_key
from shared.models import MailRequest, QueueEnvelope, field_problems
from shared.queue import MailQueue
from shared.sendgrid_v3.request import parse_mail_send
from shared.sendgrid_v3.schema import MailSend
from shared.settings import Settings
from shared.status import MessageState, MessageStatus, StatusStore

logger = logging.getLogger(__name__)

# A queue message holds 64 KiB of base64, so 48 KiB of JSON; keep 4 KiB of that free for
# the reason a dead letter adds to the same envelope.
MAX_QUEUED_JSON_BYTES = 48 * 1024 - 4 * 1024


@dataclass(frozen=True)
class AcceptedMessage:
    """A message that is durably on the mail queue."""

    id: str
    status: str = "queued"
    # True when an Idempotency-Key matched an earlier request: nothing new was queued.
    replayed: bool = False


def submit_message(
    body: bytes,
    content_type: str | None,
    *,
    settings: Settings,
    queue: MailQueue,
    statuses: StatusStore,
    keys: IdempotencyStore,
    now: Callable[[], datetime],
    new_id: Callable[[], str],
    idempotency_key: str | None = None,
) -> AcceptedMessage:
    """Validate a `POST /api/v1/messages` request and enqueue it; see `_queue_durably`."""
    _check_body(body, content_type, settings)
    accepted_at = now()
    try:
        request = MailRequest.model_validate_json(body, context={"now": accepted_at})
    except ValidationError as error:
        problems = field_problems(error)
        raise InvalidMessage(
            f"the message has {len(problems)} invalid field(s)", problems
        ) from None
    _check_sender(request, settings)
    envelope = QueueEnvelope(id=new_id(), accepted_at=accepted_at, message=request)
    return _queue_durably(envelope, body, queue, statuses, keys, idempotency_key)


def submit_sendgrid_mail(
    body: bytes,
    content_type: str | None,
    *,
    settings: Settings,
    queue: MailQueue,
    statuses: StatusStore,
    keys: IdempotencyStore,
    now: Callable[[], datetime],
    new_id: Callable[[], str],
    idempotency_key: str | None = None,
) -> AcceptedMessage:
    """Validate a SendGrid v3 Mail Send body and enqueue it as sent; see `_queue_durably`.

    The envelope carries the body exactly as the client sent it; delivery adds the gateway id.
    """
    _check_body(body, content_type, settings)
    accepted_at = now()
    document, mail = parse_mail_send(body, accepted_at)
    _check_sendgrid_senders(mail, settings)
    envelope = QueueEnvelope(id=new_id(), accepted_at=accepted_at, sendgrid=document)
    return _queue_durably(envelope, body, queue, statuses, keys, idempotency_key)


def _check_body(body: bytes, content_type: str | None, settings: Settings) -> None:
    """Refuse a body that is not JSON or too large, before reading it."""
    if not _is_json(content_type):
        raise UnsupportedMediaType(
            f"the body must be application/json, not {content_type or 'untyped'}"
        )
    if len(body) > settings.max_request_bytes:
        raise PayloadTooLarge(
            f"the body is {len(body)} bytes; this gateway accepts at most "
            f"{settings.max_request_bytes} (MAX_REQUEST_BYTES)"
        )


def _queue_durably(
    envelope: QueueEnvelope,
    body: bytes,
    queue: MailQueue,
    statuses: StatusStore,
    keys: IdempotencyStore,
    idempotency_key: str | None,
) -> AcceptedMessage:
    """Enqueue an envelope once per Idempotency-Key; raise RequestRejected or StorageUnavailable.

    The answer comes only after the enqueue succeeded. The status record is written after the
    enqueue, so a failed enqueue leaves no record claiming the message was queued.
    """
    _check_fits_queue(envelope)
    claim = None
    if idempotency_key is not None:
        claim = keys.claim(check_key(idempotency_key), body, envelope.id, envelope.accepted_at)
        if claim.replay:
            return AcceptedMessage(claim.record.message_id, replayed=True)
        envelope = envelope.model_copy(update={"id": claim.record.message_id})
    try:
        queue.enqueue(envelope)
    except StorageUnavailable:
        if claim is not None:
            with contextlib.suppress(StorageUnavailable):
                keys.release(claim.record)
        raise
    _record_queued(envelope, statuses)
    if claim is not None:
        try:
            keys.complete(claim.record)
        except StorageUnavailable as error:
            # The key stays pending: a retry gets 409 until it times out, then the same id.
            logger.warning("Message %s: idempotency key not completed: %s", envelope.id, error)
    domains = envelope.recipient_domains()
    logger.info(
        "Message %s queued for %s recipient domain(s) %s",
        envelope.id,
        len(domains),
        ",".join(domains),
        extra={"mailgate_id": envelope.id},
    )
    return AcceptedMessage(envelope.id)


def _record_queued(envelope: QueueEnvelope, statuses: StatusStore) -> None:
    status = MessageStatus(
        id=envelope.id,
        state=MessageState.QUEUED,
        accepted_at=envelope.accepted_at,
        updated_at=envelope.accepted_at,
    )
    try:
        # Insert only: delivery may already have written a newer state.
        statuses.create(status)
    except StorageUnavailable as error:
        # The message is durably queued; delivery writes the record when it picks it up.
        logger.warning("Message %s queued but its status was not recorded: %s", envelope.id, error)


def sender_allowed(address: str, allowed_senders: tuple[str, ...]) -> bool:
    """Whether an address is listed itself or by its @domain."""
    address = address.lower()
    return address in allowed_senders or "@" + address.rpartition("@")[2] in allowed_senders


def _check_sender(request: MailRequest, settings: Settings) -> None:
    if not sender_allowed(request.from_.email, settings.allowed_senders):
        raise SenderNotAllowed(
            "this gateway does not send for that address (ALLOWED_SENDERS)",
            (FieldProblem("#/from", "is not an allowed sender"),),
        )


def _check_sendgrid_senders(mail: MailSend, settings: Settings) -> None:
    senders = [("#/from", mail.from_)] + [
        (json_pointer(["personalizations", index, "from"]), personalization.from_)
        for index, personalization in enumerate(mail.personalizations)
        if personalization.from_ is not None
    ]
    problems = tuple(
        FieldProblem(pointer, "The from address is not one this gateway may send for.")
        for pointer, sender in senders
        if not sender_allowed(sender.email, settings.allowed_senders)
    )
    if problems:
        raise SenderNotAllowed(
            "this gateway does not send for that address (ALLOWED_SENDERS)", problems
        )


def _check_fits_queue(envelope: QueueEnvelope) -> None:
    size = len(envelope.to_json().encode())
    if size > MAX_QUEUED_JSON_BYTES:
        if envelope.message is not None:
            has_attachments = bool(envelope.message.attachments)
        else:
            has_attachments = bool((envelope.sendgrid or {}).get("attachments"))
        problem = FieldProblem("#", "The message is too large for one queue message.")
        if has_attachments:
            problem = FieldProblem(
                "#/attachments",
                "The attachments make the message too large for one queue message.",
            )
        raise PayloadTooLarge(
            f"the message takes {size} bytes queued; one queue message holds at most "
            f"{MAX_QUEUED_JSON_BYTES}. Large attachments are not supported yet: send smaller ones",
            (problem,),
        )


def _is_json(content_type: str | None) -> bool:
    media_type = (content_type or "").partition(";")[0].strip().lower()
    return media_type == "application/json" or (
        media_type.startswith("application/") and media_type.endswith("+json")
    )
