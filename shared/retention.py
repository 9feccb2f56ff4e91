"""Retention: the console's activity rows expire after ACTIVITY_RETENTION_DAYS (status records
and idempotency keys: shared/status_retention.py).

Table storage has no TTL and no index on time, so expiry must not scan the table. Activity rows
need none: they live in per-minute partitions, `activity-<9999999999 - minutes since 1970>`
(shared/activity.py), so an older minute sorts later, and every row older than a cutoff is one
range of partition keys, from just after the cutoff's minute to the oldest possible minute:

    PartitionKey gt 'activity-<cutoff's minute>' and PartitionKey le 'activity-9999999999'

The service reads only that range, so a run costs in proportion to the rows it deletes, not to
the table's size. Nothing else in the status table falls in it. Both bounds start with
`activity-`, so any key between them starts with `activity-` too; the table's other
partitions cannot:

- status records, and the delivery events beside them (shared/delivery_events.py), are in
  partitions named by message id: a lower-case UUID (shared/status.py `known_message_id`, made
  by shared/message_ids.py `new_message_id`, a UUIDv7; before, a uuid4). Events are written only
  under an id that has a status record. A UUID's first eight characters are hex digits: it may
  start `ac`, but its third character is never `t`. So no message id starts with `activity-`;
- idempotency keys are in partitions `idem-<period>-<hash>`, and before that layout
  `idempotency-<hash>` (shared/idempotency.py): `i` > `a`;
- the health check reads a partition `health`: `h` > `a`; the status expiry keeps its watermark
  in a partition `retention`: `r` > `a`.

Each run deletes at most `max_rows` rows, so that it ends well inside the host's
functionTimeout (host.json); the next run takes the rest. Rows are deleted in entity group
transactions of up to 100 rows of one partition.

Claim-check bodies left under `live/` in the large-message container (shared/blobs.py) are
deleted once they were last written longer ago than any message could still need them
(Settings.large_message_retention). Only that prefix is listed: it holds the bodies of messages
in flight, so a run costs in proportion to the large messages in flight, not to the dead letters
kept under `dead-letters/` nor the older bodies at the container's root, which are never listed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import (
    AzureError,
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.data.tables import TableClient

from shared.activity import MAX_TRANSACTION_OPERATIONS, PARTITION_PREFIX, partition_of
from shared.blobs import LIVE_PREFIX, MessageBodyStore
from shared.errors import StorageUnavailable

logger = logging.getLogger(__name__)

# Rows one run deletes at most. In Azure a transaction of 100 deletes takes some tens of
# milliseconds, so this is a few minutes' work at most, inside the 10-minute functionTimeout.
MAX_ROWS_PER_RUN = 200_000
# The oldest minute there can be (1970-01-01T00:00Z): the far end of every expiry range.
_OLDEST_PARTITION = f"{PARTITION_PREFIX}9999999999"
_KEYS = ["PartitionKey", "RowKey"]
_PAGE_SIZE = 1000
# Live bodies one run lists, and deletes, at most: one delete call each, some milliseconds, so a
# few minutes at most. Listing goes 5,000 names a call.
MAX_BODIES_PER_RUN = 20_000


@dataclass(frozen=True)
class BodyExpiryResult:
    """What one run did to leftover live bodies: how many it deleted, and whether it stopped at
    its bound with bodies left to list."""

    deleted: int
    more_left: bool
    retention: timedelta

    @property
    def retention_hours(self) -> float:
        """The retention the run applied, in hours."""
        return self.retention / timedelta(hours=1)


@dataclass(frozen=True)
class PartitionExpiry:
    """What one run did to status records or idempotency keys (shared/status_retention.py):
    partitions and rows deleted, rows skipped (not its to delete), rows whose delete failed,
    storage calls, and whether it stopped at its bound with more left."""

    partitions: int = 0
    deleted: int = 0
    skipped: int = 0
    failed: int = 0
    calls: int = 0
    more_left: bool = False


@dataclass(frozen=True)
class ExpiryResult:
    """What one run did: rows deleted, storage calls made, rows whose delete failed, and
    whether it stopped at its bound with rows left for the next run."""

    deleted: int
    calls: int
    failed: int
    more_left: bool
    retention: timedelta
    # Status records with their delivery events, and idempotency keys, when the run did them.
    statuses: PartitionExpiry | None = None
    status_retention: timedelta | None = None
    keys: PartitionExpiry | None = None
    # The leftover claim-check bodies, when the run got to them.
    bodies: BodyExpiryResult | None = None

    @property
    def retention_days(self) -> float:
        """The retention the run applied, in days."""
        return self.retention / timedelta(days=1)

    def log_lines(self) -> list[tuple[str, dict[str, int]]]:
        """The run's INFO lines for the timer to log, each with its counts: the table's rows of
        every kind in one, the leftover bodies (if the run got to them) in another."""
        parts: list[ExpiryResult | PartitionExpiry] = [self]
        kinds = ""
        if self.statuses is not None and self.status_retention is not None:
            statuses = self.statuses
            parts.append(statuses)
            kinds += (
                f"; {statuses.partitions} message(s) older than "
                f"{self.status_retention / timedelta(days=1):g} day(s) ({statuses.deleted} "
                f"row(s)) in {statuses.calls} call(s)"
            )
            if statuses.skipped:
                kinds += f", {statuses.skipped} row(s) of older ids skipped"
        if self.keys is not None:
            parts.append(self.keys)
            kinds += f"; {self.keys.deleted} idempotency key(s) in {self.keys.calls} call(s)"
        failed = sum(part.failed for part in parts)
        rows = (
            f"Retention: deleted {self.deleted} activity row(s) older than "
            f"{self.retention_days:g} day(s) in {self.calls} call(s){kinds}"
            + (f"; {failed} could not be deleted" if failed else "")
            + ("; more left for the next run" if any(part.more_left for part in parts) else "")
        )
        lines = [
            (
                rows,
                {
                    "deleted": sum(part.deleted for part in parts),
                    "calls": sum(part.calls for part in parts),
                    "failed": failed,
                },
            )
        ]
        if self.bodies is not None:
            lines.append(
                (
                    f"Retention: deleted {self.bodies.deleted} leftover message body blob(s) "
                    f"older than {self.bodies.retention_hours:g} hour(s)"
                    + ("; more left for the next run" if self.bodies.more_left else ""),
                    {"deleted": self.bodies.deleted},
                )
            )
        return lines


def expiry_range(cutoff: datetime) -> tuple[str, str]:
    """The partition keys (exclusive, inclusive) holding every activity row of a minute wholly
    before `cutoff`'s minute."""
    return partition_of(cutoff), _OLDEST_PARTITION


