"""A gateway in memory that takes requests as both mail routes do, and delivers what it queued.

The threat-model tests send hostile bodies through `Submission` (the code behind
`POST /api/v1/messages` and `POST /api/v3/mail/send`), read the answer each route would give
(problem+json, or SendGrid's error body), and deliver what was queued through `Delivery` to a
recording sender: what an attacker's request can make the gateway do, without the network.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

import pytest

from functions.http_responses import refusal_response, sendgrid_refusal_response
from shared.delivery import Delivery, DeliveryOutcome
from shared.errors import RequestRejected
from shared.settings import Settings
from shared.submission import AcceptedMessage, Submission
from tests.fakes import (
    FakeActivityLog,
    FakeIdempotencyStore,
    FakeMailQueue,
    FakeMailSender,
    FakeMessageBodyStore,
    FakeStatusStore,
    JitterAt,
    Journal,
    Unmetered,
)
from tests.samples import CLIENT, NOW, settings_with

Route = Literal["v1", "v3"]
ROUTES: tuple[Route, ...] = ("v1", "v3")


def content_of(document: Any) -> bytes:
    """A request body: bytes as they are, anything else as JSON."""
    return document if isinstance(document, bytes) else json.dumps(document).encode()


@dataclass
class InMemoryGateway:
    """Submission and Delivery over in-memory stores, sharing one queue and one blob store."""

    settings: Settings = field(default_factory=settings_with)
    journal: Journal = field(default_factory=Journal)
    sender: FakeMailSender = field(default_factory=FakeMailSender)

    def __post_init__(self) -> None:
        self.queue = FakeMailQueue(journal=self.journal)
        self.bodies = FakeMessageBodyStore(journal=self.journal)
        self.statuses = FakeStatusStore(self.journal)
        self._ids = 0

    def _new_id(self, _at: datetime, _client: str) -> str:
        self._ids += 1
        return f"msg-{self._ids:04d}"

    def accept(self, route: Route, document: Any) -> AcceptedMessage:
        """Take a request as the route does; raises the RequestRejected it answers with."""
        submission = Submission(
            settings=self.settings,
            queue=self.queue,
            bodies=self.bodies,
            keys=FakeIdempotencyStore(),
            now=lambda: NOW,
            new_id=self._new_id,
            rate=Unmetered(),
        )
        accept = submission.message if route == "v1" else submission.sendgrid_mail
        return accept(content_of(document), "application/json", CLIENT)

    def refusal(self, route: Route, document: Any) -> RequestRejected:
        """The refusal of a request the route must refuse; nothing of it queued."""
        queued = len(self.queue.messages)
        with pytest.raises(RequestRejected) as caught:
            self.accept(route, document)
        assert len(self.queue.messages) == queued
        return caught.value

    def deliver_queued(self) -> list[DeliveryOutcome]:
        """Deliver every queued message once, as the queue trigger would, oldest first."""
        delivery = Delivery(
            sender=self.sender,
            queue=self.queue,
            bodies=self.bodies,
            statuses=self.statuses,
            activity=FakeActivityLog(),
            settings=self.settings,
            now=lambda: NOW + timedelta(seconds=5),
            rng=JitterAt(1.0),
        )
        queued, self.queue.messages = self.queue.messages, []
        return [delivery.deliver(message.text.encode()) for message in queued]


def answer(route: Route, rejection: RequestRejected) -> tuple[int, dict[str, Any]]:
    """The status and JSON body the route answers a refusal with."""
    respond = refusal_response if route == "v1" else sendgrid_refusal_response
    response = respond(rejection, "the message was not accepted")
    document: dict[str, Any] = json.loads(response.get_body())
    return response.status_code, document


def pointers_in(route: Route, rejection: RequestRejected) -> list[str | None]:
    """The fields the answer names: JSON Pointers (v1), SendGrid's dotted fields (v3)."""
    _, document = answer(route, rejection)
    if route == "v1":
        return [error["pointer"] for error in document.get("errors", [])]
    return [error["field"] for error in document["errors"]]


def field_name(route: Route, pointer: str) -> str | None:
    """How the route names the field at `pointer`: the pointer (v1), dotted (v3, SendGrid's)."""
    if route == "v1":
        return pointer
    steps = pointer.removeprefix("#").split("/")[1:]
    return ".".join(steps) or None


def with_value(document: dict[str, Any], pointer: str, value: Any) -> dict[str, Any]:
    """A copy of the document with `value` at `pointer` (whose parent must exist)."""
    copy: dict[str, Any] = json.loads(json.dumps(document))
    *steps, last = pointer.removeprefix("#/").split("/")
    parent: Any = copy
    for step in steps:
        parent = parent[int(step)] if isinstance(parent, list) else parent[step]
    if isinstance(parent, list):
        parent[int(last)] = value
    else:
        parent[last] = value
    return copy


def v1_message() -> dict[str, Any]:
    """A v1 message with every single-line text field an attacker can reach."""
    return {
        "from": {"email": "noreply@example.com", "name": "Billing"},
        "to": [{"email": "ann@example.net", "name": "Ann"}],
        "cc": [{"email": "carol@example.net", "name": "Carol"}],
        "bcc": [{"email": "audit@example.org", "name": "Audit"}],
        "reply_to": {"email": "support@example.org", "name": "Support"},
        "subject": "Your invoice",
        "text": "Attached.",
        "headers": {"X-Invoice": "42"},
        "attachments": [{"filename": "invoice.pdf", "content": "JVBE", "content_id": "inv42"}],
    }


def v3_mail() -> dict[str, Any]:
    """A v3 Mail Send body with every single-line text field an attacker can reach."""
    return {
        "personalizations": [
            {
                "to": [{"email": "ann@example.net", "name": "Ann"}],
                "cc": [{"email": "carol@example.net", "name": "Carol"}],
                "bcc": [{"email": "audit@example.org", "name": "Audit"}],
                "subject": "Your invoice, Ann",
                "headers": {"X-Invoice": "42"},
            }
        ],
        "from": {"email": "noreply@example.com", "name": "Billing"},
        "reply_to": {"email": "support@example.org", "name": "Support"},
        "subject": "Your invoice",
        "content": [{"type": "text/plain", "value": "Attached."}],
        "headers": {"X-Invoice": "42"},
        "attachments": [{"content": "JVBE", "filename": "invoice.pdf", "content_id": "inv42"}],
    }
