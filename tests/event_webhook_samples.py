"""SendGrid's Event Webhook as tests play it: a P-256 key pair made here, signed batches, events.

SendGrid signs `timestamp + raw body` with ECDSA P-256 / SHA-256 (DER, base64) and shows the
public key as base64 of its DER SubjectPublicKeyInfo; `WebhookSigner` does the same, so a test
goes through the real verification with a key only it holds.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from shared.webhook_signature import SIGNATURE_HEADER, TIMESTAMP_HEADER


@dataclass(frozen=True)
class SignedRequest:
    """A body and the headers SendGrid would send with it."""

    body: bytes
    headers: dict[str, str]


class WebhookSigner:
    """A key pair like the one SendGrid signs its Event Webhook with."""

    def __init__(self) -> None:
        self._private = ec.generate_private_key(ec.SECP256R1())

    @property
    def public_key(self) -> str:
        """The verification key as SendGrid shows it: SENDGRID_WEBHOOK_PUBLIC_KEY's value."""
        der = self._private.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return base64.b64encode(der).decode()

    @property
    def public_key_pem(self) -> str:
        """The same key as a PEM block."""
        return (
            self._private.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode()
        )

    def signature(self, body: bytes, timestamp: str) -> str:
        """The base64 DER signature of `timestamp + body`."""
        der = self._private.sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
        return base64.b64encode(der).decode()

    def headers(self, body: bytes, at: datetime | int) -> dict[str, str]:
        """The signature and timestamp headers for `body` signed at `at`."""
        timestamp = str(int(at.timestamp()) if isinstance(at, datetime) else at)
        return {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: self.signature(body, timestamp),
            TIMESTAMP_HEADER: timestamp,
        }

    def sign(self, batch: list[dict[str, Any]] | bytes, at: datetime | int) -> SignedRequest:
        """A batch (events, or raw bytes) as SendGrid would post it at `at`."""
        body = batch if isinstance(batch, bytes) else json.dumps(batch).encode()
        return SignedRequest(body, self.headers(body, at))


def sendgrid_event(
    event: str,
    mailgate_id: str | None,
    sg_event_id: str,
    at: datetime | int,
    **fields: Any,
) -> dict[str, Any]:
    """One event as SendGrid posts it: custom args (mailgate_id) at the top level."""
    document: dict[str, Any] = {
        "email": "someone@example.net",
        "timestamp": int(at.timestamp()) if isinstance(at, datetime) else at,
        "event": event,
        "sg_event_id": sg_event_id,
        "sg_message_id": "14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.0",
        "category": ["billing"],
        **fields,
    }
    if mailgate_id is not None:
        document["mailgate_id"] = mailgate_id
    return document
