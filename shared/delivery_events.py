"""SendGrid's delivery events: what became of a message after SendGrid accepted it.

SendGrid's Event Webhook posts batches of events (processed, delivered, bounce, open, ...), each
carrying the gateway's `mailgate_id` (from the mail's custom_args) and SendGrid's `sg_event_id`.
They are kept in the status table, in the message's own partition:

    PartitionKey <message id>, RowKey "status"      the gateway's record (shared/status.py)
    PartitionKey <message id>, RowKey "delivery"    DeliveryRecord: state, updated_at, timeline
    PartitionKey <message id>, RowKey "event-<sha256(sg_event_id)>"
                                                    one row per event ever recorded

The delivery record has a row of its own because the delivery function replaces the status
row whole and unconditionally: a field written there by anyone else would be lost.

**Once only.** An event row is only ever inserted, and its insert is the dedupe: a second insert
of the same sg_event_id fails. New event rows and the delivery record's update are written as
one entity-group transaction (one partition), the update conditional on the record's ETag: so
either an event is recorded and counted in the record, or neither. A transaction that finds an
event row already there drops that event as a duplicate; one that finds the record changed
reads it again. SendGrid's retries, a batch received twice, and two instances recording the
same events at once all end with each event recorded once.

**State.** Events arrive late and out of order, so the state is the furthest any event took the
message, never an earlier one: processed < deferred < delivered < dropped < bounced; open,
click, spamreport, unsubscribe and group_unsubscribe happen only to a delivered mail and count as
delivered. The result does not depend on the order the events come in.

**No mail content.** A timeline entry keeps the event type, its time, sg_event_id, and where
present the recipient's domain (never the address), the SMTP status, the reason with any
address reduced to `*@domain` and any URL to its path, the bounce type, and a clicked link
without query or fragment. The timeline keeps the newest MAX_TIMELINE_EVENTS; the event rows
keep them all.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import Enum
from typing import Any
from urllib.parse import urlsplit

from azure.core import MatchConditions
from azure.core.exceptions import AzureError, ResourceNotFoundError
from azure.data.tables import TableClient, TableErrorCode, TableTransactionError, UpdateMode
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from shared.errors import ConcurrentUpdate, InvalidEventBatch, MailgateError, StorageUnavailable
from shared.models import MAX_MESSAGE_ID_LENGTH, field_problems
from shared.status import StatusStore, by_message

logger = logging.getLogger(__name__)

DELIVERY_ROW = "delivery"
EVENT_ROW_PREFIX = "event-"
MAX_TIMELINE_EVENTS = 100
# A table string property holds 64 KiB of UTF-16: the timeline's JSON (ASCII) stays below that.
MAX_TIMELINE_CHARS = 30_000
MAX_TEXT_LENGTH = 200
MAX_CODE_LENGTH = 32
# A transaction holds at most 100 operations: the events' inserts and the record's update.
MAX_EVENTS_PER_TRANSACTION = 99
# Writes that lost to another instance are read and tried again this often.
MAX_WRITE_CONFLICTS = 10
# Messages of one batch are recorded in parallel, each in its own partition.
RECORDING_THREADS = 8
# 9999-12-31T23:59:59Z: later times do not fit a datetime, nor a table.
MAX_EVENT_TIMESTAMP = 253_402_300_799

# The gateway's ids are UUIDs; anything else is not one of its messages (and not a safe key).
# Matched whole (fullmatch): a `$` would let a final newline through.
_MESSAGE_ID = re.compile(rf"[A-Za-z0-9-]{{1,{MAX_MESSAGE_ID_LENGTH}}}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
# An address, or one percent-encoded in a URL: only its domain is kept. The local part stops at
# "/" and ":", so that an address inside a URL loses only itself.
_ADDRESS = re.compile(
    r"[A-Za-z0-9!#$%&*+=?^_`{|}~.-]+(?:@|%40)([A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?)",
    re.IGNORECASE,
)
_URL_QUERY = re.compile(r"(https?://[^\s?#\"'<>]*)[?#][^\s\"'<>]*", re.IGNORECASE)
_DOMAIN = re.compile(r"[^\s@<>\"'\\/]{1,253}")


class DeliveryState(str, Enum):
    """How far SendGrid's events took a message, from processed to bounced."""

    PROCESSED = "processed"
    DEFERRED = "deferred"
    DELIVERED = "delivered"
    DROPPED = "dropped"
    BOUNCED = "bounced"


