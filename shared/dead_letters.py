"""The poison queue as operators use it: list dead letters with their reasons, replay, purge."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from azure.core.exceptions import AzureError, ResourceNotFoundError
from azure.storage.queue import QueueClient, QueueMessage
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from shared.blobs import MessageBodyStore
from shared.errors import FieldProblem, InvalidMessage, StorageUnavailable
from shared.models import QueueEnvelope, field_problems
from shared.queue import MailQueue, summary
from shared.settings import DEFAULT_MAX_DEQUEUE_COUNT
from shared.status import FINAL_STATES, MessageState, MessageStatus, StatusStore

logger = logging.getLogger(__name__)

# Long enough to page through a large poison queue without seeing a message twice.
HOLD_SECONDS = 60


@dataclass(frozen=True)
class DeadLetterEntry:
    """One poison queue message as an operator sees it."""

    message_id: str | None
    reason: str
    attempts: int | None
    dead_lettered_at: datetime | None
    envelope: QueueEnvelope | None = field(repr=False)

    @property
    def blob(self) -> str | None:
        """The blob that holds the message's body, when it is too large for a queue message."""
        return self.envelope.blob if self.envelope is not None else None

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
        return document


@dataclass
class ReplayReport:
    """What a replay or purge did, message by message."""

    done: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    not_found: list[str] = field(default_factory=list)

    def to_document(self) -> dict[str, Any]:
        """The report as JSON."""
        return {"done": self.done, "skipped": self.skipped, "not_found": self.not_found}


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
        return DeadLetterEntry(envelope.id, reason, envelope.attempt, None, envelope)
    return DeadLetterEntry(envelope.id, record.reason, record.attempts, record.at, envelope)


def _unreadable_entry(text: str) -> DeadLetterEntry:
    try:
        document = json.loads(text)
        reason = str(document["dead_letter"]["reason"])
    except (ValueError, KeyError, TypeError):
        reason = "not a mailgate envelope"
    return DeadLetterEntry(None, reason, None, None, None)


