"""Retention of status records (with their delivery events) and of idempotency keys.

Like the activity rows (shared/retention.py), both are deleted by ranges of partition keys, so
that a run costs in proportion to what it deletes, never to the table's size.

**Status records.** A message's partition, named by its id, holds its status record (RowKey
`status`), SendGrid's delivery record (`delivery`) and one row per event (`event-<hash>`,
shared/delivery_events.py). Message ids are UUIDv7 (shared/message_ids.py `new_message_id`): their
first 12 hex digits, `tttttttt-tttt`, are the acceptance time in milliseconds, in lower case, so
every message accepted before a cutoff sorts before the cutoff's own prefix (a key that starts
with the prefix sorts after it), and the run reads one range:

    PartitionKey ge <resume point> and PartitionKey lt <the cutoff's prefix>

The resume point is the later of V7_SINCE's prefix (no gateway gave a v7 id before) and the
watermark row, where the previous run got to. Each partition in range whose key is a v7 id is
deleted whole, in entity group transactions of up to 100 rows. Messages accepted before the
upgrade have uuid4 ids, randomly spread over the key space: those that fall in the range (the
13th character, the version, is `4`) are skipped, never deleted; anything else that is not a v7
id is skipped too. As the watermark moves past them, each is read once in the deployment's life.

Nothing else in the table can fall in that range. Both bounds start with a decimal digit (a
prefix starts with `a` only from the year 10889 on); the table's other partitions, `activity-…`
(shared/activity.py), `idempotency-…` and `idem-…` (shared/idempotency.py), `health` (the
health check) and `retention` (the watermark and the replay marks), start with a lower-case
letter, which sorts after every digit.

The service keeps a table's rows in one index sorted by PartitionKey, then RowKey, comparing
strings lexically, and returns query results in that order (Microsoft's "Designing a scalable
partitioning strategy for Azure Table storage" and "Querying tables and entities"): a range is
read without the rest of the table, and the rows of one partition come together.

**The watermark** (PartitionKey `retention`, RowKey `status`) says where the next run starts. It
never passes a partition that failed to delete, and moves only forward. One run writes it at a
time: the host runs a timer function on one instance at once, under a lease (Microsoft's timer
trigger reference, "Scale-out"; Azure/azure-webjobs-sdk issue 614).

**Replayed messages** live longer than their id says: a replay (shared/dead_letters.py) first
writes a mark, `retention` / `replayed-<id>` with the time of the replay
(StatusStore.mark_replayed). Each run reads the marks before the range: a message replayed
within the retention is skipped in the range, its copy may still be queued; one replayed before
the cutoff is deleted through its mark, wherever the watermark is (the record a replay writes
after its old one expired is under an id the range never reads again). Its rows are deleted
with the ETags read, after the mark with its own ETag, so a message replayed again meanwhile
keeps everything.

**Idempotency keys** live in `idem-<period start>-<key hash>` partitions, the period start in
seconds since 1970, 11 digits (shared/idempotency.py): a key is looked up in its period and the
one before. A record taken over in the previous period is honoured for a period after that, so
the periods kept are the current one and the two before it; all older ones are one range,
`ge 'idem-' and lt 'idem-<start of the period two before>'`. Both bounds begin `idem-`, so any
key between them does too: not `idempotency-` (`p` sorts after `-`), nor any other partition.

**Bounds.** A run reads at most `max_rows` keys (rounded up to a page) and takes no new page
after `seconds`, so that it ends inside the host's functionTimeout; the next run goes on.
Partitions of one page are deleted in parallel: a message's partition holds a few rows, so its
delete is one call of its own.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import AzureError, ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import TableClient

from shared.activity import MAX_TRANSACTION_OPERATIONS
from shared.errors import StorageUnavailable
from shared.idempotency import KEY_PARTITION_PREFIX, period_start_partition
from shared.retention import PartitionExpiry, delete_rows
from shared.status import REPLAYED_ROW_PREFIX, RETENTION_PARTITION

logger = logging.getLogger(__name__)

# No gateway gave a UUIDv7 message id before this day: the range never starts earlier.
V7_SINCE = datetime(2026, 12, 1, tzinfo=timezone.utc)
WATERMARK_PARTITION = RETENTION_PARTITION
WATERMARK_ROW = "status"
# Keys one run reads at most, per kind, and the seconds after which it takes no new page: a
# few minutes of work at most, inside the 10-minute functionTimeout (host.json).
MAX_ROWS_PER_RUN = 200_000
MAX_RUN_SECONDS = 240.0
DELETE_THREADS = 8
_PAGE_SIZE = 1000
_KEYS = ["PartitionKey", "RowKey"]
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_V7_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


def id_prefix(at: datetime) -> str:
    """The first 13 characters of a UUIDv7 made at `at`: `tttttttt-tttt`, milliseconds in hex."""
    milliseconds = (at - _EPOCH) // timedelta(milliseconds=1)
    digits = f"{milliseconds:012x}"
    return f"{digits[:8]}-{digits[8:]}"


def expiring_message_id(partition: str) -> bool:
    """Whether a partition in range is a message's that expiry may delete: a UUIDv7's."""
    return _V7_ID.fullmatch(partition) is not None


def status_expiry_range(cutoff: datetime, watermark: str | None) -> tuple[str, str]:
    """The partition keys (inclusive, exclusive) of the messages accepted before `cutoff` that
    the runs up to `watermark` have not gone through."""
    start = id_prefix(V7_SINCE)
    return max(start, watermark or start), id_prefix(cutoff)


def expire_statuses(
    table: TableClient,
    now: datetime,
    retention: timedelta,
    *,
    max_rows: int = MAX_ROWS_PER_RUN,
    seconds: float = MAX_RUN_SECONDS,
    clock: Callable[[], float] = time.monotonic,
) -> PartitionExpiry:
    """Delete the partitions (status, delivery, events) of the messages accepted before
    `now - retention`, reading at most about `max_rows` keys; StorageUnavailable if storage
    cannot be reached."""
    cutoff = now - retention
    watermark = _read_watermark(table)
    try:
        marks = _replay_marks(table, max_rows)
    except ResourceNotFoundError:
        return PartitionExpiry(calls=2)  # no table yet: nothing to expire
    # Replayed since the cutoff: kept, whenever they were accepted.
    kept = frozenset(mark.message_id for mark in marks if mark.replayed_at >= cutoff)
    start, end = status_expiry_range(cutoff, watermark)
    result, calls = PartitionExpiry(), 2
    if start < end:
        ranged, resume_at = _expire_range(
            table,
            "PartitionKey ge @start and PartitionKey lt @end",
            {"start": start, "end": end},
            lambda partition: expiring_message_id(partition) and partition not in kept,
            max_rows=max_rows,
            deadline=clock() + seconds,
            clock=clock,
            kind="status",
        )
        resume_at = resume_at or end
        result, calls = replace(ranged, calls=0), calls + ranged.calls
        if resume_at > (watermark or ""):
            _write_watermark(table, resume_at)
            calls += 1
    for mark in marks:
        if mark.replayed_at < cutoff:
            result = _add(result, _expire_replayed(table, mark))
    return replace(result, calls=calls + result.calls)


def expire_keys(
    table: TableClient,
    now: datetime,
    retention: timedelta,
    *,
    max_rows: int = MAX_ROWS_PER_RUN,
    seconds: float = MAX_RUN_SECONDS,
    clock: Callable[[], float] = time.monotonic,
) -> PartitionExpiry:
    """Delete the idempotency keys of the periods before the current one and the two before
    it; at most about `max_rows`. StorageUnavailable if storage cannot be reached."""
    end = period_start_partition(now, retention, periods_back=2)
    try:
        result, _ = _expire_range(
            table,
            "PartitionKey ge @start and PartitionKey lt @end",
            {"start": KEY_PARTITION_PREFIX, "end": end},
            lambda partition: partition.startswith(KEY_PARTITION_PREFIX),
            max_rows=max_rows,
            deadline=clock() + seconds,
            clock=clock,
            kind="idempotency",
        )
    except ResourceNotFoundError:
        return PartitionExpiry(calls=1)  # no table yet: nothing to expire
    return result


def _expire_range(
    table: TableClient,
    query: str,
    parameters: dict[str, str],
    deletable: Callable[[str], bool],
    *,
    max_rows: int,
    deadline: float,
    clock: Callable[[], float],
    kind: str,
) -> tuple[PartitionExpiry, str | None]:
    """Delete the deletable partitions of a range, page by page; also where the next run must
    start (None: at the range's end). ResourceNotFoundError if the table does not exist."""
    if max_rows < 1:
        raise ValueError(f"max_rows must be at least 1, not {max_rows!r}")
    partitions = deleted = skipped = failed = calls = taken = 0
    first_failed: str | None = None
    resume_at: str | None = None
    more_left = False
    try:
        pages: Iterable[Iterable[Any]] = table.query_entities(
            query, parameters=parameters, select=_KEYS, results_per_page=_PAGE_SIZE
        ).by_page()
        with ThreadPoolExecutor(DELETE_THREADS) as pool:
            for page in pages:
                if taken >= max_rows or clock() >= deadline:
                    more_left = True
                    break
                calls += 1
                batches: list[list[dict[str, Any]]] = []
                last_partition = None
                for entity in page:
                    taken += 1
                    keys = {"PartitionKey": entity["PartitionKey"], "RowKey": entity["RowKey"]}
                    last_partition = keys["PartitionKey"]
                    if not deletable(last_partition):
                        skipped += 1
                        continue
                    # A transaction holds rows of one partition only; rows come sorted by key.
                    if (
                        batches
                        and batches[-1][0]["PartitionKey"] == last_partition
                        and len(batches[-1]) < MAX_TRANSACTION_OPERATIONS
                    ):
                        batches[-1].append(keys)
                    else:
                        if not batches or batches[-1][0]["PartitionKey"] != last_partition:
                            partitions += 1
                        batches.append([keys])
                # A partition may go on in the next page: the next run starts at it again.
                resume_at = last_partition
                for batch, done in zip(
                    batches,
                    pool.map(lambda rows: delete_rows(table, rows, kind), batches),
                    strict=True,
                ):
                    calls += 1
                    if done:
                        deleted += len(batch)
                    else:
                        failed += len(batch)
                        key = batch[0]["PartitionKey"]
                        first_failed = key if first_failed is None else min(first_failed, key)
    except ResourceNotFoundError:
        raise
    except AzureError as error:
        raise StorageUnavailable(f"table {table.table_name}: {type(error).__name__}") from error
    if not more_left:
        resume_at = None
    elif resume_at is None:
        resume_at = parameters["start"]  # stopped before its first page
    if first_failed is not None:
        resume_at = first_failed if resume_at is None else min(resume_at, first_failed)
    return PartitionExpiry(partitions, deleted, skipped, failed, calls, more_left), resume_at


@dataclass(frozen=True)
class _ReplayMark:
    message_id: str
    replayed_at: datetime
    etag: str


def _replay_marks(table: TableClient, max_rows: int) -> list[_ReplayMark]:
    """The replayed messages' marks (StatusStore.mark_replayed), up to about `max_rows`."""
    marks: list[_ReplayMark] = []
    try:
        entities = table.query_entities(
            "PartitionKey eq @partition and RowKey ge @first and RowKey lt @after",
            parameters={
                "partition": RETENTION_PARTITION,
                "first": REPLAYED_ROW_PREFIX,
                # The prefix ends in `-`; `.` is the character after it.
                "after": REPLAYED_ROW_PREFIX[:-1] + ".",
            },
            select=["RowKey", "replayed_at"],
            results_per_page=_PAGE_SIZE,
        )
        for entity in entities:
            at, etag = entity.get("replayed_at"), entity.metadata.get("etag")
            if isinstance(at, datetime) and etag:
                marks.append(
                    _ReplayMark(entity["RowKey"].removeprefix(REPLAYED_ROW_PREFIX), at, etag)
                )
            if len(marks) >= max_rows:
                break
    except ResourceNotFoundError:
        raise
    except AzureError as error:
        raise StorageUnavailable(f"table {table.table_name}: {type(error).__name__}") from error
    return marks


def _expire_replayed(table: TableClient, mark: _ReplayMark) -> PartitionExpiry:
    """Delete a message replayed before the cutoff, and its mark, unless it was replayed again
    meanwhile: its rows are deleted only as they were read, after the mark as it was read."""
    try:
        rows = [
            (
                {"PartitionKey": entity["PartitionKey"], "RowKey": entity["RowKey"]},
                # The service gives every row one; `*` (any) would never be used.
                entity.metadata.get("etag") or "*",
            )
            for entity in table.query_entities(
                "PartitionKey eq @id", parameters={"id": mark.message_id}, select=_KEYS
            )
        ]
        table.delete_entity(
            RETENTION_PARTITION,
            REPLAYED_ROW_PREFIX + mark.message_id,
            etag=mark.etag,
            match_condition=MatchConditions.IfNotModified,
        )
    except (ResourceModifiedError, ResourceNotFoundError):
        return PartitionExpiry(skipped=1, calls=2)  # replayed again, or another run did it
    except AzureError as error:
        raise StorageUnavailable(f"table {table.table_name}: {type(error).__name__}") from error
    deleted = failed = 0
    calls = 2
    for start in range(0, len(rows), MAX_TRANSACTION_OPERATIONS):
        batch = rows[start : start + MAX_TRANSACTION_OPERATIONS]
        calls += 1
        keys, etags = [row for row, _ in batch], [etag for _, etag in batch]
        if delete_rows(table, keys, "status", etags=etags):
            deleted += len(batch)
        else:
            failed += len(batch)
    return PartitionExpiry(1 if rows else 0, deleted, 0, failed, calls)


def _add(one: PartitionExpiry, other: PartitionExpiry) -> PartitionExpiry:
    return PartitionExpiry(
        one.partitions + other.partitions,
        one.deleted + other.deleted,
        one.skipped + other.skipped,
        one.failed + other.failed,
        one.calls + other.calls,
        one.more_left or other.more_left,
    )


def _read_watermark(table: TableClient) -> str | None:
    try:
        entity = table.get_entity(WATERMARK_PARTITION, WATERMARK_ROW)
    except ResourceNotFoundError:
        return None  # no watermark yet, or no table yet
    except AzureError as error:
        raise StorageUnavailable(f"table {table.table_name}: {type(error).__name__}") from error
    value = entity.get("resume_at")
    return value if isinstance(value, str) else None


def _write_watermark(table: TableClient, resume_at: str) -> None:
    try:
        table.upsert_entity(
            {
                "PartitionKey": WATERMARK_PARTITION,
                "RowKey": WATERMARK_ROW,
                "resume_at": resume_at,
            }
        )
    except AzureError as error:
        raise StorageUnavailable(f"table {table.table_name}: {type(error).__name__}") from error
