from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import azure.functions as func
import pytest

from functions.console import console, console_message, console_summary
from shared.activity import ActivityEvent
from shared.status import MessageState, MessageStatus
from tests.fakes import FakeActivityLog, FakeMailQueue, FakeStatusStore
from tests.functions.conftest import MESSAGE_ID
from tests.samples import NOW

ADMIN_KEY = "the-admin-key-a1b2c3"


def call(
    function: Callable[[func.HttpRequest], func.HttpResponse],
    route: str,
    route_params: dict[str, str] | None = None,
) -> func.HttpResponse:
    # The key as the host saw it: in the address and in the header.
    request = func.HttpRequest(
        method="GET",
        url=f"http://localhost:7071/api/{route}?code={ADMIN_KEY}",
        headers={"x-functions-key": ADMIN_KEY},
        params={"code": ADMIN_KEY},
        route_params=route_params or {},
        body=b"",
    )
    response = function(request)
    assert isinstance(response, func.HttpResponse)
    return response


def json_of(response: func.HttpResponse) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(response.get_body())
    return document


def test_should_serve_the_page_as_html_with_its_policy_and_without_the_key() -> None:
    response = call(console, "console")

    assert response.status_code == 200
    assert response.mimetype == "text/html"
    assert response.charset == "utf-8"
    html = response.get_body().decode()
    assert html.startswith("<!doctype html>")
    assert ADMIN_KEY not in html
    assert response.headers["Content-Security-Policy"].startswith("default-src 'none'")
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert response.headers["X-Frame-Options"] == "DENY"


@pytest.mark.usefixtures("gateway")
def test_should_serve_the_summary(
    fake_queue: FakeMailQueue, fake_statuses: FakeStatusStore, fake_activity: FakeActivityLog
) -> None:
    fake_statuses.add(MessageStatus("msg-1", MessageState.SENT, NOW, NOW, attempts=1))
    fake_activity.events.append(ActivityEvent("msg-1", MessageState.SENT, 1, NOW))

    response = call(console_summary, "v1/console/summary")

    assert response.status_code == 200
    assert response.mimetype == "application/json"
    assert response.headers["Cache-Control"] == "no-store"
    summary = json_of(response)
    assert summary["queues"]["mail"] == {"name": "mail-outbound", "depth": 0}
    assert summary["minutes"][-1]["sent"] == 1
    assert [m["id"] for m in summary["latest"]] == ["msg-1"]


@pytest.mark.usefixtures("gateway")
def test_should_answer_503_when_storage_is_unavailable(fake_queue: FakeMailQueue) -> None:
    fake_queue.make_unavailable(["depths"])

    response = call(console_summary, "v1/console/summary")

    assert response.status_code == 503
    assert response.mimetype == "application/problem+json"
    assert response.headers["Retry-After"]


@pytest.mark.usefixtures("gateway")
def test_should_show_any_clients_message(fake_statuses: FakeStatusStore) -> None:
    fake_statuses.add(
        MessageStatus(MESSAGE_ID, MessageState.FAILED, NOW, NOW, attempts=1, client="other")
    )

    response = call(console_message, f"v1/console/messages/{MESSAGE_ID}", {"id": MESSAGE_ID})

    assert response.status_code == 200
    document = json_of(response)
    assert (document["status"]["status"], document["status"]["client"]) == ("failed", "other")
    assert document["activity"] == []


@pytest.mark.usefixtures("gateway")
def test_should_answer_404_for_an_unknown_message() -> None:
    unknown = "0b6e8c1e-2f6a-4d3c-9a51-7f2d1e0c9b84"
    response = call(console_message, f"v1/console/messages/{unknown}", {"id": unknown})

    assert response.status_code == 404
    assert response.mimetype == "application/problem+json"
    assert json_of(response)["status"] == 404
