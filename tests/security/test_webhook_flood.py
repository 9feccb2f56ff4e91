"""Threat: SendGrid's Event Webhook route flooded, with huge bodies or with many bad requests.

Attacker: anyone who can reach the app. `POST /api/v1/events/sendgrid` runs at the host's
anonymous level (SendGrid sends no key; its signature is the credential), so until the
signature is checked the caller is unknown. A body of up to the platform's 100 MB was hashed
and checked against the signature, decoded as text and parsed as JSON; and every refused
request wrote a WARNING line of its own, so a loop of bad requests became a loop of log lines
(ingestion cost, real lines buried), as did every request while no verification key was set.

What the gateway does: a body over MAX_EVENT_BATCH_BYTES (2 MiB, well above the 768 KB at which
SendGrid posts a batch) is refused with 413 before it is read, by its Content-Length, and by its
length when it has none; the refusals are counted, not logged one by one: a kind of refusal is
logged at once, then at most once a minute with a count (shared/refusals.py), and the missing
key is warned about at most once a minute.
"""

from __future__ import annotations

import json
import logging
from datetime import timedelta

import azure.functions as func
import pytest

import shared.refusals
from functions.sendgrid_events import sendgrid_events
from shared.gateway import Gateway
from shared.refusals import REFUSED, RefusalLog
from shared.webhook_signature import MAX_EVENT_BATCH_BYTES, SIGNATURE_HEADER, SignatureVerifier
from tests.event_webhook_samples import sendgrid_event
from tests.functions.conftest import MESSAGE_ID, WEBHOOK_SIGNER
from tests.samples import NOW

pytestmark = pytest.mark.usefixtures("gateway")


class UnreadRequest(func.HttpRequest):
    """A request whose body must not be read: reading it fails the test."""

    def get_body(self) -> bytes:
        raise AssertionError("the body was read")


def post(request: func.HttpRequest) -> func.HttpResponse:
    response = sendgrid_events(request)
    assert isinstance(response, func.HttpResponse)
    return response


def request_of(body: bytes, headers: dict[str, str]) -> func.HttpRequest:
    return func.HttpRequest(
        method="POST",
        url="http://localhost:7071/api/v1/events/sendgrid",
        headers=headers,
        params={},
        route_params={},
        body=body,
    )


def padded_batch(size: int) -> bytes:
    """A valid batch of one event, padded with JSON whitespace to exactly `size` bytes."""
    event = json.dumps([sendgrid_event("delivered", MESSAGE_ID, "ev-big", NOW)]).encode()
    return event[:-1] + b" " * (size - len(event)) + b"]"


@pytest.fixture
def verified(gateway: Gateway, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The sizes of the bodies whose signature was checked."""
    sizes: list[int] = []
    verify = gateway.signatures.verify

    def counting_verify(body: bytes, *args: object) -> None:
        sizes.append(len(body))
        verify(body, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(gateway.signatures, "verify", counting_verify)
    return sizes


@pytest.mark.parametrize("declared", [str(MAX_EVENT_BATCH_BYTES + 1), "104857600", "9" * 5000])
def test_should_refuse_a_body_declared_too_large_without_reading_it(
    declared: str, verified: list[int]
) -> None:
    request = UnreadRequest(
        method="POST",
        url="http://localhost:7071/api/v1/events/sendgrid",
        headers={"Content-Length": declared, "Content-Type": "application/json"},
        body=b"",
    )

    response = post(request)

    assert response.status_code == 413
    assert response.mimetype == "application/problem+json"
    assert str(MAX_EVENT_BATCH_BYTES) in json.loads(response.get_body())["detail"]
    assert verified == []


def test_should_refuse_a_signed_body_too_large_that_declares_no_length(
    verified: list[int],
) -> None:
    signed = WEBHOOK_SIGNER.sign(padded_batch(MAX_EVENT_BATCH_BYTES + 1), NOW)

    response = post(request_of(signed.body, signed.headers))

    assert response.status_code == 413
    assert verified == []


def test_should_refuse_a_body_larger_than_it_declares(verified: list[int]) -> None:
    signed = WEBHOOK_SIGNER.sign(padded_batch(MAX_EVENT_BATCH_BYTES + 1), NOW)

    response = post(request_of(signed.body, {**signed.headers, "Content-Length": "100"}))

    assert response.status_code == 413
    assert verified == []


def test_should_record_a_signed_batch_as_large_as_the_cap(verified: list[int]) -> None:
    signed = WEBHOOK_SIGNER.sign(padded_batch(MAX_EVENT_BATCH_BYTES), NOW)

    response = post(
        request_of(signed.body, {**signed.headers, "Content-Length": str(len(signed.body))})
    )

    assert response.status_code == 200
    assert verified == [MAX_EVENT_BATCH_BYTES]


def test_should_leave_room_for_sendgrids_batches_and_their_last_event() -> None:
    # SendGrid posts once a batch reaches 768 KB; its last event may carry it past that.
    assert MAX_EVENT_BATCH_BYTES >= 2 * 768 * 1000


def test_should_count_a_flood_of_unsigned_requests_instead_of_logging_each(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    body = json.dumps([sendgrid_event("open", MESSAGE_ID, "ev-x", NOW)]).encode()
    headers = {SIGNATURE_HEADER: "MEUCIQ==", "X-Twilio-Email-Event-Webhook-Timestamp": "1"}
    now = [0.0]
    refusal_log = RefusalLog(clock=lambda: now[0], background=False)
    monkeypatch.setattr(shared.refusals, "_refusals", refusal_log)

    with caplog.at_level(logging.INFO):
        for _ in range(500):
            assert post(request_of(body, headers)).status_code == 401
        now[0] += 60
        refusal_log.write_due()

    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 2
    assert all(line.startswith(f"{REFUSED}: route=sendgrid_events status=401 ") for line in lines)
    assert [line.rpartition(" count=")[2] for line in lines] == ["1", "499"]


def test_should_warn_of_the_missing_key_once_however_many_requests_come(
    gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    gateway.signatures = SignatureVerifier(None)
    signed = WEBHOOK_SIGNER.sign([sendgrid_event("open", MESSAGE_ID, "ev-y", NOW)], NOW)

    with caplog.at_level(logging.WARNING, logger="shared.webhook_signature"):
        for _ in range(200):
            assert post(request_of(signed.body, signed.headers)).status_code == 503

    warnings = [r for r in caplog.records if r.name == "shared.webhook_signature"]
    assert len(warnings) == 1
    assert "SENDGRID_WEBHOOK_PUBLIC_KEY" in warnings[0].getMessage()


def test_should_still_refuse_an_old_signature_as_before() -> None:
    signed = WEBHOOK_SIGNER.sign(
        [sendgrid_event("open", MESSAGE_ID, "ev-z", NOW)], NOW - timedelta(hours=1)
    )

    assert post(request_of(signed.body, signed.headers)).status_code == 401
