"""Accepting a message: check the request, wrap it in an envelope and queue it durably.

The checks run in this order, cheapest for the client's budget first: the body's type and size;
its fields (400); its senders and the client's features (403, shared/policy.py); whether a
provider of MAIL_PROVIDERS can carry it (422, shared/providers.py); whether its
emails could ever fit the client's rate (400); then they are taken from the rate (429), and
only a request that is queued keeps them. A 400 or 403 costs no rate, and an Idempotency-Key
replay costs none either (nothing new is sent).
Counting needs the recipients, so it comes after parsing; a client already over its rate is
refused before parsing, from what the instance knows (Gateway, ClientStore.refuse_if_spent).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from opentelemetry import trace
from pydantic import ValidationError

from shared import telemetry
from shared.blobs import MessageBodyStore, body_blob_name
from shared.clients import Client
from shared.errors import (
    FieldProblem,
    InvalidMessage,
    PayloadTooLarge,
    RequestRejected,
    SenderNotAllowed,
    StorageUnavailable,
    UnsupportedMediaType,
    json_pointer,
)
from shared.idempotency import IdempotencyStore, check_key
from shared.message_ids import accept_time
from shared.models import MAIL_REQUEST_LIMITS, MailRequest, QueueEnvelope, field_problems
from shared.policy import (
    check_allowed,
    check_v3_recipient_limit,
    check_within_rate,
    v1_emails,
    v1_refusals,
    v3_emails,
    v3_refusals,
)
from shared.providers import check_deliverable
from shared.queue import MailQueue
from shared.sendgrid_v3.request import parse_mail_send
from shared.sendgrid_v3.schema import MailSend
from shared.settings import Settings, sender_allowed

logger = logging.getLogger(__name__)

# A queue message holds 64 KiB of base64, so 48 KiB of JSON; keep 4 KiB of that free for
# the reason a dead letter adds to the same envelope. A larger envelope is claim-checked: its
# body goes to a blob and the queue message names it.
MAX_QUEUED_JSON_BYTES = 48 * 1024 - 4 * 1024


@dataclass(frozen=True)
class AcceptedMessage:
    """A message that is durably on the mail queue."""

    id: str
    status: str = "queued"
    # True when an Idempotency-Key matched an earlier request: nothing new was queued.
    replayed: bool = False


class RateMeter(Protocol):
    """Where a client's emails per minute are counted (shared.clients.ClientStore)."""

    def take(self, client: Client, emails: int = 1) -> Client:
        """Count the emails, or raise RateLimited."""
        ...

    def give_back(self, client: Client, emails: int) -> None:
        """Uncount emails taken for a request that was not queued after all."""
        ...


