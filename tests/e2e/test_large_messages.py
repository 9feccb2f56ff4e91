"""End to end: messages too large for one queue message travel with their body in a blob."""

from __future__ import annotations

import base64
import hashlib
import os
import time
from typing import Any

import pytest

from devstack.sendgrid_standin import SendGridStandIn
from tests.e2e.conftest import LargeMessageBodies, Queues, RunningHost, wait_for
from tests.e2e.test_mail_flow import accept, dead_letter_for, full_message, mails_for

FIVE_MB = 5 * 1024 * 1024


def attachment_of(content: bytes, filename: str = "report.bin") -> dict[str, str]:
    return {
        "filename": filename,
        "content": base64.b64encode(content).decode(),
        "content_type": "application/octet-stream",
    }


def delivered(stack: RunningHost, standin: SendGridStandIn, message_id: str) -> dict[str, Any]:
    """The one mail the stand-in received for this message, once its status says sent."""
    [mail] = wait_for(lambda: mails_for(standin, message_id), timeout=30)
    wait_for(lambda: stack.status(message_id)["status"] == "sent")
    payload: dict[str, Any] = mail["payload"]
    return payload


def test_should_deliver_a_5_mb_attachment_intact_and_then_delete_its_blob(
    stack: RunningHost, standin: SendGridStandIn, queues: Queues, large_bodies: LargeMessageBodies
) -> None:
    content = os.urandom(FIVE_MB)

    message_id = accept(stack, attachments=[attachment_of(content)])
    payload = delivered(stack, standin, message_id)

    [attachment] = payload["attachments"]
    received = base64.b64decode(attachment["content"], validate=True)
    assert len(received) == FIVE_MB
    assert hashlib.sha256(received).digest() == hashlib.sha256(content).digest()
    assert received == content
    assert (attachment["filename"], attachment["type"]) == (
        "report.bin",
        "application/octet-stream",
    )
    assert payload["subject"] == "Your invoice 42"
    assert f"Message {message_id} queued" in stack.log()
    assert f"its body in blob live/{message_id}.json" in stack.log()
    wait_for(lambda: f"live/{message_id}.json" not in large_bodies.names())
    assert queues.peek(queues.mail) == []
    assert len(mails_for(standin, message_id)) == 1


@pytest.mark.parametrize(
    ("recipient", "claim_checked"),
    [
        ("user{i}@example.org", False),
        ("Recipient Number {i} <recipient.number.{i}@customers.example.org>", True),
    ],
    ids=["in the queue message", "in a blob"],
)
def test_should_deliver_a_message_to_1000_recipients_intact(
    recipient: str,
    claim_checked: bool,
    stack: RunningHost,
    standin: SendGridStandIn,
    large_bodies: LargeMessageBodies,
) -> None:
    recipients = [recipient.format(i=i) for i in range(1000)]

    message_id = accept(stack, to=recipients, cc=[], bcc=[])
    payload = delivered(stack, standin, message_id)

    [personalization] = payload["personalizations"]
    expected = [
        {"email": f"recipient.number.{i}@customers.example.org", "name": f"Recipient Number {i}"}
        if claim_checked
        else {"email": f"user{i}@example.org"}
        for i in range(1000)
    ]
    assert personalization["to"] == expected
    assert "cc" not in personalization
    assert "bcc" not in personalization
    assert (f"its body in blob live/{message_id}.json" in stack.log()) is claim_checked
    wait_for(lambda: f"live/{message_id}.json" not in large_bodies.names())


def test_should_keep_a_dead_lettered_large_message_in_its_blob_until_it_is_purged(
    stack: RunningHost, standin: SendGridStandIn, queues: Queues, large_bodies: LargeMessageBodies
) -> None:
    standin.script([{"status": 400, "body": {"errors": [{"message": "bad", "field": None}]}}])
    content = os.urandom(256 * 1024)

    message_id = accept(stack, attachments=[attachment_of(content)])
    record = wait_for(lambda: dead_letter_for(queues, message_id))

    # The poison queue holds the small envelope; the body waits in its blob, moved out of live/
    # where retention would delete it.
    kept = f"dead-letters/{message_id}.json"
    assert record["blob"] == kept
    assert "message" not in record
    wait_for(lambda: f"live/{message_id}.json" not in large_bodies.names() or None)
    assert kept in large_bodies.names()
    listed = stack.admin("GET", "/api/v1/dead-letters").json()["dead_letters"]
    assert [(e["id"], e["blob"]) for e in listed] == [(message_id, kept)]

    purged = stack.admin(
        "POST",
        "/api/v1/dead-letters/purge",
        json={"ids": [message_id], "confirm": queues.poison.queue_name},
    )

    assert purged.status_code == 200, purged.text
    assert purged.json()["done"] == [message_id]
    assert kept not in large_bodies.names()
    assert dead_letter_for(queues, message_id) is None


def test_should_send_a_replayed_large_message_intact_from_its_blob(
    stack: RunningHost, standin: SendGridStandIn, queues: Queues, large_bodies: LargeMessageBodies
) -> None:
    standin.script([{"status": 400, "body": {"errors": [{"message": "bad", "field": None}]}}])
    content = os.urandom(256 * 1024)
    message_id = accept(stack, attachments=[attachment_of(content)])
    wait_for(lambda: dead_letter_for(queues, message_id))

    replayed = stack.admin("POST", "/api/v1/dead-letters/replay", json={"ids": [message_id]})
    payload = delivered(stack, standin, message_id)

    assert replayed.json()["done"] == [message_id]
    assert base64.b64decode(payload["attachments"][0]["content"]) == content
    wait_for(lambda: f"dead-letters/{message_id}.json" not in large_bodies.names())
    assert not [n for n in large_bodies.names() if message_id in n]


def test_should_refuse_a_body_over_max_request_bytes_with_413_and_keep_nothing(
    stack: RunningHost, standin: SendGridStandIn, queues: Queues, large_bodies: LargeMessageBodies
) -> None:
    blobs_before = large_bodies.names()
    padding = "x" * 30_000_000

    response = stack.post_message(full_message(text=padding))
    time.sleep(1)

    assert response.status_code == 413
    assert response.headers["Content-Type"].startswith("application/problem+json")
    assert "MAX_REQUEST_BYTES" in response.json()["detail"]
    assert queues.peek(queues.mail) == []
    assert large_bodies.names() == blobs_before
    assert standin.requests() == []
