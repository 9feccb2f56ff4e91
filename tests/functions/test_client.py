"""GET /api/v1/client: the key's own client and the gateway's size limit, or 401."""

from __future__ import annotations

import json

import azure.functions as func
import pytest

from functions.client import get_client
from shared.settings import Settings
from tests.functions.conftest import APP_AUTH, OTHER_KEY


def get(headers: dict[str, str]) -> func.HttpResponse:
    request = func.HttpRequest(
        method="GET", url="http://localhost:7071/api/v1/client", headers=headers, body=b""
    )
    response = get_client(request)
    assert isinstance(response, func.HttpResponse)
    return response


@pytest.mark.usefixtures("gateway")
def test_should_name_the_keys_client_and_the_largest_request(settings: Settings) -> None:
    response = get(APP_AUTH)

    assert response.status_code == 200
    assert json.loads(response.get_body()) == {
        "name": "app",
        "max_request_bytes": settings.max_request_bytes,
    }


@pytest.mark.usefixtures("gateway")
def test_should_name_the_other_client_for_its_own_key() -> None:
    response = get({"Authorization": f"Bearer {OTHER_KEY}"})

    assert json.loads(response.get_body())["name"] == "other"


@pytest.mark.usefixtures("gateway")
@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer mg_app_" + "b" * 43}, {"Authorization": "Basic abc"}],
    ids=["no key", "wrong key", "not bearer"],
)
def test_should_refuse_a_missing_or_wrong_key_with_401(headers: dict[str, str]) -> None:
    response = get(headers)

    assert response.status_code == 401
    assert response.mimetype == "application/problem+json"
    assert b"max_request_bytes" not in response.get_body()
