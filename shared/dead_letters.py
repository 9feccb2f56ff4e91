"""The poison queue as operators use it: list dead letters with their reasons, replay, purge."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from shared.blobs import MessageBodyStore
from shared.delivery import keep_body
from shared.errors import FieldProblem, InvalidMessage, StorageUnavailable
from shared.models import (
    MAX_MESSAGE_ID_LENGTH,
    WRITTEN_BY_GATEWAY,
    ProviderError,
    QueueEnvelope,
    StoredBody,
    field_problems,
)
from shared.poison_walk import (
    DEFAULT_PAGE_LIMIT,
    MAX_CONTINUATION_LENGTH,
    MAX_PAGE_LIMIT,
    HeldMessage,
    PoisonWalker,
    Walk,
    WalkKind,
)
from shared.queue import MailQueue
from shared.replay_advice import HOST_MOVED, NOT_AN_ENVELOPE, Advice, advice_for, classify
from shared.sendgrid_client import provider_errors
from shared.settings import DEFAULT_MAX_DEQUEUE_COUNT, sender_allowed
from shared.status import FINAL_STATES, MessageState, MessageStatus, StatusStore

if TYPE_CHECKING:
    from azure.storage.queue import QueueClient

    from shared.clients import Client, ClientStore

logger = logging.getLogger(__name__)

MAX_SELECTED_IDS = 1000


@dataclass(frozen=True)
class DeadLetterEntry:
    """One poison queue message as an operator sees it."""

    message_id: str | None
    reason: str
    attempts: int | None
    dead_lettered_at: datetime | None
    envelope: QueueEnvelope | None = field(repr=False)
    status_code: int | None = None
    # SendGrid's own errors (bounded, masked) and the cause (shared/replay_advice.py).
    provider_errors: tuple[ProviderError, ...] = ()
    cause: str | None = None

    @property
    def blob(self) -> str | None:
        """The blob that holds the message's body, when it is too large for a queue message."""
        return self.envelope.blob if self.envelope is not None else None

    @property
    def advice(self) -> Advice | None:
        """Whether a replay can help, and what to do first; None when the cause is unknown."""
        return advice_for(self.cause)

    def to_document(self) -> dict[str, Any]:
        """The entry as the admin API and the operator command show it."""
        document: dict[str, Any] = {
            "id": self.message_id,
            "reason": self.reason,
            "attempts": self.attempts,
            "dead_lettered_at": self.dead_lettered_at.isoformat()
            if self.dead_lettered_at
            else None,
            "replayable": self.envelope is not None,
        }
        if self.blob is not None:
            document["blob"] = self.blob
        if self.status_code is not None:
            document["status_code"] = self.status_code
        if self.provider_errors:
            document["provider_errors"] = [e.model_dump() for e in self.provider_errors]
        if self.advice is not None:
            document.update(self.advice.to_document())
        return document


@dataclass
class ReplayReport:
    """What a replay or purge did, message by message."""

    done: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    not_found: list[str] = field(default_factory=list)
    # The walk goes on from here in the next call; None once it is over.
    continuation: str | None = None

    def merge(self, later: ReplayReport) -> None:
        """Add a later call's report of the same walk to this one."""
        self.done.extend(later.done)
        self.skipped.update(later.skipped)
        self.not_found = later.not_found
        self.continuation = later.continuation

    def to_document(self) -> dict[str, Any]:
        """The report as JSON."""
        return {
            "done": self.done,
            "skipped": self.skipped,
            "not_found": self.not_found,
            "continuation": self.continuation,
        }


def host_moved_reason(max_dequeue_count: int) -> str:
    """Why a bare envelope is in the poison queue: the host's copy keeps no reason of its own."""
    return f"moved to the poison queue by the Functions host after {max_dequeue_count} dequeues"


