"""Threat: a client smuggles headers that speak for the account, another sender or a server.

Attacker: an app holding a valid client key, on either mail route (`headers` on v1; top-level
and per-personalization `headers` on v3). The sender checks look at `from` alone, so headers
are the way around them: `Sender` and `Resent-*` present the mail as sent or forwarded by
someone else, `Return-Path` points bounces away from SendGrid's bounce handling (and so past
the account's suppression lists), `Message-ID` takes over another mail's identity (threads,
deduplication). `X-SMTPAPI` is SendGrid's SMTP API header, which can carry every account
control at once (bypass filters, bcc, IP pool...). `Authentication-Results` and `ARC-*` are
what a receiving server adds; a client can only forge them.

What the gateway does: `Sender`, `Return-Path`, `Message-ID` and every `Resent-*` header need
the client's feature (`headers.sender`, `headers.return-path`, `headers.message-id`,
`headers.resent`); without it the request is refused with 403 naming the header, on both routes,
whatever the header's case. `X-SMTPAPI`, `Authentication-Results` and `ARC-*` are refused with
403 to every client. `Received` and `DKIM-Signature` stay reserved (400), as SendGrid reserves
them. Ordinary custom headers pass.
"""

from __future__ import annotations

from typing import Any

import pytest

from shared.policy import FEATURES
from tests.samples import SENDER
from tests.security.client_stack import ClientStack, fields, install


@pytest.fixture
def stack(monkeypatch: pytest.MonkeyPatch) -> ClientStack:
    return install(monkeypatch)


def v1_message(headers: dict[str, str]) -> dict[str, Any]:
    return {
        "from": SENDER,
        "to": ["ann@example.net"],
        "subject": "Hi",
        "text": "Hi",
        "headers": headers,
    }


def v3_mail(
    headers: dict[str, str] | None = None, personalization_headers: dict[str, str] | None = None
) -> dict[str, Any]:
    personalization: dict[str, Any] = {"to": [{"email": "ann@example.net"}]}
    if personalization_headers is not None:
        personalization["headers"] = personalization_headers
    document: dict[str, Any] = {
        "personalizations": [personalization],
        "from": {"email": SENDER},
        "subject": "Hi",
        "content": [{"type": "text/plain", "value": "Hi"}],
    }
    if headers is not None:
        document["headers"] = headers
    return document


def with_headers(api: str, headers: dict[str, str]) -> dict[str, Any]:
    return v1_message(headers) if api == "v1" else v3_mail(headers)


def field_of(api: str, name: str) -> str:
    """How each route names a top-level header in its refusal."""
    return f"#/headers/{name}" if api == "v1" else f"headers.{name}"


# (the header, a value, the feature that allows it)
SENSITIVE = {
    "Sender": ("Sender", "ceo@bank.example", "headers.sender"),
    "lower-case sender": ("sender", "ceo@bank.example", "headers.sender"),
    "Return-Path": ("Return-Path", "<bounces@elsewhere.example>", "headers.return-path"),
    "Message-ID": ("Message-ID", "<stolen@bank.example>", "headers.message-id"),
    "Resent-From": ("Resent-From", "ceo@bank.example", "headers.resent"),
    "Resent-Message-ID": ("RESENT-MESSAGE-ID", "<x@bank.example>", "headers.resent"),
}


@pytest.mark.parametrize("api", ["v1", "v3"])
@pytest.mark.parametrize(("name", "value", "feature"), SENSITIVE.values(), ids=SENSITIVE.keys())
def test_should_refuse_a_sensitive_header_with_403_unless_the_client_has_its_feature(
    stack: ClientStack, api: str, name: str, value: str, feature: str
) -> None:
    plain = stack.client("plain")
    allowed = stack.client("allowed", features=feature)

    refused = stack.post(api, with_headers(api, {name: value}), plain)
    accepted = stack.post(api, with_headers(api, {name: value}), allowed)

    assert refused.status_code == 403
    assert fields(refused) == [field_of(api, name)]
    assert repr(feature) in refused.get_body().decode()
    assert accepted.status_code == 202, accepted.get_body()
    assert len(stack.queue.envelopes) == 1


def test_should_refuse_a_sensitive_header_in_a_personalization(stack: ClientStack) -> None:
    key = stack.client("plain")

    response = stack.post(
        "v3", v3_mail(personalization_headers={"Return-Path": "<x@y.example>"}), key
    )

    assert response.status_code == 403
    assert fields(response) == ["personalizations.0.headers.Return-Path"]


@pytest.mark.parametrize("api", ["v1", "v3"])
@pytest.mark.parametrize("name", ["X-SMTPAPI", "x-smtpapi", "Authentication-Results", "ARC-Seal"])
def test_should_refuse_headers_no_feature_allows_even_to_a_client_with_every_feature(
    stack: ClientStack, api: str, name: str
) -> None:
    key = stack.client("trusted", features=",".join(FEATURES))
    value = '{"filters": {"bypass_list_management": {"settings": {"enable": 1}}}}'

    response = stack.post(api, with_headers(api, {name: value}), key)

    assert response.status_code == 403
    assert fields(response) == [field_of(api, name)]
    assert "No client may set this header" in response.get_body().decode()
    assert stack.queue.messages == []


@pytest.mark.parametrize("api", ["v1", "v3"])
@pytest.mark.parametrize("name", ["Received", "DKIM-Signature"])
def test_should_keep_refusing_server_headers_sendgrid_reserves_with_400(
    stack: ClientStack, api: str, name: str
) -> None:
    key = stack.client("trusted", features=",".join(FEATURES))

    response = stack.post(api, with_headers(api, {name: "forged"}), key)

    assert response.status_code == 400
    assert stack.queue.messages == []


@pytest.mark.parametrize("api", ["v1", "v3"])
def test_should_pass_ordinary_custom_headers_for_a_client_without_features(
    stack: ClientStack, api: str
) -> None:
    key = stack.client("plain")
    headers = {"X-Campaign": "spring", "List-Unsubscribe": "<mailto:unsub@example.com>"}

    response = stack.post(api, with_headers(api, headers), key)

    assert response.status_code == 202, response.get_body()
