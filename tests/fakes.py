"""In-memory stand-ins for the gateway's outside world: queues, stores and the provider.

The queue and store fakes subclass the real classes only so that the type checker accepts them
wherever the code takes one; no Azure client is created. Each can be told to fail an operation
with StorageUnavailable, and each can write what it did to a shared journal, so that a test can
check the order in which the gateway touched them.
"""

from __future__ import annotations

import collections
import itertools
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from typing import Any, cast

from azure.core import MatchConditions
from azure.core.exceptions import (
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
    ServiceRequestError,
)
from azure.data.tables import (
    TableClient,
    TableEntity,
    TableErrorCode,
    TableTransactionError,
    UpdateMode,
)
from azure.storage.queue import QueueClient, QueueMessage, QueueProperties

from shared.activity import ActivityEvent, ActivityLog, ActivityWindow, partition_of, window_of
from shared.blobs import MessageBodyStore, StoredBlob
from shared.clients import Client, ClientStore
from shared.errors import (
    ConcurrentUpdate,
    DeliveryError,
    IdempotencyKeyInUse,
    IdempotencyKeyReused,
    StorageUnavailable,
)
from shared.idempotency import PENDING_TIMEOUT, IdempotencyStore, KeyClaim, KeyRecord, digest
from shared.message_ids import storage_request_id
from shared.models import QueueEnvelope, StoredBody
from shared.queue import MailQueue, QueueMeasurement, QueueReport
from shared.sendgrid_client import build_payload
from shared.status import MessageStatus, StatusStore

QUEUE_OPERATIONS = frozenset(
    {"enqueue", "put_back", "dead_letter", "ensure_exists", "check", "depths", "measure"}
)
STATUS_OPERATIONS = frozenset(
    {"get", "create", "remove", "claim", "put", "check", "ensure_exists", "mark_replayed"}
)
KEY_OPERATIONS = frozenset({"claim", "complete", "release"})
BODY_OPERATIONS = frozenset({"put", "get", "delete", "ensure_exists", "check", "copy", "list"})


class Journal(list[str]):
    """What the fakes did, in order: "queue.enqueue", "status.put failed", "sendgrid.send"."""


class _Outage:
    """Operations that fail with StorageUnavailable: for good, or for the next few calls."""

    def __init__(self, component: str, operations: frozenset[str]) -> None:
        self._component = component
        self.operations = operations
        self._always: frozenset[str] = frozenset()
        self._times: dict[str, int] = {}

    def always(self, operations: Iterable[str]) -> None:
        self._always = self._checked(operations)

    def next_calls(self, operation: str, times: int) -> None:
        self._checked([operation])
        self._times[operation] = times

    def end(self) -> None:
        self._always = frozenset()
        self._times = {}

    def check(self, operation: str) -> None:
        if self._times.get(operation, 0) > 0:
            self._times[operation] -= 1
        elif operation not in self._always:
            return
        raise StorageUnavailable(f"{self._component}: ServiceRequestError: {operation} failed")

    def _checked(self, operations: Iterable[str]) -> frozenset[str]:
        chosen = frozenset(operations)
        unknown = chosen - self.operations
        if unknown:
            raise ValueError(f"not {self._component} operations: {sorted(unknown)}")
        return chosen


class _OutageControls:
    """What a test calls to make a fake storage component fail."""

    _outage: _Outage

    def make_unavailable(self, operations: Iterable[str] | None = None) -> None:
        """From now on, the given operations (all by default) raise StorageUnavailable."""
        self._outage.always(self._outage.operations if operations is None else operations)

    def fail_next(self, operation: str, times: int = 1) -> None:
        """The next `times` calls of `operation` raise StorageUnavailable."""
        self._outage.next_calls(operation, times)

    def make_available(self) -> None:
        """Storage answers again."""
        self._outage.end()


class JitterAt(random.Random):
    """A random source whose `uniform(a, b)` always lands at `fraction` of the way from a to b."""

    def __init__(self, fraction: float) -> None:
        super().__init__(0)
        self.fraction = fraction
        self.calls: list[tuple[float, float]] = []

    def uniform(self, a: float, b: float) -> float:
        self.calls.append((a, b))
        return a + (b - a) * self.fraction


@dataclass
class _StoredMessage:
    id: str
    content: str
    time_to_live: int | None
    visible: bool = True
    dequeue_count: int = 0
    pop_receipt: str = ""
    inserted_on: datetime | None = None
    # When it became visible, as a sequence number: receives and peeks go by it.
    visible_since: int = 0


