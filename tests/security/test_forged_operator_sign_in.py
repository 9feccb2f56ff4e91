"""Threat: someone passes for an operator by sending the platform's sign-in headers.

Attacker: anyone who can reach the app. The operator routes under `/api/signed-in/` run at the
host's anonymous level, for operators whom App Service Authentication signed in with Microsoft
Entra ID; the platform tells the app who signed in through `X-MS-CLIENT-PRINCIPAL-ID` and
`-IDP`. An operator's object id is no secret, and without the platform's authentication in
front nothing removes those headers from a request: anyone could claim to be the operator.

What the gateway does: it trusts the headers only while the platform says its authentication
runs (`WEBSITE_AUTH_ENABLED`, set by App Service, which strips the headers from incoming
requests), only for an Entra ID sign-in, and only for an object id OPERATOR_PRINCIPAL_IDS lists.
Every other request gets 401, 403 or 503 before anything is read or changed: the dead letters
stay where they are and unlisted. The admin key opens none of these routes (the host does not
check keys at the anonymous level), and these routes are off until OPERATOR_PRINCIPAL_IDS is set.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from typing import Any

import azure.functions as func
import pytest
from azure.functions.decorators.function_app import Function
from azure.functions.decorators.http import HttpTrigger

from shared.gateway import Gateway
from shared.models import DeadLetter
from shared.operator_sign_in import OperatorSignIn
from tests.fakes import FakeMailQueue
from tests.functions.conftest import (  # noqa: F401 (fixtures the tests below use by name)
    clients,
    event_table,
    gateway,
    settings,
)
from tests.functions.test_auth import OPERATOR_ROUTES
from tests.samples import NOW, envelope

OPERATOR = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
STRANGER = "99999999-8888-4777-8666-555555555555"
POISON = "mail-outbound-poison"
SECRET_REASON = "SendGrid refused the message with 400: only operators may read this"
# A body each route accepts: the dead letter's id, confirmed for a purge.
BODY = json.dumps({"ids": ["msg-dead"], "confirm": POISON}).encode()


def signed_in_as(principal: str, provider: str = "aad") -> dict[str, str]:
    """The headers App Service adds for a signed-in user (here sent by the caller)."""
    return {"X-MS-CLIENT-PRINCIPAL-ID": principal, "X-MS-CLIENT-PRINCIPAL-IDP": provider}


@pytest.fixture
def dead_letter(fake_queue: FakeMailQueue) -> None:
    """One dead letter whose reason only an operator may see."""
    refused = DeadLetter(reason=SECRET_REASON, attempts=1, at=NOW)
    fake_queue.poison_client.send_message(
        envelope(id="msg-dead").model_copy(update={"dead_letter": refused}).to_json()
    )


def with_sign_in(monkeypatch: pytest.MonkeyPatch, target: Gateway, environ: dict[str, str]) -> None:
    """The gateway's settings as the app would read them from these app settings."""
    sign_in = OperatorSignIn.from_env(environ)
    monkeypatch.setattr(target, "settings", replace(target.settings, operator_sign_in=sign_in))


def call(function: Function, trigger: HttpTrigger, headers: dict[str, str]) -> func.HttpResponse:
    route = trigger.route or ""
    method = str(next(iter(trigger.methods or [func.HttpMethod.GET])).value)
    request = func.HttpRequest(
        method=method,
        url=f"http://localhost:7071/api/{route}",
        headers={"Content-Type": "application/json", **headers},
        params={},
        route_params={name: "msg-dead" for name in re.findall(r"{(\w+)", route)},
        body=BODY if method == "POST" else b"",
    )
    response = function.get_user_function()(request)
    assert isinstance(response, func.HttpResponse)
    return response


def problem(response: func.HttpResponse) -> dict[str, Any]:
    assert response.mimetype == "application/problem+json"
    document: dict[str, Any] = json.loads(response.get_body())
    return document


LISTED = {"OPERATOR_PRINCIPAL_IDS": OPERATOR}
PLATFORM_ON = {**LISTED, "WEBSITE_AUTH_ENABLED": "True"}
ATTEMPTS = [
    # (app settings, request headers, status, what the refusal says)
    (LISTED, signed_in_as(OPERATOR), 503, "App Service Authentication is off"),
    ({"WEBSITE_AUTH_ENABLED": "True"}, signed_in_as(OPERATOR), 401, "sign-in is off"),
    (PLATFORM_ON, {}, 401, "not signed in"),
    (PLATFORM_ON, signed_in_as(STRANGER), 403, "not listed"),
    (PLATFORM_ON, signed_in_as(OPERATOR, provider="github"), 403, "Microsoft Entra ID"),
    (PLATFORM_ON, signed_in_as(OPERATOR + "x" * 4096), 403, "Microsoft Entra ID"),
    (PLATFORM_ON, signed_in_as(f"{OPERATOR},{STRANGER}"), 403, "Microsoft Entra ID"),
    (
        PLATFORM_ON,
        {"x-functions-key": "the-admin-key", "X-MS-CLIENT-PRINCIPAL-IDP": "aad"},
        401,
        "not",
    ),
]
ATTEMPT_IDS = [
    "platform sign-in off, forged headers",
    "no operators listed",
    "no sign-in",
    "someone else signed in",
    "another identity provider",
    "an oversized principal id",
    "two principal ids",
    "the admin key instead",
]


@pytest.mark.usefixtures("dead_letter")
@pytest.mark.parametrize(
    ("name", "trigger", "function"), OPERATOR_ROUTES, ids=[n for n, _, _ in OPERATOR_ROUTES]
)
@pytest.mark.parametrize(("environ", "headers", "status", "says"), ATTEMPTS, ids=ATTEMPT_IDS)
def test_should_refuse_anyone_but_a_listed_operator_the_platform_signed_in(
    monkeypatch: pytest.MonkeyPatch,
    gateway: Gateway,  # noqa: F811
    fake_queue: FakeMailQueue,
    name: str,
    trigger: HttpTrigger,
    function: Function,
    environ: dict[str, str],
    headers: dict[str, str],
    status: int,
    says: str,
) -> None:
    with_sign_in(monkeypatch, gateway, environ)

    response = call(function, trigger, headers)

    assert response.status_code == status, name
    assert says in problem(response)["detail"]
    assert SECRET_REASON not in response.get_body().decode()
    if status == 401:
        assert response.headers["WWW-Authenticate"].startswith("AppServiceAuthentication")
    # Nothing was replayed or purged: the dead letter is still there.
    assert [json.loads(text)["id"] for text in fake_queue.poison_texts] == ["msg-dead"]


@pytest.mark.usefixtures("dead_letter")
@pytest.mark.parametrize(
    ("name", "trigger", "function"), OPERATOR_ROUTES, ids=[n for n, _, _ in OPERATOR_ROUTES]
)
def test_should_let_a_listed_operator_the_platform_signed_in_through(
    monkeypatch: pytest.MonkeyPatch,
    gateway: Gateway,  # noqa: F811
    name: str,
    trigger: HttpTrigger,
    function: Function,
) -> None:
    with_sign_in(monkeypatch, gateway, PLATFORM_ON)

    response = call(function, trigger, signed_in_as(OPERATOR.upper()))

    # Past the sign-in: served, or (the console's message route) no status record for that id.
    assert response.status_code == 200 or (
        response.status_code == 404 and "no message has the id" in problem(response)["detail"]
    ), (name, response.get_body())
