"""Bodies of messages too large for one queue message, kept as blobs (claim-check).

The queue message then carries only the blob's name. A body's blob is named after its message
id, so every copy of the message (retries, a redelivered queue message) points at the same blob,
and writing it again overwrites it instead of adding another.

Where a body lives says whether its message can still be alive, so that retention can delete
leftovers by a prefix and an age alone, without reading a queue:

- `live/<id>.json`: written by the accept; its message is on the mail queue, retrying, or (after
  the host's own poison move) a poison queue copy that expires by itself. Deleted when the
  message is sent; a body left here (a delete that failed, a message lost) is deleted once it is
  older than the longest such a message can live (shared/retention.py, and the lifecycle rule in
  infra/app/storage.bicep as the backstop).
- `dead-letters/<id>.json`: moved here when the gateway dead-letters the message, whose poison
  copy never expires, or replays it; kept until the message is sent or its dead letter purged.
- `<id>.json` at the container's root: written before the prefixes existed (either kind), never
  deleted by age.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
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


# Bodies of messages that may still be alive; their age bounds retention (see above).
LIVE_PREFIX = "live/"
# Bodies of dead letters, kept until an operator replays or purges them.
KEPT_PREFIX = "dead-letters/"
# How long a server-side copy within the account may take before it counts as failed. Within
# one account the service usually completes it before it answers (copy status `success`).
COPY_WAIT_SECONDS = 10.0
_COPY_POLL_SECONDS = 0.2


def body_blob_name(message_id: str) -> str:
    """The name of the blob that holds a newly accepted message's body."""
    return f"{LIVE_PREFIX}{message_id}.json"


def kept_body_blob_name(message_id: str) -> str:
    """The name a dead letter's body is kept under until it is replayed and sent, or purged."""
    return f"{KEPT_PREFIX}{message_id}.json"


def own_body_blob_names(message_id: str) -> tuple[str, str, str]:
    """Every name a message's body may have: live, kept, and the root name of older bodies."""
    return body_blob_name(message_id), kept_body_blob_name(message_id), f"{message_id}.json"


@dataclass(frozen=True)
class StoredBlob:
    """A blob's name and when it was last written."""

    name: str
    last_modified: datetime


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

    def copy(
        self,
        source: str,
        target: str,
        *,
        wait_seconds: float = COPY_WAIT_SECONDS,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> bool:
        """Copy a blob to another name in this container, server-side; False if the source is
        missing. Raises StorageUnavailable if the copy fails or does not end in time.

        Copy Blob, not Copy Blob From URL: within one account the service authorizes the source
        with the caller's own credential (an identity, here) and usually completes the copy
        before it answers, where Copy Blob From URL needs the source public or signed
        (MicrosoftDocs/azure-docs, articles/storage/blobs/storage-blob-copy-async-python.md).
        """
        source_blob = self._container.get_blob_client(source)
        target_blob = self._container.get_blob_client(target)
        try:
            started = target_blob.start_copy_from_url(source_blob.url)
            status = started.get("copy_status")
            deadline = monotonic() + wait_seconds
            while status == "pending" and monotonic() < deadline:
                time.sleep(_COPY_POLL_SECONDS)
                status = target_blob.get_blob_properties().copy.status
            if status == "pending":
                # A copy finishing after we gave up would be a body nothing names.
                target_blob.abort_copy(str(started["copy_id"]))
        except ResourceNotFoundError:
            return False
        except AzureError as error:
            raise StorageUnavailable(f"blob {self._where(target)}: {summary(error)}") from error
        if status != "success":
            raise StorageUnavailable(f"blob {self._where(target)}: copy {status or 'failed'}")
        return True

    def list_older(
        self, prefix: str, before: datetime, *, max_listed: int
    ) -> tuple[list[StoredBlob], bool]:
        """The blobs under `prefix` last written before `before`, from at most `max_listed`
        listed, and whether the listing stopped at that bound with blobs left to list."""
        older: list[StoredBlob] = []
        listed = 0
        try:
            for blob in self._container.list_blobs(name_starts_with=prefix):
                if listed >= max_listed:
                    return older, True
                listed += 1
                if blob.last_modified < before:
                    older.append(StoredBlob(blob.name, blob.last_modified))
        except ResourceNotFoundError:
            pass  # no container yet: no large message was ever accepted
        except AzureError as error:
            raise StorageUnavailable(
                f"container {self.container_name}: {summary(error)}"
            ) from error
        return older, False

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