class DeadLetters:
    """List, replay and purge the messages in the poison queue."""

    def __init__(
        self,
        poison: QueueClient,
        queue: MailQueue,
        bodies: MessageBodyStore,
        statuses: StatusStore,
        now: Callable[[], datetime],
        *,
        host_max_dequeue_count: int = DEFAULT_MAX_DEQUEUE_COUNT,
    ) -> None:
        self._poison = poison
        self._queue = queue
        self._bodies = bodies
        self._statuses = statuses
        self._now = now
        self._host_max_dequeue_count = host_max_dequeue_count

    def entries(self) -> list[DeadLetterEntry]:
        """Every dead letter, oldest first as the queue returns them."""
        entries = []
        for message in self._hold_all():
            entries.append(self._read(message.content))
            self._release(message)
        return entries

    def replay(self, ids: Collection[str] | None) -> ReplayReport:
        """Re-enqueue the chosen messages (None = all) as new: same id, attempts reset.

        A message leaves the poison queue only after its copy is on the mail queue. A body kept
        in a blob stays there: the copy names the same blob.
        """
        report = ReplayReport()
        for message in self._hold_all():
            entry = self._read(message.content)
            if not _chosen(entry, ids) or entry.message_id in report.done:
                self._release(message)
                continue
            if entry.envelope is None:
                report.skipped[entry.message_id or message.id] = "not a mailgate envelope"
                self._release(message)
                continue
            current = self._statuses.get(entry.envelope.id)
            if current is not None and current.state is MessageState.SENT:
                # A stray copy of a message that went out: replaying it would send it twice.
                report.skipped[entry.envelope.id] = "already sent; purge this copy"
                self._release(message)
                continue
            self._replay_one(entry.envelope)
            self._delete(message)
            report.done.append(entry.envelope.id)
        report.not_found = sorted(set(ids or ()) - set(report.done) - set(report.skipped))
        return report

    def confirm_purge(self, confirmation: str | None) -> None:
        """Refuse a purge unless the operator repeated the poison queue's name."""
        if confirmation != self._poison.queue_name:
            raise InvalidMessage(
                f"purging deletes mail for good: confirm with the poison queue's name, "
                f"{self._poison.queue_name!r}",
                (FieldProblem("#/confirm", f"must be {self._poison.queue_name!r}"),),
            )

    def purge(self, ids: Collection[str] | None) -> ReplayReport:
        """Delete the chosen dead letters (None = all) for good, and their bodies' blobs.

        See confirm_purge. A blob stays while a replayed copy of its message may still need it.
        """
        report = ReplayReport()
        purged_blobs: dict[str, str] = {}  # blob name: message id, once for all its copies
        for message in self._hold_all():
            entry = self._read(message.content)
            if _chosen(entry, ids):
                self._delete(message)
                report.done.append(entry.message_id or message.id)
                if entry.envelope is not None and entry.envelope.blob is not None:
                    purged_blobs[entry.envelope.blob] = entry.envelope.id
            else:
                self._release(message)
        for blob, message_id in purged_blobs.items():
            self._delete_body(message_id, blob)
        report.not_found = sorted(set(ids or ()) - set(report.done))
        return report

    def _read(self, text: str) -> DeadLetterEntry:
        return read_entry(text, self._host_max_dequeue_count)

    def _delete_body(self, message_id: str, blob: str) -> None:
        try:
            # A replayed copy of the message may be on the mail queue (or retrying) and need it.
            status = self._statuses.get(message_id)
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
                "Dead letter %s purged but its body, blob %s, was not deleted: %s",
                message_id,
                blob,
                error,
                extra={"mailgate_id": message_id},
            )

    def _replay_one(self, envelope: QueueEnvelope) -> None:
        now = self._now()
        # Reset the status before the copy is visible: delivery skips a message marked failed.
        self._statuses.put(
            MessageStatus(
                id=envelope.id,
                state=MessageState.QUEUED,
                accepted_at=envelope.accepted_at,
                updated_at=now,
                client=envelope.client,
            )
        )
        self._queue.enqueue(envelope.model_copy(update={"attempt": 1, "dead_letter": None}))
        logger.info(
            "Message %s replayed from the poison queue",
            envelope.id,
            extra={"mailgate_id": envelope.id},
        )

    def _hold_all(self) -> list[QueueMessage]:
        # All of them first: a message released while paging would be received again.
        try:
            pages = self._poison.receive_messages(
                messages_per_page=32, visibility_timeout=HOLD_SECONDS
            ).by_page()
            return [message for page in pages for message in page]
        except ResourceNotFoundError:
            return []
        except AzureError as error:
            raise StorageUnavailable(
                f"queue {self._poison.queue_name}: {type(error).__name__}"
            ) from error

    def _release(self, message: QueueMessage) -> None:
        try:
            self._poison.update_message(message, visibility_timeout=0)
        except AzureError as error:
            logger.warning(
                "Dead letter %s stays hidden for %ss: %s", message.id, HOLD_SECONDS, summary(error)
            )

    def _delete(self, message: QueueMessage) -> None:
        try:
            self._poison.delete_message(message)
        except AzureError as error:
            raise StorageUnavailable(
                f"queue {self._poison.queue_name}: {type(error).__name__}"
            ) from error


def _chosen(entry: DeadLetterEntry, ids: Collection[str] | None) -> bool:
    return ids is None or (entry.message_id is not None and entry.message_id in ids)


class DeadLetterSelection(BaseModel):
    """Which dead letters an operator means: some ids, or all of them."""

    model_config = ConfigDict(extra="forbid")

    ids: list[str] = Field(default_factory=list, max_length=1000)
    all: bool = False
    confirm: str | None = None

    @model_validator(mode="after")
    def _ids_or_all(self) -> DeadLetterSelection:
        if bool(self.ids) == self.all:
            raise ValueError('give either "ids" (a non-empty list) or "all": true')
        return self

    def chosen(self) -> list[str] | None:
        """The ids, or None for all."""
        return None if self.all else self.ids


def parse_selection(body: bytes) -> DeadLetterSelection:
    """Read an admin request body; raise InvalidMessage naming what is wrong."""
    try:
        return DeadLetterSelection.model_validate_json(body or b"{}")
    except ValidationError as error:
        problems = field_problems(error)
        raise InvalidMessage(
            f"the request has {len(problems)} invalid field(s)", problems
        ) from None
