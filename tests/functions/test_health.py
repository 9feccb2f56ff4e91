"""`GET /api/health` says healthy or not from an answer a few seconds old; `GET
/api/health/details` (admin) says why, checked now. What the anonymous route must not disclose
is in tests/security/test_health_disclosure.py."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import azure.functions as func
import pytest
from azure.data.tables import TableClient

from functions.health import health, health_details
from shared.breaker import BreakerPolicy, ProviderBreakers
from shared.gateway import Gateway, HealthCache, HealthStatus
from shared.openapi import HealthDocument
from shared.webhook_signature import SignatureVerifier
from tests.fakes import FakeMailQueue, FakeMessageBodyStore, FakeStatusStore, FakeTableClient
from tests.samples import envelope


def call(
    function: Callable[[func.HttpRequest], func.HttpResponse], route: str
) -> tuple[int, dict[str, Any], func.HttpResponse]:
    response = function(
        func.HttpRequest(
            method="GET",
            url=f"http://localhost:7071/api/{route}",
            headers={},
            params={},
            route_params={},
            body=b"",
        )
    )
    assert isinstance(response, func.HttpResponse)
    document: dict[str, Any] = json.loads(response.get_body())
    return response.status_code, document, response


def get_health() -> tuple[int, dict[str, Any], func.HttpResponse]:
    return call(health, "health")


def get_health_details() -> tuple[int, dict[str, Any], func.HttpResponse]:
    return call(health_details, "health/details")


# --- GET /api/health ------------------------------------------------------------------------


@pytest.mark.usefixtures("gateway")
def test_should_answer_200_healthy_when_configured_and_storage_answers() -> None:
    status, document, response = get_health()

    assert status == 200
    assert response.mimetype == "application/json"
    assert document == {"status": "healthy"}


@pytest.mark.usefixtures("gateway")
def test_should_answer_503_unhealthy_with_retry_after_when_storage_fails(
    fake_queue: FakeMailQueue,
) -> None:
    fake_queue.make_unavailable(["depths"])

    status, document, response = get_health()

    assert status == 503
    assert document == {"status": "unhealthy"}
    assert response.headers["Retry-After"] == "5"


@pytest.mark.usefixtures("misconfigured")
def test_should_answer_503_unhealthy_asking_for_a_minute_when_the_settings_are_wrong() -> None:
    status, document, response = get_health()

    assert status == 503
    assert response.mimetype == "application/json"
    assert document == {"status": "unhealthy"}
    assert response.headers["Retry-After"] == "60"


@pytest.mark.usefixtures("gateway")
def test_should_check_storage_once_for_many_probes_within_the_cache_age(
    fake_queue: FakeMailQueue, fake_statuses: FakeStatusStore
) -> None:
    for _ in range(50):
        assert get_health()[0] == 200

    assert (fake_queue.depths_calls, fake_statuses.check_calls) == (1, 1)


def test_should_work_the_answer_out_again_once_it_is_too_old() -> None:
    now = [0.0]
    answers = iter([HealthStatus(True, True), HealthStatus(False, True)])
    cache = HealthCache(lambda: next(answers), 5.0, clock=lambda: now[0])

    first = cache.get()
    now[0] = 4.9
    cached = cache.get()
    now[0] = 10.0
    fresh = cache.get()

    assert (first.healthy, cached.healthy, fresh.healthy) == (True, True, False)


def test_should_give_the_previous_answer_while_another_caller_works_one_out() -> None:
    now = [0.0]
    calls: list[str] = []
    cache: HealthCache

    def check() -> HealthStatus:
        calls.append("check")
        if len(calls) == 2:
            # A probe arriving while this check runs gets the answer before it, at once.
            assert cache.get() == HealthStatus(True, True)
            return HealthStatus(False, True)
        return HealthStatus(True, True)

    cache = HealthCache(check, 5.0, clock=lambda: now[0])
    cache.get()
    now[0] = 6.0

    assert cache.get() == HealthStatus(False, True)
    assert calls == ["check", "check"]


def test_should_make_callers_wait_for_the_first_answer_rather_than_check_again() -> None:
    started, release = threading.Event(), threading.Event()
    calls: list[str] = []

    def check() -> HealthStatus:
        calls.append("check")
        started.set()
        release.wait(5)
        return HealthStatus(True, True)

    cache = HealthCache(check, 5.0)
    with ThreadPoolExecutor(max_workers=3) as pool:
        first = pool.submit(cache.get)
        assert started.wait(5)
        others = [pool.submit(cache.get) for _ in range(2)]
        release.set()
        answers = [f.result(timeout=5) for f in (first, *others)]

    assert answers == [HealthStatus(True, True)] * 3
    assert calls == ["check"]


def test_should_let_the_next_caller_check_when_a_check_raised() -> None:
    outcomes: list[HealthStatus | None] = [None, HealthStatus(True, True)]

    def check() -> HealthStatus:
        outcome = outcomes.pop(0)
        if outcome is None:
            raise RuntimeError("a bug")
        return outcome

    cache = HealthCache(check, 5.0, clock=lambda: 0.0)

    with pytest.raises(RuntimeError):
        cache.get()
    assert cache.get() == HealthStatus(True, True)


# --- GET /api/health/details (admin) ---------------------------------------------------------


@pytest.mark.usefixtures("gateway")
def test_should_answer_200_when_configured_and_storage_answers(
    fake_queue: FakeMailQueue, fake_statuses: FakeStatusStore, fake_bodies: FakeMessageBodyStore
) -> None:
    status, document, response = get_health_details()

    assert status == 200
    assert response.mimetype == "application/json"
    assert document == {
        "status": "healthy",
        "checks": {"configuration": "ok", "storage": "ok"},
        "queues": {"mail-outbound": 0, "mail-outbound-poison": 0},
        "event_webhook": "configured",
        "providers": {"sendgrid": {"max_emails_per_second": None, "breaker": "off"}},
    }
    assert (fake_queue.depths_calls, fake_statuses.check_calls) == (1, 1)
    assert fake_bodies.check_calls == 1


@pytest.mark.usefixtures("gateway")
def test_should_report_the_depth_of_the_mail_and_poison_queues(
    fake_queue: FakeMailQueue,
) -> None:
    for id in ("msg-h1", "msg-h2"):
        fake_queue.enqueue(envelope(id=id))
    fake_queue.dead_letter(envelope(id="msg-h3").to_json())

    status, document, _ = get_health_details()

    assert status == 200
    assert document["queues"] == {"mail-outbound": 2, "mail-outbound-poison": 1}


@pytest.mark.usefixtures("gateway")
def test_should_answer_503_when_the_queues_do_not_answer(fake_queue: FakeMailQueue) -> None:
    fake_queue.make_unavailable(["depths"])

    status, document, _ = get_health_details()

    assert status == 503
    assert document["status"] == "unhealthy"
    assert document["checks"]["configuration"] == "ok"
    assert document["checks"]["storage"].startswith("error:")
    assert "mail-outbound" in document["checks"]["storage"]
    assert document["queues"] == {}


@pytest.mark.usefixtures("gateway")
def test_should_answer_503_when_the_status_table_does_not_answer(
    fake_statuses: FakeStatusStore,
) -> None:
    fake_statuses.make_unavailable(["check"])

    status, document, _ = get_health_details()

    assert status == 503
    assert document["checks"]["storage"].startswith("error:")
    assert "mailstatus" in document["checks"]["storage"]


@pytest.mark.usefixtures("gateway")
def test_should_answer_503_when_blob_storage_does_not_answer(
    fake_bodies: FakeMessageBodyStore,
) -> None:
    fake_bodies.make_unavailable(["check"])

    status, document, _ = get_health_details()

    assert status == 503
    assert document["checks"]["storage"].startswith("error:")
    assert "mail-large" in document["checks"]["storage"]


@pytest.mark.usefixtures("misconfigured")
def test_should_answer_503_problem_naming_the_settings_when_they_are_wrong() -> None:
    status, document, response = get_health_details()

    assert status == 503
    assert response.mimetype == "application/problem+json"
    assert response.headers["Retry-After"] == "60"
    assert document["detail"].startswith(
        "the gateway is not configured and the gateway cannot work: SENDGRID_API_KEY: "
        "unresolved Key Vault reference"
    )
    assert "ALLOWED_SENDERS" in document["detail"]
    assert "vault.azure.net" not in document["detail"]


def test_should_stay_healthy_saying_the_event_webhook_is_not_configured(gateway: Gateway) -> None:
    # The key is optional: a gateway without it sends mail as well as ever.
    gateway.signatures = SignatureVerifier(None)

    status, document, _ = get_health_details()

    assert status == 200
    assert document["status"] == "healthy"
    assert document["event_webhook"] == "not configured"


@pytest.mark.usefixtures("gateway")
def test_should_say_whether_the_event_webhook_is_configured_when_storage_fails(
    fake_queue: FakeMailQueue,
) -> None:
    fake_queue.make_unavailable(["depths"])

    _, document, _ = get_health_details()

    assert document["event_webhook"] == "configured"


def test_should_show_each_providers_breaker_as_this_instance_sees_it(gateway: Gateway) -> None:
    gateway.breakers = ProviderBreakers(
        cast("TableClient", FakeTableClient()), BreakerPolicy(failures=2, cooldown_seconds=30)
    )
    gateway.breakers.failed("sendgrid")
    gateway.breakers.failed("sendgrid")

    status, document, _ = get_health_details()

    assert status == 200
    sendgrid = document["providers"]["sendgrid"]
    assert (sendgrid["breaker"], sendgrid["failures"], sendgrid["opened"]) == ("open", 2, 1)
    assert 0 < sendgrid["tried_again_in_seconds"] <= 30
    # As the contract (GET /api/openapi.json) describes it.
    HealthDocument.model_validate(document)
