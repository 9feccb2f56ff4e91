"""The gateway's exceptions, drawn once.

    MailgateError
    ├── ConfigurationError          a setting is missing or invalid; the gateway cannot work
    ├── RequestRejected             an API request the gateway refuses (maps to a problem+json)
    │   ├── InvalidMessage              400: one or more fields are invalid
    │   ├── InvalidEventBatch           400: a signed Event Webhook body that is not a batch
    │   ├── Unauthorized                401: no client key, or not a valid, enabled one
    │   ├── SignatureRejected           401: an Event Webhook request unsigned, badly signed or old
    │   ├── OperatorNotSignedIn         401: a signed-in operator route, and no operator signed in
    │   ├── SenderNotAllowed            403: `from` is outside the client's or gateway's senders
    │   ├── FeatureNotAllowed           403: a field the client's features do not allow (policy)
    │   ├── OperatorNotAllowed          403: signed in, but not as an operator listed by object id
    │   ├── MessageNotFound             404: no message has that id
    │   ├── IdempotencyKeyInUse         409: a request with this key is still being accepted
    │   ├── PayloadTooLarge             413: the body is over MAX_REQUEST_BYTES (or an Event
    │   │                                    Webhook batch over MAX_EVENT_BATCH_BYTES)
    │   ├── UnsupportedMediaType        415: the body is not JSON
    │   ├── IdempotencyKeyReused        422: this key came with a different body
    │   ├── NotDeliverable              422: no provider in MAIL_PROVIDERS can carry a field
    │   ├── RateLimited                 429: the request's emails are more than the client has
    │   │                                    left of its rate this minute
    │   ├── Busy                        503: too many large messages in memory; try again soon
    │   └── EventWebhookNotConfigured   503: SENDGRID_WEBHOOK_PUBLIC_KEY is not set
    ├── ClientError                 an operator's client command cannot be done (unknown, exists)
    ├── StorageUnavailable          an Azure Storage call failed; nothing was accepted
    ├── ConcurrentUpdate            a status or key record changed between read and write
    ├── DeliveryInProgress          another worker is sending this message right now
    └── DeliveryError               one attempt to hand a message to a provider failed
        ├── RetryableDeliveryError      429, 5xx, SMTP 4xx, timeouts, connection errors: try
        │                               again later (the next provider, shared/providers.py)
        └── PermanentDeliveryError      400, 401, 403, 413 and other 4xx, SMTP 5xx, a Failed
                                        ACS send operation: retrying cannot help

The queue trigger's behaviour follows from the type: retryable errors are retried with a
delay until the attempts run out, permanent ones are dead-lettered at once. A RequestRejected
is answered as problem+json, or on `/api/v3/mail/send` in SendGrid's error format, from the
same status and FieldProblems.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shared.models import ProviderError

# An answer to bad input stays small whatever the input: it lists the first problems (the
# detail counts them all) and cuts any pointer or detail longer than MAX_PROBLEM_TEXT (one can
# echo a field name, and a field name can be megabytes long).
MAX_PROBLEMS_SHOWN = 20
MAX_PROBLEM_TEXT = 1000


class MailgateError(Exception):
    """Base of every error the gateway raises on purpose."""


class ConfigurationError(MailgateError):
    """A setting is missing or invalid."""


@dataclass(frozen=True)
class FieldProblem:
    """One offending field of a request, located by a JSON Pointer."""

    pointer: str
    detail: str


def json_pointer(path: Iterable[str | int]) -> str:
    """The URI-fragment JSON Pointer (RFC 6901) of a path, e.g. `#/to/0/email`."""
    return "#" + "".join("/" + str(part).replace("~", "~0").replace("/", "~1") for part in path)


def shortened(text: str, most: int = MAX_PROBLEM_TEXT) -> str:
    """The text, cut to `most` characters with an ellipsis if it is longer."""
    return text if len(text) <= most else text[: most - 1] + "…"


def shown_problems(problems: Sequence[FieldProblem]) -> tuple[FieldProblem, ...]:
    """The problems an answer lists: the first MAX_PROBLEMS_SHOWN, each cut to a sane length."""
    return tuple(
        FieldProblem(shortened(p.pointer), shortened(p.detail))
        for p in problems[:MAX_PROBLEMS_SHOWN]
    )


class RequestRejected(MailgateError):
    """A request the gateway refuses; `status` is the HTTP status of its problem+json.

    It keeps the first MAX_PROBLEMS_SHOWN problems (`shown_problems`) and how many it left out.
    """

    status = 400

    def __init__(
        self,
        detail: str,
        problems: Sequence[FieldProblem] = (),
        headers: dict[str, str] | None = None,
    ) -> None:
        self.problems = shown_problems(problems)
        self.problems_left_out = len(problems) - len(self.problems)
        if self.problems_left_out:
            detail = f"{detail}; the first {len(self.problems)} are listed"
        super().__init__(detail)
        self.detail = detail
        self.headers = headers or {}


class InvalidMessage(RequestRejected):
    """The request body is not a valid message."""

    status = 400


class Unauthorized(RequestRejected):
    """The request has no client key, or one that is malformed, unknown or disabled.

    `client`: the client whose genuine key it was, when the client is disabled; else None.
    """

    status = 401

    def __init__(self, detail: str, client: str | None = None) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": 'Bearer realm="mailgate"'})
        self.client = client


class InvalidEventBatch(RequestRejected):
    """A correctly signed Event Webhook body that is not an array of SendGrid events."""

    status = 400


class SignatureRejected(RequestRejected):
    """An Event Webhook request without a valid, recent signature from SendGrid's key."""

    status = 401

    def __init__(self, detail: str) -> None:
        # RFC 9110 wants a challenge with every 401; this one names what the route checks.
        super().__init__(
            detail, headers={"WWW-Authenticate": 'SendGrid-Signature realm="mailgate"'}
        )