def read_entry(
    text: str, host_max_dequeue_count: int = DEFAULT_MAX_DEQUEUE_COUNT
) -> DeadLetterEntry:
    """Interpret a poison message: the gateway's dead letter, a bare envelope, or unreadable.

    A bare envelope is the host's copy of a queue message whose function failed
    `host_max_dequeue_count` times (host.json's maxDequeueCount): the gateway never writes one.
    """
    try:
        envelope = QueueEnvelope.model_validate_json(text)
    except ValidationError:
        return _unreadable_entry(text)
    record = envelope.dead_letter
    if record is None:
        reason = host_moved_reason(host_max_dequeue_count)
        return DeadLetterEntry(
            envelope.id, reason, envelope.attempt, None, envelope, cause=HOST_MOVED
        )
    errors = tuple(record.provider_errors or ())
    if record.provider_errors is None and record.provider_error:
        # Written before the entries were kept: read from SendGrid's body as it came, without
        # what the mail in this envelope says (a body in a blob is not read for a listing).
        body = envelope.model_dump(mode="json", include={"message", "sendgrid"})
        errors = provider_errors(record.provider_error, body)[0]
    return DeadLetterEntry(
        envelope.id,
        record.reason,
        record.attempts,
        record.at,
        envelope,
        status_code=record.status_code,
        provider_errors=errors,
        # Before causes were kept, only a status code tells one.
        cause=record.cause or classify(record.status_code, errors),
    )


def _unreadable_entry(text: str) -> DeadLetterEntry:
    try:
        document = json.loads(text)
        reason = str(document["dead_letter"]["reason"])
    except (ValueError, KeyError, TypeError):
        reason = "not a mailgate envelope"
    return DeadLetterEntry(None, reason, None, None, None, cause=NOT_AN_ENVELOPE)


@dataclass
class DeadLetterPage:
    """One call's dead letters, and the continuation for the next call (None: no more)."""

    entries: list[DeadLetterEntry]
    continuation: str | None

    def to_document(self) -> dict[str, Any]:
        """The page as the admin API shows it."""
        return {
            "dead_letters": [e.to_document() for e in self.entries],
            "continuation": self.continuation,
        }