class FakeQueueClient:
    """The QueueClient calls the gateway makes, on one in-memory queue with visibility.

    Like the service, a received message stays invisible until it is deleted or released
    (`update_message(..., visibility_timeout=0)`), a released message goes back in line behind
    those visible before it (Azurite sorts by next-visible time), and
    `receive_messages(...).by_page()` keeps asking for pages until one comes back empty. A real
    queue would then page forever over messages released during the same pass; this one raises
    AssertionError instead. Holds never expire here.
    """

    def __init__(self, queue_name: str, clock: Callable[[], datetime] | None = None) -> None:
        self.queue_name = queue_name
        self.unavailable = False
        # False: the queue does not exist (until create_queue), as before the host makes it.
        self.exists = True
        self.created = 0
        self._clock = clock or (lambda: datetime.now(timezone.utc))
        self._messages: list[_StoredMessage] = []
        self._ids = itertools.count(1)
        # update_message calls, as (message id, visibility timeout): releases and renewed holds.
        self.updates: list[tuple[str, int]] = []
        # Called at each receive, before it returns: a test's clock can move on there.
        self.on_receive: Callable[[], None] = lambda: None

    # -- what tests read --

    @property
    def texts(self) -> list[str]:
        """Every message's content, visible or not, oldest first."""
        return [m.content for m in self._messages]

    @property
    def time_to_live(self) -> list[int | None]:
        """The time-to-live each message was sent with."""
        return [m.time_to_live for m in self._messages]

    @property
    def visible_texts(self) -> list[str]:
        """The content of the messages a receive would return now, in the order it would."""
        return [m.content for m in self._in_line()]

    # -- the QueueClient surface --

    def create_queue(self) -> None:
        self._fail_if_unavailable()
        self.exists = True
        self.created += 1

    def get_queue_properties(self) -> QueueProperties:
        self._fail_if_unavailable()
        self._fail_if_missing()
        properties = QueueProperties()
        properties.approximate_message_count = len(self._messages)
        return properties

    def peek_messages(self, max_messages: int | None = None) -> list[QueueMessage]:
        """The visible messages at the front, left visible and undequeued."""
        self._fail_if_unavailable()
        self._fail_if_missing()
        return [
            QueueMessage(m.content, id=m.id, inserted_on=m.inserted_on, dequeue_count=0)
            for m in self._in_line()[: max_messages or 1]
        ]

    def send_message(
        self,
        content: str,
        *,
        visibility_timeout: int | None = None,
        time_to_live: int | None = None,
    ) -> None:
        self._fail_if_unavailable()
        self._messages.append(
            _StoredMessage(
                id=f"{self.queue_name}-{next(self._ids)}",
                content=content,
                time_to_live=time_to_live,
                visible=not visibility_timeout,
                inserted_on=self._clock(),
                visible_since=next(self._ids),
            )
        )

    def receive_messages(
        self,
        *,
        messages_per_page: int | None = None,
        visibility_timeout: int | None = None,
        max_messages: int | None = None,
    ) -> _ReceivedPages:
        self._fail_if_unavailable()
        return _ReceivedPages(self, messages_per_page or 1, max_messages)

    def update_message(
        self,
        message: QueueMessage | str,
        pop_receipt: str | None = None,
        *,
        visibility_timeout: int = 0,
    ) -> QueueMessage:
        """Hide the message again, or release it (0); a new pop receipt, as the service."""
        self._fail_if_unavailable()
        stored = self._find(message, pop_receipt)
        self.updates.append((stored.id, visibility_timeout))
        stored.visible = visibility_timeout == 0
        stored.visible_since = next(self._ids)
        stored.pop_receipt = f"receipt-{next(self._ids)}"
        return QueueMessage(stored.content, id=stored.id, pop_receipt=stored.pop_receipt)

    def delete_message(self, message: QueueMessage | str, pop_receipt: str | None = None) -> None:
        self._fail_if_unavailable()
        self._messages.remove(self._find(message, pop_receipt))

    # -- internals --

    def _receive(self, count: int) -> list[QueueMessage]:
        self._fail_if_unavailable()
        self.on_receive()
        page = []
        for stored in self._in_line()[:count]:
            stored.visible = False
            stored.dequeue_count += 1
            stored.pop_receipt = f"receipt-{next(self._ids)}"
            page.append(
                QueueMessage(
                    stored.content,
                    id=stored.id,
                    dequeue_count=stored.dequeue_count,
                    pop_receipt=stored.pop_receipt,
                )
            )
        return page

    def _in_line(self) -> list[_StoredMessage]:
        return sorted((m for m in self._messages if m.visible), key=lambda m: m.visible_since)

    def _find(self, message: QueueMessage | str, pop_receipt: str | None) -> _StoredMessage:
        message_id = message if isinstance(message, str) else message.id
        receipt = pop_receipt or (None if isinstance(message, str) else message.pop_receipt)
        for stored in self._messages:
            if stored.id == message_id and stored.pop_receipt == receipt:
                return stored
        raise ResourceNotFoundError(f"no message {message_id} with that pop receipt")

    def _fail_if_unavailable(self) -> None:
        if self.unavailable:
            raise ServiceRequestError(f"queue {self.queue_name}: connection refused")

    def _fail_if_missing(self) -> None:
        if not self.exists:
            raise ResourceNotFoundError(f"queue {self.queue_name}: QueueNotFound")


