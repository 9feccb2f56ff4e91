"""Threat: a replay sends what would be refused if it were sent today.

Attacker: a client whose access was taken away (disabled, removed, or no longer allowed a
sender) after some of its mail was dead-lettered; or a gateway whose ALLOWED_SENDERS was
narrowed since. An operator replaying "all" dead letters would send that mail anyway: the
accept's checks ran once, when the mail came in, possibly weeks before.

What the gateway does: a replay is a new send, so it repeats the accept's checks on each dead
letter before it goes back on the mail queue: the client exists and is enabled, and every
`from` is allowed by ALLOWED_SENDERS and is one of the client's senders (for a body kept in a
blob, read from the blob). A dead letter that fails them stays in the poison queue, reported as
skipped with the reason, naming a domain at most, never an address.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest

from shared.clients import ClientStore
from shared.dead_letters import DeadLetters
from shared.models import DeadLetter, QueueEnvelope
from tests.fakes import FakeMailQueue, FakeMessageBodyStore, FakeStatusStore, client_store
from tests.samples import NOW, envelope, sendgrid_envelope

LATER = NOW + timedelta(hours=2)
ALLOWED = ("app@example.com", "@example.org")


def mail(id: str, client: str = "app", sender: str = "app@example.com") -> QueueEnvelope:
    """A v1 message of `client` from `sender`, as queued."""
    fields: dict[str, Any] = {"from": sender}
    return envelope(id=id, **fields).model_copy(update={"client": client})


def dead(queued: QueueEnvelope) -> str:
    """The poison queue's text for a message SendGrid refused."""
    record = DeadLetter(reason="SendGrid refused it", status_code=400, attempts=1, at=NOW)
    return queued.model_copy(update={"dead_letter": record}).to_json()


@pytest.fixture
def clients() -> ClientStore:
    store = client_store()
    store.create("app", "app@example.com,@example.org")
    return store


def replay_all(
    queue: FakeMailQueue,
    clients: ClientStore,
    bodies: FakeMessageBodyStore | None = None,
    allowed: tuple[str, ...] = ALLOWED,
) -> dict[str, object]:
    report = DeadLetters(
        queue.poison,
        queue,
        bodies or FakeMessageBodyStore(),
        FakeStatusStore(),
        lambda: LATER,
        clients=clients,
        allowed_senders=allowed,
    ).replay(None)
    return report.to_document()


def test_should_replay_a_dead_letter_that_passes_every_check_today(
    fake_queue: FakeMailQueue, clients: ClientStore
) -> None:
    fake_queue.poison_client.send_message(dead(mail("msg-ok")))

    report = replay_all(fake_queue, clients)

    assert report["done"] == ["msg-ok"]
    assert [e.id for e in fake_queue.envelopes] == ["msg-ok"]


def test_should_not_replay_the_mail_of_a_client_disabled_since(
    fake_queue: FakeMailQueue, clients: ClientStore
) -> None:
    fake_queue.poison_client.send_message(dead(mail("msg-off")))
    clients.set_enabled("app", False)

    report = replay_all(fake_queue, clients)

    assert report["skipped"] == {
        "msg-off": "its client 'app' is disabled; enable it first, or purge"
    }
    assert fake_queue.messages == []
    assert len(fake_queue.poison_texts) == 1


def test_should_not_replay_the_mail_of_a_client_that_no_longer_exists(
    fake_queue: FakeMailQueue, clients: ClientStore
) -> None:
    fake_queue.poison_client.send_message(dead(mail("msg-gone", client="ghost")))

    report = replay_all(fake_queue, clients)

    assert report["skipped"] == {"msg-gone": "its client 'ghost' no longer exists; purge it"}
    assert fake_queue.messages == []


@pytest.mark.parametrize(
    ("allowed", "reason"),
    [
        (("@example.org",), "no longer allowed by ALLOWED_SENDERS"),
        ((*ALLOWED, "@partner.example"), "no longer among the senders of client 'app'"),
    ],
    ids=["ALLOWED_SENDERS narrowed", "client's senders narrowed"],
)
def test_should_not_replay_a_sender_no_longer_allowed(
    allowed: tuple[str, ...], reason: str, fake_queue: FakeMailQueue
) -> None:
    store = client_store()
    store.create("app", "@example.org,@partner.example")
    fake_queue.poison_client.send_message(dead(mail("msg-from")))

    report = replay_all(fake_queue, store, allowed=allowed)

    [why] = report["skipped"].values()  # type: ignore[attr-defined]
    assert reason in why
    assert "domain example.com" in why
    assert "app@example.com" not in json.dumps(report)
    assert fake_queue.messages == []


def test_should_read_the_sender_of_a_body_kept_in_a_blob(
    fake_queue: FakeMailQueue, clients: ClientStore
) -> None:
    bodies = FakeMessageBodyStore()
    full = sendgrid_envelope(id="msg-big").model_copy(update={"client": "app"})
    queued, stored = full.claim_checked("msg-big.json")
    bodies.put("msg-big.json", stored.to_json())
    fake_queue.poison_client.send_message(dead(queued))

    report = replay_all(fake_queue, clients, bodies, allowed=("@nowhere.example",))

    assert "no longer allowed by ALLOWED_SENDERS" in str(report["skipped"])
    assert fake_queue.messages == []
