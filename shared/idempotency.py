"""Idempotency keys: the same key and body accepted once, the first writer winning atomically.

A key's record lives in the partition of the period it was claimed in:

    PartitionKey idem-<period start>-<sha256(key)>, RowKey "key"

where periods are IDEMPOTENCY_RETENTION_HOURS long and the period start is in seconds since
1970, 11 digits. A record is honoured for IDEMPOTENCY_RETENTION_HOURS after it was made, so it
is found in its own period or the next: a claim reads the previous period's partition (one more
read), then inserts into the current one. Every older period is one range of partition keys,
which the retention timer deletes (shared/status_retention.py). The start is kept rather than a
period number, so that keys still sort by time after the setting changed.

Records of the layout before, `idempotency-<hash>`, are neither read nor deleted
(docs/operations.md, Retention).

Two requests with one key, one just before a period's end and one just after, claim in different
partitions: the second finds the first unless both run within the same few milliseconds (the
first's insert not yet done when the second reads), when both are accepted.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
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
from shared.status import NO_ECHO, by_message

# Matched whole (fullmatch): a `$` would let a final newline through.
_KEY = re.compile(r"[\x20-\x7e]{1,255}")
KEY_PARTITION_PREFIX = "idem-"
_ROW = "key"
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
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
    # Where the record is: its period's partition (period_partition).
    partition: str = ""


@dataclass(frozen=True)
class KeyClaim:
    """The outcome of presenting a key: ours to accept with, or a replay of an earlier answer."""

    record: KeyRecord
    replay: bool


def digest(data: bytes | str) -> str:
    """A SHA-256 hex digest; keys and bodies are stored only as digests."""
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


def period_start_partition(at: datetime, period: timedelta, *, periods_back: int = 0) -> str:
    """`idem-<start>`: the prefix of every key's partition in the period holding `at`, or in the
    one `periods_back` before it."""
    length = max(1, round(period.total_seconds()))
    seconds = (at - _EPOCH) // timedelta(seconds=1)
    start = (seconds // length - periods_back) * length
    return f"{KEY_PARTITION_PREFIX}{max(start, 0):011d}"


def period_partition(key_hash: str, at: datetime, period: timedelta, periods_back: int = 0) -> str:
    """The partition of a key's record claimed at `at` (or `periods_back` periods before)."""
    return f"{period_start_partition(at, period, periods_back=periods_back)}-{key_hash}"


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
        key_hash = digest(key)
        here = period_partition(key_hash, now, self._retention)
        ours = KeyRecord(key_hash, digest(body), message_id, now, partition=here)
        # The previous period's record first: one made less than a period ago may be there.
        existing = self._read(period_partition(key_hash, now, self._retention, 1), key_hash)
        if existing is None or now - existing.created_at > self._retention:
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
        taken = KeyRecord(
            ours.key_hash, ours.body_hash, existing.message_id, now, partition=existing.partition
        )
        return KeyClaim(self._take_over(existing, taken), replay=False)

    def complete(self, record: KeyRecord) -> None:
        """Mark the key's message accepted, so later requests replay its answer."""
        entity = {**_to_entity(record), "completed": True}
        try:
            self._table.update_entity(
                entity, mode=UpdateMode.MERGE, **by_message(record.message_id)
            )
        except AzureError as error:
            raise StorageUnavailable(f"idempotency key: {type(error).__name__}") from error

    def release(self, record: KeyRecord) -> None:
        """Forget a claim whose message was not accepted, so the client can retry."""
        try:
            self._table.delete_entity(record.partition, _ROW, **by_message(record.message_id))
        except AzureError as error:
            raise StorageUnavailable(f"idempotency key: {type(error).__name__}") from error

    def _insert(self, record: KeyRecord) -> KeyRecord | None:
        try:
            self._table.create_entity(
                _to_entity(record), **NO_ECHO, **by_message(record.message_id)
            )
        except ResourceExistsError:
            existing = self._read(record.partition, record.key_hash)
            if existing is None:
                # Released between our insert and this read: the client may simply retry.
                raise IdempotencyKeyInUse("this Idempotency-Key was just released; retry") from None
            return existing
        except AzureError as error:
            raise StorageUnavailable(f"idempotency key: {type(error).__name__}") from error
        return None

    def _read(self, partition: str, key_hash: str) -> KeyRecord | None:
        try:
            entity = self._table.get_entity(partition, _ROW)
        except ResourceNotFoundError:
            return None
        except AzureError as error:
            raise StorageUnavailable(f"idempotency key: {type(error).__name__}") from error
        return KeyRecord(
            partition=partition,
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
                **by_message(record.message_id),
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
        "PartitionKey": record.partition,
        "RowKey": _ROW,
        "body_hash": record.body_hash,
        "message_id": record.message_id,
        "created_at": record.created_at,
        "completed": record.completed,
    }
