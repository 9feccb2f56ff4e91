"""Idempotency keys: the same key and body accepted once, the first writer winning atomically."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import (
    AzureError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
)
from azure.data.tables import TableClient, UpdateMode

from shared.errors import (
    IdempotencyKeyInUse,
    IdempotencyKeyReused,
    InvalidMessage,
    StorageUnavailable,
)
from shared.status import NO_ECHO

# Matched whole (fullmatch): a `$` would let a final newline through.
_KEY = re.compile(r"[\x20-\x7e]{1,255}")
_PARTITION_PREFIX = "idempotency-"
_ROW = "key"
# A claim still pending after this long was abandoned by a crashed worker: take it over.
PENDING_TIMEOUT = timedelta(seconds=60)


@dataclass(frozen=True)
class KeyRecord:
    """What the gateway remembers of one Idempotency-Key."""

    key_hash: str
    body_hash: str
    message_id: str
    created_at: datetime
    completed: bool = False
    etag: str | None = None


@dataclass(frozen=True)
class KeyClaim:
    """The outcome of presenting a key: ours to accept with, or a replay of an earlier answer."""

    record: KeyRecord
    replay: bool


def digest(data: bytes | str) -> str:
    """A SHA-256 hex digest; keys and bodies are stored only as digests."""
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


def check_key(key: str) -> str:
    """Refuse a key that is not 1-255 printable ASCII characters."""
    if not _KEY.fullmatch(key):
        raise InvalidMessage(
            "the Idempotency-Key header must be 1 to 255 printable ASCII characters"
        )
    return key


class IdempotencyStore:
    """Key records in the status table, under their own partitions."""

    def __init__(self, table: TableClient, retention: timedelta) -> None:
        self._table = table
        self._retention = retention

    def claim(self, key: str, body: bytes, message_id: str, now: datetime) -> KeyClaim:
        """Claim a key for a new message, or learn the earlier message it stands for.

        Raises IdempotencyKeyReused (another body), IdempotencyKeyInUse (still being accepted).
        """
        ours = KeyRecord(digest(key), digest(body), message_id, now)
        existing = self._insert(ours)
        if existing is None:
            return KeyClaim(ours, replay=False)
        if now - existing.created_at > self._retention:
            return KeyClaim(self._take_over(existing, ours), replay=False)
        if existing.body_hash != ours.body_hash:
            raise IdempotencyKeyReused(
                "this Idempotency-Key was used with a different body; use a new key"
            )
        if existing.completed:
            return KeyClaim(existing, replay=True)
        if now - existing.created_at < PENDING_TIMEOUT:
            raise IdempotencyKeyInUse(
                "a request with this Idempotency-Key is still being accepted; retry shortly"
            )
        # Abandoned mid-accept: finish it under the same id, so a copy already queued is the
        # same message and the status record stops a second send.
        taken = KeyRecord(ours.key_hash, ours.body_hash, existing.message_id, now)
        return KeyClaim(self._take_over(existing, taken), replay=False)

    def complete(self, record: KeyRecord) -> None:
        """Mark the key's message accepted, so later requests replay its answer."""
        entity = {**_to_entity(record), "completed": True}
        try:
            self._table.update_entity(entity, mode=UpdateMode.MERGE)
        except AzureError as error:
            raise StorageUnavailable(f"idempotency key: {type(error).__name__}") from error

    def release(self, record: KeyRecord) -> None:
        """Forget a claim whose message was not accepted, so the client can retry."""
        try:
            self._table.delete_entity(_PARTITION_PREFIX + record.key_hash, _ROW)
        except AzureError as error:
            raise StorageUnavailable(f"idempotency key: {type(error).__name__}") from error

    def _insert(self, record: KeyRecord) -> KeyRecord | None:
        try:
            self._table.create_entity(_to_entity(record), **NO_ECHO)
        except ResourceExistsError:
            return self._read(record.key_hash)
        except AzureError as error:
            raise StorageUnavailable(f"idempotency key: {type(error).__name__}") from error
        return None

    def _read(self, key_hash: str) -> KeyRecord:
        try:
            entity = self._table.get_entity(_PARTITION_PREFIX + key_hash, _ROW)
        except ResourceNotFoundError as error:
            # Released between our insert and this read: the client may simply retry.
            raise IdempotencyKeyInUse("this Idempotency-Key was just released; retry") from error
        except AzureError as error:
            raise StorageUnavailable(f"idempotency key: {type(error).__name__}") from error
        return KeyRecord(
            key_hash=key_hash,
            body_hash=entity["body_hash"],
            message_id=entity["message_id"],
            created_at=entity["created_at"],
            completed=bool(entity.get("completed", False)),
            etag=entity.metadata.get("etag"),
        )

    def _take_over(self, existing: KeyRecord, record: KeyRecord) -> KeyRecord:
        try:
            self._table.update_entity(
                _to_entity(record),
                mode=UpdateMode.REPLACE,
                etag=existing.etag,
                match_condition=MatchConditions.IfNotModified,
            )
        except ResourceModifiedError as error:
            raise IdempotencyKeyInUse(
                "a request with this Idempotency-Key is still being accepted; retry shortly"
            ) from error
        except AzureError as error:
            raise StorageUnavailable(f"idempotency key: {type(error).__name__}") from error
        return record


def _to_entity(record: KeyRecord) -> dict[str, Any]:
    return {
        "PartitionKey": _PARTITION_PREFIX + record.key_hash,
        "RowKey": _ROW,
        "body_hash": record.body_hash,
        "message_id": record.message_id,
        "created_at": record.created_at,
        "completed": record.completed,
    }
