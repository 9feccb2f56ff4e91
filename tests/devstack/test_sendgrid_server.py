"""Tests of the stand-in's HTTP behaviour and outbox, in process through its ASGI app."""

from __future__ import annotations

import asyncio
import base64
import email
import email.policy
import gzip
import json
import time
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
import pytest

from devstack.sendgrid_standin import (
    DEFAULT_API_KEY,
    MAX_BODY_BYTES,
    UNVERIFIED_SENDER_REFUSAL,
    ScriptedResponse,
    StandInState,
    create_app,
)
from tests.sendgrid_samples import PDF_BYTES, PNG_BYTES, minimal_payload, valid_payload


def call(
    state: StandInState,
    method: str,
    url: str,
    *,
    client_host: str = "127.0.0.1",
    **kwargs: Any,
) -> httpx.Response:
    """Send one request to the stand-in's ASGI app without a server."""

    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=create_app(state), client=(client_host, 50000))
        async with httpx.AsyncClient(transport=transport, base_url="http://standin") as client:
            return await client.request(method, url, **kwargs)

    return asyncio.run(go())


AUTH = {"Authorization": f"Bearer {DEFAULT_API_KEY}"}


@pytest.fixture
def state(tmp_path: Path) -> StandInState:
    """A fresh stand-in state writing to a temp outbox."""
    return StandInState(outbox=tmp_path / "outbox")


def test_should_answer_400_with_errors_for_an_invalid_payload(state: StandInState) -> None:
    payload = minimal_payload()
    payload["personalizations"][0]["to"] = [{"email": "bad"}]
    response = call(state, "POST", "/v3/mail/send", json=payload, headers=AUTH)
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "personalizations.0.to.0.email"
    assert state.mails == []


def test_should_refuse_an_unverified_sender_as_sendgrid_does_when_scripted_to(
    state: StandInState,
) -> None:
    state.script.append(ScriptedResponse.model_validate(UNVERIFIED_SENDER_REFUSAL))

    response = call(state, "POST", "/v3/mail/send", json=minimal_payload(), headers=AUTH)

    # As SendGrid answers (sendgrid/sendgrid-ruby pull request 489; Twilio error 60222).
    assert response.status_code == 403
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {
        "errors": [
            {
                "message": "The from address does not match a verified Sender Identity. Mail "
                "cannot be sent until this error is resolved. Visit https://sendgrid.com/docs/"
                "for-developers/sending-email/sender-identity/ to see the Sender Identity "
                "requirements",
                "field": "from",
                "help": None,
            }
        ]
    }
    assert state.mails == []


def test_should_answer_400_to_a_body_that_is_not_json(state: StandInState) -> None:
    headers = {**AUTH, "Content-Type": "application/json"}
    response = call(state, "POST", "/v3/mail/send", content=b"{not json", headers=headers)
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] is None


def test_should_answer_415_unless_the_body_is_declared_json(state: StandInState) -> None:
    body = json.dumps(minimal_payload()).encode()
    headers = {**AUTH, "Content-Type": "text/plain"}
    response = call(state, "POST", "/v3/mail/send", content=body, headers=headers)
    assert response.status_code == 415
    assert response.json()["errors"][0]["message"] == "Content-Type should be application/json."


def test_should_answer_413_to_a_body_over_the_limit(state: StandInState) -> None:
    assert MAX_BODY_BYTES == 30 * 1024 * 1024
    state.max_body_bytes = 2_000  # the same code path as 30 MiB, without moving 30 MiB around
    payload = minimal_payload()
    payload["attachments"] = [{"content": base64.b64encode(b"x" * 3_000).decode(), "filename": "a"}]
    response = call(state, "POST", "/v3/mail/send", json=payload, headers=AUTH)
    assert response.status_code == 413
    assert state.mails == []


def test_should_accept_a_gzip_compressed_body(state: StandInState) -> None:
    body = gzip.compress(json.dumps(minimal_payload()).encode())
    headers = {**AUTH, "Content-Type": "application/json", "Content-Encoding": "gzip"}
    response = call(state, "POST", "/v3/mail/send", content=body, headers=headers)
    assert response.status_code == 202


def test_should_refuse_control_api_calls_from_other_hosts(state: StandInState) -> None:
    response = call(state, "GET", "/_standin/mails", client_host="192.0.2.10")
    assert response.status_code == 403


def test_should_write_outbox_files_that_parse_back(state: StandInState) -> None:
    payload = valid_payload()
    payload["personalizations"][0]["send_at"] = int(time.time()) + 60
    response = call(state, "POST", "/v3/mail/send", json=payload, headers=AUTH)
    assert response.status_code == 202
    message_id = response.headers["X-Message-Id"]
    outbox = state.outbox
    assert sorted(p.name for p in outbox.iterdir()) == [f"{message_id}.eml", f"{message_id}.json"]

    record = json.loads((outbox / f"{message_id}.json").read_text())
    assert record["x_message_id"] == message_id
    assert record["payload"] == payload
    assert record["received_at"].endswith("Z")

    eml = email.message_from_bytes(
        (outbox / f"{message_id}.eml").read_bytes(), policy=email.policy.default
    )
    assert isinstance(eml, EmailMessage)
    assert eml["From"] == "Example Shop <noreply@mail.example.com>"
    assert eml["To"] == "Ann Lee <ann.lee@example.com>, bob@example.org"
    assert eml["Cc"] == "Carol <carol@example.net>"
    assert eml["Subject"] == "Your order 1042 has shipped"
    assert eml["Reply-To"] == "Support <support@example.com>"
    assert eml["X-Mailgate-Id"] == "mg_01HZX3Q9V7"
    assert eml["X-Mailgate-Tenant"] == "shop-eu"
    assert eml["X-Message-Id"] == message_id
    plain = eml.get_body(preferencelist=("plain",))
    html = eml.get_body(preferencelist=("html",))
    assert plain is not None
    assert "has shipped" in plain.get_content()
    assert html is not None
    assert "<b>shipped</b>" in html.get_content()
    attachments = {part.get_filename(): part for part in eml.iter_attachments()}
    assert attachments["invoice-1042.pdf"].get_content() == PDF_BYTES
    assert attachments["logo.png"].get_content() == PNG_BYTES
    assert attachments["logo.png"]["Content-ID"] == "<logo>"
    assert state.mails == [record]
