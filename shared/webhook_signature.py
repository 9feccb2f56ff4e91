"""SendGrid's signed Event Webhook: the verification key, and checking a request against it.

SendGrid signs `timestamp + raw body` with ECDSA P-256 / SHA-256 and sends the signature and the
timestamp in two headers. The signature is checked with SendGrid's own helper
(`sendgrid.helpers.eventwebhook`); the helper does not look at the timestamp's age, so a captured
request could be replayed for ever: the gateway also refuses a timestamp more than
MAX_SIGNATURE_SKEW away from its clock, in either direction.
"""

from __future__ import annotations

import binascii
import logging
import re
from datetime import datetime, timedelta

from cryptography.hazmat.primitives.asymmetric import ec
from sendgrid.helpers.eventwebhook import EventWebhook
from sendgrid.helpers.eventwebhook.eventwebhook_header import EventWebhookHeader

from shared.errors import EventWebhookNotConfigured, SignatureRejected

logger = logging.getLogger(__name__)

PUBLIC_KEY_SETTING = "SENDGRID_WEBHOOK_PUBLIC_KEY"
SIGNATURE_HEADER: str = EventWebhookHeader.SIGNATURE
TIMESTAMP_HEADER: str = EventWebhookHeader.TIMESTAMP
MAX_SIGNATURE_SKEW = timedelta(minutes=5)
# A DER-encoded P-256 signature is at most 72 bytes, 96 characters of base64.
MAX_SIGNATURE_LENGTH = 128
# Whole seconds since 1970, as SendGrid sends them.
_TIMESTAMP = re.compile(r"^[0-9]{1,12}$")
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


class SignatureVerifier:
    """Checks the signature and age of Event Webhook requests against one verification key."""

    def __init__(self, public_key: str | None) -> None:
        self._webhook = EventWebhook(normalize_public_key(public_key)) if public_key else None

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
            logger.warning("An Event Webhook request came, but %s is not set", PUBLIC_KEY_SETTING)
            raise EventWebhookNotConfigured(
                f"the SendGrid Event Webhook is not configured: {PUBLIC_KEY_SETTING} is not set"
            )
        # A refusal is not logged here, once per request: the route's refusals are counted in
        # the refusal log (shared/refusals.py), and its 401 body says which check failed.
        self._check(body, signature, timestamp, now)

    def _check(
        self, body: bytes, signature: str | None, timestamp: str | None, now: datetime
    ) -> None:
        assert self._webhook is not None
        if not signature or not timestamp:
            raise SignatureRejected(
                f"the request is not signed: {SIGNATURE_HEADER} and {TIMESTAMP_HEADER} are required"
            )
        if not _TIMESTAMP.match(timestamp):
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
