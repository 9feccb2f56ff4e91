"""`POST /api/v3/mail/send` answers as SendGrid does, and queues the mail like any other."""

from __future__ import annotations

import base64
import json
from typing import Any

import azure.functions as func
import pytest

from functions.sendgrid_compat import sendgrid_mail_send
from shared.clients import ClientStore
from shared.gateway import Gateway
from tests.fakes import FakeIdempotencyStore, FakeMailQueue, FakeStatusStore
from tests.functions.conftest import APP_AUTH, MESSAGE_ID
from tests.functions.test_messages import get_status
from tests.samples import ALL_FEATURES, NOW, body, sendgrid_mail

JSON_HEADERS = {"Content-Type": "application/json"}


def post(content: bytes, headers: dict[str, str] | None = None) -> func.HttpResponse:
    request = func.HttpRequest(
        method="POST",
        url="http://localhost:7071/api/v3/mail/send",
        headers={**APP_AUTH, **(JSON_HEADERS if headers is None else headers)},
        params={},
        route_params={},
        body=content,
    )
    response = sendgrid_mail_send(request)
    assert isinstance(response, func.HttpResponse)
    return response


def errors_of(response: func.HttpResponse) -> list[dict[str, Any]]:
    """SendGrid's error entries, checking the body is exactly SendGrid's format."""
    assert response.mimetype == "application/json"
    document = json.loads(response.get_body())
    assert list(document) == ["errors"]
    errors: list[dict[str, Any]] = document["errors"]
    assert errors
    for entry in errors:
        assert list(entry) == ["message", "field", "help"]
        assert isinstance(entry["message"], str)
        assert entry["message"]
        assert entry["help"] is None
    return errors


def fields_of(response: func.HttpResponse) -> list[str | None]:
    return [entry["field"] for entry in errors_of(response)]


@pytest.mark.usefixtures("gateway")
def test_should_answer_202_with_an_empty_body_and_the_gateway_id_as_x_message_id(
    fake_queue: FakeMailQueue,
) -> None:
    response = post(body(sendgrid_mail()))

    assert response.status_code == 202
    assert response.get_body() == b""
    assert response.headers["X-Message-Id"] == MESSAGE_ID
    assert "Idempotent-Replayed" not in response.headers
    [queued] = fake_queue.envelopes
    assert (queued.id, queued.accepted_at) == (MESSAGE_ID, NOW)
    assert queued.sendgrid == sendgrid_mail()


@pytest.mark.usefixtures("gateway")
def test_should_show_the_accepted_mail_as_queued_on_the_status_route(
    fake_statuses: FakeStatusStore,
) -> None:
    post(body(sendgrid_mail()))

    assert fake_statuses.records == {}  # delivery's first attempt writes it
    assert json.loads(get_status(MESSAGE_ID).get_body())["status"] == "queued"


@pytest.mark.usefixtures("gateway")
def test_should_answer_400_with_one_entry_per_invalid_field_named_as_sendgrid_does(
    fake_queue: FakeMailQueue,
) -> None:
    document = sendgrid_mail(ip_pool_name="x")
    document["personalizations"][0]["to"][1]["email"] = "bob(at)example.net"

    response = post(body(document))

    assert response.status_code == 400
    assert errors_of(response) == [
        {
            "message": "Does not contain a valid address.",
            "field": "personalizations.0.to.1.email",
            "help": None,
        },
        {
            "message": "The IP pool name must be between 2 and 64 characters long.",
            "field": "ip_pool_name",
            "help": None,
        },
    ]
    assert fake_queue.messages == []


@pytest.mark.usefixtures("gateway")
def test_should_answer_400_for_a_callers_own_mailgate_id(fake_queue: FakeMailQueue) -> None:
    document = sendgrid_mail()
    document["personalizations"][1]["custom_args"] = {"mailgate_id": "mine"}

    response = post(body(document))

    assert response.status_code == 400
    assert fields_of(response) == ["personalizations.1.custom_args.mailgate_id"]
    assert fake_queue.messages == []


@pytest.mark.usefixtures("gateway")
@pytest.mark.parametrize("content", [b"{not json", b"\xff\xfe"])
def test_should_answer_400_without_a_field_for_a_body_that_is_not_json(content: bytes) -> None:
    response = post(content)

    assert response.status_code == 400
    assert fields_of(response) == [None]


@pytest.mark.usefixtures("gateway")
def test_should_answer_403_naming_each_from_outside_allowed_senders(
    fake_queue: FakeMailQueue,
) -> None:
    document = sendgrid_mail(**{"from": {"email": "ceo@elsewhere.net"}})
    document["personalizations"][0]["from"] = {"email": "cfo@elsewhere.net"}

    response = post(body(document))

    assert response.status_code == 403
    assert fields_of(response) == ["from", "personalizations.0.from"]
    assert fake_queue.messages == []


@pytest.mark.usefixtures("gateway")
def test_should_accept_a_mail_too_large_for_one_queue_message(fake_queue: FakeMailQueue) -> None:
    attachment = {"content": base64.b64encode(bytes(45_000)).decode(), "filename": "big.bin"}

    response = post(body(sendgrid_mail(attachments=[attachment])))

    assert response.status_code == 202
    [queued] = fake_queue.envelopes
    assert queued.blob == f"live/{MESSAGE_ID}.json"


