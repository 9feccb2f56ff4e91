"""Threat: keys guessed and clients throttled without a trace; or a trace as loud as the attack.

Attackers: anyone trying keys on the mail routes (`Authorization: Bearer mg_<client>_<guess>`) or
posting to SendGrid's Event Webhook; a client (careless or hostile) sending from senders it may
not use, bodies too large, or more than its rate. None of these refusals (401, 403, 413, 429)
was logged, so a key being guessed or a client being throttled left no trace; logging each
one would let the same loop flood the log instead.

What the gateway does: every 4xx answer of a client route or of the Event Webhook is counted in
the refusal log (shared/refusals.py) under its route, status, client (or "unknown key") and
the caller's address from the front end's `client-ip` header; a kind is logged at once, then
at most once a minute with a count. Never the key, never the body. infra/app/alerts.bicep
alerts on a burst of 401s (tests/infra/test_alerts.py).
"""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Callable

import azure.functions as func
import pytest

import shared.clients
import shared.refusals
from functions.messages import get_message_status, submit_message
from functions.sendgrid_compat import sendgrid_mail_send
from functions.sendgrid_events import sendgrid_events
from shared.clients import ClientStore
from shared.refusals import REFUSED, RefusalLog
from shared.settings import Settings
from tests.event_webhook_samples import sendgrid_event
from tests.functions.conftest import APP_KEY, MESSAGE_ID, OTHER_KEY, WEBHOOK_SIGNER
from tests.samples import BASE_ENV, CLIENT, NOW, body, message

pytestmark = pytest.mark.usefixtures("gateway")

CALLER = "198.51.100.23"
SLOW_KEY = "mg_slow_" + "s" * 43
_LINE = re.compile(
    rf"^{REFUSED}: route=(?P<route>\S+) status=(?P<status>\d+) client=(?P<client>.+) "
    r"address=(?P<address>\S+) count=(?P<count>\d+)$"
)


@pytest.fixture
def settings() -> Settings:
    """The function tests' settings, with the smallest MAX_REQUEST_BYTES allowed."""
    return Settings.from_env(
        {
            **BASE_ENV,
            "SENDGRID_WEBHOOK_PUBLIC_KEY": WEBHOOK_SIGNER.public_key,
            "MAX_REQUEST_BYTES": "1024",
        }
    )


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """The refusal log's clock, for the test to move on."""
    clock = Clock()
    monkeypatch.setattr(shared.refusals, "_refusals", RefusalLog(clock=clock, background=False))
    return clock


@pytest.fixture
def slow_client(clients: ClientStore, monkeypatch: pytest.MonkeyPatch) -> str:
    """A client allowed one message a minute; its key."""
    monkeypatch.setattr(shared.clients, "new_key", lambda _name: SLOW_KEY)
    clients.create("slow", ",".join(CLIENT.senders), rate_per_minute=1)
    return SLOW_KEY


