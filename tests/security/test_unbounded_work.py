"""Threat: one request makes the gateway do unbounded work before it says no.

Attacker: any client with a key (hostile, or careless: a bug that sends a list ten thousand
times over). A body may be 30 MB, and 30 MB of `"x",` is 7.5 million list items. The gateway
used to validate every item before it compared the list with its bound, and to echo every
invalid one: 18 s of CPU, 1.9 GB of memory and a 121 MB answer for one request, which kills
a 2 GB Flex instance and every delivery in flight on it, for every client.

What the gateway does: before the body is parsed, one pass over its bytes (shared/json_limits.py)
refuses it at the first bound it breaks: a list or map past its bound (the models' max_length:
recipients, personalizations, attachments, categories, headers, custom_args, ...), an object
with more members than its model has fields, more than MAX_JSON_VALUES values in all, nesting
past MAX_JSON_DEPTH. Only a body within every bound is parsed and validated, and maps report one
problem each (fail_fast). Every answer lists at most the first 20 problems and counts the rest,
and cuts whatever it quotes of the request. `make bench` (scenario 8) measures the worst 30 MB
bodies on both routes against 1 s of CPU and 200 MB of memory.
"""

from __future__ import annotations

from typing import Any

import pytest

from shared.errors import MAX_PROBLEM_TEXT, MAX_PROBLEMS_SHOWN
from shared.json_limits import MAX_JSON_VALUES
from shared.models import MAX_ATTACHMENTS, MAX_HEADERS, MAX_RECIPIENTS, MAX_STRING_MAP_MEMBERS
from tests.samples import addresses, message, sendgrid_mail
from tests.security.hostile_requests import InMemoryGateway, Route, answer, pointers_in

# Items that are each invalid: had they been read one by one, each would be a problem.
NOT_AN_ADDRESS = "x"
NOT_AN_ATTACHMENT: dict[str, Any] = {"filename": 1}


def v1(**fields: Any) -> dict[str, Any]:
    return message(**fields)


def v3(**fields: Any) -> dict[str, Any]:
    document = sendgrid_mail(**fields)
    del document["mail_settings"]
    return document


def v3_personalization(**fields: Any) -> dict[str, Any]:
    document = v3()
    document["personalizations"] = [{"to": [{"email": "ann@example.net"}], **fields}]
    return document


