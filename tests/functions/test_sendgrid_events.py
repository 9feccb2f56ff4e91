"""POST /api/v1/events/sendgrid: SendGrid's signed batches recorded through the real route, and
shown by GET /api/v1/messages/{id}; anything unsigned, badly signed or old is refused."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import azure.functions as func
import pytest

from functions.messages import get_message_status
from functions.sendgrid_events import sendgrid_events
from shared.gateway import Gateway
from shared.status import MessageState, MessageStatus
from shared.webhook_signature import SIGNATURE_HEADER, TIMESTAMP_HEADER, SignatureVerifier
from tests.event_webhook_samples import SignedRequest, WebhookSigner, sendgrid_event
from tests.fakes import FakeStatusStore, FakeTableClient
from tests.functions.conftest import APP_AUTH, MESSAGE_ID, WEBHOOK_SIGNER
from tests.samples import NOW

pytestmark = pytest.mark.usefixtures("gateway")

BATCH = [
    sendgrid_event("processed", MESSAGE_ID, "ev-processed", NOW),
    sendgrid_event("delivered", MESSAGE_ID, "ev-delivered", NOW + timedelta(seconds=2)),
    sendgrid_event("open", MESSAGE_ID, "ev-open", NOW + timedelta(seconds=40), useragent="M/1"),
]


@pytest.fixture(autouse=True)
def sent(fake_statuses: FakeStatusStore) -> MessageStatus:
    """The message the events are about, sent by the client `app`."""
    return fake_statuses.add(
        MessageStatus(
            id=MESSAGE_ID,
            state=MessageState.SENT,
            accepted_at=NOW,
            updated_at=NOW,
            attempts=1,
            provider_message_id="sg-1",
            client="app",
        )
    )


def post_events(body: bytes, headers: dict[str, str]) -> func.HttpResponse:
    request = func.HttpRequest(
        method="POST",
        url="http://localhost:7071/api/v1/events/sendgrid",
        headers=headers,
        params={},
        route_params={},
        body=body,
    )
    response = sendgrid_events(request)
    assert isinstance(response, func.HttpResponse)
    return response


def post_signed(signed: SignedRequest) -> func.HttpResponse:
    return post_events(signed.body, signed.headers)


def answer(response: func.HttpResponse) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(response.get_body())
    return document


def status_document() -> dict[str, Any]:
    request = func.HttpRequest(
        method="GET",
        url=f"http://localhost:7071/api/v1/messages/{MESSAGE_ID}",
        headers=APP_AUTH,
        params={},
        route_params={"id": MESSAGE_ID},
        body=b"",
    )
    response = get_message_status(request)
    assert response.status_code == 200
    return answer(response)


def test_should_record_a_signed_batch_and_show_it_in_the_message_status() -> None:
    response = post_signed(WEBHOOK_SIGNER.sign(BATCH, NOW))

    assert response.status_code == 200
    assert response.mimetype == "application/json"
    assert answer(response) == {
        "received": 3,
        "recorded": 3,
        "duplicates": 0,
        "unknown": 0,
        "ignored": 0,
    }
    document = status_document()
    assert document["status"] == "sent"
    assert document["sendgrid_message_id"] == "sg-1"
    assert document["delivery"] == "delivered"
    assert document["delivery_updated_at"] == NOW.isoformat()
    assert document["timeline"] == [
        {
            "event": "processed",
            "at": "2026-03-02T09:30:00+00:00",
            "sg_event_id": "ev-processed",
            "recipient_domain": "example.net",
        },
        {
            "event": "delivered",
            "at": "2026-03-02T09:30:02+00:00",
            "sg_event_id": "ev-delivered",
            "recipient_domain": "example.net",
        },
        {
            "event": "open",
            "at": "2026-03-02T09:30:40+00:00",
            "sg_event_id": "ev-open",
            "recipient_domain": "example.net",
        },
    ]
    assert "someone" not in json.dumps(document)


def test_should_show_no_delivery_before_the_first_event() -> None:
    document = status_document()

    assert {"delivery", "delivery_updated_at", "timeline"}.isdisjoint(document)


def test_should_change_nothing_when_the_same_batch_comes_again(
    event_table: FakeTableClient,
) -> None:
    signed = WEBHOOK_SIGNER.sign(BATCH, NOW)
    post_signed(signed)
    rows, before = dict(event_table.rows), status_document()

    response = post_signed(signed)

    assert response.status_code == 200
    assert answer(response)["recorded"] == 0
    assert answer(response)["duplicates"] == 3
    assert event_table.rows == rows
    assert status_document() == before


def test_should_not_move_a_delivered_message_back_for_late_events() -> None:
    post_signed(WEBHOOK_SIGNER.sign(BATCH[1:], NOW))

    late = [sendgrid_event("deferred", MESSAGE_ID, "ev-deferred", NOW - timedelta(seconds=30))]
    post_signed(WEBHOOK_SIGNER.sign(late + BATCH[:1], NOW))

    document = status_document()
    assert document["delivery"] == "delivered"
    assert [e["event"] for e in document["timeline"]] == [
        "deferred",
        "processed",
        "delivered",
        "open",
    ]


def test_should_answer_200_counting_events_for_unknown_ids_and_types() -> None:
    batch = [
        sendgrid_event("delivered", "7f000000-0000-4000-8000-000000000000", "ev-1", NOW),
        sendgrid_event("delivered", None, "ev-2", NOW),
        sendgrid_event("group_resubscribe", MESSAGE_ID, "ev-3", NOW),
        sendgrid_event("bounce", MESSAGE_ID, "ev-4", NOW, reason="550 unknown someone@example.net"),
    ]

    response = post_signed(WEBHOOK_SIGNER.sign(batch, NOW))

    assert response.status_code == 200
    assert answer(response) == {
        "received": 4,
        "recorded": 1,
        "duplicates": 0,
        "unknown": 2,
        "ignored": 1,
    }
    document = status_document()
    assert document["delivery"] == "bounced"
    assert document["timeline"][0]["reason"] == "550 unknown *@example.net"


def tampered() -> tuple[bytes, dict[str, str]]:
    signed = WEBHOOK_SIGNER.sign(BATCH, NOW)
    return signed.body.replace(b"processed", b"dropped"), signed.headers


def other_key() -> tuple[bytes, dict[str, str]]:
    signed = WebhookSigner().sign(BATCH, NOW)
    return signed.body, signed.headers


def signed_at(skew: timedelta) -> tuple[bytes, dict[str, str]]:
    signed = WEBHOOK_SIGNER.sign(BATCH, NOW + skew)
    return signed.body, signed.headers


def without(header: str) -> tuple[bytes, dict[str, str]]:
    signed = WEBHOOK_SIGNER.sign(BATCH, NOW)
    return signed.body, {k: v for k, v in signed.headers.items() if k != header}


@pytest.mark.parametrize(
    "request_",
    [
        tampered(),
        other_key(),
        signed_at(timedelta(minutes=-6)),
        signed_at(timedelta(minutes=6)),
        without(SIGNATURE_HEADER),
        without(TIMESTAMP_HEADER),
        (json.dumps(BATCH).encode(), {"Content-Type": "application/json"}),
    ],
    ids=["tampered", "other key", "old", "future", "no signature", "no timestamp", "unsigned"],
)
def test_should_refuse_with_401_and_record_nothing(
    request_: tuple[bytes, dict[str, str]], event_table: FakeTableClient
) -> None:
    body, headers = request_

    response = post_events(body, headers)

    assert response.status_code == 401
    assert response.mimetype == "application/problem+json"
    assert response.headers["WWW-Authenticate"].startswith("SendGrid-Signature")
    assert answer(response)["status"] == 401
    assert event_table.rows == {}


def test_should_find_the_signature_headers_whatever_their_case() -> None:
    signed = WEBHOOK_SIGNER.sign(BATCH, NOW)

    response = post_events(signed.body, {k.lower(): v for k, v in signed.headers.items()})

    assert response.status_code == 200


@pytest.mark.parametrize(
    "body", [b"{not json", b'{"event": "delivered"}', b'[{"event": "open"}]', b""]
)
def test_should_answer_400_problem_for_a_signed_body_that_is_not_a_batch(
    body: bytes, event_table: FakeTableClient
) -> None:
    response = post_signed(WEBHOOK_SIGNER.sign(body, NOW))

    assert response.status_code == 400
    assert response.mimetype == "application/problem+json"
    assert answer(response)["errors"]
    assert event_table.rows == {}


def test_should_answer_503_naming_the_setting_without_a_key(gateway: Gateway) -> None:
    gateway.signatures = SignatureVerifier(None)

    response = post_signed(WEBHOOK_SIGNER.sign(BATCH, NOW))

    assert response.status_code == 503
    assert "SENDGRID_WEBHOOK_PUBLIC_KEY" in answer(response)["detail"]


def test_should_answer_503_when_storage_is_unavailable_so_that_sendgrid_retries(
    fake_statuses: FakeStatusStore, event_table: FakeTableClient
) -> None:
    event_table.fail_next("transaction")
    signed = WEBHOOK_SIGNER.sign(BATCH, NOW)

    response = post_signed(signed)

    assert response.status_code == 503
    assert response.headers["Retry-After"] == "5"
    assert event_table.rows == {}
    retried = post_signed(signed)
    assert answer(retried)["recorded"] == 3
