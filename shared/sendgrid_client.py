"""SendGrid v3 Mail Send: the payload built with SendGrid's helpers, sent over pooled HTTPS."""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
from opentelemetry.trace import SpanKind
from sendgrid.helpers.mail import (
    Attachment,
    Bcc,
    Category,
    Cc,
    ContentId,
    CustomArg,
    Disposition,
    FileContent,
    FileName,
    FileType,
    From,
    Header,
    HtmlContent,
    Mail,
    Personalization,
    PlainTextContent,
    ReplyTo,
    SendAt,
    Subject,
    TemplateId,
    To,
)

from shared import telemetry
from shared.delivery_events import safe_text
from shared.errors import PermanentDeliveryError, RetryableDeliveryError, shortened
from shared.models import (
    MAILGATE_ID_ARG,
    MAX_PROVIDER_ERRORS,
    MAX_PROVIDER_FIELD_CHARS,
    MAX_PROVIDER_MESSAGE_CHARS,
    ProviderError,
    QueueEnvelope,
)
from shared.replay_advice import is_retryable_status
from shared.settings import Settings

logger = logging.getLogger(__name__)

MAIL_SEND_PATH = "/v3/mail/send"
# Enough of SendGrid's error body for an operator; the rest is noise.
MAX_PROVIDER_ERROR_CHARS = 1000
# SendGrid's error body is parsed from its first 64 KiB at most; its errors fit in far less.
MAX_PROVIDER_BODY_BYTES = 64 * 1024
# A run of this many characters of a provider's message that the mail itself contains is left
# out of it: SendGrid's messages can quote what was sent, and a reason is shown and logged.
ECHO_MIN_CHARS = 10
# The mail's text compared, in characters (its shortest values first): bounds the work, which
# grows with it (about 7 ms a provider message at 64 KiB, measured on a 2-core machine).
MAX_ECHO_TEXT_CHARS = 64 * 1024
# Values not compared: addresses are cut to *@domain anyway; the rest are SendGrid's words.
_NOT_ECHOED = frozenset({"email", "type", "disposition", "template_id"})


def build_payload(envelope: QueueEnvelope) -> dict[str, Any]:
    """The v3 Mail Send body for an envelope; the gateway id travels in custom_args."""
    if envelope.sendgrid is not None:
        return _with_gateway_id(envelope.sendgrid, envelope.id)
    request = envelope.message
    if request is None:
        raise TypeError(f"envelope {envelope.id} carries no message or SendGrid body to send")
    mail = Mail()
    mail.from_email = From(request.from_.email, request.from_.name)
    personalization = Personalization()
    for address in request.to:
        personalization.add_to(To(address.email, address.name))
    for address in request.cc:
        personalization.add_cc(Cc(address.email, address.name))
    for address in request.bcc:
        personalization.add_bcc(Bcc(address.email, address.name))
    if request.template_data is not None:
        personalization.dynamic_template_data = request.template_data
    # In the personalization rather than at the top level: SendGrid takes both, but its own
    # schema types the top-level custom_args as a string.
    for key, value in {**request.custom_args, MAILGATE_ID_ARG: envelope.id}.items():
        personalization.add_custom_arg(CustomArg(key, value))
    mail.add_personalization(personalization)
    if request.reply_to is not None:
        mail.reply_to = ReplyTo(request.reply_to.email, request.reply_to.name)
    if request.subject is not None:
        mail.subject = Subject(request.subject)
    if request.text is not None:
        mail.add_content(PlainTextContent(request.text))
    if request.html is not None:
        mail.add_content(HtmlContent(request.html))
    if request.template_id is not None:
        mail.template_id = TemplateId(request.template_id)
    for name, value in request.headers.items():
        mail.add_header(Header(name, value))
    for category in request.categories:
        mail.add_category(Category(category))
    if request.send_at is not None:
        mail.send_at = SendAt(int(request.send_at.timestamp()))
    for attachment in request.attachments:
        mail.add_attachment(
            Attachment(
                FileContent(attachment.content),
                FileName(attachment.filename),
                FileType(attachment.content_type) if attachment.content_type else None,
                Disposition(attachment.disposition),
                ContentId(attachment.content_id) if attachment.content_id else None,
            )
        )
    payload: dict[str, Any] = mail.get()
    return payload