class _ReceivedPages:
    """What `receive_messages` returns: iterable by message, or page by page with by_page()."""

    def __init__(self, queue: FakeQueueClient, per_page: int, max_messages: int | None) -> None:
        self._queue = queue
        self._per_page = per_page
        self._left = max_messages

    def by_page(self) -> Iterator[list[QueueMessage]]:
        seen: set[str] = set()
        while self._left is None or self._left > 0:
            count = self._per_page if self._left is None else min(self._per_page, self._left)
            page = self._queue._receive(count)
            if not page:
                return
            again = {m.id for m in page} & seen
            if again:
                raise AssertionError(
                    f"message {sorted(again)[0]} was received twice while paging through "
                    f"{self._queue.queue_name}: it was released during the pass, and a real "
                    "queue would go on returning it forever"
                )
            seen.update(str(m.id) for m in page)
            if self._left is not None:
                self._left -= len(page)
            yield page

    def __iter__(self) -> Iterator[QueueMessage]:
        for page in self.by_page():
            yield from page


@dataclass(frozen=True)
class QueuedText:
    """One message put on the mail queue: the text as it would travel, its delay, and the
    message id its request would carry (shared/message_ids.py storage_request_id)."""

    text: str
    delay_seconds: int = 0
    request_id: str | None = None


class FakeMailQueue(_OutageControls, MailQueue):
    """The mail queue in memory, and its poison queue as a FakeQueueClient.

    Envelopes are kept as the JSON text the real queue would carry, so that what a test reads
    back went through the same serialisation.
    """

    def __init__(self, name: str = "mail-outbound", journal: Journal | None = None) -> None:
        self._name = name
        self.messages: list[QueuedText] = []
        self.poison_client = FakeQueueClient(f"{name}-poison")
        # The request id each dead letter's write would carry, in order.
        self.poison_request_ids: list[str | None] = []
        self.journal = journal if journal is not None else Journal()
        self.ensure_exists_calls = 0
        self.check_calls = 0
        self.depths_calls = 0
        self._outage = _Outage(f"queue {name}", QUEUE_OPERATIONS)

    @property
    def name(self) -> str:
        return self._name

    @property
    def poison_name(self) -> str:
        return self.poison_client.queue_name

    @property
    def poison(self) -> QueueClient:
        return cast(QueueClient, self.poison_client)

    @property
    def poison_texts(self) -> list[str]:
        """What is on the poison queue, oldest first."""
        return self.poison_client.texts

    def ensure_exists(self) -> None:
        self._outage.check("ensure_exists")
        self.ensure_exists_calls += 1

    def check(self) -> None:
        self._outage.check("check")
        self.check_calls += 1

    def depths(self) -> dict[str, int]:
        self._outage.check("depths")
        self.depths_calls += 1
        return {self.name: len(self.messages), self.poison_name: len(self.poison_texts)}

    def enqueue(self, envelope: QueueEnvelope, *, delay_seconds: int = 0) -> None:
        self._outage.check("enqueue")
        self.journal.append("queue.enqueue")
        self.messages.append(
            QueuedText(envelope.to_json(), delay_seconds, storage_request_id(envelope.id))
        )

    def put_back(self, text: str, *, delay_seconds: int, message_id: str | None = None) -> None:
        self._outage.check("put_back")
        self.journal.append("queue.put_back")
        self.messages.append(QueuedText(text, delay_seconds, storage_request_id(message_id)))

    def measure(self, now: datetime) -> QueueReport:
        self._outage.check("measure")
        return QueueReport(
            QueueMeasurement(self.name, len(self.messages), None),
            QueueMeasurement(self.poison_name, len(self.poison_texts), None),
        )

    def dead_letter(self, text: str, *, message_id: str | None = None) -> None:
        self._outage.check("dead_letter")
        self.journal.append("queue.dead_letter")
        self.poison_client.send_message(text, time_to_live=-1)
        self.poison_request_ids.append(storage_request_id(message_id))

    @property
    def envelopes(self) -> list[QueueEnvelope]:
        """The envelopes on the mail queue, decoded as the queue trigger would decode them."""
        return [QueueEnvelope.model_validate_json(m.text) for m in self.messages]


