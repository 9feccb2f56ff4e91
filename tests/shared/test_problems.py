from __future__ import annotations

import json

import pytest

from shared.errors import (
    FieldProblem,
    InvalidMessage,
    PayloadTooLarge,
    RequestRejected,
    SenderNotAllowed,
    UnsupportedMediaType,
)
from shared.problems import Problem


@pytest.mark.parametrize(
    ("rejection", "status"),
    [
        (InvalidMessage("the message has 1 invalid field(s)"), 400),
        (SenderNotAllowed("this gateway does not send for that address"), 403),
        (PayloadTooLarge("the body is too large"), 413),
        (UnsupportedMediaType("the body must be application/json"), 415),
    ],
)
def test_should_give_each_refusal_its_status(rejection: RequestRejected, status: int) -> None:
    problem = Problem.from_rejection(rejection)

    document = json.loads(problem.body())
    assert problem.status == document["status"] == status
    assert document["detail"] == rejection.detail
    assert document["type"] == "about:blank"
    assert isinstance(document["title"], str)
    assert document["title"]


@pytest.mark.parametrize(
    ("status", "title"),
    [
        (400, "Bad Request"),
        (403, "Forbidden"),
        (500, "Internal Server Error"),
        (503, "Service Unavailable"),
    ],
)
def test_should_title_an_about_blank_problem_with_the_status_phrase(
    status: int, title: str
) -> None:
    # RFC 9457: with type about:blank, the title should be the HTTP status phrase.
    assert json.loads(Problem(status, "why").body())["title"] == title


def test_should_list_each_offending_field_with_its_pointer() -> None:
    rejection = InvalidMessage(
        "the message has 2 invalid field(s)",
        (
            FieldProblem("#/to/0/email", "value is not a valid email address"),
            FieldProblem("#/subject", "must not contain CR, LF or NUL"),
        ),
    )

    document = json.loads(Problem.from_rejection(rejection).body())

    assert document == {
        "type": "about:blank",
        "title": "Bad Request",
        "status": 400,
        "detail": "the message has 2 invalid field(s)",
        "errors": [
            {"pointer": "#/to/0/email", "detail": "value is not a valid email address"},
            {"pointer": "#/subject", "detail": "must not contain CR, LF or NUL"},
        ],
    }


def test_should_leave_out_errors_when_no_field_is_to_blame() -> None:
    document = json.loads(Problem(503, "try again later").body())

    assert "errors" not in document
    assert set(document) == {"type", "title", "status", "detail"}


def test_should_carry_no_headers_unless_given() -> None:
    assert Problem.from_rejection(PayloadTooLarge("too large")).headers == {}
    assert Problem(503, "later", headers={"Retry-After": "5"}).headers == {"Retry-After": "5"}


def test_should_escape_details_as_json() -> None:
    problem = Problem(400, 'a "quoted" \\ detail', (FieldProblem("#/x", "line\nbreak"),))

    document = json.loads(problem.body())

    assert document["detail"] == 'a "quoted" \\ detail'
    assert document["errors"][0]["detail"] == "line\nbreak"
