"""Fixtures for tests against a real Azurite: one emulator per session, fresh names per test."""

from __future__ import annotations

import contextlib
import signal
import uuid
from collections.abc import Iterator
from datetime import timedelta
from types import FrameType

import pytest
from azure.data.tables import TableClient
from azure.storage.queue import QueueClient, TextBase64DecodePolicy, TextBase64EncodePolicy

from devstack.azurite import Azurite
from shared.blobs import MessageBodyStore
from shared.clients import ClientStore
from shared.idempotency import IdempotencyStore
from shared.queue import MailQueue
from shared.settings import Settings
from shared.status import StatusStore
from tests.samples import BASE_ENV


@pytest.fixture(scope="session")
def azurite() -> Iterator[Azurite]:
    """Azurite in memory on free loopback ports, shared by every integration test."""
    with Azurite(in_memory=True) as running:
        yield running


@pytest.fixture
def storage_settings(azurite: Azurite) -> Settings:
    """Settings aimed at Azurite, with queues, a status table and a container no other test uses."""
    suffix = uuid.uuid4().hex[:16]
    return Settings.from_env(
        {
            **BASE_ENV,
            "AzureWebJobsStorage": azurite.connection_string,
            "MAIL_QUEUE_NAME": f"mail-{suffix}",
            "STATUS_TABLE_NAME": f"status{suffix}",
            "CLIENT_TABLE_NAME": f"clients{suffix}",
            "LARGE_MESSAGE_CONTAINER_NAME": f"large-{suffix}",
        }
    )


@pytest.fixture
def mail_queue(storage_settings: Settings) -> MailQueue:
    """The gateway's queues in Azurite, created."""
    queue = MailQueue.from_settings(storage_settings)
    queue.ensure_exists()
    return queue


@pytest.fixture
def message_bodies(storage_settings: Settings) -> MessageBodyStore:
    """The gateway's container for large message bodies in Azurite, created."""
    store = MessageBodyStore.from_settings(storage_settings)
    store.ensure_exists()
    return store


@pytest.fixture
def statuses(storage_settings: Settings) -> StatusStore:
    """The gateway's status table in Azurite, created."""
    store = StatusStore.from_settings(storage_settings)
    store.ensure_exists()
    return store


@pytest.fixture
def clients(storage_settings: Settings) -> ClientStore:
    """The client table in Azurite, created."""
    store = ClientStore.from_settings(storage_settings)
    store.ensure_exists()
    return store


@pytest.fixture
def status_table(statuses: StatusStore) -> TableClient:
    """The status table itself, for reading what the stores wrote."""
    return statuses.table


@pytest.fixture
def keys(statuses: StatusStore, storage_settings: Settings) -> IdempotencyStore:
    """Idempotency-Key records in the status table, kept for the default 24 hours."""
    return IdempotencyStore(
        statuses.table, timedelta(hours=storage_settings.idempotency_retention_hours)
    )


def plain_queue_client(azurite: Azurite, name: str) -> QueueClient:
    """A queue client without encode or decode policies: the bytes as they are on the wire."""
    return QueueClient.from_connection_string(azurite.connection_string, name)


def base64_queue_client(azurite: Azurite, name: str) -> QueueClient:
    """A queue client that encodes and decodes base64, as the Functions host does."""
    return QueueClient.from_connection_string(
        azurite.connection_string,
        name,
        message_encode_policy=TextBase64EncodePolicy(),
        message_decode_policy=TextBase64DecodePolicy(),
    )


class TimeLimitExceeded(Exception):
    """A call under time_limit() did not return in time."""


@contextlib.contextmanager
def time_limit(seconds: int) -> Iterator[None]:
    """Interrupt the block after `seconds` (main thread only): a hang fails instead of blocking."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise TimeLimitExceeded(f"did not finish within {seconds}s")

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