OVER_THE_BOUND: dict[str, tuple[Route, dict[str, Any], str, str]] = {
    "v1 to": ("v1", v1(to=[NOT_AN_ADDRESS] * 5000), "#/to", "at most 1000 recipients"),
    "v1 cc": ("v1", v1(cc=[NOT_AN_ADDRESS] * 5000), "#/to", "at most 1000 recipients"),
    "v1 bcc": ("v1", v1(bcc=[NOT_AN_ADDRESS] * 5000), "#/to", "at most 1000 recipients"),
    "v1 to, cc and bcc together": (
        "v1",
        v1(to=addresses(400), cc=addresses(400, prefix="c"), bcc=[NOT_AN_ADDRESS] * 300),
        "#/to",
        "at most 1000 recipients",
    ),
    "v1 attachments": (
        "v1",
        v1(attachments=[NOT_AN_ATTACHMENT] * (MAX_ATTACHMENTS + 1)),
        "#/attachments",
        f"at most {MAX_ATTACHMENTS}",
    ),
    "v1 categories": ("v1", v1(categories=[1] * 11), "#/categories", "at most 10"),
    "v1 headers": (
        "v1",
        v1(headers={f"X-{i}\n": 1 for i in range(MAX_HEADERS + 1)}),
        "#/headers",
        f"at most {MAX_HEADERS}",
    ),
    "v1 custom_args": (
        "v1",
        v1(custom_args={f"k{i}": i for i in range(MAX_STRING_MAP_MEMBERS + 1)}),
        "#/custom_args",
        f"at most {MAX_STRING_MAP_MEMBERS}",
    ),
    "v1 unknown fields": (
        "v1",
        {**v1(), **{f"unknown-{i}": 1 for i in range(1000)}},
        "#",
        "more than 15 members",
    ),
    "v1 an address object's unknown fields": (
        "v1",
        v1(to=[{"email": "ann@example.net", **{f"x{i}": 1 for i in range(1000)}}]),
        "#/to/0",
        "more than 2 members",
    ),
    "v3 personalizations": (
        "v3",
        v3(personalizations=[{"to": [{"email": NOT_AN_ADDRESS}]}] * 1001),
        "#/personalizations",
        "limited to 1000 personalizations",
    ),
    "v3 one personalization's to": (
        "v3",
        v3_personalization(to=[{"email": NOT_AN_ADDRESS}] * 5000),
        "#/personalizations",
        "limit of 1000 total recipients",
    ),
    "v3 recipients of all personalizations": (
        "v3",
        v3(personalizations=[{"to": [{"email": f"{i}@example.net"}] * 2} for i in range(501)]),
        "#/personalizations",
        "limit of 1000 total recipients",
    ),
    "v3 bcc": (
        "v3",
        v3_personalization(bcc=[{"email": NOT_AN_ADDRESS}] * 5000),
        "#/personalizations",
        "limit of 1000 total recipients",
    ),
    "v3 reply_to_list": (
        "v3",
        v3(reply_to_list=[{"email": NOT_AN_ADDRESS}] * 1001),
        "#/reply_to_list",
        "limit of 1000 reply_to emails",
    ),
    "v3 content": (
        "v3",
        v3(content=[{"type": 1}] * 101),
        "#/content",
        "at most 100 items",
    ),
    "v3 attachments": (
        "v3",
        v3(attachments=[NOT_AN_ATTACHMENT] * (MAX_ATTACHMENTS + 1)),
        "#/attachments",
        f"at most {MAX_ATTACHMENTS} items",
    ),
    "v3 categories": ("v3", v3(categories=[1] * 11), "#/categories", "limit of 10 categories"),
    "v3 headers": (
        "v3",
        v3(headers={f"X-{i}\n": 1 for i in range(MAX_HEADERS + 1)}),
        "#/headers",
        f"at most {MAX_HEADERS} members",
    ),
    "v3 a personalization's headers": (
        "v3",
        v3_personalization(headers={f"X-{i}\n": 1 for i in range(MAX_HEADERS + 1)}),
        "#/personalizations/0/headers",
        f"at most {MAX_HEADERS} members",
    ),
    "v3 custom_args": (
        "v3",
        v3(custom_args={f"k{i}": i for i in range(MAX_STRING_MAP_MEMBERS + 1)}),
        "#/custom_args",
        f"at most {MAX_STRING_MAP_MEMBERS} members",
    ),
    "v3 a personalization's substitutions": (
        "v3",
        v3_personalization(substitutions={f"k{i}": i for i in range(MAX_STRING_MAP_MEMBERS + 1)}),
        "#/personalizations/0/substitutions",
        "limited to 10,000 substitutions",
    ),
    "v3 asm.groups_to_display": (
        "v3",
        v3(asm={"group_id": 1, "groups_to_display": ["x"] * 26}),
        "#/asm/groups_to_display",
        "limit of 25 unsubscribe groups",
    ),
    "v3 unknown fields": (
        "v3",
        {**v3(), **{f"unknown-{i}": 1 for i in range(1000)}},
        "#",
        "request body may have at most",
    ),
}


@pytest.mark.parametrize(
    ("route", "document", "pointer", "detail"),
    OVER_THE_BOUND.values(),
    ids=OVER_THE_BOUND.keys(),
)
def test_should_refuse_a_list_past_its_bound_at_the_list_without_reading_its_items(
    route: Route, document: dict[str, Any], pointer: str, detail: str
) -> None:
    rejection = InMemoryGateway().refusal(route, document)

    [problem] = rejection.problems
    assert problem.pointer == pointer
    assert detail in problem.detail
    assert rejection.problems_left_out == 0


