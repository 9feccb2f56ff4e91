from __future__ import annotations

import json
from typing import Any

import azure.functions as func
import pytest

from functions.dead_letters import list_dead_letters, purge_dead_letters, replay_dead_letters
from shared.models import DeadLetter
from shared.status import MessageState
from tests.fakes import FakeMailQueue, FakeStatusStore
from tests.samples import NOW, envelope

POISON = "mail-outbound-poison"


def call(
    function: Any,
    route: str,
    method: str,
    content: bytes = b"",
    params: dict[str, str] | None = None,
) -> func.HttpResponse:
    request = func.HttpRequest(
        method=method,
        url=f"http://localhost:7071/api/v1/{route}",
        headers={"Content-Type": "application/json"},
        params=params or {},
        route_params={},
        body=content,
    )
    response = function(request)
    assert isinstance(response, func.HttpResponse)
    return response


def json_of(response: func.HttpResponse) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(response.get_body())
    return document


def replay(selection: dict[str, Any]) -> func.HttpResponse:
    return call(replay_dead_letters, "dead-letters/replay", "POST", json.dumps(selection).encode())


def purge(selection: dict[str, Any]) -> func.HttpResponse:
    return call(purge_dead_letters, "dead-letters/purge", "POST", json.dumps(selection).encode())


def problem_of(response: func.HttpResponse) -> dict[str, Any]:
    assert response.mimetype == "application/problem+json"
    return json_of(response)


@pytest.fixture
def two_dead_letters(fake_queue: FakeMailQueue) -> None:
    """msg-a refused by SendGrid, msg-b moved by the host without a reason."""
    refused = DeadLetter(reason="SendGrid refused the message with 400", attempts=1, at=NOW)
    fake_queue.poison_client.send_message(
        envelope(id="msg-a").model_copy(update={"dead_letter": refused}).to_json()
    )
    fake_queue.poison_client.send_message(envelope(id="msg-b", attempt=3).to_json())


@pytest.mark.usefixtures("gateway", "two_dead_letters")
def test_should_list_the_dead_letters_with_their_reasons() -> None:
    response = call(list_dead_letters, "dead-letters", "GET")

    assert response.status_code == 200
    assert response.mimetype == "application/json"
    [first, second] = json_of(response)["dead_letters"]
    assert first == {
        "id": "msg-a",
        "reason": "SendGrid refused the message with 400",
        "attempts": 1,
        "dead_lettered_at": NOW.isoformat(),
        "replayable": True,
    }
    assert (second["id"], second["attempts"], second["dead_lettered_at"]) == ("msg-b", 3, None)
    # The app's host.json says after how many dequeues the host moves a message.
    assert second["reason"] == "moved to the poison queue by the Functions host after 5 dequeues"


@pytest.mark.usefixtures("gateway")
def test_should_list_a_page_at_a_time_following_the_continuation(
    fake_queue: FakeMailQueue,
) -> None:
    for number in range(5):
        fake_queue.poison_client.send_message(envelope(id=f"msg-{number}").to_json())

    pages = [json_of(call(list_dead_letters, "dead-letters", "GET", params={"limit": "2"}))]
    while pages[-1]["continuation"] is not None:
        assert len(pages) < 10, "the walk does not end"
        params = {"limit": "2", "continuation": pages[-1]["continuation"], "code": "admin"}
        pages.append(json_of(call(list_dead_letters, "dead-letters", "GET", params=params)))

    assert [[d["id"] for d in page["dead_letters"]] for page in pages] == [
        ["msg-0", "msg-1"],
        ["msg-2", "msg-3"],
        ["msg-4"],
    ]


@pytest.mark.usefixtures("gateway")
@pytest.mark.parametrize(
    ("params", "pointer"),
    [
        ({"limit": "0"}, "?limit"),
        ({"limit": "1000"}, "?limit"),
        ({"continuation": "%%"}, "?continuation"),
    ],
)
def test_should_refuse_a_listing_query_out_of_bounds_with_a_problem_naming_it(
    params: dict[str, str], pointer: str
) -> None:
    response = call(list_dead_letters, "dead-letters", "GET", params=params)

    assert response.status_code == 400
    assert [e["pointer"] for e in problem_of(response)["errors"]] == [pointer]


@pytest.mark.usefixtures("gateway", "two_dead_letters")
def test_should_replay_a_walk_a_call_at_a_time(fake_queue: FakeMailQueue) -> None:
    reports = [json_of(replay({"all": True, "limit": 1}))]
    while reports[-1]["continuation"] is not None:
        assert len(reports) < 10, "the walk does not end"
        selection = {"all": True, "limit": 1, "continuation": reports[-1]["continuation"]}
        reports.append(json_of(replay(selection)))

    assert [r["done"] for r in reports[:2]] == [["msg-a"], ["msg-b"]]
    assert [d for r in reports for d in r["done"]] == ["msg-a", "msg-b"]
    assert fake_queue.poison_texts == []


@pytest.mark.usefixtures("gateway", "two_dead_letters")
@pytest.mark.parametrize(
    ("selection", "pointer"),
    [
        ({"all": True, "limit": 0}, "#/limit"),
        ({"all": True, "limit": "many"}, "#/limit"),
        ({"all": True, "continuation": "not-ours"}, "#/continuation"),
    ],
)
def test_should_refuse_a_replay_limit_or_continuation_that_does_not_do(
    selection: dict[str, Any], pointer: str, fake_queue: FakeMailQueue
) -> None:
    response = replay(selection)

    assert response.status_code == 400
    assert [e["pointer"] for e in problem_of(response)["errors"]] == [pointer]
    assert len(fake_queue.poison_texts) == 2