@pytest.mark.usefixtures("gateway")
def test_should_answer_413_without_a_field_for_a_body_over_max_request_bytes(
    gateway: Gateway,
) -> None:
    response = post(b"{" + b" " * gateway.settings.max_request_bytes + b"}")

    assert response.status_code == 413
    [entry] = errors_of(response)
    assert entry["field"] is None
    assert "MAX_REQUEST_BYTES" in entry["message"]


@pytest.mark.usefixtures("gateway")
@pytest.mark.parametrize("headers", [{}, {"Content-Type": "text/plain"}])
def test_should_answer_415_like_sendgrid_for_a_body_not_sent_as_json(
    headers: dict[str, str], fake_queue: FakeMailQueue
) -> None:
    response = post(body(sendgrid_mail()), headers)

    assert response.status_code == 415
    [entry] = errors_of(response)
    assert entry["field"] is None
    assert "application/json" in entry["message"]
    assert fake_queue.messages == []


@pytest.mark.usefixtures("gateway")
@pytest.mark.parametrize("operation", ["enqueue", "ensure_exists"])
def test_should_answer_503_with_retry_after_when_storage_is_unavailable(
    operation: str, fake_queue: FakeMailQueue
) -> None:
    fake_queue.make_unavailable([operation])

    response = post(body(sendgrid_mail()))

    assert response.status_code == 503
    assert response.headers["Retry-After"] == "5"
    [entry] = errors_of(response)
    assert "try again later" in entry["message"]
    assert "ServiceRequestError" not in entry["message"]
    assert fake_queue.messages == []


# --- Idempotency-Key -----------------------------------------------------------------------


@pytest.mark.usefixtures("gateway")
def test_should_replay_the_first_answer_for_a_repeated_idempotency_key(
    fake_queue: FakeMailQueue,
) -> None:
    headers = {**JSON_HEADERS, "Idempotency-Key": "order-42"}

    first = post(body(sendgrid_mail()), headers)
    again = post(body(sendgrid_mail()), headers)

    assert first.status_code == again.status_code == 202
    assert again.headers["X-Message-Id"] == first.headers["X-Message-Id"] == MESSAGE_ID
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.get_body() == b""
    assert len(fake_queue.messages) == 1


@pytest.mark.usefixtures("gateway")
def test_should_answer_422_in_sendgrids_format_for_a_key_reused_with_another_body(
    fake_queue: FakeMailQueue,
) -> None:
    headers = {**JSON_HEADERS, "idempotency-key": "order-43"}
    post(body(sendgrid_mail()), headers)

    response = post(body(sendgrid_mail(subject="Changed")), headers)

    assert response.status_code == 422
    [entry] = errors_of(response)
    assert "different body" in entry["message"]
    assert len(fake_queue.messages) == 1


@pytest.mark.usefixtures("gateway")
def test_should_answer_409_while_the_first_request_with_a_key_is_being_accepted(
    fake_queue: FakeMailQueue, fake_keys: FakeIdempotencyStore
) -> None:
    fake_keys.make_unavailable(["complete"])
    headers = {**JSON_HEADERS, "Idempotency-Key": "order-44"}
    assert post(body(sendgrid_mail()), headers).status_code == 202
    fake_keys.make_available()

    response = post(body(sendgrid_mail()), headers)

    assert response.status_code == 409
    assert "still being accepted" in errors_of(response)[0]["message"]
    assert len(fake_queue.messages) == 1


@pytest.mark.usefixtures("gateway")
@pytest.mark.parametrize("authorization", [None, "Bearer SG.a-real-sendgrid-key-is-no-use-here"])
def test_should_answer_401_in_sendgrids_format_without_a_client_key(
    authorization: str | None, fake_queue: FakeMailQueue
) -> None:
    request = func.HttpRequest(
        method="POST",
        url="http://localhost:7071/api/v3/mail/send",
        headers={**JSON_HEADERS, **({"Authorization": authorization} if authorization else {})},
        params={},
        route_params={},
        body=body(sendgrid_mail()),
    )

    response = sendgrid_mail_send(request)

    assert response.status_code == 401
    [entry] = errors_of(response)
    assert entry["field"] is None
    assert "Bearer" in entry["message"] or "not valid" in entry["message"]
    assert fake_queue.messages == []


@pytest.mark.usefixtures("gateway")
def test_should_answer_429_in_sendgrids_format_once_the_client_is_over_its_rate(
    clients: ClientStore, fake_queue: FakeMailQueue
) -> None:
    # The sample mail makes 5 emails (one per recipient): a rate of 5 lets one through.
    _, key = clients.create("tiny-v3", "@example.com", 5, ALL_FEATURES)
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}

    answers = [post(body(sendgrid_mail()), headers) for _ in range(2)]

    assert [a.status_code for a in answers] == [202, 429]
    assert answers[1].headers["Retry-After"] == "60"
    assert "5 email(s) per minute" in errors_of(answers[1])[0]["message"]
    assert len(fake_queue.envelopes) == 1