# Each state outranks those before it: a later event never moves a message back.
_PRECEDENCE = {state: rank for rank, state in enumerate(DeliveryState)}

EVENT_STATES: dict[str, DeliveryState] = {
    "processed": DeliveryState.PROCESSED,
    "deferred": DeliveryState.DEFERRED,
    "delivered": DeliveryState.DELIVERED,
    # Only a delivered mail is opened, clicked, reported or unsubscribed from.
    "open": DeliveryState.DELIVERED,
    "click": DeliveryState.DELIVERED,
    "spamreport": DeliveryState.DELIVERED,
    "unsubscribe": DeliveryState.DELIVERED,
    "group_unsubscribe": DeliveryState.DELIVERED,
    "dropped": DeliveryState.DROPPED,
    "bounce": DeliveryState.BOUNCED,
}
RECORDED_EVENTS = frozenset(EVENT_STATES)


class SendGridEvent(BaseModel):
    """One event of SendGrid's Event Webhook: the fields the gateway reads, and any others."""

    model_config = ConfigDict(extra="allow")

    event: str = Field(description="processed, deferred, delivered, bounce, dropped, open, ...")
    sg_event_id: str = Field(
        pattern=r"^[\x21-\x7e]{1,256}$",
        description="SendGrid's id of this event; a retried event keeps it.",
    )
    timestamp: int = Field(
        ge=0, le=MAX_EVENT_TIMESTAMP, description="When it happened, in seconds since 1970."
    )
    mailgate_id: str | None = Field(
        default=None, description="The gateway's message id, from the mail's custom_args."
    )
    email: str | None = Field(default=None, description="The recipient; only its domain is kept.")
    sg_message_id: str | None = None
    reason: str | None = Field(default=None, description="Why it bounced or was dropped.")
    response: str | None = Field(default=None, description="The receiving server's answer.")
    status: str | None = Field(default=None, description="The SMTP status code, e.g. 5.1.1.")
    type: str | None = Field(default=None, description="A bounce's type: bounce or blocked.")
    url: str | None = Field(default=None, description="The link a click event followed.")


_BATCH = TypeAdapter(list[SendGridEvent])


def parse_event_batch(body: bytes) -> list[SendGridEvent]:
    """The events of a webhook body; InvalidEventBatch unless it is a JSON array of events."""
    try:
        return _BATCH.validate_json(body)
    except ValidationError as error:
        problems = field_problems(error)
        raise InvalidEventBatch(
            f"the body is not a batch of SendGrid events: {len(problems)} problem(s)",
            problems,
        ) from None


@dataclass(frozen=True)
class TimelineEntry:
    """One recorded event, as the timeline shows it: no address, no query string."""

    event: str
    at: datetime
    sg_event_id: str
    recipient_domain: str | None = None
    status: str | None = None
    reason: str | None = None
    bounce_type: str | None = None
    url: str | None = None

    @classmethod
    def from_event(cls, event: SendGridEvent) -> TimelineEntry:
        """The entry for a SendGrid event, keeping only what may be stored."""
        return cls(
            event=event.event,
            at=datetime.fromtimestamp(event.timestamp, timezone.utc),
            sg_event_id=event.sg_event_id,
            recipient_domain=recipient_domain(event.email),
            status=safe_text(event.status, MAX_CODE_LENGTH),
            reason=safe_text(event.reason or event.response),
            bounce_type=safe_text(event.type, MAX_CODE_LENGTH) if event.event == "bounce" else None,
            url=safe_url(event.url) if event.event == "click" else None,
        )

    @property
    def order(self) -> tuple[datetime, str]:
        """Chronological, ties broken by id, so that every instance sorts alike."""
        return (self.at, self.sg_event_id)

    def to_document(self) -> dict[str, Any]:
        """The entry as `GET /api/v1/messages/{id}` shows it (and the delivery row keeps it)."""
        document: dict[str, Any] = {
            "event": self.event,
            "at": self.at.isoformat(),
            "sg_event_id": self.sg_event_id,
        }
        for name in ("recipient_domain", "status", "reason", "bounce_type", "url"):
            value = getattr(self, name)
            if value is not None:
                document[name] = value
        return document

    @classmethod
    def from_document(cls, document: dict[str, Any]) -> TimelineEntry:
        """An entry read back from the delivery row."""
        return cls(**{**document, "at": datetime.fromisoformat(document["at"])})


