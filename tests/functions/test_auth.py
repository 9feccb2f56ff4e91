"""Every mail route refuses a request without the key of an enabled client, found from the app.

The routes are read from function_app itself, so a route added later at the anonymous level
without `client_route` fails here rather than going out open.
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

from functions.auth import REQUIRES_CLIENT_KEY
from shared.clients import ClientStore
from tests.functions.conftest import APP_KEY, OTHER_KEY
from tests.samples import body, message, sendgrid_mail

# Anonymous routes that are meant to be public, and why.
PUBLIC_ROUTES = {
    "health": "load balancers and probes call it without credentials; it shows no mail",
    "openapi": "the API's description, for client generators; it holds no secret",
}


def http_functions() -> list[tuple[str, HttpTrigger, func.FunctionApp]]:
    # A fresh import: get_functions() may be called only once per FunctionApp.
    module: ModuleType = importlib.reload(importlib.import_module("function_app"))
    found = []
    for function in module.app.get_functions():
        trigger = function.get_trigger()
        if isinstance(trigger, HttpTrigger):
            found.append((str(function.get_function_name()), trigger, function))
    return found


HTTP_FUNCTIONS = http_functions()
CLIENT_ROUTES = [
    (name, trigger, function)
    for name, trigger, function in HTTP_FUNCTIONS
    if trigger.auth_level == func.AuthLevel.ANONYMOUS and name not in PUBLIC_ROUTES
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

    # Past authentication: accepted, or the message was not found (no such id yet).
    assert response.status_code in (202, 404), (name, response.get_body())


def test_should_list_only_routes_that_exist_as_public() -> None:
    names = {name for name, _, _ in HTTP_FUNCTIONS}

    assert set(PUBLIC_ROUTES) <= names
