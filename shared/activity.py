"""Delivery activity by minute: one small row per outcome (sent, retried, dead-lettered).

The status table is partitioned by message id, so "what happened in the last hour" asked of
the status records is a scan of every record ever written. Delivery therefore also writes one
row per outcome into a partition named after its minute, `activity-<inverted minute>`, in the
same table. The minute is inverted (`9999999999 - minutes since 1970`) so that keys sort newest
first: the last hour is one range query over at most 60 partitions, read newest first and cut
off at a limit, and its cost follows the hour's deliveries, not the table's size.

Writing is best effort: the rows feed the operator's view, the status record stays the truth
(and keeps a message's own latest outcomes, shared/status.py), and a failed write only logs a
warning.

Written one at a time, that is one storage round trip per delivery outcome, inside the queue
trigger, for a view an operator looks at now and then. So the gateway (`Gateway.from_settings`)
buffers them instead: `record` only adds the outcome to memory, and a background thread writes
what is buffered `ACTIVITY_FLUSH_SECONDS` after the first unwritten outcome arrived, packed:
one row per minute's partition holding up to `MAX_EVENTS_PER_ROW` outcomes as JSON, written
with one unconditional insert. Under load that is one call per up to 250 outcomes instead of
one per outcome; at low traffic an outcome shows within that delay. Packed rather than one row
each in an entity group transaction, because a transaction's every operation goes through the
SDK's pipeline and a multipart body of its own: 0.33 ms of CPU per outcome against 0.005 ms
packed (docs/performance.md). The buffer is bounded (`MAX_PENDING_EVENTS`): past it, outcomes
are dropped and counted in one warning per flush. A row that fails is logged and dropped, never
retried: outcomes buffered when the process ends are lost but for a best-effort flush at exit.
Built without `flush_seconds`, the log writes each outcome at once as a row of its own, keyed
by message, attempt and outcome (as every row was before rows were packed), as tests and tools
that read it straight back expect. Readers take both kinds of row, and count an outcome found
twice (a redelivered copy, a flush and a single row) once.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import threading
import time
import uuid
import weakref
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from azure.core.exceptions import AzureError, ResourceNotFoundError
from azure.data.tables import TableClient, UpdateMode

from shared.errors import StorageUnavailable
from shared.status import NO_ECHO, MessageState

logger = logging.getLogger(__name__)

PARTITION_PREFIX = "activity-"
# Minutes since 1970 stay below this until the year 20983.
_INVERSION = 9_999_999_999
_COLUMNS = ["message_id", "state", "attempt", "at", "events"]
# How long the gateway buffers outcomes before writing them (Gateway.from_settings).
ACTIVITY_FLUSH_SECONDS = 0.5
# Outcomes buffered and not yet written, at most; more are dropped until the next flush.
MAX_PENDING_EVENTS = 10_000
# The service refuses an entity group transaction of more operations (retention deletes rows
# in them).
MAX_TRANSACTION_OPERATIONS = 100
# Outcomes per packed row: about 95 characters each as JSON, so 250 keep the `events` string
# well inside the 64 KiB (32,768 UTF-16 characters) the service allows a string property.
MAX_EVENTS_PER_ROW = 250
# Packed rows' keys: after every message id (hex digits), so never in a message's key range.
PACKED_ROW_PREFIX = "~packed-"

_Key = tuple[str, str]


@dataclass(frozen=True)
class ActivityEvent:
    """One delivery outcome: a message sent, retried or dead-lettered at an attempt."""

    message_id: str | None
    state: MessageState
    attempt: int
    at: datetime

    def to_document(self) -> dict[str, Any]:
        """The event as the console's JSON shows it."""
        return {
            "state": self.state.value,
            "attempt": self.attempt,
            "at": self.at.isoformat(),
        }


@dataclass(frozen=True)
class ActivityWindow:
    """The events read for a time window, newest first, and how much of the window they cover.

    `covers_from` is the start of the window, or later when the read stopped at its limit:
    minutes before it were not read (or not wholly).
    """

    events: list[ActivityEvent]
    covers_from: datetime
    complete: bool


def minute_of(at: datetime) -> datetime:
    """The start of the UTC minute `at` falls in."""
    return at.astimezone(timezone.utc).replace(second=0, microsecond=0)


def partition_of(at: datetime) -> str:
    """The partition holding the events of `at`'s minute; a later minute sorts first."""
    minutes = int(minute_of(at).timestamp()) // 60
    return f"{PARTITION_PREFIX}{_INVERSION - minutes:010d}"


