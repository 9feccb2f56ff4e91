"""The gateway as one object per process: settings and clients built once, reused by every call."""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone

from shared.delivery import DeliveryOutcome, MailSender, deliver_message
from shared.errors import ConfigurationError, StorageUnavailable
from shared.queue import MailQueue
from shared.sendgrid_client import SendGridClient
from shared.settings import Settings
from shared.submission import AcceptedMessage, submit_message


def utc_now() -> datetime:
    """The current time, timezone-aware."""
    return datetime.now(timezone.utc)


def new_message_id() -> str:
    """A fresh gateway message id."""
    return str(uuid.uuid4())


class Gateway:
    """Accepts messages onto the queue and delivers them from it."""

    def __init__(
        self,
        settings: Settings,
        queue: MailQueue,
        sender: MailSender,
        *,
        now: Callable[[], datetime] = utc_now,
        new_id: Callable[[], str] = new_message_id,
    ) -> None:
        self.settings = settings
        self.queue = queue
        self.sender = sender
        self._now = now
        self._new_id = new_id
        self._queues_ready = False
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> Gateway:
        """A gateway talking to the configured storage account and SendGrid endpoint."""
        return cls(
            settings, MailQueue.from_settings(settings), SendGridClient.from_settings(settings)
        )

    def accept(self, body: bytes, content_type: str | None) -> AcceptedMessage:
        """Validate and durably queue one message."""
        self._ensure_queues()
        return submit_message(
            body,
            content_type,
            settings=self.settings,
            queue=self.queue,
            now=self._now,
            new_id=self._new_id,
        )

    def deliver(self, body: bytes) -> DeliveryOutcome:
        """Deliver one queue message, scheduling a retry or dead letter if it fails."""
        self._ensure_queues()
        return deliver_message(
            body, sender=self.sender, queue=self.queue, settings=self.settings, now=self._now
        )

    def _ensure_queues(self) -> None:
        if self._queues_ready:
            return
        with self._lock:
            if not self._queues_ready:
                self.queue.ensure_exists()
                self._queues_ready = True


@dataclass(frozen=True)
class HealthReport:
    """Which parts of the gateway work."""

    checks: dict[str, str] = field(default_factory=dict)

    @property
    def healthy(self) -> bool:
        """True when every check passed."""
        return all(result == "ok" for result in self.checks.values())


def check_health(gateway_factory: Callable[[], Gateway]) -> HealthReport:
    """Check the configuration and that storage answers."""
    try:
        gateway = gateway_factory()
    except ConfigurationError as error:
        return HealthReport({"configuration": f"error: {error}", "storage": "not checked"})
    try:
        gateway.queue.check()
    except StorageUnavailable as error:
        return HealthReport({"configuration": "ok", "storage": f"error: {error}"})
    return HealthReport({"configuration": "ok", "storage": "ok"})


_gateway: Gateway | None = None
_gateway_lock = threading.Lock()


def get_gateway() -> Gateway:
    """The process's gateway, built from the app settings on first use."""
    global _gateway
    if _gateway is None:
        with _gateway_lock:
            if _gateway is None:
                settings = Settings.from_env(os.environ)
                _gateway = Gateway.from_settings(settings)
    return _gateway