@pytest.mark.usefixtures("gateway")
def test_should_list_no_dead_letters_when_there_are_none() -> None:
    assert json_of(call(list_dead_letters, "dead-letters", "GET")) == {
        "dead_letters": [],
        "continuation": None,
    }


@pytest.mark.usefixtures("gateway", "two_dead_letters")
def test_should_replay_the_chosen_dead_letters(
    fake_queue: FakeMailQueue, fake_statuses: FakeStatusStore
) -> None:
    response = replay({"ids": ["msg-b", "msg-z"]})

    assert response.status_code == 200
    assert json_of(response) == {
        "done": ["msg-b"],
        "skipped": {},
        "not_found": ["msg-z"],
        "continuation": None,
    }
    assert [(e.id, e.attempt) for e in fake_queue.envelopes] == [("msg-b", 1)]
    assert fake_statuses.records["msg-b"].state is MessageState.QUEUED
    assert len(fake_queue.poison_texts) == 1


@pytest.mark.usefixtures("gateway", "two_dead_letters")
def test_should_replay_every_dead_letter(fake_queue: FakeMailQueue) -> None:
    response = replay({"all": True})

    assert json_of(response)["done"] == ["msg-a", "msg-b"]
    assert fake_queue.poison_texts == []


@pytest.mark.usefixtures("gateway", "two_dead_letters")
@pytest.mark.parametrize(
    "selection",
    [{}, {"ids": []}, {"all": False}, {"ids": ["msg-a"], "all": True}, {"ids": "msg-a"}],
    ids=["empty", "no ids", "all false", "both", "ids not a list"],
)
def test_should_refuse_a_replay_without_exactly_one_of_ids_or_all(
    selection: dict[str, Any], fake_queue: FakeMailQueue
) -> None:
    response = replay(selection)

    assert response.status_code == 400
    assert problem_of(response)["errors"]
    assert fake_queue.envelopes == []
    assert len(fake_queue.poison_texts) == 2


@pytest.mark.usefixtures("gateway")
def test_should_refuse_a_replay_body_that_is_not_json(fake_queue: FakeMailQueue) -> None:
    response = call(replay_dead_letters, "dead-letters/replay", "POST", b"replay everything")

    assert response.status_code == 400
    assert problem_of(response)["status"] == 400


@pytest.mark.usefixtures("gateway", "two_dead_letters")
def test_should_purge_the_chosen_dead_letters_once_confirmed(fake_queue: FakeMailQueue) -> None:
    response = purge({"ids": ["msg-a"], "confirm": POISON})

    assert response.status_code == 200
    assert json_of(response) == {
        "done": ["msg-a"],
        "skipped": {},
        "not_found": [],
        "continuation": None,
    }
    assert [json.loads(t)["id"] for t in fake_queue.poison_texts] == ["msg-b"]


@pytest.mark.usefixtures("gateway", "two_dead_letters")
def test_should_purge_every_dead_letter_once_confirmed(fake_queue: FakeMailQueue) -> None:
    response = purge({"all": True, "confirm": POISON})

    assert json_of(response)["done"] == ["msg-a", "msg-b"]
    assert fake_queue.poison_texts == []


@pytest.mark.usefixtures("gateway", "two_dead_letters")
@pytest.mark.parametrize(
    "confirm", [None, "", "yes", "mail-outbound", "MAIL-OUTBOUND-POISON"], ids=repr
)
def test_should_refuse_a_purge_not_confirmed_with_the_poison_queue_name(
    confirm: str | None, fake_queue: FakeMailQueue
) -> None:
    selection: dict[str, Any] = {"all": True}
    if confirm is not None:
        selection["confirm"] = confirm

    response = purge(selection)

    assert response.status_code == 400
    assert problem_of(response)["errors"] == [
        {"pointer": "#/confirm", "detail": f"must be {POISON!r}"}
    ]
    assert len(fake_queue.poison_texts) == 2


@pytest.mark.usefixtures("gateway", "two_dead_letters")
def test_should_refuse_a_purge_of_neither_ids_nor_all_even_when_confirmed(
    fake_queue: FakeMailQueue,
) -> None:
    response = purge({"confirm": POISON})

    assert response.status_code == 400
    assert len(fake_queue.poison_texts) == 2


@pytest.mark.usefixtures("gateway")
@pytest.mark.parametrize(
    ("function", "route", "method", "content"),
    [
        (list_dead_letters, "dead-letters", "GET", b""),
        (replay_dead_letters, "dead-letters/replay", "POST", b'{"all": true}'),
        (
            purge_dead_letters,
            "dead-letters/purge",
            "POST",
            b'{"all": true, "confirm": "mail-outbound-poison"}',
        ),
    ],
    ids=["list", "replay", "purge"],
)
def test_should_answer_503_when_the_poison_queue_does_not_answer(
    function: Any, route: str, method: str, content: bytes, fake_queue: FakeMailQueue
) -> None:
    fake_queue.poison_client.unavailable = True

    response = call(function, route, method, content)

    assert response.status_code == 503
    assert response.headers["Retry-After"] == "5"