@dataclass(frozen=True)
class DeliveryRecord:
    """What SendGrid's events say of one message: its state and its latest events."""

    message_id: str
    state: DeliveryState
    updated_at: datetime
    timeline: tuple[TimelineEntry, ...] = ()
    etag: str | None = None

    def to_document(self) -> dict[str, Any]:
        """The fields `GET /api/v1/messages/{id}` adds for it."""
        return {
            "delivery": self.state.value,
            "delivery_updated_at": self.updated_at.isoformat(),
            "timeline": [entry.to_document() for entry in self.timeline],
        }


def apply_events(
    record: DeliveryRecord | None,
    message_id: str,
    entries: Sequence[TimelineEntry],
    now: datetime,
) -> DeliveryRecord:
    """The record with `entries` applied: the furthest state, the newest events in time order."""
    states = [EVENT_STATES[entry.event] for entry in entries]
    if record is not None:
        states.append(record.state)
    state = max(states, key=_PRECEDENCE.__getitem__)
    by_id = {e.sg_event_id: e for e in (*(record.timeline if record else ()), *entries)}
    timeline = sorted(by_id.values(), key=lambda entry: entry.order)[-MAX_TIMELINE_EVENTS:]
    while len(timeline) > 1 and len(_timeline_json(timeline)) > MAX_TIMELINE_CHARS:
        timeline = timeline[1:]
    return DeliveryRecord(
        message_id=message_id,
        state=state,
        updated_at=now,
        timeline=tuple(timeline),
        etag=record.etag if record else None,
    )


@dataclass(frozen=True)
class RecordedEvents:
    """What recording some events of one message did."""

    recorded: int = 0
    duplicates: int = 0
    unknown: int = 0