class FakeStatusStore(_OutageControls, StatusStore):
    """Status records in memory, with the table's ETag semantics.

    Every write gives the record a new etag. `claim` writes only if the caller's etag is the
    stored one (or, without an etag, only if there is no record yet) and raises
    ConcurrentUpdate otherwise, as the table's conditional update and insert do.
    """

    def __init__(self, journal: Journal | None = None) -> None:
        self.records: dict[str, MessageStatus] = {}
        # When each message was last replayed (StatusStore.mark_replayed).
        self.replayed: dict[str, datetime] = {}
        self.journal = journal if journal is not None else Journal()
        self.ensure_exists_calls = 0
        self.check_calls = 0
        # Runs after each successful get: a test's way to let another worker write meanwhile.
        self.after_get: Callable[[str], None] | None = None
        self._etags = itertools.count(1)
        self._outage = _Outage("table mailstatus", STATUS_OPERATIONS)

    @property
    def table(self) -> Any:
        raise AssertionError("a FakeStatusStore has no table: give the gateway keys= explicitly")

    def add(self, status: MessageStatus) -> MessageStatus:
        """Store a record as if someone had written it; returns it with its etag."""
        stored = replace(status, etag=f"etag-{next(self._etags)}")
        self.records[status.id] = stored
        return stored

    def ensure_exists(self) -> None:
        self._outage.check("ensure_exists")
        self.ensure_exists_calls += 1

    def check(self) -> None:
        self._outage.check("check")
        self.check_calls += 1

    def get(self, message_id: str) -> MessageStatus | None:
        self._outage.check("get")
        record = self.records.get(message_id)
        if self.after_get is not None:
            self.after_get(message_id)
        return record

    def claim(self, status: MessageStatus) -> MessageStatus:
        self._outage.check("claim")
        stored = self.records.get(status.id)
        if status.etag is None and stored is not None:
            raise ConcurrentUpdate(f"status of {status.id} changed meanwhile")
        if status.etag is not None and (stored is None or stored.etag != status.etag):
            raise ConcurrentUpdate(f"status of {status.id} changed meanwhile")
        self.journal.append(f"status.claim {status.state.value}")
        return self.add(status)

    def put(self, status: MessageStatus) -> MessageStatus:
        self._outage.check("put")
        self.journal.append(f"status.put {status.state.value}")
        return self.add(status)

    def mark_replayed(self, message_id: str, at: datetime) -> None:
        self._outage.check("mark_replayed")
        self.journal.append("status.mark_replayed")
        self.replayed[message_id] = at


class FakeActivityLog(_OutageControls, ActivityLog):
    """The activity log in memory: every recorded event, read back as the table would give it.

    Like the real log, `record` never raises; an outage makes it drop the event.
    """

    def __init__(self) -> None:
        self.events: list[ActivityEvent] = []
        self._outage = _Outage("table mailstatus", frozenset({"record", "read"}))

    def record(self, event: ActivityEvent) -> None:
        try:
            self._outage.check("record")
        except StorageUnavailable:
            return
        self.events.append(event)

    def between(self, start: datetime, end: datetime, limit: int) -> ActivityWindow:
        self._outage.check("read")
        # As the table returns them: newest minute first, then by key within a minute.
        chosen = sorted(
            (
                e
                for e in self.events
                if partition_of(end) <= partition_of(e.at) <= partition_of(start)
            ),
            key=lambda e: (partition_of(e.at), e.message_id or "", e.attempt),
        )
        return window_of(chosen, start, limit)