def _with_gateway_id(body: dict[str, Any], message_id: str) -> dict[str, Any]:
    """A client's own v3 body, unchanged but for mailgate_id added to every personalization."""
    personalizations = body.get("personalizations")
    if not isinstance(personalizations, list) or not all(
        isinstance(p, dict) for p in personalizations
    ):
        # Validated on accept, so only a queue message edited since gets here: SendGrid would
        # refuse it too, and retrying cannot help.
        raise PermanentDeliveryError("the queued SendGrid body has no valid personalizations")
    # Per personalization, not at the top level: SendGrid merges a personalization's
    # custom_args over the top-level ones and returns the merge on every webhook event, so the
    # id comes back on each recipient's events, whatever the caller put at either level; the
    # caller's top-level custom_args stay exactly as sent. (SendGrid's published schema also
    # types the top-level custom_args as a string, which a validating mock would refuse.)
    # New dicts only where the id goes in: the envelope's own body is never changed.
    return {
        **body,
        "personalizations": [
            {**p, "custom_args": {**p.get("custom_args", {}), MAILGATE_ID_ARG: message_id}}
            for p in personalizations
        ],
    }


class SendGridClient:
    """Sends mail through one keep-alive connection pool with connect and read timeouts."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        connect_timeout: float = 5.0,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._http = httpx.Client(
            base_url=base_url,
            headers={"Authorization": f"Bearer {api_key}", "User-Agent": "mailgate"},
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=64),
            transport=transport,
            trust_env=False,
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> SendGridClient:
        """A client for the configured SendGrid endpoint and key."""
        return cls(
            settings.sendgrid_api_base_url,
            settings.sendgrid_api_key,
            connect_timeout=settings.sendgrid_connect_timeout_seconds,
            timeout=settings.sendgrid_timeout_seconds,
        )

    def send(self, payload: dict[str, Any]) -> str | None:
        """POST one mail; return SendGrid's X-Message-Id, or raise a DeliveryError."""
        with telemetry.span("mailgate.sendgrid.send", kind=SpanKind.CLIENT) as current:
            try:
                response = self._http.post(MAIL_SEND_PATH, json=payload)
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as error:
                telemetry.sendgrid_responses.add(1, {"http.response.status_code": 0})
                raise RetryableDeliveryError(
                    f"cannot connect to SendGrid: {type(error).__name__}"
                ) from error
            except httpx.TransportError as error:
                telemetry.sendgrid_responses.add(1, {"http.response.status_code": 0})
                # The request may have reached SendGrid: it may or may not have accepted it.
                raise RetryableDeliveryError(
                    f"no answer from SendGrid: {type(error).__name__}", ambiguous=True
                ) from error
            current.set_attribute("http.response.status_code", response.status_code)
            telemetry.sendgrid_responses.add(1, {"http.response.status_code": response.status_code})
            raise_for_outcome(response, payload)
            provider_id: str | None = response.headers.get("X-Message-Id")
            return provider_id

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()


def raise_for_outcome(response: httpx.Response, payload: dict[str, Any] | None = None) -> None:
    """Raise the DeliveryError a non-2xx SendGrid response stands for; its reason carries
    SendGrid's own messages, without what `payload` (the mail sent) says."""
    status = response.status_code
    if 200 <= status < 300:
        return
    provider_error = response.text[:MAX_PROVIDER_ERROR_CHARS] or None
    errors, total = provider_errors(response.content[:MAX_PROVIDER_BODY_BYTES], payload)
    if is_retryable_status(status):
        raise RetryableDeliveryError(
            with_provider_errors(f"SendGrid answered {status}", errors, total),
            status_code=status,
            provider_error=provider_error,
            provider_errors=errors,
            retry_after_seconds=retry_after_seconds(response.headers),
        )
    raise PermanentDeliveryError(
        with_provider_errors(f"SendGrid refused the message with {status}", errors, total),
        status_code=status,
        provider_error=provider_error,
        provider_errors=errors,
    )


def with_provider_errors(reason: str, errors: tuple[ProviderError, ...], total: int) -> str:
    """The reason followed by SendGrid's messages and the fields they name."""
    if not errors:
        return reason
    listed = "; ".join(str(error) for error in errors)
    more = total - len(errors)
    return f"{reason}: {listed}" + (f"; and {more} more" if more > 0 else "")