class DeliveryEventStore:
    """Delivery records and event rows, in the status table beside each message's status row."""

    def __init__(self, table: TableClient) -> None:
        self._table = table

    def get(self, message_id: str) -> DeliveryRecord | None:
        """The delivery record of a message, or None before its first event."""
        try:
            entity = self._table.get_entity(message_id, DELIVERY_ROW, **by_message(message_id))
        except ResourceNotFoundError:
            return None
        except AzureError as error:
            raise StorageUnavailable(
                f"delivery record of {message_id}: {type(error).__name__}"
            ) from error
        return DeliveryRecord(
            message_id=message_id,
            state=DeliveryState(entity["state"]),
            updated_at=entity["updated_at"],
            timeline=tuple(
                TimelineEntry.from_document(entry) for entry in json.loads(entity["timeline"])
            ),
            etag=entity.metadata.get("etag"),
        )

    def record(
        self, message_id: str, entries: Sequence[TimelineEntry], now: datetime
    ) -> RecordedEvents:
        """Record each event not recorded before, with the delivery record, atomically.

        Raises StorageUnavailable, or ConcurrentUpdate after MAX_WRITE_CONFLICTS lost writes.
        """
        pending = list({entry.sg_event_id: entry for entry in entries}.values())
        duplicates = len(entries) - len(pending)
        recorded = 0
        conflicts = 0
        while pending:
            current = self.get(message_id)
            # The timeline is written with the rows: an event in it has its row already.
            known = {entry.sg_event_id for entry in current.timeline} if current else set()
            duplicates += sum(1 for entry in pending if entry.sg_event_id in known)
            pending = [entry for entry in pending if entry.sg_event_id not in known]
            if not pending:
                break
            chunk = pending[:MAX_EVENTS_PER_TRANSACTION]
            updated = apply_events(current, message_id, chunk, now)
            try:
                self._table.submit_transaction(
                    [("create", _event_row(message_id, entry, now)) for entry in chunk]
                    + [_record_write(updated)],
                    **by_message(message_id),
                )
            except TableTransactionError as error:
                # Set by the SDK from the service's answer (a TableErrorCode, or the raw string).
                code = getattr(error, "error_code", None)
                if (
                    code == TableErrorCode.ENTITY_ALREADY_EXISTS
                    and error.index < len(chunk)
                    and self._has_row(message_id, chunk[error.index])
                ):
                    # Recorded before, and gone from the timeline since: a duplicate.
                    duplicates += 1
                    pending.remove(chunk[error.index])
                    continue
                if code in (
                    TableErrorCode.ENTITY_ALREADY_EXISTS,  # the record, created meanwhile
                    TableErrorCode.UPDATE_CONDITION_NOT_SATISFIED,
                    TableErrorCode.CONDITION_NOT_MET,
                ):
                    conflicts += 1
                    if conflicts >= MAX_WRITE_CONFLICTS:
                        raise ConcurrentUpdate(
                            f"delivery record of {message_id} kept changing"
                        ) from error
                    continue
                raise StorageUnavailable(
                    f"events of {message_id}: {type(error).__name__} {code}"
                ) from error
            except AzureError as error:
                raise StorageUnavailable(
                    f"events of {message_id}: {type(error).__name__}"
                ) from error
            recorded += len(chunk)
            pending = pending[len(chunk) :]
        return RecordedEvents(recorded=recorded, duplicates=duplicates)

    def _has_row(self, message_id: str, entry: TimelineEntry) -> bool:
        # The service names the failed operation by its index; checking the row itself keeps a
        # misreported index from dropping an event that was never recorded.
        try:
            self._table.get_entity(
                message_id, event_row_key(entry.sg_event_id), **by_message(message_id)
            )
        except ResourceNotFoundError:
            return False
        except AzureError as error:
            raise StorageUnavailable(f"event of {message_id}: {type(error).__name__}") from error
        return True


@dataclass(frozen=True)
class EventBatchReport:
    """What became of the events of one webhook batch."""

    received: int = 0
    recorded: int = 0
    duplicates: int = 0
    unknown: int = 0
    ignored: int = 0
    unknown_ids: tuple[str, ...] = field(default=(), repr=False)

    def to_document(self) -> dict[str, int]:
        """The counts, as the webhook route answers them."""
        return {
            "received": self.received,
            "recorded": self.recorded,
            "duplicates": self.duplicates,
            "unknown": self.unknown,
            "ignored": self.ignored,
        }


def record_event_batch(
    events: Sequence[SendGridEvent],
    statuses: StatusStore,
    store: DeliveryEventStore,
    now: datetime,
) -> EventBatchReport:
    """Record a batch's events for the gateway's own messages; count the rest.

    Events of a type not recorded are `ignored`; events without a mailgate_id, or with one no
    status record has, are `unknown`: neither is an error. Raises StorageUnavailable or
    ConcurrentUpdate if some message's events could not be written; the batch can then be sent
    again as it is, as what was written is not written twice.
    """
    by_message: dict[str, list[TimelineEntry]] = defaultdict(list)
    ignored = unknown = 0
    unknown_ids: set[str] = set()
    for event in events:
        if event.event not in RECORDED_EVENTS:
            ignored += 1
        elif event.mailgate_id is None or not _MESSAGE_ID.fullmatch(event.mailgate_id):
            unknown += 1
            if event.mailgate_id is not None:
                unknown_ids.add(event.mailgate_id[:MAX_MESSAGE_ID_LENGTH])
        else:
            by_message[event.mailgate_id].append(TimelineEntry.from_event(event))

    def record_message(item: _MessageEvents) -> tuple[str, RecordedEvents]:
        message_id, entries = item
        if statuses.get(message_id) is None:
            return message_id, RecordedEvents(unknown=len(entries))
        return message_id, store.record(message_id, entries, now)

    outcomes = _each(record_message, list(by_message.items()))
    recorded = duplicates = 0
    for message_id, outcome in outcomes:
        recorded += outcome.recorded
        duplicates += outcome.duplicates
        unknown += outcome.unknown
        if outcome.unknown:
            unknown_ids.add(message_id)
    report = EventBatchReport(
        received=len(events),
        recorded=recorded,
        duplicates=duplicates,
        unknown=unknown,
        ignored=ignored,
        unknown_ids=tuple(sorted(unknown_ids)),
    )
    _log(report)
    return report


