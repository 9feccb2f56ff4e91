"""Threat: the gateway accepts what its own delivery cannot read, or changes what it carries.

Attacker: any client, careless or not. The answer 202 promises delivery. A body nested 199
levels deep (v3: 197) was accepted, but the queue envelope wraps it one level deeper than the
parser at delivery allows (about 200): the message was dead-lettered as "not a mailgate
envelope", its status stayed `queued` for ever, and each one fired the severity-1 alert that
wakes an operator. And numbers the gateway cannot carry were changed on the way: `NaN` and
`1e400` (which the parser reads as infinity) were accepted and sent on as `null`.

What the gateway does: a body may nest at most MAX_JSON_DEPTH levels, far below what the
envelope (or a claim-checked body's blob) can be read back with, and the deepest body it accepts
is the one these tests deliver, from the queue message and from a blob. NaN, Infinity and
numbers beyond a double are refused on both routes, naming the field, before anything is parsed.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Callable
from typing import Any

import pytest
from pydantic_core import from_json

from shared.errors import InvalidMessage
from shared.json_limits import MAX_JSON_DEPTH
from shared.models import MailRequest, QueueEnvelope
from tests.samples import NOW, message
from tests.security.hostile_requests import InMemoryGateway, Route, field_name, pointers_in

# Enough to push a message past one queue message: its body goes to a blob (claim-check).
LARGE_ATTACHMENT = base64.b64encode(bytes(60_000)).decode()


def nested(levels: int) -> Any:
    """A value of `levels` levels of objects."""
    value: Any = "the bottom"
    for _ in range(levels):
        value = {"a": value}
    return value


def depth_of(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max((depth_of(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((depth_of(v) for v in value.values()), default=0)
    return 0


def v1_body(depth: int, claim_checked: bool = False) -> dict[str, Any]:
    """A v1 message nested `depth` levels in all, its template data the deepest part."""
    document = message(template_id="d-1", template_data=nested(depth - 1))
    if claim_checked:
        document["attachments"] = [{"filename": "a.bin", "content": LARGE_ATTACHMENT}]
    return document


def v3_body(depth: int, claim_checked: bool = False) -> dict[str, Any]:
    """A v3 Mail Send body nested `depth` levels in all, its dynamic template data deepest."""
    document: dict[str, Any] = {
        "personalizations": [
            {"to": [{"email": "ann@example.net"}], "dynamic_template_data": nested(depth - 3)}
        ],
        "from": {"email": "noreply@example.com"},
        "template_id": "d-1",
    }
    if claim_checked:
        document["attachments"] = [{"filename": "a.bin", "content": LARGE_ATTACHMENT}]
    return document


BODIES: dict[Route, Callable[..., dict[str, Any]]] = {"v1": v1_body, "v3": v3_body}


def deepest_accepted(route: Route) -> int:
    """The deepest body the route accepts, found by halving (acceptance only shrinks with depth)."""
    build = BODIES[route]
    # Past any parser's limit (and within what json.dumps can write).
    accepted, refused = 8, 400
    assert depth_of(build(accepted)) == accepted
    InMemoryGateway().refusal(route, build(refused))
    while refused - accepted > 1:
        depth = (accepted + refused) // 2
        try:
            InMemoryGateway().accept(route, build(depth))
            accepted = depth
        except InvalidMessage:
            refused = depth
    return accepted


@pytest.mark.parametrize("claim_checked", [False, True], ids=["in the queue message", "in a blob"])
@pytest.mark.parametrize("route", ["v1", "v3"])
def test_should_deliver_the_deepest_body_it_accepts(route: Route, claim_checked: bool) -> None:
    depth = deepest_accepted(route)
    gateway = InMemoryGateway()

    gateway.accept(route, BODIES[route](depth, claim_checked))
    assert bool(gateway.bodies.blobs) == claim_checked
    [outcome] = gateway.deliver_queued()

    assert outcome.result == "sent", outcome.reason
    [payload] = gateway.sender.payloads
    sent = payload["personalizations"][0]["dynamic_template_data"]
    # The template data is all the body's depth but the levels around it (see the builders).
    assert sent == nested(depth - (1 if route == "v1" else 3))
    assert depth == MAX_JSON_DEPTH


@pytest.mark.parametrize("route", ["v1", "v3"])
def test_should_refuse_one_level_deeper_naming_where(route: Route) -> None:
    rejection = InMemoryGateway().refusal(route, BODIES[route](MAX_JSON_DEPTH + 1))

    [problem] = rejection.problems
    assert f"deeper than {MAX_JSON_DEPTH} levels" in problem.detail
    data = "#/template_data" if route == "v1" else "#/personalizations/0/dynamic_template_data"
    assert problem.pointer.startswith(data + "/a/a/a")


NOT_CARRIED = {
    "NaN": b"NaN",
    "Infinity": b"Infinity",
    "-Infinity": b"-Infinity",
    "1e400": b"1e400",
    "-1e400": b"-1e400",
    "1.5E+309": b"1.5E+309",
}


def raw_body(route: Route, number: bytes) -> tuple[bytes, str]:
    """A body with `number` written into its template data, and that number's pointer."""
    if route == "v1":
        return (
            b'{"from": "noreply@example.com", "to": ["ann@example.net"], "template_id": "d-1", '
            b'"template_data": {"total": ' + number + b"}}",
            "#/template_data/total",
        )
    return (
        b'{"personalizations": [{"to": [{"email": "ann@example.net"}], '
        b'"dynamic_template_data": {"total": ' + number + b'}}], "from": {"email": '
        b'"noreply@example.com"}, "template_id": "d-1"}',
        "#/personalizations/0/dynamic_template_data/total",
    )


@pytest.mark.parametrize("number", NOT_CARRIED.values(), ids=NOT_CARRIED.keys())
@pytest.mark.parametrize("route", ["v1", "v3"])
def test_should_refuse_a_number_it_cannot_carry_naming_the_field(
    route: Route, number: bytes
) -> None:
    content, pointer = raw_body(route, number)

    rejection = InMemoryGateway().refusal(route, content)

    assert pointers_in(route, rejection) == [field_name(route, pointer)]


def test_should_refuse_an_overflowing_send_at_naming_it() -> None:
    content = (
        b'{"personalizations": [{"to": [{"email": "ann@example.net"}]}], "from": {"email": '
        b'"noreply@example.com"}, "template_id": "d-1", "send_at": 1e400}'
    )

    rejection = InMemoryGateway().refusal("v3", content)

    assert pointers_in("v3", rejection) == ["send_at"]


def test_should_know_why_the_parser_cannot_be_left_to_refuse_them() -> None:
    # pydantic's parser reads 1e400 as infinity (it is valid JSON), and its v1 validation took
    # NaN too; both were written to the queue as null.
    assert from_json(b"1e400") == math.inf
    lenient = MailRequest.model_validate_json(raw_body("v1", b"NaN")[0])
    assert lenient.template_data is not None
    assert math.isnan(lenient.template_data["total"])
    written = QueueEnvelope(id="m", accepted_at=NOW, message=lenient).to_json()
    assert '"template_data":{"total":null}' in written