@pytest.mark.parametrize(
    ("route", "document", "pointer"),
    [
        (
            "v1",
            v1(template_id="d-1", template_data={"rows": [[]] * MAX_JSON_VALUES}),
            "#/template_data/rows",
        ),
        (
            "v3",
            v3_personalization(dynamic_template_data={"rows": [0] * MAX_JSON_VALUES}),
            "#/personalizations/0/dynamic_template_data/rows",
        ),
    ],
    ids=["v1 template_data", "v3 dynamic_template_data"],
)
def test_should_refuse_more_values_than_the_gateway_reads_where_they_pile_up(
    route: Route, document: dict[str, Any], pointer: str
) -> None:
    [problem] = InMemoryGateway().refusal(route, document).problems

    assert problem.pointer == pointer
    assert f"more than {MAX_JSON_VALUES:,} values" in problem.detail


def test_should_accept_the_most_recipients_the_bound_allows() -> None:
    gateway = InMemoryGateway()

    gateway.accept("v1", v1(to=addresses(MAX_RECIPIENTS)))
    document = v3(personalizations=[{"to": [{"email": a}]} for a in addresses(MAX_RECIPIENTS)])
    gateway.accept("v3", document)

    assert len(gateway.queue.messages) == 2


# --- the answer to bad input is small -------------------------------------------------------


def fifty_bad_recipients(route: Route) -> dict[str, Any]:
    if route == "v1":
        return v1(to=[f"bad-{i}" for i in range(50)])
    return v3_personalization(to=[{"email": f"bad-{i}"} for i in range(50)])


@pytest.mark.parametrize("route", ["v1", "v3"])
def test_should_list_the_first_20_problems_and_count_the_rest(route: Route) -> None:
    rejection = InMemoryGateway().refusal(route, fifty_bad_recipients(route))

    status, document = answer(route, rejection)

    assert status == 400
    listed = document["errors"]
    if route == "v1":
        assert len(listed) == MAX_PROBLEMS_SHOWN
        assert "50 invalid field(s)" in document["detail"]
        assert f"the first {MAX_PROBLEMS_SHOWN} are listed" in document["detail"]
    else:
        assert len(listed) == MAX_PROBLEMS_SHOWN + 1
        assert listed[-1]["field"] is None
        assert "30 more problem(s)" in listed[-1]["message"]
    assert pointers_in(route, rejection)[:2] in (
        ["#/to/0/email", "#/to/1/email"],
        ["personalizations.0.to.0.email", "personalizations.0.to.1.email"],
    )


@pytest.mark.parametrize(
    ("route", "document", "expected"),
    [
        ("v1", v1(headers={f"X-{i}": i for i in range(MAX_HEADERS)}), 1),
        ("v1", v1(custom_args={f"k{i}": i for i in range(5000)}), 1),
        (
            "v3",
            v3(
                personalizations=[
                    {
                        "to": [{"email": f"{i}@example.net"}],
                        "custom_args": {f"k{j}": j for j in range(500)},
                    }
                    for i in range(40)
                ]
            ),
            40,
        ),
        (
            "v3",
            v3_personalization(substitutions={f"k{j}": j for j in range(5000)}, headers={"X": 1}),
            2,
        ),
    ],
    ids=["v1 headers", "v1 custom_args", "v3 custom_args of 40 personalizations", "v3 maps"],
)
def test_should_find_one_problem_per_map_however_many_of_its_values_are_wrong(
    route: Route, document: dict[str, Any], expected: int
) -> None:
    rejection = InMemoryGateway().refusal(route, document)

    assert len(rejection.problems) + rejection.problems_left_out == expected


@pytest.mark.parametrize("route", ["v1", "v3"])
def test_should_not_echo_a_megabyte_field_name(route: Route) -> None:
    document = v1() if route == "v1" else v3()
    document["x" * 1_000_000] = 1

    _, body = answer(route, InMemoryGateway().refusal(route, document))

    [entry] = body["errors"]
    quoted = entry["pointer"] if route == "v1" else entry["field"]
    assert MAX_PROBLEM_TEXT - 2 <= len(quoted) <= MAX_PROBLEM_TEXT
    assert quoted.endswith("…")


def test_should_not_echo_a_huge_value_in_sendgrids_words() -> None:
    rejection = InMemoryGateway().refusal("v3", v3(template_id=["x" * 1000] * 1000))

    _, body = answer("v3", rejection)

    assert body["errors"] == [
        {
            "message": "The template ID must be a string, you provided an array.",
            "field": "template_id",
            "help": None,
        }
    ]
