"""GET /api/openapi.json describes exactly the routes function_app registers, each with the
credentials it checks, and its request bodies are the models that validate them."""

from __future__ import annotations

import json

import azure.functions as func
import pytest
from pydantic import BaseModel

from functions.openapi import openapi
from shared.dead_letters import DeadLetterSelection
from shared.delivery_events import SendGridEvent
from shared.models import MailRequest
from shared.openapi import openapi_document
from shared.sendgrid_v3.schema import MailSend
from shared.webhook_signature import SIGNATURE_HEADER, TIMESTAMP_HEADER
from tests.functions.test_auth import (
    HTTP_FUNCTIONS,
    OPERATOR_ROUTES,
    PUBLIC_ROUTES,
    SIGNED_ROUTES,
)

DOCUMENT = openapi_document()
ROUTES = [
    (name, f"/{trigger.route}", str(method.value).lower(), trigger.auth_level)
    for name, trigger, _ in HTTP_FUNCTIONS
    for method in trigger.methods or []
]


def test_should_describe_exactly_the_registered_routes() -> None:
    described = {
        (path, method) for path, operations in DOCUMENT["paths"].items() for method in operations
    }

    assert described == {(path, method) for _, path, method, _ in ROUTES}


@pytest.mark.parametrize(
    ("name", "path", "method", "auth_level"), ROUTES, ids=[r[0] for r in ROUTES]
)
def test_should_name_the_credentials_each_route_checks(
    name: str, path: str, method: str, auth_level: func.AuthLevel
) -> None:
    operation = DOCUMENT["paths"][path][method]

    if name in PUBLIC_ROUTES:
        expected: list[dict[str, list[str]]] = []
    elif name in {signed for signed, _, _ in SIGNED_ROUTES}:
        expected = [{"sendgridSignature": []}]
    elif name in {operator for operator, _, _ in OPERATOR_ROUTES}:
        expected = [{"operatorSignIn": []}]
    elif auth_level == func.AuthLevel.ADMIN:
        expected = [{"adminKey": []}]
    else:
        expected = [{"clientKey": []}]
    assert operation["operationId"] == name
    assert operation["security"] == expected
    if expected:
        assert "401" in operation["responses"]


@pytest.mark.parametrize(
    ("path", "model"),
    [
        ("/v1/messages", MailRequest),
        ("/v3/mail/send", MailSend),
        ("/v1/dead-letters/replay", DeadLetterSelection),
    ],
)
def test_should_take_request_schemas_from_the_validating_models(
    path: str, model: type[BaseModel]
) -> None:
    body = DOCUMENT["paths"][path]["post"]["requestBody"]["content"]["application/json"]
    schema = DOCUMENT["components"]["schemas"][model.__name__]

    assert body["schema"] == {"$ref": f"#/components/schemas/{model.__name__}"}
    assert set(schema["properties"]) == {
        field.alias or name for name, field in model.model_fields.items()
    }
    # The example a reader copies is one the model accepts.
    model.model_validate(body["example"])


def test_should_take_the_event_webhook_batch_from_the_validating_model() -> None:
    body = DOCUMENT["paths"]["/v1/events/sendgrid"]["post"]["requestBody"]["content"][
        "application/json"
    ]
    schema = DOCUMENT["components"]["schemas"]["SendGridEvent"]

    assert body["schema"] == {
        "type": "array",
        "items": {"$ref": "#/components/schemas/SendGridEvent"},
    }
    assert set(schema["properties"]) == set(SendGridEvent.model_fields)
    # SendGrid sends many more fields than the gateway reads: they must not be refused.
    assert schema["additionalProperties"] is True
    for event in body["example"]:
        SendGridEvent.model_validate(event)


def test_should_describe_the_signature_and_its_timestamp() -> None:
    operation = DOCUMENT["paths"]["/v1/events/sendgrid"]["post"]
    scheme = DOCUMENT["components"]["securitySchemes"]["sendgridSignature"]

    assert (scheme["type"], scheme["in"], scheme["name"]) == ("apiKey", "header", SIGNATURE_HEADER)
    assert [p["name"] for p in operation["parameters"]] == [TIMESTAMP_HEADER]
    assert set(operation["responses"]) == {"200", "400", "401", "413", "503"}


def test_should_serve_the_document() -> None:
    request = func.HttpRequest(
        method="GET", url="http://localhost:7071/api/openapi.json", headers={}, body=b""
    )

    response = openapi(request)

    assert response.status_code == 200
    assert response.mimetype == "application/json"
    assert json.loads(response.get_body()) == DOCUMENT