class FakeMessageBodyStore(_OutageControls, MessageBodyStore):
    """Message bodies in memory, by blob name, as the blob container keeps them."""

    def __init__(self, container: str = "mail-large", journal: Journal | None = None) -> None:
        self.blobs: dict[str, bytes] = {}
        # When each blob was last written; tests set it to make one old.
        self.modified: dict[str, datetime] = {}
        self.journal = journal if journal is not None else Journal()
        self.ensure_exists_calls = 0
        self.check_calls = 0
        self._container_name = container
        self._outage = _Outage(f"container {container}", BODY_OPERATIONS)

    @property
    def container_name(self) -> str:
        return self._container_name

    def stored(self, name: str) -> StoredBody:
        """A blob's content read as the gateway reads it."""
        return StoredBody.model_validate_json(self.blobs[name])

    def ensure_exists(self) -> None:
        self._outage.check("ensure_exists")
        self.ensure_exists_calls += 1

    def check(self) -> None:
        self._outage.check("check")
        self.check_calls += 1

    def put(self, name: str, data: bytes) -> None:
        self._outage.check("put")
        self.journal.append("blobs.put")
        self.blobs[name] = bytes(data)
        self.modified[name] = datetime.now(timezone.utc)

    def get(self, name: str) -> bytes | None:
        self._outage.check("get")
        return self.blobs.get(name)

    def delete(self, name: str) -> None:
        self._outage.check("delete")
        self.journal.append("blobs.delete")
        self.blobs.pop(name, None)
        self.modified.pop(name, None)

    def copy(self, source: str, target: str, **_: Any) -> bool:
        self._outage.check("copy")
        self.journal.append("blobs.copy")
        if source not in self.blobs:
            return False
        self.blobs[target] = self.blobs[source]
        self.modified[target] = datetime.now(timezone.utc)
        return True

    def list_older(
        self, prefix: str, before: datetime, *, max_listed: int
    ) -> tuple[list[StoredBlob], bool]:
        self._outage.check("list")
        names = sorted(n for n in self.blobs if n.startswith(prefix))
        listed = names[:max_listed]
        older = [StoredBlob(n, self.modified[n]) for n in listed if self.modified[n] < before]
        return older, len(names) > max_listed


class FakeIdempotencyStore(_OutageControls, IdempotencyStore):
    """Idempotency-Key records in memory, answering as the table-backed store does."""

    def __init__(self, retention: timedelta = timedelta(hours=24)) -> None:
        self.records: dict[str, KeyRecord] = {}
        self.released: list[KeyRecord] = []
        self._retention = retention
        self._outage = _Outage("table mailstatus", KEY_OPERATIONS)

    def claim(self, key: str, body: bytes, message_id: str, now: datetime) -> KeyClaim:
        self._outage.check("claim")
        ours = KeyRecord(digest(key), digest(body), message_id, now)
        existing = self.records.get(ours.key_hash)
        if existing is None or now - existing.created_at > self._retention:
            self.records[ours.key_hash] = ours
            return KeyClaim(ours, replay=False)
        if existing.body_hash != ours.body_hash:
            raise IdempotencyKeyReused("this Idempotency-Key was used with a different body")
        if existing.completed:
            return KeyClaim(existing, replay=True)
        if now - existing.created_at < PENDING_TIMEOUT:
            raise IdempotencyKeyInUse("a request with this Idempotency-Key is still being accepted")
        taken = KeyRecord(ours.key_hash, ours.body_hash, existing.message_id, now)
        self.records[ours.key_hash] = taken
        return KeyClaim(taken, replay=False)

    def complete(self, record: KeyRecord) -> None:
        self._outage.check("complete")
        self.records[record.key_hash] = replace(record, completed=True)

    def release(self, record: KeyRecord) -> None:
        self._outage.check("release")
        self.released.append(record)
        self.records.pop(record.key_hash, None)

    def record_for(self, key: str) -> KeyRecord | None:
        """The record of a key, looked up by the key itself."""
        return self.records.get(digest(key))