_MessageEvents = tuple[str, list[TimelineEntry]]


def _each(
    record_message: Callable[[_MessageEvents], tuple[str, RecordedEvents]],
    items: list[_MessageEvents],
) -> list[tuple[str, RecordedEvents]]:
    """Run `record_message` on every item, in parallel; raise the first failure after all ran."""
    if len(items) <= 1:
        return [record_message(item) for item in items]
    results: list[tuple[str, RecordedEvents]] = []
    failure: MailgateError | None = None
    with ThreadPoolExecutor(max_workers=min(RECORDING_THREADS, len(items))) as pool:
        for future in [pool.submit(record_message, item) for item in items]:
            try:
                results.append(future.result())
            except MailgateError as error:
                # The other messages still get their events: a retried batch then only has
                # this one's left to write.
                failure = failure or error
    if failure is not None:
        raise failure
    return results


def _log(report: EventBatchReport) -> None:
    logger.info(
        "SendGrid events: %s received, %s recorded, %s duplicate(s), %s for unknown messages, "
        "%s of types not recorded",
        report.received,
        report.recorded,
        report.duplicates,
        report.unknown,
        report.ignored,
    )
    if report.unknown_ids:
        logger.info(
            "SendGrid events for ids that are not messages of this gateway: %s",
            ", ".join(repr(message_id) for message_id in report.unknown_ids[:10]),
        )


def recipient_domain(email: str | None) -> str | None:
    """The domain of an address, lower-cased; the address itself is never kept."""
    if not email or "@" not in email:
        return None
    domain = email.rpartition("@")[2].strip().rstrip(">").lower()
    return domain if _DOMAIN.fullmatch(domain) else None


def safe_text(text: str | None, limit: int = MAX_TEXT_LENGTH) -> str | None:
    """A reason or code fit to keep: one line, addresses cut to `*@domain`, URLs to their path."""
    if not text:
        return None
    cleaned = _CONTROL.sub(" ", text)
    cleaned = _URL_QUERY.sub(r"\1", cleaned)
    cleaned = _ADDRESS.sub(r"*@\1", cleaned).strip()
    if len(cleaned) > limit:
        cleaned = cleaned[: limit - 1] + "…"
    return cleaned or None


def safe_url(url: str | None) -> str | None:
    """A clicked link without its query, fragment or credentials; None if not http(s)."""
    if not url:
        return None
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return None
    netloc = parts.hostname + (f":{port}" if port is not None else "")
    return safe_text(f"{parts.scheme.lower()}://{netloc}{parts.path}")


def event_row_key(sg_event_id: str) -> str:
    """The event row's key: a digest, as sg_event_id may hold characters a key may not."""
    return EVENT_ROW_PREFIX + hashlib.sha256(sg_event_id.encode()).hexdigest()


def _event_row(message_id: str, entry: TimelineEntry, now: datetime) -> dict[str, Any]:
    document = entry.to_document()
    return {
        "PartitionKey": message_id,
        "RowKey": event_row_key(entry.sg_event_id),
        **document,
        "at": entry.at,
        "received_at": now,
    }


def _record_write(record: DeliveryRecord) -> tuple[Any, ...]:
    entity = {
        "PartitionKey": record.message_id,
        "RowKey": DELIVERY_ROW,
        "state": record.state.value,
        "updated_at": record.updated_at,
        "timeline": _timeline_json(record.timeline),
    }
    if record.etag is None:
        return ("create", entity)
    return (
        "update",
        entity,
        {
            "mode": UpdateMode.REPLACE,
            "etag": record.etag,
            "match_condition": MatchConditions.IfNotModified,
        },
    )


def _timeline_json(timeline: Sequence[TimelineEntry]) -> str:
    return json.dumps(
        [entry.to_document() for entry in timeline], ensure_ascii=True, separators=(",", ":")
    )