def expire_activity(
    table: TableClient, now: datetime, retention: timedelta, *, max_rows: int
) -> ExpiryResult:
    """Delete the activity rows of minutes older than `now - retention`, at most `max_rows`.

    A transaction that fails is logged and counted (its rows stay for the next run); storage
    that cannot be reached raises StorageUnavailable.
    """
    if max_rows < 1:
        raise ValueError(f"max_rows must be at least 1, not {max_rows!r}")
    after, oldest = expiry_range(now - retention)
    calls = deleted = failed = 0
    more_left = False
    batch: list[dict[str, Any]] = []

    def submit() -> None:
        nonlocal calls, deleted, failed
        if not batch:
            return
        calls += 1
        if delete_rows(table, batch, "activity"):
            deleted += len(batch)
        else:
            failed += len(batch)
        batch.clear()

    try:
        pages: Iterable[Iterable[Any]] = table.query_entities(
            "PartitionKey gt @after and PartitionKey le @oldest",
            parameters={"after": after, "oldest": oldest},
            select=_KEYS,
            results_per_page=_PAGE_SIZE,
        ).by_page()
        taken = 0
        for page in pages:
            calls += 1
            for entity in page:
                if taken >= max_rows:
                    more_left = True
                    break
                keys = {"PartitionKey": entity["PartitionKey"], "RowKey": entity["RowKey"]}
                # A transaction holds rows of one partition only; rows come sorted by key.
                if batch and (
                    batch[0]["PartitionKey"] != keys["PartitionKey"]
                    or len(batch) >= MAX_TRANSACTION_OPERATIONS
                ):
                    submit()
                batch.append(keys)
                taken += 1
            if more_left:
                break
        submit()
    except ResourceNotFoundError:
        # No table yet: nothing was ever delivered, nothing to expire. The query that found
        # none still was a call (status expiry counts it too, shared/status_retention.py).
        calls += 1
    except AzureError as error:
        raise StorageUnavailable(f"table {table.table_name}: {type(error).__name__}") from error
    return ExpiryResult(deleted, calls, failed, more_left, retention)


def delete_rows(
    table: TableClient,
    rows: list[dict[str, Any]],
    kind: str,
    *,
    etags: Sequence[str] | None = None,
) -> bool:
    """Delete rows of one partition in one transaction; False if the service refused it.

    `kind` names the rows in the WARNING logged then (activity, status, idempotency). With
    `etags` (one per row), a row changed since it was read refuses the whole transaction.
    """
    conditions: list[dict[str, Any]] = (
        [{}] * len(rows)
        if etags is None
        else [{"etag": etag, "match_condition": MatchConditions.IfNotModified} for etag in etags]
    )
    try:
        table.submit_transaction(
            [("delete", row, condition) for row, condition in zip(rows, conditions, strict=True)]
        )
    except (ServiceRequestError, ServiceResponseError):
        raise  # not reached or no answer: an outage, not this batch's fault
    except HttpResponseError as error:
        if error.status_code is not None and error.status_code >= 500:
            raise
        # For instance a row deleted meanwhile (404 fails the whole transaction): the others
        # stay until the next run. Neither keys nor ids are logged: they name messages.
        logger.warning(
            "Retention: a transaction deleting %d %s row(s) failed, they stay for the "
            "next run: %s %s",
            len(rows),
            kind,
            error.status_code,
            type(error).__name__,
        )
        return False
    return True


def expire_bodies(
    bodies: MessageBodyStore, now: datetime, retention: timedelta, *, max_blobs: int
) -> BodyExpiryResult:
    """Delete the bodies under live/ last written before `now - retention`, of at most
    `max_blobs` listed. Storage that fails raises StorageUnavailable: the run ends there, the
    next one takes the rest."""
    if max_blobs < 1:
        raise ValueError(f"max_blobs must be at least 1, not {max_blobs!r}")
    older, more_left = bodies.list_older(LIVE_PREFIX, now - retention, max_listed=max_blobs)
    for blob in older:
        bodies.delete(blob.name)
    return BodyExpiryResult(len(older), more_left, retention)