class DeadLetters:
    """List, replay and purge the messages in the poison queue, a bounded call at a time.

    Each call walks at most `limit` messages (see shared/poison_walk.py) and answers with a
    continuation while the walk has more to go; `entries`, `replay` and `purge` follow a walk to
    its end, for the admin command and tests.
    """

    def __init__(
        self,
        poison: QueueClient,
        queue: MailQueue,
        bodies: MessageBodyStore,
        statuses: StatusStore,
        now: Callable[[], datetime],
        *,
        host_max_dequeue_count: int = DEFAULT_MAX_DEQUEUE_COUNT,
        monotonic: Callable[[], float] = time.monotonic,
        clients: ClientStore | None = None,
        allowed_senders: tuple[str, ...] | None = None,
    ) -> None:
        self._poison = poison
        # What a replay checks again (None: not checked, for tests of the walk alone).
        self._clients = clients
        self._allowed_senders = allowed_senders
        self._queue = queue
        self._bodies = bodies
        self._statuses = statuses
        self._now = now
        self._host_max_dequeue_count = host_max_dequeue_count
        self._walker = PoisonWalker(poison, monotonic)

    def list_page(
        self, limit: int = DEFAULT_PAGE_LIMIT, continuation: str | None = None
    ) -> DeadLetterPage:
        """Up to `limit` dead letters, in the order the queue returns them; all left visible."""
        entries: list[DeadLetterEntry] = []

        def visit(held: HeldMessage) -> bool:
            entries.append(self._read(held.message.content))
            return True

        walk = self._walk("list", None, continuation)
        if walk is None or self._walker.call(walk, _bounded(limit), visit):
            return DeadLetterPage(entries, None)
        return DeadLetterPage(entries, walk.continuation())

    def replay_page(
        self,
        ids: Collection[str] | None,
        limit: int = DEFAULT_PAGE_LIMIT,
        continuation: str | None = None,
    ) -> ReplayReport:
        """Re-enqueue the chosen messages (None = all) this call meets, as new: same id,
        attempts reset. The walk's last call (no continuation) fills in `not_found`.

        A message leaves the poison queue only after its copy is on the mail queue. A body kept
        in a blob stays there, and the copy names it; a body still under live/ (the host moved
        the message) is first copied to dead-letters/, out of retention's way, and the copy
        names that. A walk replays each id once: a
        message whose status changed since the walk began (replayed by it, a copy of it on its
        way, or dead-lettered again since) stays where it is.
        """
        report = ReplayReport()
        walk = self._walk("replay", ids, continuation)
        if walk is None:
            report.not_found = sorted(set(ids or ()))
            return report
        started_at = walk.started_at
        clients: dict[str, Client | None] = {}

        def visit(held: HeldMessage) -> bool:
            entry = self._read(held.message.content)
            if not walk.chosen(entry.message_id):
                return True
            walk.mark_found(entry.message_id)
            if entry.envelope is None:
                report.skipped[entry.message_id or str(held.message.id)] = "not a mailgate envelope"
                return True
            if entry.envelope.id in report.done:
                return True
            current = self._statuses.get(entry.envelope.id)
            if current is not None and current.updated_at >= started_at:
                return True
            if current is not None and current.state is MessageState.SENT:
                # A stray copy of a message that went out: replaying it would send it twice.
                report.skipped[entry.envelope.id] = "already sent; purge this copy"
                return True
            refusal = self._still_refused(entry.envelope, clients)
            if refusal is not None:
                report.skipped[entry.envelope.id] = refusal
                return True
            self._walker.hold(held)
            replayed = self._replay_one(entry.envelope)
            self._walker.delete(held)
            if replayed.blob != entry.envelope.blob:
                # The copy names the kept body; the live one would only wait for retention.
                self._delete_body(entry.envelope.id, entry.envelope.blob, replayed=True)
            report.done.append(entry.envelope.id)
            return False

        if self._walker.call(walk, _bounded(limit), visit, walk.all_found):
            report.not_found = walk.not_found()
        else:
            report.continuation = walk.continuation()
        return report

    def confirm_purge(self, confirmation: str | None) -> None:
        """Refuse a purge unless the operator repeated the poison queue's name."""
        if confirmation != self._poison.queue_name:
            raise InvalidMessage(
                f"purging deletes mail for good: confirm with the poison queue's name, "
                f"{self._poison.queue_name!r}",
                (FieldProblem("#/confirm", f"must be {self._poison.queue_name!r}"),),
            )

    def purge_page(
        self,
        ids: Collection[str] | None,
        limit: int = DEFAULT_PAGE_LIMIT,
        continuation: str | None = None,
    ) -> ReplayReport:
        """Delete the chosen dead letters (None = all) this call meets for good, and their
        bodies' blobs. The walk's last call (no continuation) fills in `not_found`.

        See confirm_purge. A blob stays while a replayed copy of its message may still need it.
        """
        report = ReplayReport()
        walk = self._walk("purge", ids, continuation)
        if walk is None:
            report.not_found = sorted(set(ids or ()))
            return report
        purged_blobs: dict[str, str] = {}  # blob name: message id, once for all its copies

        def visit(held: HeldMessage) -> bool:
            entry = self._read(held.message.content)
            if not walk.chosen(entry.message_id):
                return True
            walk.mark_found(entry.message_id)
            self._walker.hold(held)
            self._walker.delete(held)
            report.done.append(entry.message_id or str(held.message.id))
            if entry.envelope is not None and entry.envelope.blob is not None:
                purged_blobs[entry.envelope.blob] = entry.envelope.id
            return False

        try:
            done = self._walker.call(walk, _bounded(limit), visit)
        finally:
            # The blobs of what was purged before a failure too.
            for blob, message_id in purged_blobs.items():
                self._delete_body(message_id, blob)
        if done:
            report.not_found = walk.not_found()
        else:
            report.continuation = walk.continuation()
        return report

    def entries(self) -> list[DeadLetterEntry]:
        """Every dead letter: a listing walk followed to its end."""
        page = self.list_page(MAX_PAGE_LIMIT)
        entries = list(page.entries)
        while page.continuation is not None:
            page = self.list_page(MAX_PAGE_LIMIT, page.continuation)
            entries.extend(page.entries)
        return entries

    def replay(self, ids: Collection[str] | None) -> ReplayReport:
        """Replay the chosen messages (None = all): a replay walk followed to its end."""
        return _whole_walk(lambda continuation: self.replay_page(ids, MAX_PAGE_LIMIT, continuation))

    def purge(self, ids: Collection[str] | None) -> ReplayReport:
        """Purge the chosen messages (None = all): a purge walk followed to its end."""
        return _whole_walk(lambda continuation: self.purge_page(ids, MAX_PAGE_LIMIT, continuation))

    def _walk(
        self, kind: WalkKind, ids: Collection[str] | None, continuation: str | None
    ) -> Walk | None:
        if continuation is None:
            return self._walker.start(kind, ids, self._now())
        # The listing's continuation comes in the query, a replay's or purge's in the body.
        pointer = "?continuation" if kind == "list" else "#/continuation"
        return Walk.resume(continuation, kind, ids, self._now(), pointer)

    def _read(self, text: str) -> DeadLetterEntry:
        return read_entry(text, self._host_max_dequeue_count)

    def _delete_body(self, message_id: str, blob: str | None, *, replayed: bool = False) -> None:
        if blob is None:
            return
        try:
            # A replayed copy of the message may be on the mail queue (or retrying) and need it;
            # not the live body a replay left behind, its copy names the kept one.
            status = None if replayed else self._statuses.get(message_id)
            if status is not None and status.state not in FINAL_STATES:
                logger.info(
                    "Dead letter %s purged; its body, blob %s, stays for the message's live copy",
                    message_id,
                    blob,
                    extra={"mailgate_id": message_id},
                )
                return
            self._bodies.delete(blob)
        except StorageUnavailable as error:
            # The dead letter is gone already; a leftover blob costs only its space.
            logger.warning(
                "Dead letter %s %s but its body, blob %s, was not deleted: %s",
                message_id,
                "replayed" if replayed else "purged",
                blob,
                error,
                extra={"mailgate_id": message_id},
            )

    def _still_refused(
        self, envelope: QueueEnvelope, clients: dict[str, Client | None]
    ) -> str | None:
        """Why a dead letter may not go out again now, or None: the accept's checks repeated.

        Since it was accepted its client may have been disabled, removed or given other
        senders, and ALLOWED_SENDERS may have changed; a replay is a new send.
        """
        if self._clients is None or self._allowed_senders is None:
            return None
        client = None
        if envelope.client is not None:
            if envelope.client not in clients:
                clients[envelope.client] = self._clients.get(envelope.client)
            client = clients[envelope.client]
            if client is None:
                return f"its client {envelope.client!r} no longer exists; purge it"
            if not client.enabled:
                return f"its client {envelope.client!r} is disabled; enable it first, or purge"
        senders = self._senders(envelope)
        if senders is None:
            return f"its body, blob {envelope.blob}, cannot be read; purge it"
        for address in senders:
            domain = address.rpartition("@")[2].lower() or "(none)"
            if not sender_allowed(address, self._allowed_senders):
                return f"its sender (domain {domain}) is no longer allowed by ALLOWED_SENDERS"
            if client is not None and not client.may_send_as(address):
                return (
                    f"its sender (domain {domain}) is no longer among the senders of client "
                    f"{client.name!r}"
                )
        return None

    def _senders(self, envelope: QueueEnvelope) -> list[str] | None:
        """Every `from` of the message, read from its blob if it has one; None if unreadable."""
        if envelope.blob is None:
            return envelope.sender_addresses()
        content = self._bodies.get(envelope.blob)
        if content is None:
            return None
        try:
            stored = StoredBody.model_validate_json(content, context=WRITTEN_BY_GATEWAY)
            return envelope.with_body(stored).sender_addresses()
        except (ValidationError, ValueError):
            return None

    def _replay_one(self, envelope: QueueEnvelope) -> QueueEnvelope:
        """Queue the message again; return the envelope queued (naming its kept body)."""
        kept = keep_body(self._bodies, envelope)
        now = self._now()
        # Its outcomes so far stay in the record (the console's timeline shows the dead letter
        # before the replay): one read per replayed message, an operator's rare action.
        earlier = self._statuses.get(envelope.id)
        # Expiry counts this message's retention from now on, not from its acceptance: without
        # the mark, a record older than the retention would be deleted while its copy is queued,
        # and one already expired would be written where expiry never looks again.
        self._statuses.mark_replayed(envelope.id, now)
        # Reset the status before the copy is visible: delivery skips a message marked failed.
        self._statuses.put(
            MessageStatus(
                id=envelope.id,
                state=MessageState.QUEUED,
                accepted_at=envelope.accepted_at,
                updated_at=now,
                client=envelope.client,
                outcomes=earlier.outcomes if earlier is not None else (),
            )
        )
        replayed = kept.model_copy(
            update={"attempt": 1, "dead_letter": None, "postponed": None, "provider": None}
        )
        try:
            self._queue.enqueue(replayed)
        except StorageUnavailable:
            if kept.blob != envelope.blob and kept.blob is not None:
                # The dead letter still names the live body; nothing would name this copy.
                with contextlib.suppress(StorageUnavailable):
                    self._bodies.delete(kept.blob)
            raise
        logger.info(
            "Message %s replayed from the poison queue",
            envelope.id,
            extra={"mailgate_id": envelope.id},
        )
        return replayed