class EventWebhookNotConfigured(RequestRejected):
    """The Event Webhook route was called but no verification key is configured."""

    status = 503


class OperatorNotSignedIn(RequestRejected):
    """A signed-in operator route was called without an operator signed in by the platform."""

    status = 401

    def __init__(self, detail: str) -> None:
        super().__init__(
            detail, headers={"WWW-Authenticate": 'AppServiceAuthentication realm="mailgate"'}
        )


class SenderNotAllowed(RequestRejected):
    """The sender is not one this gateway may send for."""

    status = 403


class FeatureNotAllowed(RequestRejected):
    """The request uses an account-wide control the client is not allowed (shared/policy.py)."""

    status = 403


class OperatorNotAllowed(RequestRejected):
    """The platform signed someone in who is not an operator (OPERATOR_PRINCIPAL_IDS)."""

    status = 403


class PayloadTooLarge(RequestRejected):
    """The request body is larger than the gateway accepts (MAX_REQUEST_BYTES, or
    MAX_EVENT_BATCH_BYTES for an Event Webhook batch)."""

    status = 413


class UnsupportedMediaType(RequestRejected):
    """The body is not `application/json`."""

    status = 415


class MessageNotFound(RequestRejected):
    """No message has that id."""

    status = 404


class IdempotencyKeyInUse(RequestRejected):
    """A request with the same Idempotency-Key is still being accepted."""

    status = 409


class IdempotencyKeyReused(RequestRejected):
    """The Idempotency-Key was used before with a different body."""

    status = 422


class NotDeliverable(RequestRejected):
    """The message is valid, but no provider in MAIL_PROVIDERS can carry all of it (a SendGrid
    template on an SMTP relay): accepting it would mean sending something else, or nothing."""

    status = 422


class RateLimited(RequestRejected):
    """The request's emails are more than the client has left of its rate this minute."""

    status = 429

    def __init__(self, detail: str, retry_after_seconds: int) -> None:
        super().__init__(detail, headers={"Retry-After": str(retry_after_seconds)})
        self.retry_after_seconds = retry_after_seconds


class Busy(RequestRejected):
    """The instance is working on as many large messages as it may hold in memory."""

    status = 503

    def __init__(self, detail: str, retry_after_seconds: int) -> None:
        super().__init__(detail, headers={"Retry-After": str(retry_after_seconds)})


class ClientError(MailgateError):
    """A client command an operator gave cannot be carried out (no such client, name taken)."""


class StorageUnavailable(MailgateError):
    """Azure Storage could not be reached or refused the call."""


class ConcurrentUpdate(MailgateError):
    """A record changed between reading and writing it; the loser tries again later."""


class DeliveryInProgress(MailgateError):
    """Another worker is sending this message now; this copy is tried again later."""


class DeliveryError(MailgateError):
    """One attempt to hand a message to SendGrid failed.

    `provider_error` is SendGrid's error body as it came; `provider_errors` its entries fit to
    show (bounded, addresses masked); `cause` a key of shared/replay_advice.py CAUSES when the
    raiser knows it better than SendGrid's status tells.
    """

    def __init__(
        self,
        reason: str,
        *,
        status_code: int | None = None,
        provider_error: str | None = None,
        provider_errors: Sequence[ProviderError] = (),
        cause: str | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status_code = status_code
        self.provider_error = provider_error
        self.provider_errors = tuple(provider_errors)
        self.cause = cause


class RetryableDeliveryError(DeliveryError):
    """A failure that can succeed later (429, 5xx, timeout, connection error)."""

    def __init__(
        self,
        reason: str,
        *,
        status_code: int | None = None,
        provider_error: str | None = None,
        provider_errors: Sequence[ProviderError] = (),
        retry_after_seconds: float | None = None,
        ambiguous: bool = False,
        cause: str | None = None,
    ) -> None:
        super().__init__(
            reason,
            status_code=status_code,
            provider_error=provider_error,
            provider_errors=provider_errors,
            cause=cause,
        )
        self.retry_after_seconds = retry_after_seconds
        # A timeout after the request was sent: SendGrid may have accepted the mail.
        self.ambiguous = ambiguous


class PermanentDeliveryError(DeliveryError):
    """A failure that no retry can fix (SendGrid refused the request)."""
