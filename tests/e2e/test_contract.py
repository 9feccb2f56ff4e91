"""The API keeps its contract: schemathesis fuzzes every route of GET /api/openapi.json against
the real local stack. No generated input may earn a 5xx, and every answer must match the
document: its status code, content type, headers and body schema.

The host is this module's own, with its own queue, table and SendGrid stand-in, so that the
mail the fuzzer gets accepted (and the dead letters it replays or purges) touch no other test.
Requests to SendGrid's Event Webhook are signed with the session's webhook key, as SendGrid
would sign them, so that the generated batches reach past the signature check.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import CheckFunction
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from devstack.azurite import Azurite
from devstack.sendgrid_standin import SendGridStandIn
from shared.openapi import openapi_document
from tests.e2e.conftest import ADMIN_KEY, WEBHOOK_SIGNER, RunningHost, gateway_settings

CHECKS: list[CheckFunction] = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
EXAMPLES_PER_ROUTE = 100
# RFC 9110 field names; a request with another, or with a framing header of its own, is not
# HTTP the gateway ever sees: the server in front answers it (400, text/plain) by itself.
_FIELD_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_FRAMING = {"content-length", "transfer-encoding", "host", "connection"}


def is_valid_http(headers: dict[str, Any]) -> bool:
    """Whether these generated headers make a request an HTTP server passes to the app."""
    for name, value in headers.items():
        text = str(value)
        if not _FIELD_NAME.match(name) or name.lower() in _FRAMING:
            return False
        if any((ord(c) < 0x20 and c != "\t") or ord(c) == 0x7F for c in text):
            return False
    return True


SIGNED_PATHS = {"/v1/events/sendgrid"}


@pytest.fixture(scope="module")
def contract_host(
    azurite: Azurite, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningHost]:
    """A host of the module's own, with its own stand-in."""
    folder = tmp_path_factory.mktemp("contract")
    with SendGridStandIn(outbox=folder / "outbox") as standin:
        host = RunningHost(
            {
                **gateway_settings(azurite.connection_string, standin),
                "MAIL_QUEUE_NAME": "mail-contract",
                "STATUS_TABLE_NAME": "statuscontract",
                "CLIENT_TABLE_NAME": "clientscontract",
                "LARGE_MESSAGE_CONTAINER_NAME": "large-contract",
            },
            folder,
        )
        yield host
        host.stop()


@pytest.fixture(scope="module")
def served_document(contract_host: RunningHost) -> dict[str, Any]:
    """The document as the host serves it."""
    response = httpx.get(f"{contract_host.base_url}/api/openapi.json", timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    document: dict[str, Any] = response.json()
    return document


# Loaded when the module is collected (schemathesis refuses an invalid document); the first
# test proves the host serves this very document.
schema = schemathesis.openapi.from_dict(openapi_document())


def test_should_serve_the_document_built_from_the_models(served_document: dict[str, Any]) -> None:
    assert served_document == openapi_document()
    assert served_document["openapi"].startswith("3.1")
    request = served_document["paths"]["/v1/messages"]["post"]["requestBody"]
    assert request["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/MailRequest"
    }


@schema.parametrize()
@settings(
    max_examples=EXAMPLES_PER_ROUTE,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_should_keep_the_contract_on_every_generated_request(
    case: schemathesis.Case[Any], contract_host: RunningHost
) -> None:
    # The generated request with real keys: the fuzzer's own credentials would all be 401s.
    generated = {
        name: value
        for name, value in (case.headers or {}).items()
        if name.lower() not in ("authorization", "x-functions-key")
    }
    headers = {
        **generated,
        "Authorization": f"Bearer {contract_host.client_key}",
        "x-functions-key": ADMIN_KEY,
    }
    base_url = f"{contract_host.base_url}/api"
    body: dict[str, Any] = {}
    if case.operation.path in SIGNED_PATHS:
        # Sign the very bytes sent: the generated body, serialized here instead of by the
        # transport.
        body["data"] = serialized_body(case, base_url)
        headers.update(WEBHOOK_SIGNER.headers(body["data"], datetime.now(timezone.utc)))
    # Malformed HTTP is refused before the app (and the document) come into it: then only
    # "no 5xx" holds.
    checks: list[CheckFunction] = CHECKS if is_valid_http(headers) else [not_a_server_error]
    case.call_and_validate(base_url=base_url, headers=headers, checks=checks, **body)


def serialized_body(case: schemathesis.Case[Any], base_url: str) -> bytes:
    """The generated body as the transport would send it."""
    transport = case.as_transport_kwargs(base_url=base_url)
    if "json" in transport:
        return json.dumps(transport["json"], allow_nan=False).encode()
    data = transport.get("data", b"")
    return data.encode() if isinstance(data, str) else bytes(data)
