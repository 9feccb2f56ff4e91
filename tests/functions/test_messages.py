from __future__ import annotations

import base64
import json
from typing import Any

import azure.functions as func
import pytest

import shared.gateway
from functions.messages import submit_message
from shared.gateway import Gateway
from tests.fakes import FakeMailQueue
from tests.functions.conftest import MESSAGE_ID
from tests.samples import NOW, body, message

PROBLEM_JSON = "application/problem+json"


def post(content: bytes, headers: dict[str, str] | None = None) -> func.HttpResponse:
    request = func.HttpRequest(
        method="POST",
        url="http://localhost:7071/api/v1/messages",
        headers={"Content-Type": "application/json"} if headers is None else headers,
        params={},
        route_params={},
        body=content,
    )
    response = submit_message(request)
    assert isinstance(response, func.HttpResponse)
    return response


def problem_of(response: func.HttpResponse) -> dict[str, Any]:
    assert response.mimetype == PROBLEM_JSON
    document: dict[str, Any] = json.loads(response.get_body())
    assert {"type", "title", "status", "detail"} <= set(document)
    assert document["status"] == response.status_code
    assert isinstance(document["detail"], str)
    assert document["detail"]
    return document


@pytest.mark.usefixtures("gateway")
def test_should_answer_202_with_the_id_once_the_message_is_queued(
    fake_queue: FakeMailQueue,
) -> None:
    response = post(body(message()))

    assert response.status_code == 202
    assert response.mimetype == "application/json"
    assert json.loads(response.get_body()) == {"id": MESSAGE_ID, "status": "queued"}
    assert response.headers["Location"] == f"/api/v1/messages/{MESSAGE_ID}"
    [queued] = fake_queue.envelopes
    assert (queued.id, queued.accepted_at) == (MESSAGE_ID, NOW)


@pytest.mark.usefixtures("gateway")
def test_should_create_the_queues_once_before_the_first_message(
    fake_queue: FakeMailQueue,
) -> None:
    post(body(message()))
    post(body(message()))

    assert fake_queue.ensure_exists_calls == 1
    assert len(fake_queue.messages) == 2


@pytest.mark.usefixtures("gateway")
@pytest.mark.parametrize("header", ["content-type", "CONTENT-TYPE", "Content-Type"])
def test_should_read_the_content_type_whatever_the_header_case(
    header: str, fake_queue: FakeMailQueue
) -> None:
    response = post(body(message()), {header: "application/json; charset=utf-8"})

    assert response.status_code == 202


@pytest.mark.usefixtures("gateway")
def test_should_answer_400_problem_listing_each_invalid_field(fake_queue: FakeMailQueue) -> None:
    response = post(body(message(to=["not-an-address"], subject="Hi\r\nBcc: x@example.net")))

    assert response.status_code == 400
    document = problem_of(response)
    assert document["type"] == "about:blank"
    assert document["title"] == "Bad Request"
    pointers = {e["pointer"]: e["detail"] for e in document["errors"]}
    assert set(pointers) == {"#/to/0/email", "#/subject"}
    assert "CR, LF or NUL" in pointers["#/subject"]
    assert fake_queue.messages == []


@pytest.mark.usefixtures("gateway")
def test_should_answer_400_for_a_body_that_is_not_json(fake_queue: FakeMailQueue) -> None:
    response = post(b"{not json")

    assert response.status_code == 400
    assert [e["pointer"] for e in problem_of(response)["errors"]] == ["#"]


@pytest.mark.usefixtures("gateway")
def test_should_answer_403_for_a_sender_outside_allowed_senders(
    fake_queue: FakeMailQueue,
) -> None:
    response = post(body(message(**{"from": "ceo@elsewhere.net"})))

    assert response.status_code == 403
    assert [e["pointer"] for e in problem_of(response)["errors"]] == ["#/from"]
    assert fake_queue.messages == []


@pytest.mark.usefixtures("gateway")
def test_should_answer_413_for_a_message_too_large_for_the_queue(
    fake_queue: FakeMailQueue,
) -> None:
    attachment = {"filename": "big.bin", "content": base64.b64encode(bytes(45_000)).decode()}

    response = post(body(message(attachments=[attachment])))

    assert response.status_code == 413
    assert [e["pointer"] for e in problem_of(response)["errors"]] == ["#/attachments"]
    assert fake_queue.messages == []


@pytest.mark.usefixtures("gateway")
@pytest.mark.parametrize("headers", [{}, {"Content-Type": "text/plain"}])
def test_should_answer_415_for_a_body_not_sent_as_json(
    headers: dict[str, str], fake_queue: FakeMailQueue
) -> None:
    response = post(body(message()), headers)

    assert response.status_code == 415
    assert "errors" not in problem_of(response)
    assert fake_queue.messages == []


@pytest.mark.usefixtures("gateway")
@pytest.mark.parametrize("operation", ["enqueue", "ensure_exists"])
def test_should_answer_503_with_retry_after_when_storage_is_unavailable(
    operation: str, fake_queue: FakeMailQueue
) -> None:
    fake_queue.make_unavailable([operation])

    response = post(body(message()))

    assert response.status_code == 503
    assert response.headers["Retry-After"] == "5"
    document = problem_of(response)
    assert "not accepted" in document["detail"]
    assert "ServiceRequestError" not in document["detail"]
    assert fake_queue.messages == []


@pytest.mark.usefixtures("gateway")
def test_should_accept_again_once_storage_is_back(fake_queue: FakeMailQueue) -> None:
    fake_queue.make_unavailable(["ensure_exists"])
    assert post(body(message())).status_code == 503

    fake_queue.make_available()

    assert post(body(message())).status_code == 202
    assert fake_queue.ensure_exists_calls == 1


@pytest.mark.usefixtures("misconfigured")
def test_should_answer_500_without_details_when_the_settings_are_bad() -> None:
    response = post(body(message()))

    assert response.status_code == 500
    document = problem_of(response)
    assert "misconfigured" in document["detail"]
    # The configuration error names settings: that is for the logs, not for callers.
    assert "ALLOWED_SENDERS" not in response.get_body().decode()
    assert "AzureWebJobsStorage" not in response.get_body().decode()


def test_should_use_the_process_gateway(gateway: Gateway, fake_queue: FakeMailQueue) -> None:
    assert shared.gateway.get_gateway() is gateway
