"""The real local stack for end-to-end tests: Azurite, the SendGrid stand-in and the local host."""

from __future__ import annotations

import base64
import contextlib
import json
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import sendgrid
from azure.core.exceptions import ResourceNotFoundError
from azure.storage.blob import BlobServiceClient
from azure.storage.queue import QueueClient, QueueServiceClient

from devstack.azurite import Azurite
from devstack.host_process import LocalHostProcess
from devstack.sendgrid_standin import SendGridStandIn
from shared.clients import MAX_RATE_PER_MINUTE, ClientStore
from shared.policy import FEATURES
from shared.settings import Settings
from tests.event_webhook_samples import SignedRequest, WebhookSigner

# Stands for the test client's own key in post_message().
OWN_KEY = "<the e2e client's key>"
CLIENT_NAME = "e2e"
CLIENT_SENDERS = "app@example.com,@apps.example.com"
ADMIN_KEY = "e2e-admin-key"
MAIL_QUEUE = "mail-e2e"
LARGE_MESSAGE_CONTAINER = "mail-large"
RETRY_BASE_DELAY_SECONDS = 1
MAX_DELIVERY_ATTEMPTS = 3
SENDGRID_TIMEOUT_SECONDS = 5
# SendGrid's Event Webhook key pair for the session: hosts get its public half in their settings.
WEBHOOK_SIGNER = WebhookSigner()

T = TypeVar("T")


