"""Threat: message ids that are not ids, sent to make storage fail loudly.

Attacker: any client with a valid key (`GET /api/v1/messages/{id}`), or a script holding the
admin key (`GET /api/v1/console/messages/{id}`). The route's `{id}` is the caller's text. Used as
a Table storage key, characters the table forbids in keys (`/`, `\\`, `#`, `?`, control
characters) make the service refuse the read: the gateway used to answer that as an outage,
503 with Retry-After and an ERROR log line per request, so a loop of such requests looked like
a storage failure to the operators and to the alerts, and every probe cost a storage call.

What the gateway does: the gateway gives UUIDs (str(uuid.uuid4())) and nothing else is a
message id, so any other text is 404, as an unknown id always was, before any storage call and
without an ERROR (shared/status.py known_message_id). The tests below make every status read
fail: an id that reached storage would be answered 503.
"""

from __future__ import annotations

import json
import logging

import azure.functions as func
import pytest

from functions.console import console_message
from functions.messages import get_message_status
from shared.errors import StorageUnavailable
from shared.status import MessageState, MessageStatus
from tests.fakes import FakeStatusStore
from tests.functions.conftest import APP_AUTH, MESSAGE_ID
from tests.samples import NOW

pytestmark = pytest.mark.usefixtures("gateway")

HOSTILE_IDS = [
    "a#b",
    "a?b",
    "a\\b",
    "a/b",  # %2F in the address, decoded into the route value
    "tab\there",
    "nul\x00",
    "line\nbreak",
    "' or PartitionKey ne '",
    "x" * 10_000,
    "",
    "5d0c6a52-7c9e-4a57-9a4e-1f1f6d3b2c10-",
    "{5d0c6a52-7c9e-4a57-9a4e-1f1f6d3b2c10}",
    "5d0c6a527c9e4a579a4e1f1f6d3b2c10",
    "urn:uuid:5d0c6a52-7c9e-4a57-9a4e-1f1f6d3b2c10",
    "5d0c6a52\u20137c9e\u20134a57\u20139a4e\u20131f1f6d3b2c10",  # en dashes
]


def get(
    function: object, route: str, message_id: str, headers: dict[str, str]
) -> func.HttpResponse:
    request = func.HttpRequest(
        method="GET",
        url=f"http://localhost:7071/api/{route}",
        headers=headers,
        params={},
        route_params={"id": message_id},
        body=b"",
    )
    assert callable(function)
    response = function(request)
    assert isinstance(response, func.HttpResponse)
    return response


@pytest.fixture
def reads(fake_statuses: FakeStatusStore, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every status read the test makes; each fails, as the table refuses a key it forbids."""
    seen: list[str] = []

    def refused_read(message_id: str) -> MessageStatus | None:
        seen.append(message_id)
        raise StorageUnavailable("status: the table service refused the key")

    monkeypatch.setattr(fake_statuses, "get", refused_read)
    return seen


@pytest.mark.parametrize("message_id", HOSTILE_IDS, ids=range(len(HOSTILE_IDS)))
def test_should_answer_404_for_a_status_id_that_is_not_one_without_asking_storage(
    message_id: str, reads: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        response = get(get_message_status, "v1/messages/x", message_id, APP_AUTH)

    assert response.status_code == 404
    assert response.mimetype == "application/problem+json"
    assert reads == []
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    # The caller's text is not echoed back: the answer stays small whatever was sent.
    assert len(response.get_body()) < 300


@pytest.mark.parametrize("message_id", HOSTILE_IDS, ids=range(len(HOSTILE_IDS)))
def test_should_answer_404_for_a_console_id_that_is_not_one_without_asking_storage(
    message_id: str, reads: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        response = get(console_message, "v1/console/messages/x", message_id, {})

    assert response.status_code == 404
    assert reads == []
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_should_still_look_up_a_well_formed_id(reads: list[str]) -> None:
    response = get(get_message_status, "v1/messages/x", MESSAGE_ID, APP_AUTH)

    # The read failing proves the route asked storage for this one.
    assert response.status_code == 503
    assert reads == [MESSAGE_ID]


def test_should_find_a_message_by_its_id_written_in_capitals(
    fake_statuses: FakeStatusStore,
) -> None:
    fake_statuses.add(MessageStatus(MESSAGE_ID, MessageState.QUEUED, NOW, NOW, client="app"))

    response = get(get_message_status, "v1/messages/x", MESSAGE_ID.upper(), APP_AUTH)

    assert response.status_code == 200
    assert json.loads(response.get_body())["id"] == MESSAGE_ID
