"""The two mail routes on in-memory storage with the real client store, for hostile requests.

Requests go through the registered function handlers (key check, policy, rate, queue), as they
would on the host; clients are made as an operator makes them, with a rate and features.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, cast

import azure.functions as func
import pytest
from azure.data.tables import TableClient

import shared.gateway
from functions.messages import submit_message
from functions.sendgrid_compat import sendgrid_mail_send
from shared.clients import ClientStore
from shared.delivery_events import DeliveryEventStore
from shared.gateway import Gateway
from tests.fakes import (
    Clock,
    FakeActivityLog,
    FakeIdempotencyStore,
    FakeMailQueue,
    FakeMailSender,
    FakeMessageBodyStore,
    FakeStatusStore,
    FakeTableClient,
    Journal,
)
from tests.samples import NOW, SENDER, settings_with

ROUTES = {"v1": ("v1/messages", submit_message), "v3": ("v3/mail/send", sendgrid_mail_send)}


@dataclass
class ClientStack:
    """The process's gateway, replaced by one on fakes; the client table and its clock."""

    gateway: Gateway
    clients: ClientStore
    table: FakeTableClient
    clock: Clock
    queue: FakeMailQueue
    keys: FakeIdempotencyStore

    def client(self, name: str, *, rate: int = 600, features: str = "") -> str:
        """Make a client allowed the samples' sender; its key."""
        _, key = self.clients.create(name, SENDER, rate, features)
        return key

    def post(
        self, api: str, document: Any, key: str, headers: dict[str, str] | None = None
    ) -> func.HttpResponse:
        """POST the document (as JSON; bytes as they are) to the v1 or v3 mail route with the
        client's key."""
        route, handler = ROUTES[api]
        request = func.HttpRequest(
            method="POST",
            url=f"http://localhost:7071/api/{route}",
            headers={
                "Authorization": f"Bearer {key}",
                "Content-Type": "application/json",
                **(headers or {}),
            },
            params={},
            route_params={},
            body=document if isinstance(document, bytes) else json.dumps(document).encode(),
        )
        response = handler(request)
        assert isinstance(response, func.HttpResponse)
        return response


def install(monkeypatch: pytest.MonkeyPatch) -> ClientStack:
    """Replace the process's gateway with one on fakes and the real client store."""
    journal = Journal()
    clock = Clock(NOW.timestamp())
    table = FakeTableClient("mailclients")
    clients = ClientStore(cast(TableClient, table), clock=clock)
    queue = FakeMailQueue(journal=journal)
    keys = FakeIdempotencyStore()
    ids = itertools.count(1)
    gateway = Gateway(
        settings_with(),
        queue,
        FakeMessageBodyStore(journal=journal),
        FakeStatusStore(journal),
        FakeMailSender(journal=journal),
        clients,
        now=lambda: datetime.fromtimestamp(clock.now, timezone.utc),
        new_id=lambda _at, _client: f"msg-{next(ids):04d}",
        keys=keys,
        activity=FakeActivityLog(),
        events=DeliveryEventStore(cast(TableClient, FakeTableClient("mailstatus"))),
    )
    monkeypatch.setattr(shared.gateway, "_gateway", gateway)
    return ClientStack(gateway, clients, table, clock, queue, keys)


def refusal(response: func.HttpResponse) -> dict[str, Any]:
    """The refusal's body: problem+json on v1, SendGrid's `{"errors": [...]}` on v3."""
    document: dict[str, Any] = json.loads(response.get_body())
    return document


def fields(response: func.HttpResponse) -> list[str | None]:
    """The fields a refusal names: JSON Pointers on v1, SendGrid's dotted names on v3."""
    document = refusal(response)
    if "errors" in document and "status" not in document:
        return [entry["field"] for entry in document["errors"]]
    return [entry["pointer"] for entry in document.get("errors", [])]
