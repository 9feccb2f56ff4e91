"""The ACS Email stand-in (devstack/acs_standin): requests signed by the SDK's own HMAC policy
are taken, anything else is refused as ACS refuses it; `make run` starts it with acs listed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from azure.communication.email._shared.auth_policy_utils import get_authentication_policy
from azure.communication.email._shared.policy import HMACCredentialsPolicy
from azure.core.pipeline import PipelineContext, PipelineRequest
from azure.core.rest import HttpRequest
from azure.identity import ManagedIdentityCredential

import devstack.__main__ as devstack_main
from devstack.acs_standin import (
    ACS_AUDIENCE,
    BEARER_AUTH,
    DEFAULT_ACCESS_KEY,
    AcsState,
    create_app,
)
from devstack.acs_standin.__main__ import main as acs_standin_main
from devstack.identity_endpoint import LOCAL_IDENTITY_CLIENT_ID, IdentityEndpoint
from devstack.local_tls import LocalTls
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

    def __init__(self, state: AcsState, base_url: str = BASE) -> None:
        self.state = state
        self.base_url = base_url

    def request(self, method: str, path: str, **options: Any) -> httpx.Response:
        async def go() -> httpx.Response:
            transport = httpx.ASGITransport(app=create_app(self.state), client=("127.0.0.1", 5))
            async with httpx.AsyncClient(transport=transport, base_url=self.base_url) as client:
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


# ---- bearer mode: identity mode's ACS, reached with the managed identity's tokens ----

HTTPS_BASE = "https://testserver"


@pytest.fixture
def identity(monkeypatch: pytest.MonkeyPatch) -> Iterator[IdentityEndpoint]:
    """The local identity endpoint, and this process set up as an app instance using it."""
    with IdentityEndpoint() as endpoint:
        for name, value in endpoint.environment().items():
            monkeypatch.setenv(name, value)
        yield endpoint


@pytest.fixture
def bearer_client(tmp_path: Path) -> Client:
    return Client(AcsState(outbox=tmp_path, auth=BEARER_AUTH), base_url=HTTPS_BASE)


@pytest.fixture
def sdk_policy(identity: IdentityEndpoint) -> Any:
    """The SDK's own authentication for a managed identity: the policy its client uses for a
    token credential (azure-communication-email's get_authentication_policy, with the scope
    it names), fed by azure-identity's ManagedIdentityCredential."""
    credential = ManagedIdentityCredential(client_id=LOCAL_IDENTITY_CLIENT_ID)
    return get_authentication_policy(HTTPS_BASE, credential)


def with_token(policy: Any, method: str, path: str, document: Any = None) -> dict[str, str]:
    """The headers `policy` sends a request with."""
    request = HttpRequest(method, HTTPS_BASE + path, json=document)
    policy.on_request(PipelineRequest(request, PipelineContext(None)))
    return dict(request.headers)


def local_token(endpoint: IdentityEndpoint, resource: str, now: float | None = None) -> str:
    """A token of the local identity endpoint for `resource`."""
    target = f"/msi/token?resource={resource}&api-version=2019-08-01&client_id={endpoint.client_id}"
    status, body = endpoint.answer(target, endpoint.header, now)
    assert status == 200, body
    return str(body["access_token"])


def claims_token(*, unsigned: bool = False, **changes: Any) -> str:
    """A JWT like the local endpoint's, with `changes` to its claims (None drops one), or
    without a signature (`alg: none`)."""
    now = int(time.time())
    claims = {
        "aud": "https://communication.azure.com/",
        "iss": "https://sts.windows.net/00000000-0000-4000-8000-00000000a2e1/",
        "iat": now,
        "nbf": now,
        "exp": now + 3600,
        **changes,
    }
    kept = {name: value for name, value in claims.items() if value is not None}
    if unsigned:
        return jwt.encode(kept, "", algorithm="none")
    return jwt.encode(kept, "k" * 32, algorithm="HS256")


def test_should_take_the_sdks_managed_identity_request_and_poll_it_to_success(
    bearer_client: Client, identity: IdentityEndpoint, sdk_policy: Any
) -> None:
    headers = with_token(sdk_policy, "POST", SEND, valid_message())
    accepted = bearer_client.post(
        SEND, content=body_of(valid_message()), headers={**headers, "Operation-Id": OPERATION_ID}
    )
    path = accepted.headers["Operation-Location"].removeprefix(HTTPS_BASE)
    polled = bearer_client.get(path, headers=with_token(sdk_policy, "GET", path))
    [logged] = bearer_client.state.requests

    assert accepted.status_code == 202
    assert polled.json()["status"] == "Running"
    assert [token.resource for token in identity.issued] == [f"{ACS_AUDIENCE}/"]
    assert logged["auth"] == "Bearer"
    assert logged["token"]["aud"] == f"{ACS_AUDIENCE}/"
    assert logged["token"]["appid"] == LOCAL_IDENTITY_CLIENT_ID


