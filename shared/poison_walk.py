"""A walk through the poison queue in calls that each finish within seconds.

A Storage queue has no cursor. A peek shows at most the 32 visible messages at the front and
cannot look past them; a receive hides what it returns for its visibility timeout. So a walk
receives: each call takes at most `limit` messages, a page of up to 32 at a time held for
HOLD_SECONDS (far longer than a call's CALL_BUDGET_SECONDS), hands each to the caller's visit
(which reads it, or acts on it and deletes it, or leaves it), and releases at once each message
left. Nothing stays hidden after the call that received it, so a listing, a replay or the
console right after see the whole queue.

A released message goes back in line behind the messages already visible: the queue returns
first the messages that have been visible the longest (Azurite sorts by next-visible time,
then insertion; Azure describes its queues as first in, first out in general, a message that
becomes visible again going back in line). So a walk passes each message once, and knows it
has come round when a receive returns one it released itself: the continuation names the first
few it released (its anchors). A receive that returns fewer messages than asked for has
returned every visible message, which ends the walk as well. Should the anchors all be deleted
meanwhile (another operator's purge), the walk still ends once it has handled as many messages
as the queue held when it began, plus one call's worth.

The continuation is opaque to callers: base64url JSON of the walk's state, checked when it comes
back (its kind, its selection, its age). A message another operator holds at the moment the walk
passes is not seen by it; a walk's final answer says what it did not find.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import logging
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Annotated, Literal

from azure.core.exceptions import AzureError, ResourceNotFoundError
from azure.storage.queue import QueueClient, QueueMessage
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.errors import FieldProblem, InvalidMessage, StorageUnavailable
from shared.queue import summary

logger = logging.getLogger(__name__)

WalkKind = Literal["list", "replay", "purge"]

# A page is held this long; every message of it is handled well within that (see hold()).
HOLD_SECONDS = 60
# A call receives no further page after this long, so it answers within seconds.
CALL_BUDGET_SECONDS = 10.0
# An action (a replay's copy and delete, a purge's delete) starts only with this much hold left.
ACT_MARGIN_SECONDS = 30.0
MAX_RECEIVE = 32  # the service's most per receive
DEFAULT_PAGE_LIMIT = 100
MAX_PAGE_LIMIT = 500
MAX_ANCHORS = 8
MAX_QUEUE_MESSAGE_ID_LENGTH = 64  # GUIDs in Azure and Azurite
MAX_CONTINUATION_LENGTH = 2048
# Longer than any walk a person or the admin command follows; an older one is refused.
WALK_LIFETIME = timedelta(hours=1)
CLOCK_SKEW = timedelta(minutes=5)
_BASE64URL = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


class _WalkState(BaseModel):
    """What a continuation carries: the walk's kind, start, anchors, count, bound, selection."""

    model_config = ConfigDict(extra="forbid")

    v: Literal[1]
    kind: WalkKind
    started_ms: int = Field(ge=0)
    anchors: list[Annotated[str, Field(min_length=1, max_length=MAX_QUEUE_MESSAGE_ID_LENGTH)]] = (
        Field(max_length=MAX_ANCHORS)
    )
    seen: int = Field(ge=0)
    bound: int = Field(ge=0)
    selection: str | None = Field(default=None, pattern=r"^[0-9a-f]{16}$")
    found: str | None = Field(default=None, max_length=200)


