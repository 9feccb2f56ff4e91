"""Fixtures for calling the registered functions: the process-wide gateway, replaced."""

from __future__ import annotations

from typing import cast

import pytest
from azure.data.tables import TableClient

import shared.clients
import shared.gateway
from shared.clients import ClientStore
from shared.delivery_events import DeliveryEventStore
from shared.gateway import Gateway
from shared.message_ids import new_message_id
from shared.settings import Settings
from tests.event_webhook_samples import WebhookSigner
from tests.fakes import (
    Clock,
    FakeActivityLog,
    FakeIdempotencyStore,
    FakeMailQueue,
    FakeMailSender,
    FakeMessageBodyStore,
    FakeStatusStore,
    FakeTableClient,
    JitterAt,
    client_store,
)
from tests.samples import ALL_FEATURES, BASE_ENV, CLIENT, NOW

# The id the gateway gives the message client "app" sends at NOW (made once per test run).
MESSAGE_ID = new_message_id(NOW, "app")
# The keys of the two clients every function test has (made deterministic for readability).
APP_KEY = "mg_app_" + "a" * 43
OTHER_KEY = "mg_other_" + "o" * 43
APP_AUTH = {"Authorization": f"Bearer {APP_KEY}"}
# The key pair SendGrid would sign the Event Webhook with; the gateway has its public half.
WEBHOOK_SIGNER = WebhookSigner()


@pytest.fixture
def settings() -> Settings:
    """Valid settings with every optional setting at its default, and the Event Webhook's key."""
    return Settings.from_env({**BASE_ENV, "SENDGRID_WEBHOOK_PUBLIC_KEY": WEBHOOK_SIGNER.public_key})


@pytest.fixture
def event_table() -> FakeTableClient:
    """The status table's delivery rows and event rows, in memory."""
    return FakeTableClient("mailstatus")


@pytest.fixture
def clients(monkeypatch: pytest.MonkeyPatch) -> ClientStore:
    """The real client store on an in-memory table, with clients `app` and `other`."""
    store = client_store(clock=Clock(NOW.timestamp()))
    for name, key in (("app", APP_KEY), ("other", OTHER_KEY)):
        with monkeypatch.context() as patch:
            patch.setattr(shared.clients, "new_key", lambda _name, key=key: key)
            # `app` may use every field the samples use; `other` has no feature.
            features = ALL_FEATURES if name == "app" else ""
            store.create(name, ",".join(CLIENT.senders), features=features)
    return store


@pytest.fixture
def gateway(
    monkeypatch: pytest.MonkeyPatch,
    settings: Settings,
    fake_queue: FakeMailQueue,
    fake_bodies: FakeMessageBodyStore,
    fake_statuses: FakeStatusStore,
    fake_keys: FakeIdempotencyStore,
    fake_sender: FakeMailSender,
    clients: ClientStore,
    fake_activity: FakeActivityLog,
    event_table: FakeTableClient,
) -> Gateway:
    """The gateway every function gets from get_gateway(), on in-memory storage and provider.

    Retry delays sit at the top of their jitter window, so they read as the plain schedule.
    """
    replacement = Gateway(
        settings,
        fake_queue,
        fake_bodies,
        fake_statuses,
        fake_sender,
        clients,
        now=lambda: NOW,
        new_id=lambda _at, _client: MESSAGE_ID,
        rng=JitterAt(1.0),
        keys=fake_keys,
        activity=fake_activity,
        events=DeliveryEventStore(cast(TableClient, event_table)),
    )
    monkeypatch.setattr(shared.gateway, "_gateway", replacement)
    return replacement


# The settings of a first `azd up` whose Key Vault secret is missing (or not yet readable),
# and with ALLOWED_SENDERS left out: storage is right, the rest is not.
UNRESOLVED_KEY = "@Microsoft.KeyVault(SecretUri=https://x.vault.azure.net/secrets/y/)"
MISCONFIGURED_ENV = {
    "AzureWebJobsStorage": BASE_ENV["AzureWebJobsStorage"],
    "SENDGRID_API_KEY": UNRESOLVED_KEY,
}


@pytest.fixture
def fallback_queue(monkeypatch: pytest.MonkeyPatch) -> FakeMailQueue:
    """The mail queue the functions reach from the storage settings alone, while others are
    wrong (in memory)."""
    queue = FakeMailQueue()
    monkeypatch.setattr(shared.gateway, "_mail_queue_for", lambda storage, name: queue)
    return queue


@pytest.fixture
def misconfigured(monkeypatch: pytest.MonkeyPatch, fallback_queue: FakeMailQueue) -> None:
    """The app settings of MISCONFIGURED_ENV: get_gateway() raises ConfigurationError in every
    function, as it would in Azure."""
    for name in (*BASE_ENV, "ALLOWED_SENDERS", "MAIL_QUEUE_NAME"):
        monkeypatch.delenv(name, raising=False)
    for name, value in MISCONFIGURED_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(shared.gateway, "_gateway", None)
    monkeypatch.setattr(shared.gateway, "_not_configured_logged", {})


@pytest.fixture
def storage_misconfigured(monkeypatch: pytest.MonkeyPatch) -> None:
    """No storage setting at all: not even the mail queue can be reached."""
    for name in (*BASE_ENV, "ALLOWED_SENDERS", "MAIL_QUEUE_NAME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SENDGRID_API_KEY", "SG.key")
    monkeypatch.setattr(shared.gateway, "_gateway", None)
    monkeypatch.setattr(shared.gateway, "_not_configured_logged", {})
