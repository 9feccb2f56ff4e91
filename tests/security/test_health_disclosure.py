"""Threat: the anonymous health route as a window into the gateway, and as a cheap way to load it.

Attacker: anyone who can reach the app. `GET /api/health` must stay open, as load balancers and
probes call it without credentials. It used to answer every call with three storage calls (queue
depths, the status table, the blob container) and a document holding the queue depths (the
traffic of every client), storage errors (account and resource names) and, while a setting was
wrong, the names of the settings at fault (a Key Vault reference not resolved, a missing
sender list): reconnaissance for free, and a flood of probes was a flood of storage calls.

What the gateway does: the anonymous route answers `{"status": "healthy"}` or
`{"status": "unhealthy"}` (503, with Retry-After as before), from an answer worked out at most
HEALTH_CACHE_SECONDS ago, once per instance however many probes come. The details are on
`GET /api/health/details`, at the host's ADMIN level.
"""

from __future__ import annotations

import json
from typing import Any

import azure.functions as func
import pytest

from functions.health import health, health_details
from shared.gateway import HEALTH_CACHE_SECONDS
from tests.fakes import FakeMailQueue, FakeMessageBodyStore, FakeStatusStore
from tests.functions.test_auth import HTTP_FUNCTIONS
from tests.samples import envelope

# What the full document reveals in each state; none of it may reach an anonymous caller.
SECRETS_OF_THE_HOUSE = (
    "mail-outbound",
    "poison",
    "mailstatus",
    "mail-large",
    "queues",
    "checks",
    "event_webhook",
    "SENDGRID",
    "ALLOWED_SENDERS",
    "vault",
    "error",
)


def probe(headers: dict[str, str] | None = None) -> tuple[func.HttpResponse, dict[str, Any]]:
    request = func.HttpRequest(
        method="GET",
        url="http://localhost:7071/api/health",
        headers=headers or {},
        params={},
        route_params={},
        body=b"",
    )
    response = health(request)
    assert isinstance(response, func.HttpResponse)
    document: dict[str, Any] = json.loads(response.get_body())
    return response, document


def assert_discloses_nothing(response: func.HttpResponse, document: dict[str, Any]) -> None:
    assert set(document) == {"status"}
    text = response.get_body().decode()
    for secret in SECRETS_OF_THE_HOUSE:
        assert secret not in text


@pytest.mark.usefixtures("gateway")
def test_should_show_an_anonymous_caller_only_the_status_when_healthy(
    fake_queue: FakeMailQueue,
) -> None:
    fake_queue.enqueue(envelope(id="msg-traffic"))

    response, document = probe()

    assert (response.status_code, document) == (200, {"status": "healthy"})
    assert_discloses_nothing(response, document)


@pytest.mark.usefixtures("gateway")
def test_should_show_an_anonymous_caller_no_storage_error(fake_queue: FakeMailQueue) -> None:
    fake_queue.make_unavailable(["depths"])

    response, document = probe()

    assert (response.status_code, document) == (503, {"status": "unhealthy"})
    assert response.headers["Retry-After"] == "5"
    assert_discloses_nothing(response, document)


@pytest.mark.usefixtures("misconfigured")
def test_should_name_no_setting_to_an_anonymous_caller() -> None:
    response, document = probe()

    assert (response.status_code, document) == (503, {"status": "unhealthy"})
    assert response.headers["Retry-After"] == "60"
    assert_discloses_nothing(response, document)


@pytest.mark.usefixtures("gateway")
def test_should_show_nothing_more_to_a_caller_presenting_a_key() -> None:
    # On an anonymous route the function cannot know whether the host accepted the key.
    response, document = probe({"x-functions-key": "anything", "Authorization": "Bearer x"})

    assert document == {"status": "healthy"}
    assert_discloses_nothing(response, document)


@pytest.mark.usefixtures("gateway")
def test_should_check_storage_once_per_cache_age_however_many_probe(
    fake_queue: FakeMailQueue, fake_statuses: FakeStatusStore, fake_bodies: FakeMessageBodyStore
) -> None:
    for _ in range(1000):
        assert probe()[0].status_code == 200

    assert (fake_queue.depths_calls, fake_statuses.check_calls, fake_bodies.check_calls) == (
        1,
        1,
        1,
    )
    assert HEALTH_CACHE_SECONDS <= 10


def test_should_keep_the_details_behind_the_admin_key() -> None:
    [trigger] = [t for name, t, _ in HTTP_FUNCTIONS if name == "health_details"]

    assert trigger.auth_level == func.AuthLevel.ADMIN
    assert trigger.route == "health/details"


@pytest.mark.usefixtures("misconfigured")
def test_should_give_the_admin_the_settings_at_fault() -> None:
    request = func.HttpRequest(
        method="GET", url="http://localhost:7071/api/health/details", headers={}, body=b""
    )

    response = health_details(request)

    assert response.status_code == 503
    assert "SENDGRID_API_KEY" in json.loads(response.get_body())["detail"]