def selection_digest(ids: Collection[str] | None) -> str:
    """A short fingerprint of a selection, so a continuation goes back with the same one."""
    text = "\x00all" if ids is None else "\n".join(sorted(set(ids)))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class Walk:
    """One walk's state between calls; `continuation()` hands it to the caller."""

    kind: WalkKind
    started_at: datetime
    bound: int
    ids: tuple[str, ...] | None = None
    anchors: list[str] = field(default_factory=list)
    seen: int = 0
    found: set[int] = field(default_factory=set)

    @classmethod
    def begin(cls, kind: WalkKind, ids: Collection[str] | None, now: datetime, bound: int) -> Walk:
        """A new walk, started now, over at most `bound` messages."""
        started = now.replace(microsecond=now.microsecond // 1000 * 1000)
        return cls(kind, started, bound, None if ids is None else tuple(sorted(set(ids))))

    @classmethod
    def resume(
        cls,
        continuation: str,
        kind: WalkKind,
        ids: Collection[str] | None,
        now: datetime,
        pointer: str,
    ) -> Walk:
        """The walk a continuation carries on; InvalidMessage naming `pointer` if it cannot."""

        def refuse(detail: str) -> InvalidMessage:
            return InvalidMessage(f"the continuation {detail}", (FieldProblem(pointer, detail),))

        if len(continuation) > MAX_CONTINUATION_LENGTH or not set(continuation) <= _BASE64URL:
            raise refuse("is not one this API gave out")
        try:
            raw = base64.urlsafe_b64decode(continuation + "=" * (-len(continuation) % 4))
            state = _WalkState.model_validate_json(raw)
        except (binascii.Error, ValueError, ValidationError):
            raise refuse("is not one this API gave out") from None
        if state.kind != kind:
            raise refuse(f"belongs to a {state.kind} walk, not a {kind}")
        if state.selection != (None if kind == "list" else selection_digest(ids)):
            raise refuse("belongs to another selection: send the ids (or all) it was given for")
        started = datetime.fromtimestamp(state.started_ms / 1000, timezone.utc)
        if started > now + CLOCK_SKEW:
            raise refuse("is not one this API gave out")
        if started < now - WALK_LIFETIME:
            raise refuse("has expired: start the walk again without it")
        walk = cls(kind, started, state.bound, None if ids is None else tuple(sorted(set(ids))))
        walk.anchors = list(state.anchors)
        walk.seen = state.seen
        if walk.ids is not None:
            try:
                walk.found = _bits(state.found or "", len(walk.ids))
            except ValueError:
                raise refuse("is not one this API gave out") from None
        return walk

    def continuation(self) -> str:
        """The walk's state as an opaque token for the next call."""
        state = _WalkState(
            v=1,
            kind=self.kind,
            started_ms=round(self.started_at.timestamp() * 1000),
            anchors=self.anchors,
            seen=self.seen,
            bound=self.bound,
            selection=None if self.kind == "list" else selection_digest(self.ids),
            found=None if self.ids is None else _bitmap(self.found, len(self.ids)),
        )
        text = base64.urlsafe_b64encode(state.model_dump_json().encode()).decode()
        return text.rstrip("=")

    def chosen(self, message_id: str | None) -> bool:
        """Whether the selection takes a message with this gateway id (every one for `all`)."""
        return self.ids is None or (message_id is not None and message_id in self._positions)

    def mark_found(self, message_id: str | None) -> None:
        """Remember that a chosen id was in the poison queue."""
        if message_id is not None and message_id in self._positions:
            self.found.add(self._positions[message_id])

    def all_found(self) -> bool:
        """Whether every chosen id has been found (never, for `all`)."""
        return self.ids is not None and len(self.found) == len(self.ids)

    def not_found(self) -> list[str]:
        """The chosen ids the walk has not found."""
        return [id for i, id in enumerate(self.ids or ()) if i not in self.found]

    @functools.cached_property
    def _positions(self) -> dict[str, int]:
        return {id: i for i, id in enumerate(self.ids or ())}


def _bitmap(indexes: set[int], size: int) -> str:
    data = bytearray((size + 7) // 8)
    for index in indexes:
        data[index // 8] |= 1 << (index % 8)
    return base64.urlsafe_b64encode(bytes(data)).decode()


def _bits(text: str, size: int) -> set[int]:
    data = base64.urlsafe_b64decode(text) if text else b""
    if len(data) != (size + 7) // 8:
        raise ValueError("the bitmap does not fit the selection")
    return {i for i in range(size) if data[i // 8] >> (i % 8) & 1}


@dataclass
class HeldMessage:
    """A received poison message and until when (monotonic seconds) it stays hidden."""

    message: QueueMessage
    held_until: float


# A visit handles one message and says whether it stays in the poison queue (to be released).
Visit = Callable[[HeldMessage], bool]


class PoisonWalker:
    """Receives, holds and releases poison messages for walks: one call at a time."""

    def __init__(
        self, poison: QueueClient, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self._poison = poison
        self._monotonic = monotonic

    def start(self, kind: WalkKind, ids: Collection[str] | None, now: datetime) -> Walk | None:
        """A new walk over the messages in the queue now; None when there is no poison queue."""
        try:
            depth = self._poison.get_queue_properties().approximate_message_count or 0
        except ResourceNotFoundError:
            return None
        except AzureError as error:
            raise self._unavailable(error) from error
        return Walk.begin(kind, ids, now, depth + MAX_PAGE_LIMIT)

    def call(
        self,
        walk: Walk,
        limit: int,
        visit: Visit,
        finished: Callable[[], bool] = lambda: False,
    ) -> bool:
        """Visit up to `limit` messages of the walk; True when the walk is over.

        Every message received is visited before the call returns: one left to come back by
        itself would come back behind the anchors, and the walk would end without it. So near
        the end of its budget a call receives fewer, as many as it has time for at the pace
        of the messages before.
        """
        started = self._monotonic()
        deadline = started + CALL_BUDGET_SECONDS
        handled = 0
        while handled < limit and (now := self._monotonic()) < deadline:
            wanted = min(MAX_RECEIVE, limit - handled)
            if handled:
                pace = (now - started) / handled
                wanted = max(1, min(wanted, int((deadline - now) / pace) if pace else wanted))
            # The hold runs from the request (its answer may be slow to come).
            held_until = now + HOLD_SECONDS
            page = self._receive(wanted)
            for index, message in enumerate(page):
                if message.id in walk.anchors or walk.seen >= walk.bound or finished():
                    if walk.seen >= walk.bound:
                        logger.warning(
                            "A %s walk of %s stopped after %s messages: its first released "
                            "messages are gone from the queue",
                            walk.kind,
                            self._poison.queue_name,
                            walk.seen,
                        )
                    # Come round (or done): the rest were seen already, or are not needed.
                    for rest in page[index:]:
                        self._release(rest)
                    return True
                walk.seen += 1
                handled += 1
                held = HeldMessage(message, held_until)
                if visit(held) and self._release(held.message) and len(walk.anchors) < MAX_ANCHORS:
                    walk.anchors.append(str(held.message.id))
            if len(page) < wanted or finished():
                return True
        return False

    def hold(self, held: HeldMessage) -> None:
        """Make sure the message stays hidden long enough to act on it (renewing the hold)."""
        if held.held_until - self._monotonic() >= ACT_MARGIN_SECONDS:
            return
        try:
            updated = self._poison.update_message(
                held.message.id,
                pop_receipt=held.message.pop_receipt,
                visibility_timeout=HOLD_SECONDS,
            )
        except AzureError as error:
            raise self._unavailable(error) from error
        held.message.pop_receipt = updated.pop_receipt
        held.held_until = self._monotonic() + HOLD_SECONDS

    def delete(self, held: HeldMessage) -> None:
        """Delete a held message for good."""
        try:
            self._poison.delete_message(held.message)
        except AzureError as error:
            raise self._unavailable(error) from error

    def _receive(self, count: int) -> list[QueueMessage]:
        try:
            pages = self._poison.receive_messages(
                messages_per_page=count, max_messages=count, visibility_timeout=HOLD_SECONDS
            ).by_page()
            # One request: a second would return what this call released meanwhile.
            return list(next(pages, []))
        except ResourceNotFoundError:
            return []
        except AzureError as error:
            raise self._unavailable(error) from error

    def _release(self, message: QueueMessage) -> bool:
        # By id and receipt: given the message itself, the SDK would upload its content again.
        try:
            self._poison.update_message(
                message.id, pop_receipt=message.pop_receipt, visibility_timeout=0
            )
        except AzureError as error:
            logger.warning(
                "Dead letter %s stays hidden for up to %ss: %s",
                message.id,
                HOLD_SECONDS,
                summary(error),
            )
            return False
        return True

    def _unavailable(self, error: AzureError) -> StorageUnavailable:
        return StorageUnavailable(f"queue {self._poison.queue_name}: {summary(error)}")
