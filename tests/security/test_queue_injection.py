"""Threat: a message put on the mail queue without going through the accept.

Attacker: whoever holds the Functions host's master key (it can invoke any function through
`/admin/functions/<name>`, the queue trigger included) or write access to the storage account.
Such a message was never checked by the accept. Delivery therefore checks again what must hold
whatever the queue says: the sender is allowed by ALLOWED_SENDERS (every `from`, v3
personalizations included), and a body kept in a blob is the message's own (named after its
id), so that a forged envelope can neither send as anyone nor make the gateway read and send
another message's body. Both are dead-lettered, unsent, with a reason that names a domain at
most, never an address.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from shared.delivery import Delivery
from shared.models import QueueEnvelope
from shared.settings import Settings
from tests.fakes import (
    FakeActivityLog,
    FakeMailQueue,
    FakeMailSender,
    FakeMessageBodyStore,
    FakeStatusStore,
)
from tests.samples import NOW, envelope, sendgrid_mail, settings_with


@pytest.fixture
def settings() -> Settings:
    return settings_with(ALLOWED_SENDERS="app@example.com,@example.org")


def deliver(
    queued: QueueEnvelope | bytes,
    settings: Settings,
    queue: FakeMailQueue,
    bodies: FakeMessageBodyStore | None = None,
) -> tuple[FakeMailSender, dict[str, object]]:
    """Deliver one queue message; the sender and the poison record."""
    sender = FakeMailSender()
    Delivery(
        sender=sender,
        queue=queue,
        bodies=bodies or FakeMessageBodyStore(),
        statuses=FakeStatusStore(),
        activity=FakeActivityLog(),
        settings=settings,
        now=lambda: NOW,
    ).deliver(queued.to_json().encode() if isinstance(queued, QueueEnvelope) else queued)
    [text] = queue.poison_texts
    record: dict[str, object] = json.loads(text)
    return sender, record


@pytest.mark.parametrize(
    "sender_field",
    [
        {"from": "ceo@bank.example"},
        {"from": "Bank <ceo@bank.example>"},
    ],
    ids=["address", "named address"],
)
def test_should_not_send_a_v1_message_whose_sender_is_not_allowed(
    sender_field: dict[str, Any], settings: Settings, fake_queue: FakeMailQueue
) -> None:
    forged = envelope(id="msg-forged", **sender_field)

    sender, record = deliver(forged, settings, fake_queue)

    assert sender.payloads == []
    reason = str(record["dead_letter"]["reason"])  # type: ignore[index]
    assert reason == "its sender is not allowed by ALLOWED_SENDERS (domain bank.example)"
    assert "ceo@" not in json.dumps(record["dead_letter"])


def test_should_not_send_a_v3_body_with_one_personalization_from_outside_allowed_senders(
    settings: Settings, fake_queue: FakeMailQueue
) -> None:
    body = sendgrid_mail(**{"from": {"email": "app@example.com"}})
    body["personalizations"][0]["from"] = {"email": "spy@evil.example"}
    forged = QueueEnvelope(id="msg-v3-forged", accepted_at=NOW, sendgrid=body)

    sender, record = deliver(forged, settings, fake_queue)

    assert sender.payloads == []
    assert "domain evil.example" in str(record["dead_letter"])


def test_should_not_send_a_v3_body_without_a_sender(
    settings: Settings, fake_queue: FakeMailQueue
) -> None:
    body = sendgrid_mail()
    del body["from"]
    forged = QueueEnvelope(id="msg-v3-nofrom", accepted_at=NOW, sendgrid=body)

    sender, _ = deliver(forged, settings, fake_queue)

    assert sender.payloads == []


@pytest.mark.parametrize(
    "name", ["live/msg-victim.json", "dead-letters/msg-victim.json", "msg-victim.json"]
)
def test_should_not_read_or_send_another_messages_body(
    name: str, settings: Settings, fake_queue: FakeMailQueue
) -> None:
    bodies = FakeMessageBodyStore()
    victim = envelope(id="msg-victim", subject="Payroll for March")
    _, stored = victim.claim_checked(name)
    bodies.put(name, stored.to_json())
    bodies.journal.clear()
    forged = QueueEnvelope(id="msg-victim", accepted_at=NOW, blob=name)
    other = forged.model_copy(update={"id": "msg-thief"})

    sender, record = deliver(other, settings, fake_queue, bodies)

    assert sender.payloads == []
    # Neither read, nor copied, nor deleted.
    assert bodies.journal == []
    assert name in bodies.blobs
    assert str(record["dead_letter"]["reason"]).startswith(  # type: ignore[index]
        f"it names blob '{name}', not its own (live/msg-thief.json)"
    )
