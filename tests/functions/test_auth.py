"""Every mail route refuses a request without the key of an enabled client, the Event
Webhook route one without SendGrid's signature, and every signed-in operator route one without
an operator the platform signed in; the routes are found from the app.

The routes are read from function_app itself, so a route added later at the anonymous level
without `client_route` (or `sendgrid_signed_route`, or `operator_route`) fails here rather than
going out open.
"""

from __future__ import annotations

import importlib
import json
import re
from types import ModuleType

import azure.functions as func
import pytest
from azure.functions.decorators.function_app import Function
from azure.functions.decorators.http import HttpTrigger

from functions.auth import (
    REQUIRES_CLIENT_KEY,
    REQUIRES_OPERATOR_SIGN_IN,
    REQUIRES_SENDGRID_SIGNATURE,
    SIGNED_IN_PREFIX,
)
from shared.clients import ClientStore
from shared.webhook_signature import SIGNATURE_HEADER, TIMESTAMP_HEADER
from tests.event_webhook_samples import WebhookSigner, sendgrid_event
from tests.functions.conftest import APP_KEY, OTHER_KEY, WEBHOOK_SIGNER
from tests.samples import NOW, body, message, sendgrid_mail

# Anonymous routes that are meant to be public, and why.
PUBLIC_ROUTES = {
    "health": "load balancers and probes call it without credentials; it shows no mail",
    "openapi": "the API's description, for client generators; it holds no secret",
    "console": "the operator console's static page: no data, no secret, the same for everyone; "
    "it asks for the admin key itself, and every route it reads is an operator route",
}


def http_functions() -> list[tuple[str, HttpTrigger, Function]]:
    # A fresh import: get_functions() may be called only once per FunctionApp.
    module: ModuleType = importlib.reload(importlib.import_module("function_app"))
    found = []
    for function in module.app.get_functions():
        trigger = function.get_trigger()
        if isinstance(trigger, HttpTrigger):
            found.append((str(function.get_function_name()), trigger, function))
    return found


def signed(function: Function) -> bool:
    return bool(getattr(function.get_user_function(), REQUIRES_SENDGRID_SIGNATURE, False))


def for_operators(function: Function) -> bool:
    return bool(getattr(function.get_user_function(), REQUIRES_OPERATOR_SIGN_IN, False))


HTTP_FUNCTIONS = http_functions()
ANONYMOUS_ROUTES = [
    (name, trigger, function)
    for name, trigger, function in HTTP_FUNCTIONS
    if trigger.auth_level == func.AuthLevel.ANONYMOUS and name not in PUBLIC_ROUTES
]
# Routes whose credential is SendGrid's signature (the Event Webhook), and those whose credential
# is an operator's sign-in; every other anonymous, non-public route must check a client key.
SIGNED_ROUTES = [route for route in ANONYMOUS_ROUTES if signed(route[2])]
OPERATOR_ROUTES = [route for route in ANONYMOUS_ROUTES if for_operators(route[2])]
CLIENT_ROUTES = [
    route for route in ANONYMOUS_ROUTES if not signed(route[2]) and not for_operators(route[2])
]
ADMIN_ROUTES = [
    (name, trigger, function)
    for name, trigger, function in HTTP_FUNCTIONS
    if trigger.auth_level == func.AuthLevel.ADMIN
]


def call(function: Function, trigger: HttpTrigger, headers: dict[str, str]) -> func.HttpResponse:
    """Call a route's handler as the host would, with a valid message body and route values."""
    route = trigger.route or ""
    route_params = {
        name: "5d0c6a52-7c9e-4a57-9a4e-1f1f6d3b2c10" for name in re.findall(r"{(\w+)", route)
    }
    method = str(next(iter(trigger.methods or [func.HttpMethod.GET])).value)
    request = func.HttpRequest(
        method=method,
        url=f"http://localhost:7071/api/{route}",
        headers={"Content-Type": "application/json", **headers},
        params={},
        route_params=route_params,
        body=(body(sendgrid_mail()) if route.startswith("v3/") else body(message()))
        if method == "POST"
        else b"",
    )
    response = function.get_user_function()(request)
    assert isinstance(response, func.HttpResponse)
    return response


def test_should_find_the_mail_routes_among_the_anonymous_ones() -> None:
    assert {"submit_message", "get_message_status", "sendgrid_mail_send"} <= {
        name for name, _, _ in CLIENT_ROUTES
    }


def test_should_find_the_event_webhook_among_the_signed_ones() -> None:
    assert [name for name, _, _ in SIGNED_ROUTES] == ["sendgrid_events"]


@pytest.mark.parametrize(
    ("name", "trigger", "function"), CLIENT_ROUTES, ids=[n for n, _, _ in CLIENT_ROUTES]
)
def test_should_check_the_client_key_on_every_anonymous_route_that_is_not_public(
    name: str, trigger: HttpTrigger, function: Function
) -> None:
    assert getattr(function.get_user_function(), REQUIRES_CLIENT_KEY, False), (
        f"{name} runs at the anonymous level without client_route"
    )


