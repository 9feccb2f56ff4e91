"""The ACS Email stand-in (devstack/acs_standin): requests signed by the SDK's own HMAC policy
are taken, anything else is refused as ACS refuses it; `make run` starts it with acs listed."""

from __future__ import annotations

import asyncio
import contextlib
import json
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from azure.communication.email._shared.policy import HMACCredentialsPolicy
from azure.core.pipeline import PipelineContext, PipelineRequest
from azure.core.rest import HttpRequest

import devstack.__main__ as devstack_main
from devstack.acs_standin import DEFAULT_ACCESS_KEY, AcsState, create_app
from shared.settings import Settings, acs_connection_parts

BASE = "http://testserver"
SEND = "/emails:send?api-version=2025-09-01"
OPERATION_ID = "0190c0de-899f-7cce-acb5-3ec493af3800"


def valid_message() -> dict[str, Any]:
    return {
        "senderAddress": "app@example.com",
        "content": {"subject": "Hi", "plainText": "text"},
        "recipients": {"to": [{"address": "ann@example.net", "displayName": "Ann"}]},
    }


def signed(method: str, path: str, document: Any = None, **headers: str) -> dict[str, str]:
    """The headers the SDK's own policy signs a request with (azure-communication-email)."""
    request = HttpRequest(method, BASE + path, json=document, headers=headers)
    HMACCredentialsPolicy(BASE, DEFAULT_ACCESS_KEY).on_request(
        PipelineRequest(request, PipelineContext(None))
    )
    return dict(request.headers)


def body_of(document: Any) -> bytes:
    # As azure-core serializes json=: the signed hash is over these bytes.
    return json.dumps(document).encode()


class Client:
    """Requests to the stand-in's ASGI app, without a server, from a loopback address."""

    def __init__(self, state: AcsState) -> None:
        self.state = state

    def request(self, method: str, path: str, **options: Any) -> httpx.Response:
        async def go() -> httpx.Response:
            transport = httpx.ASGITransport(app=create_app(self.state), client=("127.0.0.1", 5))
            async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
                return await client.request(method, path, **options)

        return asyncio.run(go())

    def post(self, path: str, **options: Any) -> httpx.Response:
        return self.request("POST", path, **options)

    def get(self, path: str, **options: Any) -> httpx.Response:
        return self.request("GET", path, **options)


@pytest.fixture
def client(tmp_path: Path) -> Client:
    return Client(AcsState(outbox=tmp_path))


def send(client: Client, document: Any, **headers: str) -> httpx.Response:
    signature = signed("POST", SEND, document, **headers)
    return client.post(SEND, content=body_of(document), headers=signature)


def test_should_take_a_request_the_sdk_signed_and_poll_it_to_success(client: Client) -> None:
    accepted = send(client, valid_message(), **{"Operation-Id": OPERATION_ID})
    location = accepted.headers["Operation-Location"]
    path = location.removeprefix(BASE)
    polls = [client.get(path, headers=signed("GET", path)).json()["status"] for _ in range(2)]

    assert accepted.status_code == 202
    assert accepted.json() == {"id": OPERATION_ID, "status": "Running"}
    assert accepted.headers["operation-id"] == OPERATION_ID
    assert path == f"/emails/operations/{OPERATION_ID}?api-version=2025-09-01"
    assert polls == ["Running", "Succeeded"]


def test_should_refuse_a_body_other_than_the_one_signed(client: Client) -> None:
    headers = signed("POST", SEND, valid_message())
    other = {**valid_message(), "senderAddress": "mallory@example.com"}

    refused = client.post(SEND, content=body_of(other), headers=headers)

    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "Denied"
    assert "hash" in refused.json()["error"]["message"]


def test_should_refuse_a_signature_for_another_path(client: Client) -> None:
    headers = signed("POST", "/emails:send?api-version=2024-07-01-preview", valid_message())

    refused = client.post(SEND, content=body_of(valid_message()), headers=headers)

    assert refused.status_code == 401
    assert "does not match" in refused.json()["error"]["message"]


def test_should_refuse_a_request_dated_too_long_ago(client: Client) -> None:
    headers = signed("POST", SEND, valid_message())
    headers["x-ms-date"] = format_datetime(
        datetime.now(timezone.utc) - timedelta(minutes=20), usegmt=True
    )

    refused = client.post(SEND, content=body_of(valid_message()), headers=headers)

    assert refused.status_code == 401
    assert "15 minutes" in refused.json()["error"]["message"]


@pytest.mark.parametrize(
    ("change", "target"),
    [
        ({"senderAddress": ""}, "senderAddress"),
        ({"content": {"plainText": "no subject"}}, "content.subject"),
        ({"recipients": {"to": []}}, "recipients.to"),
        (
            {"attachments": [{"name": "a", "contentType": "text/plain", "contentInBase64": "*"}]},
            "attachments[0].contentInBase64",
        ),
    ],
)
def test_should_refuse_a_message_without_what_acs_requires_naming_the_field(
    client: Client, change: dict[str, Any], target: str
) -> None:
    refused = send(client, {**valid_message(), **change})

    assert refused.status_code == 400
    assert refused.json()["error"]["target"] == target


def test_should_answer_a_repeated_operation_id_without_sending_again(
    client: Client, tmp_path: Path
) -> None:
    first = send(client, valid_message(), **{"Operation-Id": OPERATION_ID})
    again = send(client, valid_message(), **{"Operation-Id": OPERATION_ID})

    assert (first.status_code, again.status_code) == (202, 202)
    assert again.json()["id"] == OPERATION_ID
    assert [p.name for p in tmp_path.glob("*.json")] == [f"{OPERATION_ID}.json"]


def test_should_start_the_stand_in_for_make_run_only_with_acs_listed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(devstack_main, "ACS_STANDIN_DEFAULT_PORT", 0)
    monkeypatch.delenv("ACS_EMAIL_ENDPOINT", raising=False)
    monkeypatch.delenv("ACS_EMAIL_CONNECTION_STRING", raising=False)
    local = {
        "AzureWebJobsStorage": "UseDevelopmentStorage=true",
        "ALLOWED_SENDERS": "@example.com",
        "SENDGRID_API_KEY": "SG.x",
    }
    plain: dict[str, str] = {}
    listed = {"MAIL_PROVIDERS": "sendgrid,acs"}

    with contextlib.ExitStack() as stack:
        devstack_main._choose_acs(stack, local, plain)
        devstack_main._choose_acs(stack, local, listed)
        endpoint, _ = acs_connection_parts(listed["ACS_EMAIL_CONNECTION_STRING"])
        settings = Settings.from_env({**local, **listed})
        answer = httpx.get(f"{endpoint}/_standin/health")

    assert plain == {}
    assert settings.mail_providers == ("sendgrid", "acs")
    assert settings.acs_email_senders == ("@example.com",)
    assert answer.status_code == 200