@dataclass(frozen=True)
class Submission:
    """Accepting messages: the settings, the stores and the clock it needs, built once."""

    settings: Settings
    queue: MailQueue
    bodies: MessageBodyStore
    keys: IdempotencyStore
    now: Callable[[], datetime]
    # The id of a message accepted at a time for a client (shared/message_ids.py).
    new_id: Callable[[datetime, str], str]
    rate: RateMeter

    def message(
        self,
        body: bytes,
        content_type: str | None,
        client: Client,
        idempotency_key: str | None = None,
    ) -> AcceptedMessage:
        """Validate a `POST /api/v1/messages` request and enqueue it; see `_queue_durably`."""
        _check_body(body, content_type, self.settings)
        problem = MAIL_REQUEST_LIMITS.first_problem(body)
        if problem is not None:
            raise InvalidMessage("the message has 1 invalid field(s)", (problem,))
        accepted_at = accept_time(self.now())
        try:
            request = MailRequest.model_validate_json(body, context={"now": accepted_at})
        except ValidationError as error:
            problems = field_problems(error)
            raise InvalidMessage(
                f"the message has {len(problems)} invalid field(s)", problems
            ) from None
        _check_senders([("#/from", request.from_.email)], client, self.settings)
        check_allowed(v1_refusals(request, client.features), client.name)
        check_deliverable(
            self.settings.mail_providers,
            request,
            acs_senders=self.settings.acs_email_senders,
        )
        emails = v1_emails(request)
        check_within_rate(emails, client.rate_per_minute, client.name, "#/to")
        envelope = QueueEnvelope(
            id=self.new_id(accepted_at, client.name),
            accepted_at=accepted_at,
            client=client.name,
            message=request,
        )
        return self._queue_durably(envelope, body, client, idempotency_key, emails)

    def sendgrid_mail(
        self,
        body: bytes,
        content_type: str | None,
        client: Client,
        idempotency_key: str | None = None,
    ) -> AcceptedMessage:
        """Validate a SendGrid v3 Mail Send body and enqueue it as sent; see `_queue_durably`.

        The envelope carries the body exactly as the client sent it; delivery adds the gateway
        id.
        """
        _check_body(body, content_type, self.settings)
        accepted_at = accept_time(self.now())
        document, mail = parse_mail_send(body, accepted_at)
        check_v3_recipient_limit(mail)
        _check_senders(_sendgrid_senders(mail), client, self.settings)
        check_allowed(v3_refusals(mail, client.features), client.name)
        check_deliverable(self.settings.mail_providers, None, document)
        emails = v3_emails(mail)
        check_within_rate(emails, client.rate_per_minute, client.name, "#/personalizations")
        envelope = QueueEnvelope(
            id=self.new_id(accepted_at, client.name),
            accepted_at=accepted_at,
            client=client.name,
            sendgrid=document,
        )
        return self._queue_durably(envelope, body, client, idempotency_key, emails)

    def _queue_durably(
        self,
        envelope: QueueEnvelope,
        body: bytes,
        client: Client,
        idempotency_key: str | None,
        emails: int,
    ) -> AcceptedMessage:
        """Take the envelope's emails from the client's rate and enqueue it, once per
        Idempotency-Key; raise RequestRejected (RateLimited among them) or StorageUnavailable.

        A replay takes nothing from the rate; a request refused by the rate releases its key; a
        message that could not be queued gives its emails back.

        The answer comes only after the enqueue (and, for a message too large for one queue
        message, the write of its body's blob) succeeded. That is the accept's one storage call:
        no status record is written until delivery's first attempt claims the message by
        inserting one, and meanwhile the status route reads `queued` from the id itself
        (shared/message_ids.py).
        """
        claim = None
        if idempotency_key is not None:
            # Keys are the client's own: two apps using the same key never collide.
            scoped_key = f"{client.name}:{check_key(idempotency_key)}"
            claim = self.keys.claim(scoped_key, body, envelope.id, envelope.accepted_at)
            if claim.replay:
                return AcceptedMessage(claim.record.message_id, replayed=True)
            envelope = envelope.model_copy(update={"id": claim.record.message_id})
        try:
            self.rate.take(client, emails)
        except (RequestRejected, StorageUnavailable):
            if claim is not None:
                with contextlib.suppress(StorageUnavailable):
                    self.keys.release(claim.record)
            raise
        trace.get_current_span().set_attribute("mailgate.id", envelope.id)
        # Delivery continues this trace (the accept's span) from the context the envelope carries.
        envelope = envelope.model_copy(update={"trace": telemetry.current_trace_context()})
        domains = envelope.recipient_domains()
        try:
            with telemetry.span("mailgate.enqueue", id=envelope.id, attempt=1):
                envelope = _enqueue(envelope, self.queue, self.bodies)
        except StorageUnavailable:
            self.rate.give_back(client, emails)
            if claim is not None:
                with contextlib.suppress(StorageUnavailable):
                    self.keys.release(claim.record)
            raise
        telemetry.accepted.add(1)
        if claim is not None:
            try:
                self.keys.complete(claim.record)
            except StorageUnavailable as error:
                # The key stays pending: a retry gets 409 until it times out, then the same id.
                logger.warning(
                    "Message %s: idempotency key not completed: %s",
                    envelope.id,
                    error,
                    extra={"mailgate_id": envelope.id},
                )
        logger.info(
            "Message %s queued for %s recipient domain(s) %s%s",
            envelope.id,
            len(domains),
            ",".join(domains),
            f", its body in blob {envelope.blob}" if envelope.blob else "",
            extra={"mailgate_id": envelope.id},
        )
        return AcceptedMessage(envelope.id)


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


def _enqueue(envelope: QueueEnvelope, queue: MailQueue, bodies: MessageBodyStore) -> QueueEnvelope:
    """Queue the envelope, or its body in a blob and a reference to it; return what was queued.

    The blob is written before the reference is queued, so no queued message ever points at a
    body that is not there yet; a failed enqueue takes the blob back.
    """
    size = len(envelope.to_json().encode())
    if size <= MAX_QUEUED_JSON_BYTES:
        queue.enqueue(envelope)
        return envelope
    blob = body_blob_name(envelope.id)
    small, body = envelope.claim_checked(blob)
    bodies.put(blob, body.to_json())
    try:
        queue.enqueue(small)
    except StorageUnavailable:
        try:
            bodies.delete(blob)
        except StorageUnavailable as error:
            # Harmless but for the space it takes: nothing refers to it.
            logger.warning(
                "Message %s not queued; its body stays in blob %s: %s",
                envelope.id,
                blob,
                error,
                extra={"mailgate_id": envelope.id},
            )
        raise
    return small


def _check_senders(senders: list[tuple[str, str]], client: Client, settings: Settings) -> None:
    """Refuse each `(pointer, address)` outside ALLOWED_SENDERS or the client's own senders."""
    # The gateway's list bounds every client's, whatever the client record says.
    outside = tuple(
        FieldProblem(pointer, "is not an allowed sender")
        for pointer, address in senders
        if not sender_allowed(address, settings.allowed_senders)
    )
    if outside:
        raise SenderNotAllowed(
            "this gateway does not send for that address (ALLOWED_SENDERS)", outside
        )
    not_theirs = tuple(
        FieldProblem(pointer, "is not one of the client's senders")
        for pointer, address in senders
        if not client.may_send_as(address)
    )
    if not_theirs:
        raise SenderNotAllowed(
            f"the client {client.name!r} may not send as that address (its senders)", not_theirs
        )


def _sendgrid_senders(mail: MailSend) -> list[tuple[str, str]]:
    return [("#/from", mail.from_.email)] + [
        (json_pointer(["personalizations", index, "from"]), personalization.from_.email)
        for index, personalization in enumerate(mail.personalizations)
        if personalization.from_ is not None
    ]


def _is_json(content_type: str | None) -> bool:
    media_type = (content_type or "").partition(";")[0].strip().lower()
    return media_type == "application/json" or (
        media_type.startswith("application/") and media_type.endswith("+json")
    )