class FakeMailSender:
    """A provider client that records each payload and answers with scripted outcomes.

    Each outcome is a provider message id to return or a DeliveryError to raise; once the
    script runs out, every send succeeds with `default_id`.
    """

    def __init__(
        self,
        *outcomes: str | DeliveryError | None,
        default_id: str = "sg-message-id",
        journal: Journal | None = None,
        name: str = "sendgrid",
    ) -> None:
        self.name = name
        self.payloads: list[dict[str, Any]] = []
        self.envelopes: list[QueueEnvelope] = []
        self.journal = journal if journal is not None else Journal()
        self._outcomes = list(outcomes)
        self._default_id = default_id

    def will(self, *outcomes: str | DeliveryError | None) -> None:
        """Answer the next sends with these outcomes, in order."""
        self._outcomes.extend(outcomes)

    def send(self, envelope: QueueEnvelope) -> str | None:
        # What SendGrid would be sent, whichever provider this stands for.
        payload = build_payload(envelope)
        self.journal.append(f"{self.name}.send")
        self.envelopes.append(envelope)
        self.payloads.append(payload)
        outcome = self._outcomes.pop(0) if self._outcomes else self._default_id
        if isinstance(outcome, DeliveryError):
            raise outcome
        return outcome


TABLE_OPERATIONS = frozenset(
    {"create_table", "create", "get", "update", "upsert", "query", "transaction"}
)
# The service refuses a transaction of more operations.
MAX_TRANSACTION_OPERATIONS = 100