def window_of(events: list[ActivityEvent], start: datetime, limit: int) -> ActivityWindow:
    """The window from `start` of `events` read in the table's order (newest minute first, by
    key within a minute), at most `limit` of them, newest first; more than `limit` read means
    the oldest minute reached may be partial, and the window then starts after it."""
    complete = len(events) <= limit
    newest_first = sorted(events[:limit], key=lambda e: e.at, reverse=True)
    if complete:
        return ActivityWindow(newest_first, minute_of(start), complete=True)
    # The oldest minute reached may have been read only in part: it does not count.
    return ActivityWindow(
        newest_first, minute_of(newest_first[-1].at) + timedelta(minutes=1), complete=False
    )


class ActivityLog:
    """Delivery outcomes in per-minute partitions of the status table.

    Without `flush_seconds`, `record` writes each outcome at once, one upsert per call. With it,
    `record` only buffers the outcome (one per message, attempt and outcome, the last recorded
    wins), and a daemon thread, started on the first `record`, writes the buffer `flush_seconds`
    after its first outcome arrived, one packed row per partition and per 250 outcomes; `flush()`
    writes it at once, and so does the process at exit (best effort). Either way `record` never
    raises and a failed write is only logged: the status record is the truth, this is a view.
    """

    def __init__(self, table: TableClient, *, flush_seconds: float | None = None) -> None:
        if flush_seconds is not None and not flush_seconds > 0:
            raise ValueError(f"flush_seconds must be positive or None, not {flush_seconds!r}")
        self._table = table
        self._flush_seconds = flush_seconds
        # Guards the buffer and the flusher's state; never held during a storage call.
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._pending: dict[_Key, dict[str, Any]] = {}
        self._first_pending_at: float | None = None  # time.monotonic() of the oldest unwritten
        self._dropped = 0
        self._flusher: threading.Thread | None = None
        self._closed = False
        # One flush writes at a time, so flush() returns only once an earlier one is written.
        self._writing = threading.Lock()

    @property
    def buffered(self) -> bool:
        """True if `record` buffers rows for a background flush, False if it writes at once."""
        return self._flush_seconds is not None

    def record(self, event: ActivityEvent) -> None:
        """Write one outcome, or buffer it; a failure is logged, never raised (the status
        record is written)."""
        entity = _to_entity(event)
        if self._flush_seconds is not None:
            with self._lock:
                if not self._closed:
                    self._buffer(entity)
                    return
        try:
            self._table.upsert_entity(entity, mode=UpdateMode.REPLACE)
        except AzureError as error:
            logger.warning(
                "Message %s: its %s outcome was not added to the activity log: %s",
                event.message_id,
                event.state.value,
                type(error).__name__,
                extra={"mailgate_id": event.message_id},
            )

    def flush(self) -> None:
        """Write every buffered outcome now (nothing to do for a log that writes at once).

        Returns once they are written or given up on, and once any flush already under way has
        finished: what was recorded before the call is in the table unless its write failed.
        """
        with self._writing:
            with self._lock:
                pending, self._pending = self._pending, {}
                dropped, self._dropped = self._dropped, 0
                self._first_pending_at = None
            if dropped:
                logger.warning(
                    "Activity log: %d outcome(s) were dropped, not written: more than %d were "
                    "waiting to be written",
                    dropped,
                    MAX_PENDING_EVENTS,
                )
            by_partition: dict[str, list[dict[str, Any]]] = {}
            for entity in pending.values():
                by_partition.setdefault(entity["PartitionKey"], []).append(entity)
            for partition, rows in by_partition.items():
                for start in range(0, len(rows), MAX_EVENTS_PER_ROW):
                    self._write_packed(partition, rows[start : start + MAX_EVENTS_PER_ROW])

    def close(self) -> None:
        """Write what is buffered and stop the flusher; later outcomes are written at once."""
        with self._lock:
            self._closed = True
            self._arrived.notify_all()
            flusher = self._flusher
        if flusher is not None:
            flusher.join()
        self.flush()

    def _buffer(self, entity: dict[str, Any]) -> None:
        # Called with the lock held.
        key = (entity["PartitionKey"], entity["RowKey"])
        if key not in self._pending and len(self._pending) >= MAX_PENDING_EVENTS:
            self._dropped += 1  # the flusher is already due: the buffer is not empty
            return
        self._pending[key] = entity
        if self._first_pending_at is None:
            self._first_pending_at = time.monotonic()
            self._arrived.notify_all()
        if self._flusher is None and self._flush_seconds is not None:
            self._flusher = threading.Thread(
                target=self._flush_when_due,
                args=(self._flush_seconds,),
                name="mailgate-activity-flusher",
                daemon=True,
            )
            self._flusher.start()
            atexit.register(_flush_at_exit, weakref.ref(self))

    def _flush_when_due(self, delay: float) -> None:
        # The flusher thread: waits for a first unwritten row, then until it is due, flushes.
        while True:
            with self._lock:
                while not self._closed:
                    first = self._first_pending_at
                    remaining = None if first is None else first + delay - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        break
                    # Woken early by a first row, or by close(); an explicit flush() may have
                    # written the rows meanwhile, and the wait then starts over.
                    self._arrived.wait(remaining)
                else:
                    return  # closed: close() writes what is left
            try:
                self.flush()
            except Exception as error:  # whatever it was, the next rows still get their flush
                logger.warning("Activity log: a flush failed: %s", type(error).__name__)

    def _write_packed(self, partition: str, rows: list[dict[str, Any]]) -> None:
        # Outcomes of one partition, at most MAX_EVENTS_PER_ROW, as one new row.
        events = [
            [r.get("message_id"), r["state"], r["attempt"], r["at"].isoformat()] for r in rows
        ]
        entity = {
            "PartitionKey": partition,
            "RowKey": f"{PACKED_ROW_PREFIX}{uuid.uuid4().hex}",
            "events": json.dumps(events, separators=(",", ":")),
        }
        try:
            self._table.create_entity(entity, **NO_ECHO)
        except AzureError as error:
            logger.warning(
                "Activity log: %d outcome(s) were not written, the console will miss them "
                "(delivery is unaffected): %s",
                len(rows),
                type(error).__name__,
            )

    def between(self, start: datetime, end: datetime, limit: int) -> ActivityWindow:
        """The events from `start` to `end` (whole minutes), newest first, at most `limit`."""
        events = self._query(
            "PartitionKey ge @newest and PartitionKey le @oldest",
            {"newest": partition_of(end), "oldest": partition_of(start)},
            limit + 1,
        )
        return window_of(events, start, limit)

    def _query(self, query: str, parameters: dict[str, str], limit: int) -> list[ActivityEvent]:
        # An outcome found twice (a redelivered copy, in two rows) counts once: the newest.
        events: dict[tuple[str | None, int, MessageState] | int, ActivityEvent] = {}
        try:
            entities = self._table.query_entities(
                query, parameters=parameters, select=_COLUMNS, results_per_page=1000
            )
            for entity in entities:
                for event in _events_of(entity):
                    key = (
                        (event.message_id, event.attempt, event.state)
                        if event.message_id is not None
                        else len(events)  # unreadable messages: each its own
                    )
                    known = events.get(key)
                    if known is None or known.at < event.at:
                        events[key] = event
                if len(events) >= limit:
                    break
        except ResourceNotFoundError:
            return []  # no table yet: nothing was ever delivered
        except AzureError as error:
            raise StorageUnavailable(
                f"table {self._table.table_name}: {type(error).__name__}"
            ) from error
        return list(events.values())


