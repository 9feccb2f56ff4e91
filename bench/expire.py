"""Expiry: what deleting old activity rows, and old messages' status records with their
delivery events, costs (shared/retention.py, shared/status_retention.py, issue 15).

Inserts `rows` activity rows, unmeasured, in entity group transactions, `ROWS_PER_MINUTE` to a
minute's partition over minutes older than the retention cutoff, and `NEWER_ROWS` in minutes
after it, with a status record and an idempotency row beside them. Then one `expire_activity`
run, as the timer makes it (at most MAX_ROWS_PER_RUN rows), on the gateway's storage
transport: its seconds, the bench process's CPU, Azurite's CPU, and storage calls per deleted
row. The rows the run must leave alone are counted afterwards.

Then the claim-check bodies' part: `BODY_BLOBS` blobs under live/, unmeasured, with
`KEPT_BLOBS` dead letters' bodies under dead-letters/ and as many at the container's root, and
one `expire_bodies` run as the timer makes it, seen from past the live retention: its seconds
per deleted blob and the bench process's CPU. The kept and root blobs are counted afterwards.
"""

from __future__ import annotations

import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from azure.data.tables import TableClient, TableServiceClient
from azure.storage.blob import ContainerClient

from bench.load import process_cpu_seconds
from devstack.azurite import Azurite
from shared.activity import MAX_TRANSACTION_OPERATIONS, PARTITION_PREFIX, partition_of
from shared.blobs import KEPT_PREFIX, LIVE_PREFIX, MessageBodyStore
from shared.message_ids import new_message_id
from shared.queue import storage_transport
from shared.retention import MAX_BODIES_PER_RUN, MAX_ROWS_PER_RUN, expire_activity, expire_bodies
from shared.status_retention import V7_SINCE, WATERMARK_PARTITION, expire_statuses, id_prefix
from shared.storage_transport import StorageTransport

RETENTION = timedelta(days=7)
# Some 4 deliveries a second, in full transactions of 100 and one of 50 per minute.
ROWS_PER_MINUTE = 250
NEWER_ROWS = 1_000
INSERT_THREADS = 8
# In-flight large messages whose bodies were left behind, and the bodies the run must keep.
BODY_BLOBS = 1_000
KEPT_BLOBS = 100
BODY_RETENTION = timedelta(days=8, hours=8)


class _PerDeletedRow:
    """What an expiry run cost per row it deleted, from its totals."""

    deleted: int
    calls: int
    seconds: float
    cpu_seconds: float

    @property
    def calls_per_row(self) -> float | None:
        """Storage calls per deleted row."""
        return self.calls / self.deleted if self.deleted else None

    @property
    def cpu_per_row(self) -> float | None:
        """Bench-process CPU seconds per deleted row."""
        return self.cpu_seconds / self.deleted if self.deleted else None

    @property
    def rows_per_second(self) -> float | None:
        """Rows deleted per second of the run."""
        return self.deleted / self.seconds if self.seconds else None


@dataclass(frozen=True)
class ExpireResult(_PerDeletedRow):
    """One expiry run over `rows` old rows, with `newer` rows and 2 others to keep."""

    rows: int
    newer: int
    deleted: int
    calls: int
    seconds: float
    cpu_seconds: float
    azurite_cpu_seconds: float | None
    left: int  # rows of the table after the run, of `newer` + 2 that must stay
    kept: int  # of those, the newer activity rows and the 2 others
    bodies: BodyExpireResult | None = None


@dataclass(frozen=True)
class BodyExpireResult:
    """One expiry run over `blobs` leftover live bodies, with `kept` others it must leave."""

    blobs: int
    kept: int
    deleted: int
    seconds: float
    cpu_seconds: float
    left: int  # blobs in the container after the run, of `kept` that must stay
    left_kept: int  # of those, the dead letters' and the root ones

    @property
    def ms_per_blob(self) -> float | None:
        """Milliseconds of the run per deleted blob."""
        return self.seconds / self.deleted * 1000 if self.deleted else None

    @property
    def cpu_per_blob(self) -> float | None:
        """Bench-process CPU seconds per deleted blob."""
        return self.cpu_seconds / self.deleted if self.deleted else None