class FakeTableClient(_OutageControls):
    """The part of `azure.data.tables.TableClient` the stores use, in memory, with ETags and
    entity-group transactions (all or nothing, failing at the first operation the service would
    refuse, with its index and error code).

    Stores built on it are the real ones: only Azure's side of the table is replaced. Calls
    take the SDK's `request_id` keyword (the client request id, shared/message_ids.py), which
    only the wire shows: tests/integration/test_storage_request_ids.py checks it there.
    """

    def __init__(self, name: str = "fake") -> None:
        self.table_name = name
        self.rows: dict[tuple[str, str], dict[str, Any]] = {}
        self._etags: dict[tuple[str, str], str] = {}
        self._versions = itertools.count(1)
        self._outage = _Outage("table", TABLE_OPERATIONS)
        # Called before each conditional update: a test can change the row in between.
        self.before_update: Callable[[], object] | None = None
        # How many times each operation was called, failed ones included.
        self.calls: collections.Counter[str] = collections.Counter()
        # Called before each transaction, likewise; it stays set until a test clears it.
        self.before_transaction: Callable[[], object] | None = None
        self.transactions = 0

    def create_table(self) -> None:
        self._check("create_table")

    def create_entity(
        self, entity: dict[str, Any], *, request_id: str | None = None, **options: Any
    ) -> dict[str, Any]:
        self._check("create")
        key = (entity["PartitionKey"], entity["RowKey"])
        if key in self.rows:
            raise ResourceExistsError("EntityAlreadyExists")
        return self._store(key, dict(entity))

    def get_entity(
        self, partition_key: str, row_key: str, *, request_id: str | None = None
    ) -> TableEntity:
        self._check("get")
        key = (partition_key, row_key)
        if key not in self.rows:
            raise ResourceNotFoundError("ResourceNotFound")
        return self._entity(key)

    def update_entity(
        self,
        entity: dict[str, Any],
        mode: UpdateMode = UpdateMode.MERGE,
        *,
        etag: str | None = None,
        match_condition: MatchConditions | None = None,
        request_id: str | None = None,
    ) -> dict[str, Any]:
        if self.before_update is not None:
            hook, self.before_update = self.before_update, None
            hook()
        self._check("update")
        key = (entity["PartitionKey"], entity["RowKey"])
        if key not in self.rows:
            raise ResourceNotFoundError("ResourceNotFound")
        if match_condition not in (
            None,
            MatchConditions.Unconditionally,
            MatchConditions.IfNotModified,
        ):
            raise ValueError(f"Unsupported match condition: {match_condition}")  # as the SDK does
        if match_condition is MatchConditions.IfNotModified and not etag:
            raise ValueError("IfNotModified must be specified with etag.")  # as the SDK does
        if match_condition is MatchConditions.IfNotModified and etag != self._etags[key]:
            raise ResourceModifiedError("UpdateConditionNotSatisfied")
        row = {**self.rows[key], **entity} if mode is UpdateMode.MERGE else dict(entity)
        return self._store(key, row)

    def upsert_entity(
        self,
        entity: dict[str, Any],
        mode: UpdateMode = UpdateMode.MERGE,
        *,
        request_id: str | None = None,
    ) -> dict[str, Any]:
        self._check("upsert")
        key = (entity["PartitionKey"], entity["RowKey"])
        row = {**self.rows.get(key, {}), **entity} if mode is UpdateMode.MERGE else dict(entity)
        return self._store(key, row)

    def submit_transaction(
        self, operations: Iterable[tuple[Any, ...]], *, request_id: str | None = None
    ) -> list[dict[str, Any]]:
        if self.before_transaction is not None:
            self.before_transaction()
        self._check("transaction")
        operations = list(operations)
        if len({(entity["PartitionKey"]) for _, entity, *_ in operations}) > 1:
            raise ValueError("Partition Keys in the batch must all be the same")  # as the SDK does
        if len(operations) > MAX_TRANSACTION_OPERATIONS:
            raise transaction_error(0, "InvalidInput", "too many operations")
        rows, etags = dict(self.rows), dict(self._etags)
        results = []
        touched: set[tuple[str, str]] = set()
        for index, (kind, entity, *rest) in enumerate(operations):
            options: dict[str, Any] = rest[0] if rest else {}
            key = (entity["PartitionKey"], entity["RowKey"])
            if key in touched:
                # The service refuses a transaction that names one entity twice.
                raise transaction_error(index, TableErrorCode.INVALID_DUPLICATE_ROW)
            touched.add(key)
            if kind == "upsert":
                mode = options.get("mode", UpdateMode.MERGE)
                row = {**rows.get(key, {}), **entity} if mode is UpdateMode.MERGE else dict(entity)
            elif kind == "create":
                if key in rows:
                    raise transaction_error(index, TableErrorCode.ENTITY_ALREADY_EXISTS)
                row = dict(entity)
            elif kind == "update":
                if key not in rows:
                    raise transaction_error(index, TableErrorCode.RESOURCE_NOT_FOUND)
                if (
                    options.get("match_condition") is MatchConditions.IfNotModified
                    and options.get("etag") != etags[key]
                ):
                    raise transaction_error(index, TableErrorCode.UPDATE_CONDITION_NOT_SATISFIED)
                mode = options.get("mode", UpdateMode.MERGE)
                row = {**rows[key], **entity} if mode is UpdateMode.MERGE else dict(entity)
            else:
                raise ValueError(f"the fake table does not do {kind!r} in a transaction")
            rows[key] = row
            etags[key] = f'W/"{next(self._versions)}"'
            results.append({"etag": etags[key]})
        self.rows, self._etags = rows, etags
        self.transactions += 1
        return results

    def query_entities(self, query_filter: str, **options: Any) -> list[TableEntity]:
        self._check("query")
        name, _, value = query_filter.partition(" eq ")
        wanted = value.strip("'")
        return [self._entity(key) for key, row in self.rows.items() if str(row.get(name)) == wanted]

    def _check(self, operation: str) -> None:
        self.calls[operation] += 1
        # As Azure would fail: the store under test maps this to StorageUnavailable itself.
        try:
            self._outage.check(operation)
        except StorageUnavailable as error:
            raise ServiceRequestError(str(error)) from None

    def _store(self, key: tuple[str, str], row: dict[str, Any]) -> dict[str, Any]:
        self.rows[key] = row
        self._etags[key] = f'W/"{next(self._versions)}"'
        return {"etag": self._etags[key]}

    def _entity(self, key: tuple[str, str]) -> TableEntity:
        entity = TableEntity(self.rows[key])
        entity._metadata = {"etag": self._etags[key], "timestamp": None}
        return entity


def transaction_error(index: int, code: str, message: str = "refused") -> TableTransactionError:
    # As the SDK builds it from the service's answer: "<index>:<message>" and the error code.
    error = TableTransactionError(message=f"{index}:{message}\nErrorCode:{code}")
    error.error_code = code  # type: ignore[attr-defined]
    return error


class Clock:
    """A settable time.time() for rate windows."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Unmetered:
    """A rate that lets every request through: for tests of what the rate does not decide."""

    def take(self, client: Client, emails: int = 1) -> Client:
        return client

    def give_back(self, client: Client, emails: int) -> None:
        pass


def client_store(table: FakeTableClient | None = None, clock: Clock | None = None) -> ClientStore:
    """The real client store on an in-memory table."""
    return ClientStore(cast("TableClient", table or FakeTableClient()), clock=clock or Clock(0.0))