def call(
    function: Callable[[func.HttpRequest], func.HttpResponse],
    route: str,
    key: str | None,
    content: bytes = b"",
    method: str = "POST",
    route_params: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> func.HttpResponse:
    request = func.HttpRequest(
        method=method,
        url=f"http://localhost:7071/api/{route}",
        headers={
            "Content-Type": "application/json",
            # As App Service's front end writes it: the caller's address and port.
            "client-ip": f"{CALLER}:{50000 + secrets.randbelow(10000)}",
            **({"Authorization": f"Bearer {key}"} if key else {}),
            **(headers or {}),
        },
        params={},
        route_params=route_params or {},
        body=content,
    )
    response = function(request)
    assert isinstance(response, func.HttpResponse)
    return response


def refusals(caplog: pytest.LogCaptureFixture) -> list[dict[str, str]]:
    found = []
    for record in caplog.records:
        match = _LINE.match(record.getMessage())
        if match:
            found.append(match.groupdict())
    return found


def test_should_count_guessed_keys_under_unknown_key_and_never_log_them(
    clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    guesses = [f"mg_app_{secrets.token_urlsafe(32)}" for _ in range(300)]
    mail = body(message(subject="guess-subject-7f3a"))

    with caplog.at_level(logging.DEBUG):
        for guess in guesses:
            assert call(submit_message, "v1/messages", guess, mail).status_code == 401
        clock.now += 60
        shared.refusals._refusals.write_due()

    assert refusals(caplog) == [
        {
            "route": "submit_message",
            "status": "401",
            "client": "unknown key",
            "address": CALLER,
            "count": count,
        }
        for count in ("1", "299")
    ]
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert not [guess for guess in guesses if guess in logged or guess[-20:] in logged]
    assert "guess-subject-7f3a" not in logged


def test_should_name_a_disabled_client_whose_genuine_key_is_refused(
    clock: Clock, clients: ClientStore, caplog: pytest.LogCaptureFixture
) -> None:
    clients.set_enabled("other", False)

    with caplog.at_level(logging.WARNING):
        response = call(submit_message, "v1/messages", OTHER_KEY, body(message()))

    assert response.status_code == 401
    assert [(r["status"], r["client"]) for r in refusals(caplog)] == [("401", "other")]


def test_should_log_a_sender_refused_to_a_client(
    clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    mail = body(message(**{"from": "ceo@elsewhere.example.com"}))

    with caplog.at_level(logging.WARNING):
        response = call(submit_message, "v1/messages", APP_KEY, mail)

    assert response.status_code == 403
    assert [(r["route"], r["status"], r["client"]) for r in refusals(caplog)] == [
        ("submit_message", "403", "app")
    ]


def test_should_log_a_body_too_large_on_either_mail_route(
    clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    large = body(message(text="x" * 2000))

    with caplog.at_level(logging.WARNING):
        assert call(submit_message, "v1/messages", APP_KEY, large).status_code == 413
        assert call(sendgrid_mail_send, "v3/mail/send", APP_KEY, large).status_code == 413

    assert [(r["route"], r["status"], r["client"]) for r in refusals(caplog)] == [
        ("submit_message", "413", "app"),
        ("sendgrid_mail_send", "413", "app"),
    ]


def test_should_count_a_throttled_client(
    clock: Clock, slow_client: str, caplog: pytest.LogCaptureFixture
) -> None:
    mail = body(message())

    with caplog.at_level(logging.WARNING):
        assert call(submit_message, "v1/messages", slow_client, mail).status_code == 202
        for _ in range(50):
            assert call(submit_message, "v1/messages", slow_client, mail).status_code == 429
        clock.now += 60
        shared.refusals._refusals.write_due()

    assert [(r["status"], r["client"], r["count"]) for r in refusals(caplog)] == [
        ("429", "slow", "1"),
        ("429", "slow", "49"),
    ]


def test_should_log_ids_probed_on_the_status_route(
    clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        # Not an id, and an id no message has (the gateway gave no client this uuid4).
        for probe in ("a#b", "0b6e8c1e-2f6a-4d3c-9a51-7f2d1e0c9b84"):
            response = call(
                get_message_status,
                "v1/messages/x",
                APP_KEY,
                method="GET",
                route_params={"id": probe},
            )
            assert response.status_code == 404

    assert [(r["route"], r["status"], r["client"], r["count"]) for r in refusals(caplog)] == [
        ("get_message_status", "404", "app", "1")
    ]


def test_should_log_a_refused_event_webhook_request_as_from_an_unknown_key(
    clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    signed = WEBHOOK_SIGNER.sign([sendgrid_event("open", MESSAGE_ID, "ev-1", NOW)], NOW)
    tampered = signed.body.replace(b"open", b"click")

    with caplog.at_level(logging.WARNING):
        response = call(
            sendgrid_events, "v1/events/sendgrid", None, tampered, headers=signed.headers
        )

    assert response.status_code == 401
    assert [(r["route"], r["status"], r["client"]) for r in refusals(caplog)] == [
        ("sendgrid_events", "401", "unknown key")
    ]


def test_should_log_no_accepted_request(clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    signed = WEBHOOK_SIGNER.sign([sendgrid_event("open", MESSAGE_ID, "ev-2", NOW)], NOW)

    with caplog.at_level(logging.WARNING):
        assert call(submit_message, "v1/messages", APP_KEY, body(message())).status_code == 202
        assert (
            call(sendgrid_events, "v1/events/sendgrid", None, signed.body, headers=signed.headers)
        ).status_code == 200

    assert refusals(caplog) == []


def test_should_say_unknown_for_an_address_the_front_end_did_not_write(
    clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    forged = {"client-ip": "10.0.0.1\nRequests refused: route=x status=200"}

    with caplog.at_level(logging.WARNING):
        call(submit_message, "v1/messages", None, body(message()), headers=forged)

    assert [r["address"] for r in refusals(caplog)] == ["unknown"]