def run_expire_bodies(azurite: Azurite, blobs: int = BODY_BLOBS) -> BodyExpireResult:
    """Write `blobs` live bodies and twice KEPT_BLOBS others, then expire once and count."""
    container = ContainerClient.from_connection_string(
        azurite.connection_string,
        f"benchbodies{uuid.uuid4().hex[:8]}",
        transport=storage_transport(),
    )
    container.create_container()
    live = [f"{LIVE_PREFIX}{uuid.UUID(int=n)}.json" for n in range(blobs)]
    others = [f"{KEPT_PREFIX}{uuid.UUID(int=n)}.json" for n in range(KEPT_BLOBS)] + [
        f"{uuid.UUID(int=n)}.json" for n in range(KEPT_BLOBS)
    ]
    body = b'{"version":1,"id":"x","message":{}}'
    with ThreadPoolExecutor(INSERT_THREADS) as pool:
        for _ in pool.map(lambda name: container.upload_blob(name, body), live + others):
            pass
    later = datetime.now(timezone.utc) + BODY_RETENTION + timedelta(minutes=1)
    cpu = process_cpu_seconds(os.getpid(), descendants=False)
    wall = time.perf_counter()
    result = expire_bodies(
        MessageBodyStore(container), later, BODY_RETENTION, max_blobs=MAX_BODIES_PER_RUN
    )
    wall = time.perf_counter() - wall
    cpu = process_cpu_seconds(os.getpid(), descendants=False) - cpu
    remaining = {b.name for b in container.list_blobs()}
    container.delete_container()
    return BodyExpireResult(
        blobs=blobs,
        kept=len(others),
        deleted=result.deleted,
        seconds=wall,
        cpu_seconds=cpu,
        left=len(remaining),
        left_kept=len(remaining & set(others)),
    )


def run_expire(azurite: Azurite, rows: int, now: datetime | None = None) -> ExpireResult:
    """Insert `rows` old and NEWER_ROWS newer activity rows, then expire once and count."""
    now = now or datetime.now(timezone.utc)
    table_name = f"benchexpire{uuid.uuid4().hex[:8]}"
    with TableServiceClient.from_connection_string(azurite.connection_string) as service:
        service.create_table(table_name)
    with TableClient.from_connection_string(
        azurite.connection_string, table_name, transport=StorageTransport()
    ) as table:
        cutoff = now - RETENTION
        _insert(table, cutoff - timedelta(minutes=1), rows)
        _insert(table, now, NEWER_ROWS)
        others = [
            {"PartitionKey": str(uuid.uuid4()), "RowKey": "status", "state": "sent"},
            {"PartitionKey": "idempotency-" + "0" * 64, "RowKey": "key", "message_id": "x"},
        ]
        for entity in others:
            table.upsert_entity(entity)
        azurite_pid = azurite.pid
        azurite_cpu = process_cpu_seconds(azurite_pid) if azurite_pid else None
        cpu = process_cpu_seconds(os.getpid(), descendants=False)
        wall = time.perf_counter()
        result = expire_activity(table, now, RETENTION, max_rows=MAX_ROWS_PER_RUN)
        wall = time.perf_counter() - wall
        cpu = process_cpu_seconds(os.getpid(), descendants=False) - cpu
        if azurite_pid and azurite_cpu is not None:
            azurite_cpu = process_cpu_seconds(azurite_pid) - azurite_cpu
        remaining = [
            (e["PartitionKey"], e["RowKey"])
            for e in table.list_entities(select=["PartitionKey", "RowKey"])
        ]
        # Newer minutes sort before the cutoff's.
        newer = (PARTITION_PREFIX, partition_of(cutoff))
        others_keys = {(e["PartitionKey"], e["RowKey"]) for e in others}
        kept = sum(1 for k in remaining if newer[0] <= k[0] <= newer[1] or k in others_keys)
    return ExpireResult(
        rows=rows,
        newer=NEWER_ROWS,
        deleted=result.deleted,
        calls=result.calls,
        seconds=wall,
        cpu_seconds=cpu,
        azurite_cpu_seconds=azurite_cpu,
        left=len(remaining),
        kept=kept,
    )