@pytest.mark.usefixtures("gateway")
@pytest.mark.parametrize(
    ("name", "trigger", "function"), CLIENT_ROUTES, ids=[n for n, _, _ in CLIENT_ROUTES]
)
@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        f"Basic {APP_KEY}",
        "Bearer",
        APP_KEY,
        "Bearer mg_app_not-the-right-secret-at-all-no-no-no-no-no",
        "Bearer mg_nobody_" + "a" * 43,
        f"Bearer {APP_KEY}x",
        "disabled",
    ],
    ids=[
        "missing",
        "empty",
        "basic",
        "no key",
        "no scheme",
        "wrong secret",
        "unknown client",
        "longer key",
        "disabled client",
    ],
)
def test_should_refuse_with_401_without_a_valid_enabled_client_key(
    name: str,
    trigger: HttpTrigger,
    function: Function,
    authorization: str | None,
    clients: ClientStore,
) -> None:
    if authorization == "disabled":
        clients.set_enabled("other", False)
        authorization = f"Bearer {OTHER_KEY}"
    headers = {} if authorization is None else {"Authorization": authorization}

    response = call(function, trigger, headers)

    assert response.status_code == 401, name
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert APP_KEY not in response.get_body().decode()
    assert json.loads(response.get_body())


@pytest.mark.usefixtures("gateway")
@pytest.mark.parametrize(
    ("name", "trigger", "function"), CLIENT_ROUTES, ids=[n for n, _, _ in CLIENT_ROUTES]
)
def test_should_let_a_valid_client_key_through(
    name: str, trigger: HttpTrigger, function: Function
) -> None:
    response = call(function, trigger, {"Authorization": f"Bearer {APP_KEY}"})

    # Past authentication: accepted, the message not found (no such id yet), or the client read.
    assert response.status_code in (200, 202, 404), (name, response.get_body())


def test_should_give_every_admin_route_a_signed_in_twin_for_operators_and_nothing_more() -> None:
    twins = {name: (trigger.route, trigger.methods) for name, trigger, _ in OPERATOR_ROUTES}

    assert twins == {
        f"{name}_signed_in": (f"{SIGNED_IN_PREFIX}{trigger.route}", trigger.methods)
        for name, trigger, _ in ADMIN_ROUTES
    }
    assert {"console_summary", "list_dead_letters", "replay_dead_letters"} <= {
        name for name, _, _ in ADMIN_ROUTES
    }


def test_should_list_only_routes_that_exist_as_public() -> None:
    names = {name for name, _, _ in HTTP_FUNCTIONS}

    assert set(PUBLIC_ROUTES) <= names


def call_signed(
    function: Function, trigger: HttpTrigger, body: bytes, headers: dict[str, str]
) -> func.HttpResponse:
    """Call a signed route's handler as the host would."""
    request = func.HttpRequest(
        method="POST",
        url=f"http://localhost:7071/api/{trigger.route}",
        headers=headers,
        params={},
        route_params={},
        body=body,
    )
    response = function.get_user_function()(request)
    assert isinstance(response, func.HttpResponse)
    return response


BATCH = [sendgrid_event("delivered", "5d0c6a52-7c9e-4a57-9a4e-1f1f6d3b2c10", "ev-1", NOW)]


def unsigned_or_badly_signed() -> list[tuple[bytes, dict[str, str]]]:
    good = WEBHOOK_SIGNER.sign(BATCH, NOW)
    other = WebhookSigner().sign(BATCH, NOW)
    old = WEBHOOK_SIGNER.sign(BATCH, int(NOW.timestamp()) - 3600)
    return [
        (good.body, {}),
        (good.body, {TIMESTAMP_HEADER: good.headers[TIMESTAMP_HEADER]}),
        (good.body, {SIGNATURE_HEADER: good.headers[SIGNATURE_HEADER]}),
        (good.body, {"Authorization": f"Bearer {APP_KEY}"}),
        (good.body + b" ", good.headers),
        (other.body, other.headers),
        (old.body, old.headers),
    ]


@pytest.mark.usefixtures("gateway")
@pytest.mark.parametrize(
    ("name", "trigger", "function"), SIGNED_ROUTES, ids=[n for n, _, _ in SIGNED_ROUTES]
)
@pytest.mark.parametrize(
    ("body_", "headers"),
    unsigned_or_badly_signed(),
    ids=[
        "unsigned",
        "timestamp only",
        "signature only",
        "client key instead",
        "tampered",
        "other key",
        "an hour old",
    ],
)
def test_should_refuse_with_401_without_a_valid_recent_sendgrid_signature(
    name: str, trigger: HttpTrigger, function: Function, body_: bytes, headers: dict[str, str]
) -> None:
    response = call_signed(function, trigger, body_, headers)

    assert response.status_code == 401, name
    assert response.headers["WWW-Authenticate"].startswith("SendGrid-Signature")
    assert json.loads(response.get_body())


@pytest.mark.usefixtures("gateway")
@pytest.mark.parametrize(
    ("name", "trigger", "function"), SIGNED_ROUTES, ids=[n for n, _, _ in SIGNED_ROUTES]
)
def test_should_let_a_valid_sendgrid_signature_through(
    name: str, trigger: HttpTrigger, function: Function
) -> None:
    signed_request = WEBHOOK_SIGNER.sign(BATCH, NOW)

    response = call_signed(function, trigger, signed_request.body, signed_request.headers)

    assert response.status_code == 200, (name, response.get_body())
