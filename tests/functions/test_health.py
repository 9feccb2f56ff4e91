from __future__ import annotations

import json
from typing import Any

import azure.functions as func
import pytest

from functions.health import health
from shared.gateway import Gateway
from shared.webhook_signature import SignatureVerifier
from tests.fakes import FakeMailQueue, FakeMessageBodyStore, FakeStatusStore
from tests.samples import envelope


def get_health() -> tuple[int, dict[str, Any], func.HttpResponse]:
    response = health(
        func.HttpRequest(
            method="GET",
            url="http://localhost:7071/api/health",
            headers={},
            params={},
            route_params={},
            body=b"",
        )
    )
    assert isinstance(response, func.HttpResponse)
    document: dict[str, Any] = json.loads(response.get_body())
    return response.status_code, document, response


@pytest.mark.usefixtures("gateway")
def test_should_answer_200_when_configured_and_storage_answers(
    fake_queue: FakeMailQueue, fake_statuses: FakeStatusStore, fake_bodies: FakeMessageBodyStore
) -> None:
    status, document, response = get_health()

    assert status == 200
    assert response.mimetype == "application/json"
    assert document == {
        "status": "healthy",
        "checks": {"configuration": "ok", "storage": "ok"},
        "queues": {"mail-outbound": 0, "mail-outbound-poison": 0},
        "event_webhook": "configured",
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

    status, document, _ = get_health()

    assert status == 200
    assert document["queues"] == {"mail-outbound": 2, "mail-outbound-poison": 1}


@pytest.mark.usefixtures("gateway")
def test_should_answer_503_when_the_queues_do_not_answer(fake_queue: FakeMailQueue) -> None:
    fake_queue.make_unavailable(["depths"])

    status, document, _ = get_health()

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

    status, document, _ = get_health()

    assert status == 503
    assert document["checks"]["storage"].startswith("error:")
    assert "mailstatus" in document["checks"]["storage"]


@pytest.mark.usefixtures("gateway")
def test_should_answer_503_when_blob_storage_does_not_answer(
    fake_bodies: FakeMessageBodyStore,
) -> None:
    fake_bodies.make_unavailable(["check"])

    status, document, _ = get_health()

    assert status == 503
    assert document["checks"]["storage"].startswith("error:")
    assert "mail-large" in document["checks"]["storage"]


@pytest.mark.usefixtures("misconfigured")
def test_should_answer_503_problem_naming_the_settings_when_they_are_wrong() -> None:
    status, document, response = get_health()

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

    status, document, _ = get_health()

    assert status == 200
    assert document["status"] == "healthy"
    assert document["event_webhook"] == "not configured"


@pytest.mark.usefixtures("gateway")
def test_should_say_whether_the_event_webhook_is_configured_when_storage_fails(
    fake_queue: FakeMailQueue,
) -> None:
    fake_queue.make_unavailable(["depths"])

    _, document, _ = get_health()

    assert document["event_webhook"] == "configured"
