"""The operator console: what `GET /api/console` shows, and the page itself.

The page is one self-contained HTML document (its CSS and JS are inlined from
`shared/console_page/` and allowed by hash in its Content-Security-Policy, computed here from
the files); it reads everything it shows from the operator JSON routes, with the admin key the
operator types into it or with the platform's sign-in (see console.js). The data comes
from the queues' depths, the activity log's last hour (see shared/activity.py for why a log
and not the status records) and point reads of the latest messages' status records.
"""

from __future__ import annotations

import base64
import functools
import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from shared.activity import ActivityEvent, ActivityLog, minute_of
from shared.delivery_events import DeliveryEventStore
from shared.errors import MessageNotFound
from shared.queue import MailQueue
from shared.status import (
    MessageState,
    MessageStatus,
    StatusStore,
    known_message_id,
    waiting_status,
)

WINDOW_MINUTES = 60
# Rows of the last hour read per summary: 10 pages of the table service's 1,000. Past about
# 160 deliveries a minute the chart covers less than the hour, and says from when.
ACTIVITY_READ_LIMIT = 10_000
# Each is one point read of a status record per summary.
LATEST_MESSAGES = 20

PAGE_FOLDER = Path(__file__).resolve().parent / "console_page"
_COUNTED = {
    MessageState.SENT: "sent",
    MessageState.RETRYING: "retried",
    MessageState.FAILED: "failed",
}


def message_document(status: MessageStatus) -> dict[str, Any]:
    """A status record as the console shows it: the client's view plus the client's name."""
    return {**status.to_document(), "client": status.client}


class Console:
    """Reads what the operator page shows."""

    def __init__(
        self,
        queue: MailQueue,
        statuses: StatusStore,
        activity: ActivityLog,
        events: DeliveryEventStore,
        now: Callable[[], datetime],
        *,
        client_names: Callable[[], Iterable[str]],
        status_retention: timedelta,
    ) -> None:
        self._queue = queue
        self._statuses = statuses
        self._activity = activity
        self._events = events
        self._now = now
        # Whose a message waiting on the queue is, read only for an id with no record.
        self._client_names = client_names
        self._status_retention = status_retention

    def summary(self) -> dict[str, Any]:
        """Queue depths, outcomes per minute over the last hour, and the latest messages."""
        now = self._now()
        depths = self._queue.depths()
        first_minute = minute_of(now) - timedelta(minutes=WINDOW_MINUTES - 1)
        window = self._activity.between(first_minute, now, ACTIVITY_READ_LIMIT)
        return {
            "generated_at": now.isoformat(),
            "queues": {
                "mail": {"name": self._queue.name, "depth": depths.get(self._queue.name, 0)},
                "poison": {
                    "name": self._queue.poison_name,
                    "depth": depths.get(self._queue.poison_name, 0),
                },
            },
            "minutes": per_minute(window.events, first_minute),
            "activity": {
                "rows_read": len(window.events),
                "limit": ACTIVITY_READ_LIMIT,
                "complete": window.complete,
                "covers_from": window.covers_from.isoformat(),
            },
            "latest": self._latest(window.events),
        }

    def message(self, message_id: str) -> dict[str, Any]:
        """Any message's status record (with what SendGrid's events said of it, once there are
        any) and the latest delivery outcomes the record keeps; MessageNotFound, without a storage
        call for an id the gateway never gives."""
        message_id = known_message_id(message_id)
        status = self._statuses.get(message_id) or self._waiting(message_id)
        if status is None:
            raise MessageNotFound(f"no message has the id {message_id!r}")
        document = message_document(status)
        delivery = self._events.get(status.id)
        if delivery is not None:
            document.update(delivery.to_document())
        return {"status": document, "activity": [o.to_document() for o in status.outcomes]}

    def _waiting(self, message_id: str) -> MessageStatus | None:
        """The `queued` status of a message still on the queue, whichever client's its id says
        it is (shared/message_ids.py); None if it is no client's."""
        now = self._now()
        for client in self._client_names():
            status = waiting_status(message_id, client, now, self._status_retention)
            if status is not None:
                return status
        return None

    def _latest(self, events: list[ActivityEvent]) -> list[dict[str, Any]]:
        # The messages with the newest outcomes, each read once for its current state (a
        # replayed message is `queued` again, whatever its last outcome was).
        documents: list[dict[str, Any]] = []
        seen: set[str] = set()
        for event in events:
            if event.message_id is None or event.message_id in seen:
                continue
            seen.add(event.message_id)
            status = self._statuses.get(event.message_id)
            if status is not None:
                documents.append(message_document(status))
            if len(seen) >= LATEST_MESSAGES:
                break
        return documents


def per_minute(events: list[ActivityEvent], first_minute: datetime) -> list[dict[str, Any]]:
    """Sent, retried and failed counts for each minute from `first_minute`, oldest first."""
    counts = [dict.fromkeys(_COUNTED.values(), 0) for _ in range(WINDOW_MINUTES)]
    for event in events:
        index = int((minute_of(event.at) - first_minute).total_seconds()) // 60
        name = _COUNTED.get(event.state)
        if name is not None and 0 <= index < WINDOW_MINUTES:
            counts[index][name] += 1
    return [
        {"minute": (first_minute + timedelta(minutes=n)).isoformat(), **counted}
        for n, counted in enumerate(counts)
    ]


@dataclass(frozen=True)
class ConsolePage:
    """The page's HTML and the headers it must be served with."""

    html: str
    headers: dict[str, str]


def _csp_hash(text: str) -> str:
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return "'sha256-" + base64.b64encode(digest).decode("ascii") + "'"


@functools.cache
def console_page() -> ConsolePage:
    """The page, with its CSS and JS inlined and a policy that allows exactly those.

    It is the same for every request: nothing of the request, the admin key above all, is
    written into it. The page asks for the key and keeps it in the tab's sessionStorage.
    """
    template = (PAGE_FOLDER / "console.html").read_text(encoding="utf-8")
    style = (PAGE_FOLDER / "console.css").read_text(encoding="utf-8")
    script = (PAGE_FOLDER / "console.js").read_text(encoding="utf-8")
    html = template.replace("/*@STYLE@*/", style).replace("/*@SCRIPT@*/", script)
    policy = "; ".join(
        [
            "default-src 'none'",
            f"script-src {_csp_hash(script)}",
            f"style-src {_csp_hash(style)}",
            "img-src data:",
            "connect-src 'self'",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
            "require-trusted-types-for 'script'",
        ]
    )
    return ConsolePage(
        html,
        {
            "Content-Security-Policy": policy,
            # An older link may carry the key in the address (?code=): never send it on as a
            # Referer, never keep a copy.
            "Referrer-Policy": "no-referrer",
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
            "X-Frame-Options": "DENY",
        },
    )
