"""End to end: hostile bodies from the threat model (tests/security/) on the real stack.

They go in over HTTP as a client sends them; what the gateway must never do is visible at the
SendGrid stand-in (a smuggled header reaching it), on the queue (a message it cannot read back),
or in the answer (work and size that grow with the body).
"""

from __future__ import annotations

import base64
from typing import Any

import pytest

from devstack.sendgrid_standin import SendGridStandIn
from shared.json_limits import MAX_JSON_DEPTH
from tests.e2e.conftest import LargeMessageBodies, Queues, RunningHost, wait_for
from tests.e2e.test_mail_flow import accept, full_message, mails_for

JSON = "application/json"
SMUGGLED = {"From\n": "ceo@bank.example", "Bcc\n": "spy@evil.example"}


def nested(levels: int) -> Any:
    value: Any = "the bottom"
    for _ in range(levels):
        value = {"a": value}
    return value


def sent_headers(standin: SendGridStandIn) -> list[str]:
    """Every header name of every mail the stand-in received."""
    names: list[str] = []
    for mail in standin.mails():
        payload = mail["payload"]
        names += list(payload.get("headers", {}))
        for personalization in payload["personalizations"]:
            names += list(personalization.get("headers", {}))
    return names


def test_should_never_let_a_header_with_a_final_newline_reach_sendgrid(
    stack: RunningHost, standin: SendGridStandIn, queues: Queues
) -> None:
    v1 = stack.post_message(full_message(headers={"X-Invoice": "42", **SMUGGLED}))
    v3 = stack.http.post(
        "/api/v3/mail/send",
        json={
            "personalizations": [{"to": [{"email": "ann@example.org"}], "headers": SMUGGLED}],
            "from": {"email": "app@example.com"},
            "subject": "Hello",
            "content": [{"type": "text/plain", "value": "Hi"}],
        },
        headers=stack.client_headers(),
    )
    # A message after them, delivered: the stand-in is watched, and nothing else came.
    later = accept(stack)
    wait_for(lambda: mails_for(standin, later), timeout=30)

    assert v1.status_code == 400, v1.text
    assert [e["pointer"] for e in v1.json()["errors"]] == ["#/headers"]
    assert v3.status_code == 400, v3.text
    assert [e["field"] for e in v3.json()["errors"]] == ["personalizations.0.headers.From\n"]
    assert sent_headers(standin) == ["X-Invoice"]
    assert len(standin.mails()) == 1
    assert queues.peek(queues.poison) == []


def test_should_deliver_the_deepest_body_it_accepts_from_a_blob(
    stack: RunningHost, standin: SendGridStandIn, large_bodies: LargeMessageBodies
) -> None:
    # Root, then template_data: the rest of the depth is the template data's own. The
    # attachment makes the message too large for one queue message: its body goes to a blob.
    attachment = {"filename": "a.bin", "content": base64.b64encode(bytes(100_000)).decode()}
    deepest = {"template_id": "d-0123", "attachments": [attachment]}

    refused = stack.post_message(full_message(**deepest, template_data=nested(MAX_JSON_DEPTH)))
    message_id = accept(stack, **deepest, template_data=nested(MAX_JSON_DEPTH - 1))

    assert refused.status_code == 400
    [problem] = refused.json()["errors"]
    assert problem["pointer"].startswith("#/template_data/a/a")
    [mail] = wait_for(lambda: mails_for(standin, message_id), timeout=30)
    assert mail["payload"]["personalizations"][0]["dynamic_template_data"] == nested(
        MAX_JSON_DEPTH - 1
    )
    wait_for(lambda: stack.status(message_id)["status"] == "sent")
    assert f"its body in blob live/{message_id}.json" in stack.log()


@pytest.mark.parametrize("route", ["/api/v1/messages", "/api/v3/mail/send"])
def test_should_answer_a_30_mb_list_of_invalid_recipients_with_one_small_problem(
    stack: RunningHost, route: str
) -> None:
    items = b",".join([b'"x"'] * 7_400_000)
    if route == "/api/v1/messages":
        content = b'{"from": "app@example.com", "to": [' + items + b'], "subject": "Hi"}'
    else:
        content = b'{"personalizations": [{"to": [' + items.replace(b'"x"', b"{}") + b"]}]}"
    assert 20_000_000 < len(content) <= 30_000_000

    response = stack.http.post(
        route, content=content, headers={**stack.client_headers(), "Content-Type": JSON}
    )

    assert response.status_code == 400, response.text[:500]
    # What it costs is `make bench`'s to measure (scenario 8): here, what it answers.
    assert len(response.content) < 1000
    assert len(response.json()["errors"]) == 1