def wait_for(probe: Callable[[], T | None], timeout: float = 15.0, interval: float = 0.1) -> T:
    """Poll until `probe` returns something truthy; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout}s")
        time.sleep(interval)


class RunningHost(LocalHostProcess):
    """The local host running the gateway, with the calls the tests make to it."""

    def __init__(
        self, settings: Mapping[str, str], log_dir: Path, library_log_level: str = "WARNING"
    ) -> None:
        # The client the tests send as, made in the host's storage before it starts: a
        # migrating app its operator allowed every account-wide control it uses.
        clients = ClientStore.from_settings(Settings.from_env(settings))
        clients.ensure_exists()
        self.client_name = f"{CLIENT_NAME}-{uuid.uuid4().hex[:12]}"
        _, self.client_key = clients.create(
            self.client_name,
            CLIENT_SENDERS,
            MAX_RATE_PER_MINUTE,
            ",".join(FEATURES),
        )
        super().__init__(settings, log_dir, library_log_level=library_log_level)

    def client_headers(self, key: str | None = OWN_KEY) -> dict[str, str]:
        """`Authorization: Bearer` with the test client's key, another key, or none."""
        key = self.client_key if key == OWN_KEY else key
        return {"Authorization": f"Bearer {key}"} if key else {}

    def admin(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Call an admin route with the admin key."""
        return self.http.request(method, path, headers={"x-functions-key": ADMIN_KEY}, **kwargs)

    def post_message(
        self,
        message: Mapping[str, Any],
        key: str | None = OWN_KEY,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """POST /api/v1/messages as the test client (or with another key, or none)."""
        all_headers = self.client_headers(key)
        all_headers.update(headers or {})
        return self.http.post("/api/v1/messages", json=message, headers=all_headers)

    def post_events(self, signed: SignedRequest) -> httpx.Response:
        """POST a (signed, or not) batch to SendGrid's Event Webhook route, as SendGrid would."""
        return self.http.post(
            "/api/v1/events/sendgrid", content=signed.body, headers=signed.headers
        )

    def status(self, message_id: str) -> dict[str, Any]:
        """GET /api/v1/messages/{id} as JSON."""
        response = self.http.get(f"/api/v1/messages/{message_id}", headers=self.client_headers())
        assert response.status_code == 200, response.text
        document: dict[str, Any] = response.json()
        return document


def sendgrid_library(host: RunningHost, key: str = OWN_KEY) -> sendgrid.SendGridAPIClient:
    """The official SendGrid Python library aimed at the gateway, as a migrating app sets it up:
    its host is the gateway's /api, its API key the client key."""
    key = host.client_key if key == OWN_KEY else key
    client = sendgrid.SendGridAPIClient(api_key=key, host=f"{host.base_url}/api")
    # python_http_client waits forever by default.
    client.client.timeout = 30
    return client


class Queues:
    """Direct access to the mail and poison queues, as an operator would have."""

    def __init__(self, connection_string: str, name: str) -> None:
        service = QueueServiceClient.from_connection_string(connection_string)
        self.mail = service.get_queue_client(name)
        self.poison = service.get_queue_client(f"{name}-poison")

    def peek(self, client: QueueClient) -> list[str]:
        """The raw text of up to 32 visible messages."""
        try:
            return [m.content for m in client.peek_messages(max_messages=32)]
        except ResourceNotFoundError:  # not created yet
            return []

    def poison_records(self) -> list[dict[str, Any]]:
        """The poison queue's messages, base64-decoded where they are, as JSON where they parse."""
        records = []
        for text in self.peek(self.poison):
            try:
                records.append(json.loads(base64.b64decode(text, validate=True)))
            except ValueError:
                records.append({"undecodable": text})
        return records

    def clear(self) -> None:
        """Empty both queues."""
        for client in (self.mail, self.poison):
            with contextlib.suppress(ResourceNotFoundError):  # not created yet
                client.clear_messages()


class LargeMessageBodies:
    """Direct access to the container of large message bodies, as an operator would have."""

    def __init__(self, connection_string: str, name: str = LARGE_MESSAGE_CONTAINER) -> None:
        service = BlobServiceClient.from_connection_string(connection_string)
        self.container = service.get_container_client(name)

    def names(self) -> list[str]:
        """The names of the blobs in the container (none while it does not exist)."""
        try:
            return sorted(blob.name for blob in self.container.list_blobs())
        except ResourceNotFoundError:  # not created yet
            return []

    def clear(self) -> None:
        """Delete every blob."""
        for name in self.names():
            with contextlib.suppress(ResourceNotFoundError):
                self.container.delete_blob(name)


def gateway_settings(connection_string: str, standin: SendGridStandIn) -> dict[str, str]:
    """App settings for a host aimed at the test Azurite and stand-in, with fast retries."""
    return {
        "FUNCTIONS_WORKER_RUNTIME": "python",
        "AzureWebJobsStorage": connection_string,
        "MAIL_QUEUE_NAME": MAIL_QUEUE,
        "ALLOWED_SENDERS": "app@example.com,@apps.example.com",
        "SENDGRID_API_BASE_URL": standin.base_url,
        "SENDGRID_API_KEY": standin.api_key,
        "SENDGRID_CONNECT_TIMEOUT_SECONDS": "1",
        # Long enough that a stand-in slowed by a loaded machine is never taken for a timeout:
        # at 2 s, a send that the stand-in answered late counted as an ambiguous failure and was
        # sent again, so a scripted answer went to the wrong attempt (the flaky dead-letter test).
        "SENDGRID_TIMEOUT_SECONDS": str(SENDGRID_TIMEOUT_SECONDS),
        "STATUS_TABLE_NAME": "mailstatuse2e",
        "LARGE_MESSAGE_CONTAINER_NAME": LARGE_MESSAGE_CONTAINER,
        "MAX_DELIVERY_ATTEMPTS": str(MAX_DELIVERY_ATTEMPTS),
        "RETRY_BASE_DELAY_SECONDS": str(RETRY_BASE_DELAY_SECONDS),
        "RETRY_MAX_DELAY_SECONDS": "10",
        "CLIENT_TABLE_NAME": "mailclientse2e",
        "LOCAL_ADMIN_KEY": ADMIN_KEY,
        "SENDGRID_WEBHOOK_PUBLIC_KEY": WEBHOOK_SIGNER.public_key,
        # Messages held by a killed host come back after this, not the host's 10 minutes.
        "LOCAL_QUEUE_HOLD_SECONDS": "4",
        # As infra/ deploys it; unset, the host would leave the retention timer out, in error.
        "RETENTION_SCHEDULE": "0 17 * * * *",
        # Hosts share the status table, where the breakers' rows live: tests that script
        # SendGrid failures one after another would open its breaker for every later test.
        # tests/e2e/test_breaker_brake.py turns it on for hosts with tables of their own.
        "PROVIDER_BREAKER_FAILURES": "0",
    }


@pytest.fixture(scope="session")
def azurite() -> Iterator[Azurite]:
    """Azurite in memory on free loopback ports."""
    with Azurite(in_memory=True) as running:
        yield running


@pytest.fixture(scope="session")
def standin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SendGridStandIn]:
    """The SendGrid stand-in on a free loopback port."""
    with SendGridStandIn(outbox=tmp_path_factory.mktemp("outbox")) as running:
        yield running


@pytest.fixture(scope="session")
def clients(azurite: Azurite, standin: SendGridStandIn) -> ClientStore:
    """The gateway's client table in the test Azurite, as an operator's tools reach it."""
    store = ClientStore.from_settings(
        Settings.from_env(gateway_settings(azurite.connection_string, standin))
    )
    store.ensure_exists()
    return store


@pytest.fixture(scope="session")
def host(
    azurite: Azurite, standin: SendGridStandIn, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningHost]:
    """The local host running the gateway against the test Azurite and stand-in."""
    running = RunningHost(
        gateway_settings(azurite.connection_string, standin), tmp_path_factory.mktemp("host")
    )
    yield running
    running.stop()


@pytest.fixture
def queues(azurite: Azurite) -> Queues:
    """The gateway's queues in the test Azurite."""
    return Queues(azurite.connection_string, MAIL_QUEUE)


@pytest.fixture
def large_bodies(azurite: Azurite) -> LargeMessageBodies:
    """The gateway's container of large message bodies in the test Azurite."""
    return LargeMessageBodies(azurite.connection_string)


@pytest.fixture
def stack(host: RunningHost, standin: SendGridStandIn, queues: Queues) -> RunningHost:
    """The running gateway, with the stand-in and the queues clean for this test."""
    standin.reset()
    queues.clear()
    return host
