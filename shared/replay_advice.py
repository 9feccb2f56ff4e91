"""What an operator can do about a message that failed: its cause, and whether a replay helps.

A dead letter, and the status record of a `failed` message, carry a cause: one key of CAUSES,
which `classify` picks from what SendGrid answered. Each cause says whether a replay can help
(`replay`) and what to do (`action`):

    cause               when                                                  replay
    sender_identity     403 (or 400) "...does not match a verified Sender     after_fix
                        Identity", field `from`
    api_key             401: the key is invalid, revoked, or out of credits   after_fix
    forbidden           any other 403: no Mail Send permission, or a block    after_fix
    invalid_request     any other 400: a field of the mail itself             no
    too_large           413: over SendGrid's 30 MB                            no
    refused             any other 4xx (404: SENDGRID_API_BASE_URL, ...)       after_fix
    unavailable         408, 429, 5xx or no connection, on every attempt      helps
    outcome_unknown     the last attempt timed out after it was sent          helps (check first)
    sender_not_allowed  its sender is outside ALLOWED_SENDERS                 after_fix
    not_sendable        the gateway cannot send it as stored (body missing)   no
    host_moved          the Functions host moved it, after maxDequeueCount    after_fix
    not_an_envelope     the queue message is not a mailgate envelope          no
    smtp_auth           the SMTP relay refused SMTP_USERNAME/SMTP_PASSWORD    after_fix
                        (535 and the other AUTH replies)
    smtp_config         the relay offers no STARTTLS (off loopback) or no     after_fix
                        AUTH: SMTP_HOST/SMTP_PORT name the wrong server
    smtp_rejected       the relay refused the mail with a 5xx (a recipient,   no
                        the sender, the content)
    no_provider         no provider in MAIL_PROVIDERS can carry the message   after_fix
                        (MAIL_PROVIDERS changed since it was accepted)
    acs_config          ACS refused the gateway's access key or identity, or  after_fix
                        its endpoint is wrong (401, 403, 404)
    acs_rejected        ACS refused the mail itself (400 and other 4xx)       no
    acs_failed          ACS accepted the mail, then its send operation        no
                        Failed (a recipient suppressed, the mail dropped)

SMTP replies are not HTTP statuses: an SMTP failure always carries its cause, never a status code.

`helps`: a replay as it is can go through. `after_fix`: it fails the same way until what the
action names is fixed; then a replay helps (a replay checks the client and ALLOWED_SENDERS
again, and sends the same request). `no`: SendGrid refuses the request itself, so a replay
fails again: purge it, and have the app send a corrected mail.

SendGrid's statuses: its v3 API "Errors" page (400 bad request, 401 requires authentication,
403 a temporary block, 429 rate limit), its support article "4XX API Errors and
Troubleshooting Suggestions" (401 "The provided authorization grant is invalid, expired, or
revoked"; a key without Mail Send permission), and Twilio's error 60222: a sender that is not a
verified Sender Identity is an HTTP 403 whose message says so, field `from`.

A cause this version does not know (a newer mailgate wrote it) has no advice: the reason is
shown without it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from shared.models import ProviderError


class Replay(str, Enum):
    """Whether a replay of the message can go through."""

    HELPS = "helps"
    AFTER_FIX = "after_fix"
    NO = "no"


@dataclass(frozen=True)
class Advice:
    """A cause, whether a replay helps, and what to do first."""

    cause: str
    replay: Replay
    action: str

    def to_document(self) -> dict[str, Any]:
        """The advice as the status route, the dead-letter routes and `make poison` show it."""
        return {"cause": self.cause, "replay": self.replay.value, "action": self.action}


SENDER_IDENTITY = "sender_identity"
API_KEY = "api_key"
FORBIDDEN = "forbidden"
INVALID_REQUEST = "invalid_request"
TOO_LARGE = "too_large"
REFUSED = "refused"
UNAVAILABLE = "unavailable"
OUTCOME_UNKNOWN = "outcome_unknown"
SENDER_NOT_ALLOWED = "sender_not_allowed"
NOT_SENDABLE = "not_sendable"
HOST_MOVED = "host_moved"
NOT_AN_ENVELOPE = "not_an_envelope"
SMTP_AUTH = "smtp_auth"
SMTP_CONFIG = "smtp_config"
SMTP_REJECTED = "smtp_rejected"
NO_PROVIDER = "no_provider"
ACS_CONFIG = "acs_config"
ACS_REJECTED = "acs_rejected"
ACS_FAILED = "acs_failed"

_CAUSES = (
    Advice(
        SENDER_IDENTITY,
        Replay.AFTER_FIX,
        "Verify the sender in SendGrid (Settings > Sender Authentication: the single sender or "
        "its domain), then replay.",
    ),
    Advice(
        API_KEY,
        Replay.AFTER_FIX,
        "SendGrid refused SENDGRID_API_KEY (invalid, revoked, or the account out of credits): "
        "fix the key or the account, then replay.",
    ),
    Advice(
        FORBIDDEN,
        Replay.AFTER_FIX,
        "SendGrid forbade the send (the key lacks the Mail Send permission, or the account is "
        "blocked for now): fix that, then replay.",
    ),
    Advice(
        INVALID_REQUEST,
        Replay.NO,
        "SendGrid finds the mail itself invalid (see its message and field): a replay fails "
        "again. Purge it; the app must send a corrected mail.",
    ),
    Advice(
        TOO_LARGE,
        Replay.NO,
        "Too large for SendGrid (30 MB in all): a replay fails again. Purge it; the app must "
        "send it smaller.",
    ),
    Advice(
        REFUSED,
        Replay.AFTER_FIX,
        "SendGrid refused the request (see its message; a 404 means SENDGRID_API_BASE_URL is "
        "wrong): fix what it names, then replay.",
    ),
    Advice(
        UNAVAILABLE,
        Replay.HELPS,
        "SendGrid was unavailable or throttling on every attempt: replay once it answers again.",
    ),
    Advice(
        OUTCOME_UNKNOWN,
        Replay.HELPS,
        "SendGrid may have accepted it (the last attempt timed out after sending): look for its "
        "mailgate_id in SendGrid's activity first, or a replay may send it twice.",
    ),
    Advice(
        SENDER_NOT_ALLOWED,
        Replay.AFTER_FIX,
        "Its sender is outside ALLOWED_SENDERS: add it there if it should send, then replay "
        "(a replay checks again); else purge it.",
    ),
    Advice(
        NOT_SENDABLE,
        Replay.NO,
        "The gateway cannot send it as it is stored (see the reason): purge it.",
    ),
    Advice(
        HOST_MOVED,
        Replay.AFTER_FIX,
        "The function failed on it until the host gave up, without a reason of its own: find "
        "the error for its id in the host's log, fix it, then replay.",
    ),
    Advice(
        NOT_AN_ENVELOPE,
        Replay.NO,
        "Not a mailgate message: there is nothing to replay. Purge it.",
    ),
    Advice(
        SMTP_AUTH,
        Replay.AFTER_FIX,
        "The SMTP relay refused SMTP_USERNAME and SMTP_PASSWORD (wrong, revoked or expired): "
        "fix them, then replay.",
    ),
    Advice(
        SMTP_CONFIG,
        Replay.AFTER_FIX,
        "The SMTP relay at SMTP_HOST and SMTP_PORT offers no STARTTLS or no AUTH: point them at "
        "the relay's submission port (587), then replay.",
    ),
    Advice(
        SMTP_REJECTED,
        Replay.NO,
        "The SMTP relay refused the mail itself (see its reply: a recipient, the sender, the "
        "content): a replay fails again. Purge it; the app must send a corrected mail.",
    ),
    Advice(
        NO_PROVIDER,
        Replay.AFTER_FIX,
        "No provider in MAIL_PROVIDERS can carry this mail (see the reason): add one that can, "
        "then replay.",
    ),
    Advice(
        ACS_CONFIG,
        Replay.AFTER_FIX,
        "ACS refused the gateway (a wrong access key, the app's identity without its role on "
        "the resource, or a wrong ACS_EMAIL_ENDPOINT): fix that, then replay.",
    ),
    Advice(
        ACS_REJECTED,
        Replay.NO,
        "ACS refused the mail itself (see its error: a sender outside its domains, a field): a "
        "replay fails again. Purge it; the app must send a corrected mail.",
    ),
    Advice(
        ACS_FAILED,
        Replay.NO,
        "ACS took the mail, then its send operation failed (see its error: recipients "
        "suppressed, the mail dropped): a replay as it is fails again. Purge it.",
    ),
)
CAUSES: dict[str, Advice] = {advice.cause: advice for advice in _CAUSES}

_BY_STATUS = {400: INVALID_REQUEST, 401: API_KEY, 403: FORBIDDEN, 413: TOO_LARGE}
# SendGrid's words for an unverified sender (Twilio error 60222); matched loosely, as its
# wording around them has changed over the years.
_SENDER_IDENTITY = re.compile(r"verified\s+sender\s+identity", re.IGNORECASE)


def is_retryable_status(status_code: int) -> bool:
    """Whether SendGrid's status means "try again later": 408 (never processed), 429, 5xx."""
    return status_code in (408, 429) or status_code >= 500


def classify(
    status_code: int | None,
    provider_errors: Sequence[ProviderError] = (),
    *,
    retryable: bool | None = None,
    ambiguous: bool = False,
) -> str | None:
    """The cause of a failed delivery, from SendGrid's status and errors; None when what is
    known cannot tell (no status code, and not known whether it was retryable)."""
    if ambiguous:
        return OUTCOME_UNKNOWN
    if status_code is None:
        if retryable is None:
            return None
        return UNAVAILABLE if retryable else NOT_SENDABLE
    if is_retryable_status(status_code) if retryable is None else retryable:
        return UNAVAILABLE
    if any(_SENDER_IDENTITY.search(error.message) for error in provider_errors):
        return SENDER_IDENTITY
    return _BY_STATUS.get(status_code, REFUSED)


def advice_for(cause: str | None) -> Advice | None:
    """The advice for a cause; None for none, or one this version does not know."""
    return CAUSES.get(cause) if cause is not None else None
