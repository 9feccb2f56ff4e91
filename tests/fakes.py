"""In-memory stand-ins for the gateway's outside world: the mail queue and the provider."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from shared.errors import DeliveryError, StorageUnavailable
from shared.models import QueueEnvelope
from shared.queue import MailQueue

QUEUE_OPERATIONS = frozenset({"enqueue", "dead_letter", "ensure_exists", "check"})


@dataclass(frozen=True)
class QueuedText:
    """One message put on a queue: the text as it would travel, and its visibility delay."""

    text: str
    delay_seconds: int = 0


class FakeMailQueue(MailQueue):
    """The mail queue and its poison queue, in memory.

    It subclasses MailQueue only so that the type checker accepts it wherever the code takes
    one; no Azure client is created. Envelopes are kept as the JSON text the real queue
    would carry, so that what a test reads back went through the same serialisation.
    """

    def __init__(self, name: str = "mail-outbound") -> None:
        self._name = name
        self.messages: list[QueuedText] = []
        self.poison: list[str] = []
        self.ensure_exists_calls = 0
        self.check_calls = 0
        self._unavailable: frozenset[str] = frozenset()

    @property
    def name(self) -> str:
        return self._name

    @property
    def poison_name(self) -> str:
        return f"{self._name}-poison"

    def make_unavailable(self, operations: Iterable[str] = QUEUE_OPERATIONS) -> None:
        """From now on, the given operations raise StorageUnavailable."""
        unknown = set(operations) - QUEUE_OPERATIONS
        if unknown:
            raise ValueError(f"not queue operations: {sorted(unknown)}")
        self._unavailable = frozenset(operations)

    def make_available(self) -> None:
        """Storage answers again."""
        self._unavailable = frozenset()

    def ensure_exists(self) -> None:
        self._fail_if_unavailable("ensure_exists")
        self.ensure_exists_calls += 1

    def check(self) -> None:
        self._fail_if_unavailable("check")
        self.check_calls += 1

    def enqueue(self, envelope: QueueEnvelope, *, delay_seconds: int = 0) -> None:
        self._fail_if_unavailable("enqueue")
        self.messages.append(QueuedText(envelope.to_json(), delay_seconds))

    def dead_letter(self, text: str) -> None:
        self._fail_if_unavailable("dead_letter")
        self.poison.append(text)

    @property
    def envelopes(self) -> list[QueueEnvelope]:
        """The envelopes on the mail queue, decoded as the queue trigger would decode them."""
        return [QueueEnvelope.model_validate_json(m.text) for m in self.messages]

    def _fail_if_unavailable(self, operation: str) -> None:
        if operation in self._unavailable:
            raise StorageUnavailable(f"queue {self._name}: ServiceRequestError: {operation} failed")


class FakeMailSender:
    """A provider client that records each payload and answers with scripted outcomes.

    Each outcome is a provider message id to return or a DeliveryError to raise; once the
    script runs out, every send succeeds with `default_id`.
    """

    def __init__(
        self, *outcomes: str | DeliveryError | None, default_id: str = "sg-message-id"
    ) -> None:
        self.payloads: list[dict[str, Any]] = []
        self._outcomes = list(outcomes)
        self._default_id = default_id

    def send(self, payload: dict[str, Any]) -> str | None:
        self.payloads.append(payload)
        outcome = self._outcomes.pop(0) if self._outcomes else self._default_id
        if isinstance(outcome, DeliveryError):
            raise outcome
        return outcome
