"""The `acs` provider: a mail as an Azure Communication Services Email message, sent with the
`azure-communication-email` SDK (its `EmailClient`, API version 2025-09-01 in 1.1.0).

Authentication is the SDK's: with ACS_EMAIL_ENDPOINT, the app's managed identity (the same
credential the storage clients use, shared/queue.py `token_credential`; the SDK asks Entra ID
for `https://communication.azure.com//.default`); with ACS_EMAIL_CONNECTION_STRING, the
resource's access key, with which the SDK signs every request (HMAC-SHA256). The SDK's own
`from_connection_string` drops the endpoint's scheme and puts `https://` back
(`_shared/utils.py parse_connection_str`), so the string is parsed here (shared/settings.py
`acs_connection_parts`) to keep a loopback stand-in's `http://`; the client is then built as
`from_connection_string` builds it. Requests go over the process's storage transport
(shared/storage_transport.py), one pool for every Azure call, with this module's timeouts.

**Idempotency.** The send carries the gateway's message id as its `Operation-Id` (a UUID, as
the REST spec `specification/communication/data-plane/Email/stable/2025-09-01` types it): the
same id on every attempt. The spec says only that the id is the client's to name; the Azure
REST API Guidelines (microsoft/api-guidelines, azure/Guidelines.md, long-running actions)
have a service answer a repeated Operation-Id with the operation it already has rather than
start another, and Azure/azure-sdk-for-net#40779 added the id to the .NET client for exactly
that. ACS's own Email docs do not say so: after an ambiguous failure the next attempt stays on
acs (FAILOVER_ON_AMBIGUOUS off) with the same id, the least risk of a second copy there is.

**The long-running operation.** ACS answers the send `202` with `Operation-Location`; the
operation then goes NotStarted/Running to Succeeded, Failed or Canceled. Delivery waits for the
outcome, at most ACS_WAIT_SECONDS and ACS_MAX_POLLS status reads (ACS limits those too), each
after ACS_POLL_SECONDS or the `retry-after` ACS asks for, whichever is longer: a Failed
operation is a mail ACS will not send (a recipient suppressed, the mail dropped), which only a
wait can tell the status record. Still running after the wait (or ACS asks to wait past it, or
a read fails, a 429 among them), the mail is recorded `sent`: ACS accepted it (its 202, like
SendGrid's, means "accepted", not "delivered"), and a second send could only duplicate it. The
SDK's own poller is not used: its default interval is 30 s, it sleeps whatever `retry-after`
says, and it polls from a thread of its own without a bound.

Classification:

    when                                           error        cause
    no connection (the request never went out)     retryable    unavailable
    sent, then no answer or a broken one           ambiguous    outcome_unknown
    408, 429, 5xx                                  retryable    unavailable (Retry-After kept)
    401, 403, 404                                  permanent    acs_config
    any other 4xx (400: the mail itself)           permanent    acs_rejected
    the operation Failed or was Canceled           permanent    acs_failed

ACS's error (`{"error": {"code", "message"}}`) goes into the reason as its code and its
message, masked like SendGrid's (addresses cut to `*@domain`, the mail's own text left out,
bounded). The provider's id for the mail is the operation id.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, cast
from urllib.parse import urlsplit

from azure.communication.email import EmailClient
from azure.core.credentials import AzureKeyCredential
from azure.core.exceptions import (
    AzureError,
    HttpResponseError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.core.rest import HttpRequest
from opentelemetry.trace import SpanKind

from shared import telemetry
from shared.errors import DeliveryError, PermanentDeliveryError, RetryableDeliveryError
from shared.models import MAX_PROVIDER_MESSAGE_CHARS, Address, ProviderError, QueueEnvelope
from shared.queue import storage_transport, token_credential
from shared.replay_advice import (
    ACS_CONFIG,
    ACS_FAILED,
    ACS_REJECTED,
    NO_PROVIDER,
    OUTCOME_UNKNOWN,
    UNAVAILABLE,
    is_retryable_status,
)
from shared.sendgrid_client import mail_text, shown_provider_text
from shared.settings import Settings, acs_connection_parts

logger = logging.getLogger(__name__)

ACS_CONNECT_TIMEOUT_SECONDS = 5.0
ACS_READ_TIMEOUT_SECONDS = 30.0
# How long a send waits for the operation's outcome, how often and how many times it asks:
# ACS counts status reads against a quota of their own, at first about twice the sends' ("Get
# Email Status", 60 a minute and 200 an hour a subscription, against 30 and 100 sends; Microsoft's
# "Service limits for Azure Communication Services"), so two reads a mail at most.
ACS_WAIT_SECONDS = 10.0
ACS_POLL_SECONDS = 1.0
ACS_MAX_POLLS = 2
# The longest one send can take (the request, the wait, a poll begun just before the wait
# ends); delivery's claim on a message must outlive it (shared/delivery.py).
ACS_LONGEST_SEND_SECONDS = (
    2 * (ACS_CONNECT_TIMEOUT_SECONDS + ACS_READ_TIMEOUT_SECONDS) + ACS_WAIT_SECONDS
)
# The REST spec: "we limit the total size of an email request (which includes attachments) to
# 10MB" (EmailMessage.attachments, API version 2025-09-01).
ACS_MAX_REQUEST_BYTES = 10 * 1024 * 1024
# "Number of recipients in email: 50" (Microsoft's "Service limits for Azure Communication
# Services", Email size limits): to, cc and bcc together.
ACS_MAX_RECIPIENTS = 50
TERMINAL_FAILURES = frozenset({"Failed", "Canceled"})
_CONFIG_STATUSES = frozenset({401, 403, 404})
_ACS_NAME = "ACS"


def build_message(envelope: QueueEnvelope) -> dict[str, Any]:
    """The ACS EmailMessage for a `/api/v1/messages` mail (shared/providers.py keeps from it
    what ACS cannot carry: SendGrid's features, a sender's display name)."""
    request = envelope.message
    if request is None:
        # shared/providers.py keeps v3 bodies on SendGrid: only an edited queue message gets here.
        raise PermanentDeliveryError("ACS cannot send a SendGrid v3 body", cause=NO_PROVIDER)
    recipients: dict[str, Any] = {"to": [_address(a) for a in request.to]}
    if request.cc:
        recipients["cc"] = [_address(a) for a in request.cc]
    if request.bcc:
        recipients["bcc"] = [_address(a) for a in request.bcc]
    # ACS requires a subject, as the gateway does of every mail without a SendGrid template.
    content: dict[str, Any] = {"subject": request.subject or ""}
    if request.text is not None:
        content["plainText"] = request.text
    if request.html is not None:
        content["html"] = request.html
    message: dict[str, Any] = {
        "senderAddress": request.from_.email,
        "content": content,
        "recipients": recipients,
    }
    if request.reply_to is not None:
        message["replyTo"] = [_address(request.reply_to)]
    if request.headers:
        message["headers"] = dict(request.headers)
    if request.attachments:
        message["attachments"] = [
            {
                "name": a.filename,
                "contentType": a.content_type or "application/octet-stream",
                "contentInBase64": a.content,
                # ACS shows an attachment with a contentId inline, in the html that names it.
                **({"contentId": a.content_id} if a.disposition == "inline" else {}),
            }
            for a in request.attachments
        ]
    return message


def _address(address: Address) -> dict[str, str]:
    return (
        {"address": address.email, "displayName": address.name}
        if address.name
        else {"address": address.email}
    )


def email_client_from_settings(settings: Settings) -> EmailClient:
    """The SDK's client for the configured resource: the app's identity with
    ACS_EMAIL_ENDPOINT, else the access key of ACS_EMAIL_CONNECTION_STRING."""
    options: dict[str, Any] = {
        "transport": storage_transport(),
        # One request per attempt: delivery retries, and fails over, by its own rules.
        "retry_total": 0,
    }
    if settings.acs_email_endpoint is not None:
        return EmailClient(
            settings.acs_email_endpoint, token_credential(settings.storage), **options
        )
    if not settings.acs_email_connection_string:
        raise ValueError("ACS_EMAIL_ENDPOINT or ACS_EMAIL_CONNECTION_STRING is not set")
    endpoint, key = acs_connection_parts(settings.acs_email_connection_string)
    return EmailClient(endpoint, AzureKeyCredential(key), **options)


class AcsSender:
    """Sends mail through one ACS resource and waits, bounded, for each send's outcome."""

    def __init__(
        self,
        client: EmailClient,
        *,
        connect_timeout: float = ACS_CONNECT_TIMEOUT_SECONDS,
        read_timeout: float = ACS_READ_TIMEOUT_SECONDS,
        wait_seconds: float = ACS_WAIT_SECONDS,
        poll_seconds: float = ACS_POLL_SECONDS,
        max_polls: int = ACS_MAX_POLLS,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._client = client
        # Per call: a transport given to the client ignores the client's own timeouts.
        self._timeouts: dict[str, Any] = {
            "connection_timeout": connect_timeout,
            "read_timeout": read_timeout,
        }
        self._wait = wait_seconds
        self._poll = poll_seconds
        self._max_polls = max_polls
        self._clock = clock
        self._sleep = sleep

    @classmethod
    def from_settings(cls, settings: Settings) -> AcsSender:
        """A sender for the configured resource."""
        return cls(email_client_from_settings(settings))

    def send(self, envelope: QueueEnvelope) -> str | None:
        """Send one mail; return its operation id, or raise a DeliveryError."""
        message = build_message(envelope)
        with telemetry.span("mailgate.acs.send", kind=SpanKind.CLIENT):
            status, location, wait, error = self._start(envelope.id, message)
            deadline = self._clock() + self._wait
            polls = 0
            while status not in ("Succeeded", *TERMINAL_FAILURES):
                pause = max(self._poll, wait or 0.0)
                if location is None or polls >= self._max_polls or self._clock() + pause > deadline:
                    logger.info(
                        "Message %s: ACS accepted it; its operation still %s",
                        envelope.id,
                        status,
                        extra={"mailgate_id": envelope.id},
                    )
                    return envelope.id
                self._sleep(pause)
                polls += 1
                polled = self._status(envelope.id, location)
                if polled is None:
                    return envelope.id
                status, wait, error = polled
        if status in TERMINAL_FAILURES:
            raise _failed(status, error, message)
        return envelope.id

    def close(self) -> None:
        """Close the client (the shared transport stays open for the storage clients)."""
        self._client.close()

    def _start(
        self, operation_id: str, message: dict[str, Any]
    ) -> tuple[str, str | None, float | None, dict[str, Any] | None]:
        """POST the mail; its operation's status, Operation-Location, asked-for wait and
        error (the 202's body is an EmailSendResult, which may already be final)."""
        try:
            poller = self._client.begin_send(
                message,
                operation_id=operation_id,
                polling=False,
                cls=lambda response, body, headers: (
                    body,
                    response.http_response.headers,
                    response.http_response.request.url,
                ),
                **self._timeouts,
            )
            # `cls` made the result; the SDK types it as the body alone.
            body, headers, sent_to = cast(tuple[Any, Mapping[str, str], str], poller.result())
        except ValueError:
            # A 202 whose body is not JSON (only a 202 gets this far): accepted, status unknown.
            return "Running", None, None, None
        except HttpResponseError as error:
            raise _refusal(error, message) from None
        except ServiceRequestError as error:
            raise RetryableDeliveryError(
                f"cannot connect to ACS: {type(error).__name__}", cause=UNAVAILABLE
            ) from None
        except (ServiceResponseError, AzureError) as error:
            # Sent, and then no answer (or a broken one): ACS may have accepted it.
            raise RetryableDeliveryError(
                f"no answer from ACS: {type(error).__name__}; it may have taken the mail",
                ambiguous=True,
                cause=OUTCOME_UNKNOWN,
            ) from None
        status = body.get("status") if isinstance(body, dict) else None
        failure = body.get("error") if isinstance(body, dict) else None
        location = headers.get("Operation-Location")
        return (
            status if isinstance(status, str) else "Running",
            # Polled only on the resource itself: the request carries its credentials.
            location if location and _origin(location) == _origin(sent_to) else None,
            _retry_after(headers),
            failure if isinstance(failure, dict) else None,
        )

    def _status(
        self, operation_id: str, location: str
    ) -> tuple[str, float | None, dict[str, Any] | None] | None:
        """The operation's status, asked-for wait and error; None if ACS did not say."""
        try:
            response = self._client.send_request(HttpRequest("GET", location), **self._timeouts)
            response.raise_for_status()
            document = response.json()
        except (AzureError, ValueError) as failure:
            logger.warning(
                "Message %s: ACS accepted it; its status could not be read (%s)",
                operation_id,
                type(failure).__name__,
                extra={"mailgate_id": operation_id},
            )
            return None
        status = document.get("status") if isinstance(document, dict) else None
        if not isinstance(status, str):
            return None
        error = document.get("error")
        return (
            status,
            _retry_after(response.headers),
            error if isinstance(error, dict) else None,
        )


def _refusal(error: HttpResponseError, message: dict[str, Any]) -> DeliveryError:
    """The DeliveryError an ACS error answer stands for."""
    status = error.status_code or 0
    # An azure.core.rest HttpResponse (the generated client's); typed as its common base.
    response: Any = error.response
    body: Any = None
    if response is not None:
        try:
            body = response.json()
        except (ValueError, AzureError):
            body = None
    detail = body.get("error") if isinstance(body, dict) else None
    errors = _shown_error(detail if isinstance(detail, dict) else None, message)
    if is_retryable_status(status):
        headers = response.headers if response is not None else {}
        return RetryableDeliveryError(
            _reason(f"{_ACS_NAME} answered {status}", errors),
            status_code=status,
            provider_errors=errors,
            retry_after_seconds=_retry_after(headers),
            cause=UNAVAILABLE,
        )
    return PermanentDeliveryError(
        _reason(f"{_ACS_NAME} refused the mail with {status}", errors),
        status_code=status,
        provider_errors=errors,
        cause=ACS_CONFIG if status in _CONFIG_STATUSES else ACS_REJECTED,
    )


def _failed(
    status: str, error: dict[str, Any] | None, message: dict[str, Any]
) -> PermanentDeliveryError:
    errors = _shown_error(error, message)
    return PermanentDeliveryError(
        _reason(f"{_ACS_NAME}'s send operation ended {status}", errors),
        provider_errors=errors,
        cause=ACS_FAILED,
    )


def _shown_error(
    error: dict[str, Any] | None, message: dict[str, Any]
) -> tuple[ProviderError, ...]:
    """ACS's error as `code: message`, fit to show; its target as the field."""
    if error is None:
        return ()
    code, text, target = error.get("code"), error.get("message"), error.get("target")
    parts = [p for p in (code, text) if isinstance(p, str) and p]
    if not parts:
        return ()
    mail = mail_text(_without_content(message))
    shown = shown_provider_text(": ".join(parts), MAX_PROVIDER_MESSAGE_CHARS, mail)
    if shown is None:
        return ()
    field = shown_provider_text(target, 200, mail) if isinstance(target, str) else None
    return (ProviderError(message=shown, field=field),)


def _without_content(message: dict[str, Any]) -> dict[str, Any]:
    """What of the message an error must not quote, in mail_text's terms: no addresses (they
    are cut to *@domain, whose domain stays) and no attachment content (base64)."""
    recipients = message.get("recipients", {})
    listed = [*message.get("replyTo", []), *(a for k in recipients.values() for a in k)]
    return {
        "content": message.get("content"),
        "headers": message.get("headers"),
        "names": [a.get("displayName") for a in listed],
        "attachments": [a.get("name") for a in message.get("attachments", [])],
    }


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme.lower(), parts.netloc.lower()


def _retry_after(headers: Mapping[str, str]) -> float | None:
    """The seconds ACS's `retry-after` asks for (whole seconds, in the REST spec)."""
    value = (headers.get("retry-after") or "").strip()
    return float(value) if value.isdigit() else None


def _reason(reason: str, errors: tuple[ProviderError, ...]) -> str:
    return f"{reason}: {'; '.join(str(e) for e in errors)}" if errors else reason
