"""Bodies of messages too large for one queue message, kept as blobs (claim-check).

The queue message then carries only the blob's name. A body's blob is named after its message
id, so every copy of the message (retries, replays, a redelivered queue message) points at the
same blob, and writing it again overwrites it instead of adding another.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from typing import Any

from azure.core.exceptions import AzureError, ResourceExistsError, ResourceNotFoundError
from azure.storage.blob import BlobServiceClient, ContainerClient, ContentSettings, LinearRetry

from shared.errors import StorageUnavailable
from shared.queue import PROMPT_RETRY, storage_transport, summary, token_credential
from shared.settings import Settings, StorageSettings

logger = logging.getLogger(__name__)

_JSON = ContentSettings(content_type="application/json")


# How long an accept or a delivery waits for a large message's turn before it gives up (503,
# or the message is put back for later).
LARGE_MESSAGE_WAIT_SECONDS = 10.0


class LargeMessageSlots:
    """At most `limit` large messages in this process's memory at once, accepted or delivered.

    A 30 MB message takes 100-150 MB while it is worked on (the body, the parsed message, the
    JSON sent on), so the 24 deliveries host.json lets run at once could need 3.6 GB of a
    2,048 MB instance, which Flex Consumption would kill, and the messages then come back
    after the hold. Small messages (sent inside their queue message) need no slot.
    """

    def __init__(self, limit: int, wait_seconds: float = LARGE_MESSAGE_WAIT_SECONDS) -> None:
        self.limit = limit
        self._slots = threading.BoundedSemaphore(limit)
        self._wait_seconds = wait_seconds

    @contextlib.contextmanager
    def slot(self) -> Iterator[bool]:
        """Hold a slot while the block runs; True if one came free in time, else False."""
        acquired = self._slots.acquire(timeout=self._wait_seconds)
        try:
            yield acquired
        finally:
            if acquired:
                self._slots.release()


def body_blob_name(message_id: str) -> str:
    """The name of the blob that holds a message's body."""
    return f"{message_id}.json"


class MessageBodyStore:
    """Reads, writes and deletes message bodies in one blob container."""

    def __init__(self, container: ContainerClient) -> None:
        self._container = container

    @classmethod
    def from_settings(cls, settings: Settings) -> MessageBodyStore:
        """Create the client once; it holds its own connection pool."""
        service = _service_client(settings.storage)
        return cls(service.get_container_client(settings.large_message_container_name))

    @property
    def container_name(self) -> str:
        """The container's name."""
        return self._container.container_name

    def ensure_exists(self) -> None:
        """Create the container if it is missing."""
        try:
            self._container.create_container()
        except ResourceExistsError:
            pass
        except AzureError as error:
            raise StorageUnavailable(
                f"cannot create container {self.container_name}: {summary(error)}"
            ) from error

    def check(self) -> None:
        """Raise StorageUnavailable unless the blob service answers."""
        try:
            self._container.get_container_properties()
        except ResourceNotFoundError:
            pass  # not created yet: the first message creates it
        except AzureError as error:
            raise StorageUnavailable(
                f"container {self.container_name}: {summary(error)}"
            ) from error

    def put(self, name: str, data: bytes) -> None:
        """Write a blob, replacing one of the same name."""
        try:
            self._container.upload_blob(name, data, overwrite=True, content_settings=_JSON)
        except AzureError as error:
            raise StorageUnavailable(f"blob {self._where(name)}: {summary(error)}") from error

    def get(self, name: str) -> bytes | None:
        """A blob's content, or None if there is no such blob."""
        try:
            return self._container.download_blob(name).readall()
        except ResourceNotFoundError:
            return None
        except AzureError as error:
            raise StorageUnavailable(f"blob {self._where(name)}: {summary(error)}") from error

    def delete(self, name: str) -> None:
        """Delete a blob; one that is already gone is not an error."""
        try:
            self._container.delete_blob(name)
        except ResourceNotFoundError:
            pass
        except AzureError as error:
            raise StorageUnavailable(f"blob {self._where(name)}: {summary(error)}") from error

    def _where(self, name: str) -> str:
        return f"{self.container_name}/{name}"


def _service_client(storage: StorageSettings) -> BlobServiceClient:
    options: dict[str, Any] = {
        "retry_policy": LinearRetry(**PROMPT_RETRY),
        "transport": storage_transport(),
    }
    if storage.connection_string:
        return BlobServiceClient.from_connection_string(storage.connection_string, **options)
    assert storage.blob_service_uri is not None
    return BlobServiceClient(
        storage.blob_service_uri, credential=token_credential(storage), **options
    )