def _insert(table: TableClient, newest: datetime, rows: int) -> None:
    """`rows` activity rows, ROWS_PER_MINUTE to a minute, from `newest`'s minute backwards."""
    batches: list[list[dict[str, Any]]] = []
    for index in range(0, rows, ROWS_PER_MINUTE):
        at = newest - timedelta(minutes=index // ROWS_PER_MINUTE)
        minute = [
            {
                "PartitionKey": partition_of(at),
                "RowKey": f"{uuid.UUID(int=index + i)}-0001-sent",
                "state": "sent",
                "attempt": 1,
                "at": at,
            }
            for i in range(min(ROWS_PER_MINUTE, rows - index))
        ]
        for start in range(0, len(minute), MAX_TRANSACTION_OPERATIONS):
            batches.append(minute[start : start + MAX_TRANSACTION_OPERATIONS])
    with ThreadPoolExecutor(INSERT_THREADS) as pool:
        for _ in pool.map(
            lambda batch: table.submit_transaction([("upsert", row) for row in batch]), batches
        ):
            pass


# --- status records with their delivery events (shared/status_retention.py) ------------------

STATUS_RETENTION = timedelta(days=30)
# Status, delivery record and two events (processed, delivered): a message SendGrid's Event
# Webhook reported on. A message without events has its status row alone.
ROWS_PER_MESSAGE = 4
# uuid4 partitions of the layout before, whose first digits fall in the range: read, kept.
LEGACY_IN_RANGE = 1_000
NEWER_MESSAGES = 250
UNBOUNDED_SECONDS = 24 * 3600.0


@dataclass(frozen=True)
class StatusExpireResult(_PerDeletedRow):
    """One status expiry run over `rows` rows of old messages, with newer and legacy ones."""

    rows: int
    messages: int
    deleted: int
    deleted_messages: int
    skipped: int
    calls: int
    seconds: float
    cpu_seconds: float
    azurite_cpu_seconds: float | None
    left: int  # rows of the table after the run, but the watermark
    kept: int  # of those, the newer messages' rows and the legacy ones
    to_keep: int


def run_expire_statuses(
    azurite: Azurite, rows: int, now: datetime | None = None
) -> StatusExpireResult:
    """Insert `rows` rows of messages accepted before the cutoff, ROWS_PER_MESSAGE each, newer
    messages and legacy rows in range; then one status expiry, as the timer runs it."""
    # Far enough after the first v7 id that a month's retention reaches UUIDv7 ids.
    now = now or max(datetime.now(timezone.utc), V7_SINCE + STATUS_RETENTION + timedelta(days=10))
    cutoff = now - STATUS_RETENTION
    table_name = f"benchexpirestatus{uuid.uuid4().hex[:8]}"
    with TableServiceClient.from_connection_string(azurite.connection_string) as service:
        service.create_table(table_name)
    with TableClient.from_connection_string(
        azurite.connection_string, table_name, transport=StorageTransport()
    ) as table:
        messages = -(-rows // ROWS_PER_MESSAGE)
        # Spread over the 5 days before the cutoff, a few seconds apart.
        spread = timedelta(days=5) / max(messages, 1)
        old = [
            _message_rows(
                cutoff - spread * (n + 1), min(ROWS_PER_MESSAGE, rows - n * ROWS_PER_MESSAGE)
            )
            for n in range(messages)
        ]
        newer = [
            _message_rows(now - timedelta(minutes=n), ROWS_PER_MESSAGE)
            for n in range(NEWER_MESSAGES)
        ]
        legacy = [
            [
                {
                    "PartitionKey": _legacy_id(
                        cutoff - timedelta(days=5) * (n + 1) / (LEGACY_IN_RANGE + 1)
                    ),
                    "RowKey": "status",
                }
            ]
            for n in range(LEGACY_IN_RANGE)
        ]
        with ThreadPoolExecutor(INSERT_THREADS) as pool:
            for _ in pool.map(
                lambda batch: table.submit_transaction([("upsert", row) for row in batch]),
                [*old, *newer, *legacy],
            ):
                pass
        azurite_pid = azurite.pid
        azurite_cpu = process_cpu_seconds(azurite_pid) if azurite_pid else None
        cpu = process_cpu_seconds(os.getpid(), descendants=False)
        wall = time.perf_counter()
        # Without the run's time bound (4 minutes): the figure is the cost per row, and Azurite
        # on a loaded machine is far slower per transaction than the service.
        result = expire_statuses(table, now, STATUS_RETENTION, seconds=UNBOUNDED_SECONDS)
        wall = time.perf_counter() - wall
        cpu = process_cpu_seconds(os.getpid(), descendants=False) - cpu
        if azurite_pid and azurite_cpu is not None:
            azurite_cpu = process_cpu_seconds(azurite_pid) - azurite_cpu
        remaining = {
            (e["PartitionKey"], e["RowKey"])
            for e in table.list_entities(select=["PartitionKey", "RowKey"])
            if e["PartitionKey"] != WATERMARK_PARTITION
        }
        to_keep = {(r["PartitionKey"], r["RowKey"]) for batch in [*newer, *legacy] for r in batch}
    return StatusExpireResult(
        rows=rows,
        messages=messages,
        deleted=result.deleted,
        deleted_messages=result.partitions,
        skipped=result.skipped,
        calls=result.calls,
        seconds=wall,
        cpu_seconds=cpu,
        azurite_cpu_seconds=azurite_cpu,
        left=len(remaining),
        kept=len(remaining & to_keep),
        to_keep=len(to_keep),
    )


def _message_rows(accepted_at: datetime, rows: int) -> list[dict[str, Any]]:
    """A message's partition as delivery and SendGrid's events leave it: `rows` of them."""
    message_id = _v7_id(accepted_at)
    made: list[dict[str, Any]] = [
        {
            "PartitionKey": message_id,
            "RowKey": "status",
            "state": "sent",
            "accepted_at": accepted_at,
        },
        {"PartitionKey": message_id, "RowKey": "delivery", "state": "delivered", "timeline": "[]"},
    ]
    made += [
        {"PartitionKey": message_id, "RowKey": f"event-{n:064x}", "event": "delivered"}
        for n in range(ROWS_PER_MESSAGE - 2)
    ]
    return made[:rows]


def _v7_id(at: datetime) -> str:
    return new_message_id(at, "bench")


def _legacy_id(at: datetime) -> str:
    """A uuid4 id whose first digits happen to read as `at`, as a few of the old ids do."""
    return (
        f"{id_prefix(at)}-4{uuid.uuid4().hex[:3]}-8{uuid.uuid4().hex[:3]}-{uuid.uuid4().hex[:12]}"
    )
