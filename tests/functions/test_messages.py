from __future__ import annotations

import base64
import json
from datetime import timedelta
from typing import Any

import azure.functions as func
import pytest

import shared.gateway
from functions.messages import get_message_status, submit_message
from shared.blobs import LargeMessageSlots
from shared.clients import ClientStore
from shared.gateway import Gateway
from shared.message_ids import new_message_id
from shared.status import MessageState, MessageStatus
from tests.fakes import (
    FakeIdempotencyStore,
    FakeMailQueue,
    FakeMessageBodyStore,
    FakeStatusStore,
)
from tests.functions.conftest import APP_AUTH, MESSAGE_ID, OTHER_KEY
from tests.samples import NOW, body, message

PROBLEM_JSON = "application/problem+json"


def post(content: bytes, headers: dict[str, str] | None = None) -> func.HttpResponse:
    request = func.HttpRequest(
        method="POST",
        url="http://localhost:7071/api/v1/messages",
        headers={
            **APP_AUTH,
            **({"Content-Type": "application/json"} if headers is None else headers),
        },
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
def test_should_answer_queued_from_the_id_until_delivery_writes_the_record(
    fake_statuses: FakeStatusStore,
) -> None:
    post(body(message()))

    # The accept made one storage call, the enqueue: no record yet, and the id says it all.
    assert fake_statuses.records == {}
    assert json.loads(get_status(MESSAGE_ID).get_body())["status"] == "queued"


@pytest.mark.usefixtures("gateway")
def test_should_create_the_queues_status_table_and_container_once_before_the_first_message(
    fake_queue: FakeMailQueue, fake_statuses: FakeStatusStore, fake_bodies: FakeMessageBodyStore
) -> None:
    post(body(message()))
    post(body(message()))

    assert fake_queue.ensure_exists_calls == 1
    assert fake_statuses.ensure_exists_calls == 1
    assert fake_bodies.ensure_exists_calls == 1
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
def test_should_answer_202_for_a_message_too_large_for_the_queue_keeping_its_body_in_a_blob(
    fake_queue: FakeMailQueue, fake_bodies: FakeMessageBodyStore
) -> None:
    attachment = {"filename": "big.bin", "content": base64.b64encode(bytes(45_000)).decode()}

    response = post(body(message(attachments=[attachment])))

    assert response.status_code == 202
    [queued] = fake_queue.envelopes
    assert (queued.id, queued.blob) == (MESSAGE_ID, f"live/{MESSAGE_ID}.json")
    stored = fake_bodies.stored(f"live/{MESSAGE_ID}.json").message
    assert stored is not None
    assert stored.attachments[0].content == attachment["content"]


@pytest.mark.usefixtures("gateway")
def test_should_answer_413_for_a_body_over_max_request_bytes(
    fake_queue: FakeMailQueue, fake_bodies: FakeMessageBodyStore
) -> None:
    response = post(b"{" + b" " * 30_000_000 + b"}")

    assert response.status_code == 413
    assert "MAX_REQUEST_BYTES" in problem_of(response)["detail"]
    assert (fake_queue.messages, fake_bodies.blobs) == ([], {})


@pytest.mark.usefixtures("gateway")
@pytest.mark.parametrize("operation", ["put", "ensure_exists"])
def test_should_answer_503_when_blob_storage_is_unavailable_for_a_large_message(
    operation: str, fake_queue: FakeMailQueue, fake_bodies: FakeMessageBodyStore
) -> None:
    fake_bodies.make_unavailable([operation])
    attachment = {"filename": "big.bin", "content": base64.b64encode(bytes(45_000)).decode()}

    response = post(body(message(attachments=[attachment])))

    assert response.status_code == 503
    assert response.headers["Retry-After"] == "5"
    assert fake_queue.messages == []


def test_should_answer_503_for_a_large_message_while_every_large_message_slot_is_taken(
    gateway: Gateway, fake_queue: FakeMailQueue, fake_bodies: FakeMessageBodyStore
) -> None:
    gateway.large_messages = LargeMessageSlots(1, wait_seconds=0)
    attachment = {"filename": "big.bin", "content": base64.b64encode(bytes(45_000)).decode()}

    with gateway.large_messages.slot():
        refused = post(body(message(attachments=[attachment])))
        small = post(body(message()))

    assert refused.status_code == 503
    assert refused.headers["Retry-After"] == "5"
    assert "large message" in problem_of(refused)["detail"]
    assert small.status_code == 202
    assert fake_bodies.blobs == {}
    # Its turn comes once the slot is free.
    assert post(body(message(attachments=[attachment]))).status_code == 202


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
@pytest.mark.parametrize(
    ("operation", "what"),
    [("enqueue", "not accepted"), ("ensure_exists", "client key could not be checked")],
)
def test_should_answer_503_with_retry_after_when_storage_is_unavailable(
    operation: str, what: str, fake_queue: FakeMailQueue
) -> None:
    fake_queue.make_unavailable([operation])

    response = post(body(message()))

    assert response.status_code == 503
    assert response.headers["Retry-After"] == "5"
    document = problem_of(response)
    assert what in document["detail"]
    assert "ServiceRequestError" not in document["detail"]
    assert fake_queue.messages == []


@pytest.mark.usefixtures("gateway")
def test_should_answer_503_when_the_status_table_cannot_be_created(
    fake_queue: FakeMailQueue, fake_statuses: FakeStatusStore
) -> None:
    fake_statuses.make_unavailable(["ensure_exists"])

    response = post(body(message()))

    assert response.status_code == 503
    assert response.headers["Retry-After"] == "5"
    assert fake_queue.messages == []


@pytest.mark.usefixtures("gateway")
def test_should_accept_again_once_storage_is_back(fake_queue: FakeMailQueue) -> None:
    fake_queue.make_unavailable(["ensure_exists"])
    assert post(body(message())).status_code == 503

    fake_queue.make_available()

    assert post(body(message())).status_code == 202
    assert fake_queue.ensure_exists_calls == 1


def test_should_use_the_process_gateway(gateway: Gateway, fake_queue: FakeMailQueue) -> None:
    assert shared.gateway.get_gateway() is gateway


# --- Idempotency-Key -----------------------------------------------------------------------


@pytest.mark.usefixtures("gateway")
def test_should_replay_the_first_answer_for_a_repeated_idempotency_key(
    fake_queue: FakeMailQueue,
) -> None:
    headers = {"Content-Type": "application/json", "Idempotency-Key": "order-42"}

    first = post(body(message()), headers)
    again = post(body(message()), headers)

    assert first.status_code == again.status_code == 202
    assert "Idempotent-Replayed" not in first.headers
    assert again.headers["Idempotent-Replayed"] == "true"
    assert json.loads(again.get_body()) == json.loads(first.get_body())
    assert json.loads(again.get_body()) == {"id": MESSAGE_ID, "status": "queued"}
    assert again.headers["Location"] == first.headers["Location"]
    assert len(fake_queue.messages) == 1


@pytest.mark.usefixtures("gateway")
def test_should_read_the_idempotency_key_whatever_the_header_case(
    fake_queue: FakeMailQueue,
) -> None:
    post(body(message()), {"Content-Type": "application/json", "Idempotency-Key": "k-1"})
    again = post(body(message()), {"content-type": "application/json", "idempotency-key": "k-1"})

    assert again.headers["Idempotent-Replayed"] == "true"
    assert len(fake_queue.messages) == 1


@pytest.mark.usefixtures("gateway")
def test_should_answer_422_problem_for_a_key_reused_with_another_body(
    fake_queue: FakeMailQueue,
) -> None:
    headers = {"Content-Type": "application/json", "Idempotency-Key": "order-43"}
    post(body(message()), headers)

    response = post(body(message(subject="Changed")), headers)

    assert response.status_code == 422
    assert "different body" in problem_of(response)["detail"]
    assert len(fake_queue.messages) == 1


@pytest.mark.usefixtures("gateway")
def test_should_answer_409_problem_while_the_first_request_with_a_key_is_being_accepted(
    fake_queue: FakeMailQueue, fake_keys: FakeIdempotencyStore
) -> None:
    # The first request queued its message but could not yet mark its key complete.
    fake_keys.make_unavailable(["complete"])
    headers = {"Content-Type": "application/json", "Idempotency-Key": "order-44"}
    assert post(body(message()), headers).status_code == 202
    fake_keys.make_available()

    response = post(body(message()), headers)

    assert response.status_code == 409
    assert "still being accepted" in problem_of(response)["detail"]
    assert len(fake_queue.messages) == 1


@pytest.mark.usefixtures("gateway")
@pytest.mark.parametrize(
    "key", ["", "x" * 256, "bad\x01key", "caf\u00e9"], ids=["empty", "256", "SOH", "non-ASCII"]
)
def test_should_answer_400_problem_naming_the_header_for_an_invalid_idempotency_key(
    key: str, fake_queue: FakeMailQueue
) -> None:
    response = post(body(message()), {"Content-Type": "application/json", "Idempotency-Key": key})

    assert response.status_code == 400
    assert "Idempotency-Key" in problem_of(response)["detail"]
    assert fake_queue.messages == []


@pytest.mark.usefixtures("gateway")
def test_should_answer_503_when_the_idempotency_key_cannot_be_claimed(
    fake_queue: FakeMailQueue, fake_keys: FakeIdempotencyStore
) -> None:
    fake_keys.make_unavailable(["claim"])

    response = post(body(message()), {"Content-Type": "application/json", "Idempotency-Key": "k"})

    assert response.status_code == 503
    assert fake_queue.messages == []


# --- GET /api/v1/messages/{id} -------------------------------------------------------------

RETRYING_ID = "7f3e1d2c-4b5a-4c6d-8e9f-0a1b2c3d4e5f"


def get_status(message_id: str, headers: dict[str, str] = APP_AUTH) -> func.HttpResponse:
    request = func.HttpRequest(
        method="GET",
        url=f"http://localhost:7071/api/v1/messages/{message_id}",
        headers=headers,
        params={},
        route_params={"id": message_id},
        body=b"",
    )
    response = get_message_status(request)
    assert isinstance(response, func.HttpResponse)
    return response


@pytest.mark.usefixtures("gateway")
def test_should_answer_200_with_the_status_of_a_message() -> None:
    post(body(message()))

    response = get_status(MESSAGE_ID)

    assert response.status_code == 200
    assert response.mimetype == "application/json"
    assert json.loads(response.get_body()) == {
        "id": MESSAGE_ID,
        "status": "queued",
        "attempts": 0,
        "accepted_at": "2026-03-02T09:30:00+00:00",
        "updated_at": "2026-03-02T09:30:00+00:00",
    }


@pytest.mark.usefixtures("gateway")
def test_should_show_the_last_error_and_next_attempt_of_a_retrying_message(
    fake_statuses: FakeStatusStore,
) -> None:
    fake_statuses.add(
        MessageStatus(
            id=RETRYING_ID,
            state=MessageState.RETRYING,
            accepted_at=NOW,
            updated_at=NOW,
            attempts=2,
            next_attempt_at=NOW.replace(minute=31),
            last_status_code=429,
            last_error="SendGrid answered 429",
            client="app",
        )
    )

    document = json.loads(get_status(RETRYING_ID).get_body())

    assert document["status"] == "retrying"
    assert document["attempts"] == 2
    assert document["next_attempt_at"] == "2026-03-02T09:31:00+00:00"
    assert document["last_error"] == {
        "status_code": 429,
        "reason": "SendGrid answered 429",
        "ambiguous": False,
    }
    assert "etag" not in json.dumps(document)


@pytest.mark.usefixtures("gateway")
@pytest.mark.parametrize(
    "message_id", ["0b6e8c1e-2f6a-4d3c-9a51-7f2d1e0c9b84", "no-such-message", "x" * 65]
)
def test_should_answer_404_problem_for_an_unknown_message(message_id: str) -> None:
    response = get_status(message_id)

    assert response.status_code == 404
    document = problem_of(response)
    assert document["title"] == "Not Found"
    assert "no message has the id" in document["detail"]


@pytest.mark.usefixtures("gateway")
@pytest.mark.parametrize(
    "message_id",
    [
        new_message_id(NOW - timedelta(days=30, milliseconds=1), "app"),  # record expired
        new_message_id(NOW - timedelta(seconds=1), "other"),  # another client's
    ],
    ids=["older than STATUS_RETENTION_DAYS", "another client's"],
)
def test_should_answer_404_for_an_id_with_no_record_that_cannot_be_waiting(
    message_id: str,
) -> None:
    assert get_status(message_id).status_code == 404


@pytest.mark.usefixtures("gateway")
def test_should_answer_503_when_the_status_cannot_be_read(fake_statuses: FakeStatusStore) -> None:
    fake_statuses.make_unavailable(["get"])

    response = get_status(MESSAGE_ID)

    assert response.status_code == 503
    assert response.headers["Retry-After"] == "5"
    assert "status could not be read" in problem_of(response)["detail"]


@pytest.mark.usefixtures("gateway")
def test_should_answer_404_for_another_clients_message() -> None:
    assert post(body(message())).status_code == 202

    response = get_status(MESSAGE_ID, {"Authorization": f"Bearer {OTHER_KEY}"})

    assert response.status_code == 404
    assert get_status(MESSAGE_ID).status_code == 200


@pytest.mark.usefixtures("gateway")
def test_should_answer_429_with_retry_after_once_the_client_is_over_its_rate(
    clients: ClientStore, fake_queue: FakeMailQueue
) -> None:
    _, key = clients.create("tiny", "@example.com", 2)
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}

    answers = [post(body(message()), headers) for _ in range(3)]

    assert [a.status_code for a in answers] == [202, 202, 429]
    # NOW is 09:30:00: the whole minute is left.
    assert answers[2].headers["Retry-After"] == "60"
    assert "2 email(s) per minute" in problem_of(answers[2])["detail"]
    assert len(fake_queue.envelopes) == 2


@pytest.mark.usefixtures("gateway")
def test_should_answer_403_for_a_sender_outside_the_clients_own(clients: ClientStore) -> None:
    _, key = clients.create("narrow", "@example.org")
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}

    response = post(body(message()), headers)

    assert response.status_code == 403
    assert "'narrow' may not send" in problem_of(response)["detail"]


@pytest.mark.usefixtures("gateway")
def test_should_answer_422_for_an_address_sendgrid_cannot_carry_and_queue_nothing(
    fake_queue: FakeMailQueue,
) -> None:
    # SendGrid takes ASCII addresses only; an internationalised domain goes as punycode, but a
    # local part beyond ASCII cannot go at all, and was dead-lettered at delivery before.
    response = post(body(message(to=["jörg@example.org"], cc=["ann@bücher.example"])))

    assert response.status_code == 422
    problem = problem_of(response)
    assert "MAIL_PROVIDERS (sendgrid)" in problem["detail"]
    assert [p["pointer"] for p in problem["errors"]] == ["#/to/0"]
    assert fake_queue.messages == []
