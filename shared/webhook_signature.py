"""SendGrid's signed Event Webhook: the verification key, and checking a request against it.

SendGrid signs `timestamp + raw body` with ECDSA P-256 / SHA-256 and sends the signature and the
timestamp in two headers. The signature is checked with SendGrid's own helper
(`sendgrid.helpers.eventwebhook`); the helper does not look at the timestamp's age, so a captured
request could be replayed for ever: the gateway also refuses a timestamp more than
MAX_SIGNATURE_SKEW away from its clock, in either direction.

Before any of that, a body over MAX_EVENT_BATCH_BYTES is refused (`bounded_batch`): hashing and
parsing cost grows with the body, and the route is open to anyone until the signature is checked.
"""

from __future__ import annotations

import binascii
import logging
import re
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta

from cryptography.hazmat.primitives.asymmetric import ec
from sendgrid.helpers.eventwebhook import EventWebhook
from sendgrid.helpers.eventwebhook.eventwebhook_header import EventWebhookHeader

from shared.errors import EventWebhookNotConfigured, PayloadTooLarge, SignatureRejected

logger = logging.getLogger(__name__)

PUBLIC_KEY_SETTING = "SENDGRID_WEBHOOK_PUBLIC_KEY"
SIGNATURE_HEADER: str = EventWebhookHeader.SIGNATURE
TIMESTAMP_HEADER: str = EventWebhookHeader.TIMESTAMP
MAX_SIGNATURE_SKEW = timedelta(minutes=5)
# A DER-encoded P-256 signature is at most 72 bytes, 96 characters of base64.
MAX_SIGNATURE_LENGTH = 128
# SendGrid posts a batch "every 30 seconds or when the batch size reaches 768 kilobytes -
# whichever occurs first" (sendgrid/docs, content/docs/for-developers/tracking-events/
# getting-started-event-webhook.md, "Data Storage"). The last event may carry a batch past the
# threshold (one event is a few KiB: custom_args stay under 10,000 bytes), so the cap leaves more
# than twice the room, and is still far from what signature checking and parsing cost anything.
MAX_EVENT_BATCH_BYTES = 2 * 1024 * 1024
# While no verification key is set, every request to the route would warn: once a minute will do.
NOT_CONFIGURED_WARNING_SECONDS = 60.0
# RFC 9110 Content-Length: digits only; anything else is left to the backstop on the body.
_CONTENT_LENGTH = re.compile(r"^[ \t]*0*([0-9]+)[ \t]*$")
# Whole seconds since 1970, as SendGrid sends them.
_TIMESTAMP = re.compile(r"[0-9]{1,12}")
_PEM_LINE = re.compile(r"-----(BEGIN|END) PUBLIC KEY-----")


def normalize_public_key(text: str) -> str:
    """The key as SendGrid shows it (base64 of the DER key), from that or from a whole PEM block.

    Raises ValueError unless it is an ECDSA P-256 public key.
    """
    base64_key = "".join(_PEM_LINE.sub("", text).split())
    try:
        key = EventWebhook(base64_key).public_key
    except (ValueError, TypeError):
        raise ValueError("it is not a public key (base64 of DER, or PEM)") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ValueError("it is not an ECDSA P-256 public key, which SendGrid signs with")
    return base64_key


def bounded_batch(content_length: str | None, read_body: Callable[[], bytes]) -> bytes:
    """The request body, read only if its declared length is at most MAX_EVENT_BATCH_BYTES;
    PayloadTooLarge for a larger declared or actual one."""
    declared = _CONTENT_LENGTH.match(content_length or "")
    if declared is not None:
        # Any length of more digits than the cap has is over it, and int() of thousands of
        # digits is refused (sys.int_info.str_digits_check_threshold).
        digits = declared[1]
        _check_size(int(digits) if len(digits) < 16 else MAX_EVENT_BATCH_BYTES + 1)
    body = read_body()
    # The backstop for a body without a length (chunked) or with a false one.
    _check_size(len(body))
    return body


def _check_size(size: int) -> None:
    if size > MAX_EVENT_BATCH_BYTES:
        raise PayloadTooLarge(
            f"the body is {size} bytes; an Event Webhook batch may be at most "
            f"{MAX_EVENT_BATCH_BYTES} (SendGrid posts batches of about 768 KB)"
        )


class SignatureVerifier:
    """Checks the signature and age of Event Webhook requests against one verification key."""

    def __init__(self, public_key: str | None) -> None:
        self._webhook = EventWebhook(normalize_public_key(public_key)) if public_key else None
        # When the missing key was last warned about (time.monotonic), and requests since.
        self._warned_at: float | None = None
        self._unwarned = 0
        self._warning_lock = threading.Lock()

    @property
    def configured(self) -> bool:
        """Whether a verification key is set; without one every request is refused."""
        return self._webhook is not None

    def verify(
        self, body: bytes, signature: str | None, timestamp: str | None, now: datetime
    ) -> None:
        """Return if SendGrid signed `body` within MAX_SIGNATURE_SKEW of `now`.

        Raises EventWebhookNotConfigured without a key, SignatureRejected otherwise.
        """
        if self._webhook is None:
            self._warn_not_configured()
            raise EventWebhookNotConfigured(
                f"the SendGrid Event Webhook is not configured: {PUBLIC_KEY_SETTING} is not set"
            )
        # A refusal is not logged here, once per request: the route's refusals are counted in
        # the refusal log (shared/refusals.py), and its 401 body says which check failed.
        self._check(body, signature, timestamp, now)

    def _warn_not_configured(self) -> None:
        with self._warning_lock:
            self._unwarned += 1
            at = time.monotonic()
            last = self._warned_at
            if last is not None and at - last < NOT_CONFIGURED_WARNING_SECONDS:
                return
            count, self._warned_at, self._unwarned = self._unwarned, at, 0
        logger.warning(
            "%d Event Webhook request(s) came, but %s is not set", count, PUBLIC_KEY_SETTING
        )

    def _check(
        self, body: bytes, signature: str | None, timestamp: str | None, now: datetime
    ) -> None:
        assert self._webhook is not None
        if not signature or not timestamp:
            raise SignatureRejected(
                f"the request is not signed: {SIGNATURE_HEADER} and {TIMESTAMP_HEADER} are required"
            )
        if not _TIMESTAMP.fullmatch(timestamp):
            raise SignatureRejected(f"{TIMESTAMP_HEADER} is not a time in whole seconds since 1970")
        skew = now.timestamp() - int(timestamp)
        if abs(skew) > MAX_SIGNATURE_SKEW.total_seconds():
            when = "old" if skew > 0 else "in the future"
            raise SignatureRejected(
                f"the signature's timestamp is {abs(skew):.0f} s {when}; at most "
                f"{MAX_SIGNATURE_SKEW.total_seconds():.0f} s either way are accepted"
            )
        if len(signature) > MAX_SIGNATURE_LENGTH:
            raise SignatureRejected(f"{SIGNATURE_HEADER} is too long to be a P-256 signature")
        try:
            # The helper signs text; a body that is not UTF-8 cannot be one SendGrid signed.
            text = body.decode("utf-8")
            valid = bool(self._webhook.verify_signature(text, signature, timestamp))
        except (UnicodeDecodeError, binascii.Error, ValueError, TypeError):
            valid = False
        if not valid:
            raise SignatureRejected(
                f"the signature does not match the body, the timestamp and {PUBLIC_KEY_SETTING}"
            )