def _events_of(entity: Any) -> list[ActivityEvent]:
    """The outcomes in one row, packed or single; what cannot be read is skipped rather than
    failing the whole view."""
    packed = entity.get("events")
    if packed is None:
        single = _event(
            entity.get("message_id"),
            entity.get("state"),
            entity.get("attempt", 0),
            entity.get("at"),
        )
        return [single] if single is not None else []
    try:
        items = json.loads(packed) if isinstance(packed, str) else []
    except ValueError:
        return []
    events = []
    for item in items if isinstance(items, list) else []:
        if isinstance(item, list) and len(item) == 4:
            message_id, state, attempt, at = item
            with contextlib.suppress(TypeError, ValueError):
                at = datetime.fromisoformat(at)
            event = _event(message_id, state, attempt, at)
            if event is not None:
                events.append(event)
    return events


def _event(message_id: Any, state: Any, attempt: Any, at: Any) -> ActivityEvent | None:
    if not isinstance(at, datetime):
        return None  # not an activity row
    try:
        return ActivityEvent(
            message_id if isinstance(message_id, str) else None,
            MessageState(state),
            int(attempt),
            at,
        )
    except (TypeError, ValueError):
        return None


def _to_entity(event: ActivityEvent) -> dict[str, Any]:
    if event.message_id is None:
        # A queue message that was not an envelope: counted, but listed under no id.
        row = f"~unreadable-{uuid.uuid4().hex}"
    else:
        row = f"{event.message_id}-{event.attempt:04d}-{event.state.value}"
    entity: dict[str, Any] = {
        "PartitionKey": partition_of(event.at),
        "RowKey": row,
        "state": event.state.value,
        "attempt": event.attempt,
        "at": event.at,
    }
    if event.message_id is not None:
        entity["message_id"] = event.message_id
    return entity


def _flush_at_exit(log: weakref.ref[ActivityLog]) -> None:
    # Best effort: rows still buffered when the interpreter exits.
    alive = log()
    if alive is not None:
        with contextlib.suppress(Exception):
            alive.flush()
