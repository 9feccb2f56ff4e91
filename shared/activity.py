"""Delivery activity by minute: one small row per outcome (sent, retried, dead-lettered).

The status table is partitioned by message id, so "what happened in the last hour" asked of
the status records is a scan of every record ever written. Delivery therefore also writes one
row per outcome into a partition named after its minute, `activity-<inverted minute>`, in the
same table. The minute is inverted (`9999999999 - minutes since 1970`) so that keys sort newest
first: the last hour is one range query over at most 60 partitions, read newest first and cut
off at a limit, and its cost follows the hour's deliveries, not the table's size.

Rows are written with an unconditional upsert keyed by message, attempt and outcome: no read,
no ETag, nothing two workers contend for, and a redelivered copy rewrites its own row. Writing
one is best effort: the row feeds the operator's view, the status record stays the truth, and a
failed write only logs a warning.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from azure.core.exceptions import AzureError, ResourceNotFoundError
from azure.data.tables import TableClient, UpdateMode

from shared.errors import StorageUnavailable
from shared.status import MessageState

logger = logging.getLogger(__name__)

PARTITION_PREFIX = "activity-"
# Minutes since 1970 stay below this until the year 20983.
_INVERSION = 9_999_999_999
_COLUMNS = ["message_id", "state", "attempt", "at"]


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


class ActivityLog:
    """Delivery outcomes in per-minute partitions of the status table."""

    def __init__(self, table: TableClient) -> None:
        self._table = table

    def record(self, event: ActivityEvent) -> None:
        """Write one outcome; a failure is logged, never raised (the status record is written)."""
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

    def between(self, start: datetime, end: datetime, limit: int) -> ActivityWindow:
        """The events from `start` to `end` (whole minutes), newest first, at most `limit`."""
        events = self._query(
            "PartitionKey ge @newest and PartitionKey le @oldest",
            {"newest": partition_of(end), "oldest": partition_of(start)},
            limit + 1,
        )
        # Partitions come newest first, but the rows within one minute in key order.
        complete = len(events) <= limit
        events = sorted(events[:limit], key=lambda e: e.at, reverse=True)
        if complete:
            return ActivityWindow(events, minute_of(start), complete=True)
        # The oldest minute reached may have been read only in part: it does not count.
        return ActivityWindow(
            events, minute_of(events[-1].at) + timedelta(minutes=1), complete=False
        )

    def of_message(
        self, message_id: str, start: datetime, end: datetime, limit: int
    ) -> list[ActivityEvent]:
        """One message's events from `start` to `end`, oldest first.

        Within each minute's partition the rows of one message are one range of keys, so the
        service seeks to them instead of reading the minute's every row.
        """
        events = self._query(
            "PartitionKey ge @newest and PartitionKey le @oldest"
            " and RowKey ge @first and RowKey lt @after",
            {
                "newest": partition_of(end),
                "oldest": partition_of(start),
                # "-" is followed by "." in ASCII: this is every key starting "<id>-".
                "first": f"{message_id}-",
                "after": f"{message_id}.",
            },
            limit,
        )
        return sorted((e for e in events if e.message_id == message_id), key=lambda e: e.at)

    def _query(self, query: str, parameters: dict[str, str], limit: int) -> list[ActivityEvent]:
        events: list[ActivityEvent] = []
        try:
            entities = self._table.query_entities(
                query, parameters=parameters, select=_COLUMNS, results_per_page=1000
            )
            for entity in entities:
                event = _from_entity(entity)
                if event is not None:
                    events.append(event)
                if len(events) >= limit:
                    break
        except ResourceNotFoundError:
            return []  # no table yet: nothing was ever delivered
        except AzureError as error:
            raise StorageUnavailable(
                f"table {self._table.table_name}: {type(error).__name__}"
            ) from error
        return events


def _from_entity(entity: Any) -> ActivityEvent | None:
    try:
        state = MessageState(entity["state"])
        at: datetime = entity["at"]
        attempt = int(entity.get("attempt", 0))
    except (KeyError, TypeError, ValueError):
        return None  # not an activity row: skipped rather than failing the whole view
    return ActivityEvent(entity.get("message_id"), state, attempt, at)
