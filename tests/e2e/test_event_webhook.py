"""SendGrid's Event Webhook on the real stack: a mail sent through the gateway, then SendGrid's
signed events for it posted to the local host, as SendGrid would post them."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from tests.e2e.conftest import WEBHOOK_SIGNER, RunningHost, wait_for
from tests.event_webhook_samples import SignedRequest, WebhookSigner, sendgrid_event

RECIPIENT = "dana.recipient@customer.example.org"


def sent_message(stack: RunningHost) -> str:
    """The id of a message the gateway accepted and SendGrid (the stand-in) took."""
    response = stack.post_message(
        {
            "from": "app@example.com",
            "to": [RECIPIENT],
            "subject": "Events",
            "text": "Tracked by SendGrid's events.",
        }
    )
    assert response.status_code == 202, response.text
    message_id = str(response.json()["id"])
    wait_for(lambda: stack.status(message_id)["status"] == "sent")
    return message_id


def batch(message_id: str, now: datetime) -> list[dict[str, Any]]:
    """What SendGrid posts for a mail it processed, delivered and saw opened."""
    return [
        sendgrid_event(
            "processed", message_id, f"p-{message_id}", now - timedelta(seconds=20), email=RECIPIENT
        ),
        sendgrid_event(
            "delivered",
            message_id,
            f"d-{message_id}",
            now - timedelta(seconds=10),
            email=RECIPIENT,
            response="250 OK",
        ),
        sendgrid_event(
            "open", message_id, f"o-{message_id}", now, email=RECIPIENT, useragent="Mail/1.0"
        ),
    ]


def now() -> datetime:
    return datetime.now(timezone.utc)


def test_should_show_delivery_and_timeline_after_a_signed_batch_and_ignore_it_again(
    stack: RunningHost,
) -> None:
    message_id = sent_message(stack)
    signed = WEBHOOK_SIGNER.sign(batch(message_id, now()), now())

    response = stack.post_events(signed)

    assert response.status_code == 200, response.text
    assert response.json() == {
        "received": 3,
        "recorded": 3,
        "duplicates": 0,
        "unknown": 0,
        "ignored": 0,
    }
    document = stack.status(message_id)
    assert document["status"] == "sent"
    assert document["delivery"] == "delivered"
    assert [e["event"] for e in document["timeline"]] == ["processed", "delivered", "open"]
    assert {e["recipient_domain"] for e in document["timeline"]} == {"customer.example.org"}
    assert "dana.recipient" not in str(document)

    # SendGrid retries (the same bytes, the same signature): nothing changes.
    again = stack.post_events(signed)

    assert again.status_code == 200
    assert again.json()["recorded"] == 0
    assert again.json()["duplicates"] == 3
    assert stack.status(message_id) == document
    time.sleep(0.2)
    assert RECIPIENT not in stack.log()


def test_should_count_events_for_unknown_ids_and_still_answer_200(stack: RunningHost) -> None:
    events = [
        sendgrid_event("delivered", "7f000000-0000-4000-8000-000000000000", "u-1", now()),
        sendgrid_event("delivered", None, "u-2", now()),
    ]

    response = stack.post_events(WEBHOOK_SIGNER.sign(events, now()))

    assert response.status_code == 200
    assert response.json()["unknown"] == 2


def tampered(signed: SignedRequest) -> SignedRequest:
    return SignedRequest(signed.body.replace(b'"open"', b'"bounce"'), signed.headers)


@pytest.mark.parametrize(
    "refused",
    ["tampered body", "wrong key", "old timestamp", "unsigned"],
)
def test_should_refuse_with_401_and_change_nothing(stack: RunningHost, refused: str) -> None:
    message_id = sent_message(stack)
    events = batch(message_id, now())
    requests = {
        "tampered body": lambda: tampered(WEBHOOK_SIGNER.sign(events, now())),
        "wrong key": lambda: WebhookSigner().sign(events, now()),
        "old timestamp": lambda: WEBHOOK_SIGNER.sign(events, now() - timedelta(minutes=6)),
        "unsigned": lambda: SignedRequest(
            WEBHOOK_SIGNER.sign(events, now()).body, {"Content-Type": "application/json"}
        ),
    }

    response = stack.post_events(requests[refused]())

    assert response.status_code == 401, response.text
    assert response.headers["Content-Type"].startswith("application/problem+json")
    assert "delivery" not in stack.status(message_id)


def test_should_answer_400_for_signed_malformed_json(stack: RunningHost) -> None:
    response = stack.post_events(WEBHOOK_SIGNER.sign(b'[{"event": "delivered",', now()))

    assert response.status_code == 400
    assert response.headers["Content-Type"].startswith("application/problem+json")


def test_should_say_in_health_that_the_event_webhook_is_configured(stack: RunningHost) -> None:
    assert stack.admin("GET", "/api/health/details").json()["event_webhook"] == "configured"
