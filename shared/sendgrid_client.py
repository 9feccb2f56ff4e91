"""SendGrid v3 Mail Send: the payload built with SendGrid's helpers, sent over pooled HTTPS."""

from __future__ import annotations

import logging
import time
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
from shared.errors import PermanentDeliveryError, RetryableDeliveryError
from shared.models import MAILGATE_ID_ARG, QueueEnvelope
from shared.settings import Settings

logger = logging.getLogger(__name__)

MAIL_SEND_PATH = "/v3/mail/send"
# Enough of SendGrid's error body for an operator; the rest is noise.
MAX_PROVIDER_ERROR_CHARS = 1000


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
            raise_for_outcome(response)
            provider_id: str | None = response.headers.get("X-Message-Id")
            return provider_id

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()


def raise_for_outcome(response: httpx.Response) -> None:
    """Raise the DeliveryError a non-2xx SendGrid response stands for."""
    status = response.status_code
    if 200 <= status < 300:
        return
    provider_error = response.text[:MAX_PROVIDER_ERROR_CHARS] or None
    # 408 means the request was never processed, so retrying is safe.
    if status in (408, 429) or status >= 500:
        raise RetryableDeliveryError(
            f"SendGrid answered {status}",
            status_code=status,
            provider_error=provider_error,
            retry_after_seconds=retry_after_seconds(response.headers),
        )
    raise PermanentDeliveryError(
        f"SendGrid refused the message with {status}",
        status_code=status,
        provider_error=provider_error,
    )


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