def test_should_refuse_the_access_key_signature_in_bearer_mode(bearer_client: Client) -> None:
    refused = bearer_client.post(
        SEND, content=body_of(valid_message()), headers=signed("POST", SEND, valid_message())
    )

    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "Denied"
    assert "Bearer" in refused.json()["error"]["message"]
    assert bearer_client.state.requests[0]["auth"] == "HMAC-SHA256"
    assert bearer_client.state.mails == []


def test_should_refuse_a_storage_token_from_the_same_identity(
    bearer_client: Client, identity: IdentityEndpoint
) -> None:
    token = local_token(identity, "https://storage.azure.com")

    refused = bearer_client.post(
        SEND, content=body_of(valid_message()), headers={"Authorization": f"Bearer {token}"}
    )

    assert refused.status_code == 401
    assert "audience" in refused.json()["error"]["message"]


def test_should_refuse_a_token_of_the_local_endpoint_once_it_has_expired(
    bearer_client: Client, identity: IdentityEndpoint
) -> None:
    token = local_token(identity, "https://communication.azure.com/", now=time.time() - 2 * 86400)

    refused = bearer_client.post(
        SEND, content=body_of(valid_message()), headers={"Authorization": f"Bearer {token}"}
    )

    assert refused.status_code == 401
    assert "expired" in refused.json()["error"]["message"]


@pytest.mark.parametrize(
    ("token", "why"),
    [
        ("not-a-jwt", "well-formed"),
        (claims_token(aud="https://communication.azure.com.evil/"), "audience"),
        (claims_token(aud=None), "audience"),
        (claims_token(iss="https://login.example.com/tenant/"), "issuer"),
        (claims_token(nbf=int(time.time()) + 3600), "not valid yet"),
        (claims_token(exp=None), "no nbf or exp"),
        ("x" * 20_000, "longer"),
        (claims_token(unsigned=True), "signed"),
    ],
)
def test_should_refuse_a_token_azure_would_not_take_saying_why(
    bearer_client: Client, token: str, why: str
) -> None:
    refused = bearer_client.post(
        SEND, content=body_of(valid_message()), headers={"Authorization": f"Bearer {token}"}
    )

    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "Denied"
    assert why in refused.json()["error"]["message"]


def test_should_take_a_token_whose_audience_lacks_the_trailing_slash(
    bearer_client: Client,
) -> None:
    token = claims_token(aud="https://communication.azure.com")

    accepted = bearer_client.post(
        SEND, content=body_of(valid_message()), headers={"Authorization": f"Bearer {token}"}
    )

    assert accepted.status_code == 202


def test_should_refuse_bearer_mode_without_tls_on_the_command_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert acs_standin_main(["--auth", "bearer", "--port", "0"]) == 2
    assert "--tls-cert" in capsys.readouterr().err


def test_should_start_the_stand_in_over_https_with_the_endpoint_for_identity_mode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(devstack_main, "ACS_STANDIN_DEFAULT_PORT", 0)
    monkeypatch.delenv("ACS_EMAIL_ENDPOINT", raising=False)
    monkeypatch.delenv("ACS_EMAIL_CONNECTION_STRING", raising=False)
    tls = LocalTls.ensure(tmp_path / "tls")
    local = {
        "AzureWebJobsStorage": "UseDevelopmentStorage=true",
        "ALLOWED_SENDERS": "@example.com",
        "SENDGRID_API_KEY": "SG.x",
        "ACS_EMAIL_CONNECTION_STRING": "endpoint=http://127.0.0.1:1/;accesskey=a2V5",
    }
    env = {"MAIL_PROVIDERS": "acs"}

    with contextlib.ExitStack() as stack:
        devstack_main._choose_acs(stack, local, env, tls)
        settings = Settings.from_env({**local, **env})
        verified = httpx.get(
            f"{env['ACS_EMAIL_ENDPOINT']}/_standin/health",
            verify=ssl.create_default_context(cafile=str(tls.ca)),
        )
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{env['ACS_EMAIL_ENDPOINT']}/_standin/health", verify=True)

    assert env["ACS_EMAIL_ENDPOINT"].startswith("https://127.0.0.1:")
    assert settings.acs_email_endpoint == env["ACS_EMAIL_ENDPOINT"]
    assert not settings.acs_email_connection_string
    assert verified.status_code == 200
