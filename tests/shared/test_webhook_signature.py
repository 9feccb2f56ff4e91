"""SendGrid's Event Webhook signature: checked over the raw body with the configured key, and
refused when missing, wrong, tampered with, or outside five minutes of the gateway's clock."""

from __future__ import annotations

import base64
from datetime import timedelta

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from shared.errors import EventWebhookNotConfigured, SignatureRejected
from shared.webhook_signature import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    SignatureVerifier,
    normalize_public_key,
)
from tests.event_webhook_samples import WebhookSigner, sendgrid_event
from tests.samples import NOW

SIGNER = WebhookSigner()
OTHER_SIGNER = WebhookSigner()
BATCH = [sendgrid_event("delivered", "5d0c6a52-7c9e-4a57-9a4e-1f1f6d3b2c10", "ev-1", NOW)]


def verifier() -> SignatureVerifier:
    return SignatureVerifier(SIGNER.public_key)


def refusal(body: bytes, headers: dict[str, str], at_skew: timedelta = timedelta()) -> str:
    with pytest.raises(SignatureRejected) as caught:
        verifier().verify(
            body, headers.get(SIGNATURE_HEADER), headers.get(TIMESTAMP_HEADER), NOW + at_skew
        )
    assert caught.value.status == 401
    assert caught.value.headers["WWW-Authenticate"].startswith("SendGrid-Signature")
    return caught.value.detail


def der_base64(public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey) -> str:
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(der).decode()


def test_should_accept_a_batch_signed_now() -> None:
    signed = SIGNER.sign(BATCH, NOW)

    verifier().verify(
        signed.body, signed.headers[SIGNATURE_HEADER], signed.headers[TIMESTAMP_HEADER], NOW
    )


@pytest.mark.parametrize("skew", [timedelta(seconds=-300), timedelta(seconds=300)])
def test_should_accept_a_timestamp_up_to_five_minutes_either_side(skew: timedelta) -> None:
    signed = SIGNER.sign(BATCH, NOW + skew)

    verifier().verify(
        signed.body, signed.headers[SIGNATURE_HEADER], signed.headers[TIMESTAMP_HEADER], NOW
    )


def test_should_check_the_signature_over_the_raw_bytes_not_the_parsed_json() -> None:
    # The same JSON spaced otherwise is another body: SendGrid signed the bytes it sent.
    spaced = b'[ {"event": "delivered", "sg_event_id": "ev-1", "timestamp": 1}]'
    signed = SIGNER.sign(spaced, NOW)

    verifier().verify(
        spaced, signed.headers[SIGNATURE_HEADER], signed.headers[TIMESTAMP_HEADER], NOW
    )
    assert "does not match" in refusal(spaced.replace(b"[ ", b"["), signed.headers)


def test_should_refuse_a_tampered_body() -> None:
    signed = SIGNER.sign(BATCH, NOW)
    tampered = signed.body.replace(b"delivered", b"bounce")

    assert "does not match" in refusal(tampered, signed.headers)


def test_should_refuse_a_batch_signed_with_another_key() -> None:
    signed = OTHER_SIGNER.sign(BATCH, NOW)

    assert "does not match" in refusal(signed.body, signed.headers)


def test_should_refuse_a_signature_moved_to_another_timestamp() -> None:
    signed = SIGNER.sign(BATCH, NOW)
    headers = {**signed.headers, TIMESTAMP_HEADER: str(int(NOW.timestamp()) + 1)}

    assert "does not match" in refusal(signed.body, headers)


@pytest.mark.parametrize(
    ("skew", "words"),
    [(timedelta(seconds=301), "301 s old"), (timedelta(seconds=-301), "301 s in the future")],
)
def test_should_refuse_a_timestamp_more_than_five_minutes_away(skew: timedelta, words: str) -> None:
    # Validly signed, but long ago (a captured request replayed) or ahead of the clock.
    signed = SIGNER.sign(BATCH, NOW - skew)

    assert words in refusal(signed.body, signed.headers)


@pytest.mark.parametrize("missing", [SIGNATURE_HEADER, TIMESTAMP_HEADER])
def test_should_refuse_an_unsigned_request(missing: str) -> None:
    signed = SIGNER.sign(BATCH, NOW)
    headers = {k: v for k, v in signed.headers.items() if k != missing}

    assert "not signed" in refusal(signed.body, headers)


@pytest.mark.parametrize("timestamp", ["", " 1772443800", "1772443800.5", "-1", "now", "1e9"])
def test_should_refuse_a_timestamp_that_is_not_whole_seconds(timestamp: str) -> None:
    signed = SIGNER.sign(BATCH, NOW)
    headers = {**signed.headers, TIMESTAMP_HEADER: timestamp}

    detail = refusal(signed.body, headers)

    assert "not signed" in detail or "whole seconds" in detail


@pytest.mark.parametrize(
    "signature", ["abc", "!!!!", "AAAA", base64.b64encode(b"\x30\x02\x00\x00").decode(), "A" * 96]
)
def test_should_refuse_a_signature_that_is_not_one(signature: str) -> None:
    signed = SIGNER.sign(BATCH, NOW)

    assert "does not match" in refusal(signed.body, {**signed.headers, SIGNATURE_HEADER: signature})


def test_should_refuse_an_overlong_signature_before_decoding_it() -> None:
    signed = SIGNER.sign(BATCH, NOW)

    assert "too long" in refusal(signed.body, {**signed.headers, SIGNATURE_HEADER: "A" * 10_000})


def test_should_refuse_a_body_that_is_not_utf8() -> None:
    body = b'[{"event": "\xff"}]'
    headers = SIGNER.headers(body, NOW)

    assert "does not match" in refusal(body, headers)


@pytest.mark.parametrize("key", [None, ""])
def test_should_refuse_every_request_naming_the_setting_without_a_key(key: str | None) -> None:
    signed = SIGNER.sign(BATCH, NOW)
    unconfigured = SignatureVerifier(key)

    with pytest.raises(EventWebhookNotConfigured) as caught:
        unconfigured.verify(
            signed.body, signed.headers[SIGNATURE_HEADER], signed.headers[TIMESTAMP_HEADER], NOW
        )

    assert unconfigured.configured is False
    assert caught.value.status == 503
    assert "SENDGRID_WEBHOOK_PUBLIC_KEY" in caught.value.detail


def test_should_take_the_key_as_sendgrid_shows_it_or_as_a_pem_block() -> None:
    assert normalize_public_key(SIGNER.public_key) == SIGNER.public_key
    assert normalize_public_key(SIGNER.public_key_pem) == SIGNER.public_key
    assert normalize_public_key(f"  {SIGNER.public_key}\n") == SIGNER.public_key
    signed = SIGNER.sign(BATCH, NOW)
    SignatureVerifier(SIGNER.public_key_pem).verify(
        signed.body, signed.headers[SIGNATURE_HEADER], signed.headers[TIMESTAMP_HEADER], NOW
    )


@pytest.mark.parametrize(
    "key",
    [
        "not a key",
        "MFkwEwYHKoZIzj0CAQ",
        base64.b64encode(b"just some bytes").decode(),
        der_base64(rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()),
        der_base64(ec.generate_private_key(ec.SECP384R1()).public_key()),
    ],
    ids=["text", "truncated", "bytes", "rsa", "p-384"],
)
def test_should_refuse_a_key_that_is_not_a_p256_public_key(key: str) -> None:
    with pytest.raises(ValueError, match="public key"):
        normalize_public_key(key)