def provider_errors(
    body: bytes | str | None, payload: Any = None
) -> tuple[tuple[ProviderError, ...], int]:
    """SendGrid's error entries, `{"errors": [{"message", "field", "help"}]}`, fit to show,
    and how many it listed: the first MAX_PROVIDER_ERRORS, each message one line with any
    address cut to `*@domain` (as logs have them), runs of the mail's own text (`payload`) left
    out, and cut to MAX_PROVIDER_MESSAGE_CHARS. None for a body that is not such a document."""
    try:
        document = json.loads(body or b"")
    except ValueError:
        return (), 0
    entries = document.get("errors") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        return (), 0
    usable = [e for e in entries if isinstance(e, dict) and isinstance(e.get("message"), str)]
    mail: str | None = None
    kept: list[ProviderError] = []
    for entry in usable[:MAX_PROVIDER_ERRORS]:
        if mail is None:
            mail = mail_text(payload)
        message = shown_provider_text(entry["message"], MAX_PROVIDER_MESSAGE_CHARS, mail)
        field = entry.get("field")
        shown_field = (
            shown_provider_text(field, MAX_PROVIDER_FIELD_CHARS, mail)
            if isinstance(field, str)
            else None
        )
        if message is not None:
            kept.append(ProviderError(message=message, field=shown_field))
    # An entry with nothing left to show is not counted among those left out either.
    dropped = min(len(usable), MAX_PROVIDER_ERRORS) - len(kept)
    return tuple(kept), len(usable) - dropped


def shown_provider_text(text: str, most: int, mail: str) -> str | None:
    """A provider's message fit to show: masked, without the mail's own text, bounded."""
    # Masked first (safe_text cuts addresses to *@domain), so an address's domain stays; twice
    # what is kept is compared, as what is left out shortens it.
    masked = safe_text(text[:MAX_PROVIDER_ERROR_CHARS], 2 * most)
    if masked is None:
        return None
    return shortened(_without_echoes(masked, mail).strip(), most) or None


def mail_text(payload: Any) -> str:
    """The string values of a mail payload, lower-cased, shortest first (names, subject and
    arguments before bodies), NUL between them, up to MAX_ECHO_TEXT_CHARS: what a provider's
    message must not quote."""
    values: list[str] = []
    pending: deque[Any] = deque([payload])
    while pending:
        value = pending.popleft()
        if isinstance(value, dict):
            pending.extend(
                item
                for key, item in value.items()
                # An attachment's content is base64: nothing a message would quote.
                if key not in _NOT_ECHOED and not (key == "content" and isinstance(item, str))
            )
        elif isinstance(value, list):
            pending.extend(value)
        elif isinstance(value, str) and len(value) >= ECHO_MIN_CHARS:
            values.append(value)
    kept: list[str] = []
    budget = MAX_ECHO_TEXT_CHARS
    for value in sorted(values, key=len):
        if budget <= 0:
            break
        kept.append(value[:budget].lower())
        budget -= len(kept[-1])
    return "\0".join(kept)


def _without_echoes(text: str, mail: str) -> str:
    """The text with each run of ECHO_MIN_CHARS or more characters that the mail contains too
    (in any case) replaced by an ellipsis."""
    if not mail or len(text) < ECHO_MIN_CHARS:
        return text
    lowered = _lowered(text)
    hidden = [False] * len(text)
    for start in range(len(text) - ECHO_MIN_CHARS + 1):
        if lowered[start : start + ECHO_MIN_CHARS] in mail:
            hidden[start : start + ECHO_MIN_CHARS] = [True] * ECHO_MIN_CHARS
    pieces: list[str] = []
    for index, char in enumerate(text):
        if not hidden[index]:
            pieces.append(char)
        elif index == 0 or not hidden[index - 1]:
            pieces.append("…")
    return "".join(pieces)


def _lowered(text: str) -> str:
    lowered = text.lower()
    if len(lowered) == len(text):
        return lowered
    # A few characters lower-case to two, which would shift indexes: those stay as they are.
    return "".join(c if len(low := c.lower()) != 1 else low for c in text)


def retry_after_seconds(headers: httpx.Headers, now: float | None = None) -> float | None:
    """How long SendGrid asks us to wait: Retry-After, else X-RateLimit-Reset (epoch seconds)."""
    now = time.time() if now is None else now
    retry_after = headers.get("Retry-After")
    if retry_after:
        if retry_after.strip().isdigit():
            return float(retry_after)
        try:
            return max(0.0, parsedate_to_datetime(retry_after).timestamp() - now)
        except (TypeError, ValueError):
            pass
    reset = headers.get("X-RateLimit-Reset")
    if reset and reset.strip().isdigit():
        return max(0.0, float(reset) - now)
    return None