def _bounded(limit: int) -> int:
    return max(1, min(limit, MAX_PAGE_LIMIT))


def _whole_walk(call: Callable[[str | None], ReplayReport]) -> ReplayReport:
    report = call(None)
    while report.continuation is not None:
        report.merge(call(report.continuation))
    return report


MessageId = Annotated[str, Field(min_length=1, max_length=MAX_MESSAGE_ID_LENGTH)]
Continuation = Annotated[str, Field(min_length=1, max_length=MAX_CONTINUATION_LENGTH)]
PageLimit = Annotated[int, Field(ge=1, le=MAX_PAGE_LIMIT)]


class DeadLetterSelection(BaseModel):
    """Which dead letters an operator means (some ids, or all), and where a walk of them is."""

    model_config = ConfigDict(extra="forbid")

    ids: list[MessageId] = Field(default_factory=list, max_length=MAX_SELECTED_IDS)
    all: bool = False
    confirm: str | None = Field(default=None, max_length=63)
    limit: PageLimit = Field(
        default=DEFAULT_PAGE_LIMIT, description="The most messages this call goes through."
    )
    continuation: Continuation | None = Field(
        default=None,
        description="The previous call's `continuation`, with the same ids (or all): "
        "the walk goes on from there.",
    )

    @model_validator(mode="after")
    def _ids_or_all(self) -> DeadLetterSelection:
        if bool(self.ids) == self.all:
            raise ValueError('give either "ids" (a non-empty list) or "all": true')
        return self

    def chosen(self) -> list[str] | None:
        """The ids, or None for all."""
        return None if self.all else self.ids


class ListingQuery(BaseModel):
    """The query of a dead-letter listing: how many at most, and where the walk is."""

    model_config = ConfigDict(extra="ignore")

    limit: PageLimit = DEFAULT_PAGE_LIMIT
    continuation: Continuation | None = None


def parse_selection(body: bytes) -> DeadLetterSelection:
    """Read an admin request body; raise InvalidMessage naming what is wrong."""
    try:
        return DeadLetterSelection.model_validate_json(body or b"{}")
    except ValidationError as error:
        problems = field_problems(error)
        raise InvalidMessage(
            f"the request has {len(problems)} invalid field(s)", problems
        ) from None


def parse_listing_query(params: Mapping[str, str]) -> ListingQuery:
    """Read a listing's query parameters (others, such as `code`, are the host's); raise
    InvalidMessage naming the parameter that is wrong."""
    try:
        return ListingQuery.model_validate(
            {name: params[name] for name in ("limit", "continuation") if name in params}
        )
    except ValidationError as error:
        problems = tuple(
            FieldProblem("?" + p.pointer.removeprefix("#/"), p.detail)
            for p in field_problems(error)
        )
        raise InvalidMessage(
            f"the query has {len(problems)} invalid parameter(s)", problems
        ) from None
