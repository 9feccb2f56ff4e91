"""A circuit breaker per provider, shared by every instance: one Table storage row each.

A provider that keeps failing gets no mail for a while, rather than every mail spending an
attempt (and a worker's time) on it first:

    closed ──(PROVIDER_BREAKER_FAILURES retryable failures in a row, within a minute)──> open
    open ──(PROVIDER_BREAKER_COOLDOWN_SECONDS later, one instance takes the trial)──> half_open
    half_open ──(the trial is sent)──> closed          half_open ──(the trial fails)──> open

- **What counts.** Retryable failures only, ambiguous ones too: a provider that takes the mail
  and then never answers (a read timeout) is as unusable as one refusing connections, and each
  such attempt holds a worker for the whole timeout. Counting one opens no door to a second
  copy: which provider the *same* mail's next attempt uses stays FAILOVER_ON_AMBIGUOUS's choice
  (shared/delivery.py keeps such a mail waiting for its provider). A permanent failure is the
  mail's own: the provider answered, which counts as a success here.
- **"In a row".** Successes write nothing, so the row cannot see them all: an instance writing
  a failure starts the count again if it sent a mail by that provider successfully since the
  row's run of failures began, or if that run began more than BREAKER_WINDOW_SECONDS ago. A
  provider failing now and then (1 % of mails) thus never opens; one failing every mail does
  after the threshold.
- **Sharing.** The row is `PartitionKey = provider-<name>`, `RowKey = breaker`, in the status
  table, in a partition of its own beside the activity rows (retention deletes only the
  messages' and the idempotency keys' partitions). Every change is written only if nobody
  changed the row since it was read (If-Match its ETag, `match_condition=IfNotModified`; the
  service answers 412 `UpdateConditionNotSatisfied` otherwise, which azure-data-tables raises as
  ResourceModifiedError: its `_error.py`, `_decode_error`; a first insert that loses is 409
  `EntityAlreadyExists`, ResourceExistsError): the loser reads the row again and decides again,
  so no update is ever lost and only one instance wins the trial. tests/integration/
  test_provider_rows.py shows it on Azurite with two hosts' clients writing at once.
- **Cost.** An instance keeps a copy of each row and reads it again at most every
  BREAKER_REFRESH_SECONDS; a failure writes once (more on a conflict), a success writes only
  while the breaker is not closed. A closed breaker costs a delivery no storage call.
- **Storage failing.** The breaker only advises: a row that cannot be read or written leaves
  the instance with the copy it has (closed before any), and delivery goes on.

A trial whose instance dies before it reports is given up after `trial_seconds` (the longest
a send can take, as delivery's claim): then another instance takes a trial.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import Enum
from typing import Any

from azure.core.exceptions import (
    AzureError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
)
from azure.data.tables import TableClient

from shared.status import write_unless_changed

logger = logging.getLogger(__name__)

PARTITION_PREFIX = "provider-"
BREAKER_ROW = "breaker"
# A run of failures older than this starts again at the next one.
BREAKER_WINDOW_SECONDS = 60.0
# An instance reads each breaker's row again once its copy is this old.
BREAKER_REFRESH_SECONDS = 5.0
# Conditional writes that lost to another instance are retried this often.
BREAKER_WRITE_ATTEMPTS = 10


class BreakerState(str, Enum):
    """Where a provider's breaker is."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class Verdict(str, Enum):
    """What an attempt may do with a provider: send, send as the trial, or skip it."""

    SEND = "send"
    TRIAL = "trial"
    SKIP = "skip"


@dataclass(frozen=True)
class Breaker:
    """One provider's breaker row (times in seconds since the epoch)."""

    state: BreakerState = BreakerState.CLOSED
    # The current run of retryable failures, and when it began.
    failures: int = 0
    run_started_at: float = 0.0
    opened_at: float = 0.0
    # While half-open: when the trial is given up if nobody reported it.
    trial_until: float = 0.0
    # How many times it opened (reopening after a failed trial included).
    opened: int = 0
    etag: str | None = None


@dataclass(frozen=True)
class BreakerPolicy:
    """The breaker's state machine, as pure functions of a row and the time."""

    failures: int
    cooldown_seconds: float
    window_seconds: float = BREAKER_WINDOW_SECONDS

    @property
    def enabled(self) -> bool:
        """False with PROVIDER_BREAKER_FAILURES 0: every provider is always tried."""
        return self.failures > 0

    def verdict(self, row: Breaker, now: float) -> Verdict:
        """Whether an attempt at `now` may use the provider."""
        if row.state is BreakerState.CLOSED:
            return Verdict.SEND
        due = (
            row.opened_at + self.cooldown_seconds
            if row.state is BreakerState.OPEN
            else row.trial_until
        )
        return Verdict.TRIAL if now >= due else Verdict.SKIP

    def reopens_in(self, row: Breaker, now: float) -> float:
        """Seconds until the provider may be tried again (0 when it may now)."""
        if row.state is BreakerState.OPEN:
            return max(0.0, row.opened_at + self.cooldown_seconds - now)
        if row.state is BreakerState.HALF_OPEN:
            return max(0.0, row.trial_until - now)
        return 0.0

    def take_trial(self, row: Breaker, now: float, trial_seconds: float) -> Breaker | None:
        """The row with this instance's trial taken; None if no trial is due."""
        if self.verdict(row, now) is not Verdict.TRIAL:
            return None
        return replace(row, state=BreakerState.HALF_OPEN, trial_until=now + trial_seconds)

    def after_failure(self, row: Breaker, now: float, last_success: float) -> Breaker | None:
        """The row after a retryable failure at `now`; None when it stays as it is.

        `last_success`: when this instance last sent by the provider (0 if never).
        """
        if row.state is BreakerState.OPEN:
            return None
        if row.state is BreakerState.HALF_OPEN:
            return self._opened(row, now)
        new_run = (
            row.failures == 0
            or now - row.run_started_at > self.window_seconds
            or last_success > row.run_started_at
        )
        failures = 1 if new_run else row.failures + 1
        counted = replace(
            row, failures=failures, run_started_at=now if new_run else row.run_started_at
        )
        return self._opened(counted, now) if failures >= self.failures else counted

    def after_success(self, row: Breaker) -> Breaker | None:
        """The row after a mail was sent (or answered for good); None when it stays."""
        if row.state is BreakerState.CLOSED:
            return None
        return replace(
            row, state=BreakerState.CLOSED, failures=0, run_started_at=0.0, trial_until=0.0
        )

    def after_unused_trial(self, row: Breaker, now: float) -> Breaker | None:
        """The row once a trial taken was not sent after all: due again at once."""
        if row.state is not BreakerState.HALF_OPEN:
            return None
        return replace(row, state=BreakerState.OPEN, opened_at=now - self.cooldown_seconds)

    @staticmethod
    def _opened(row: Breaker, now: float) -> Breaker:
        return replace(
            row, state=BreakerState.OPEN, opened_at=now, trial_until=0.0, opened=row.opened + 1
        )


@dataclass
class _Copy:
    row: Breaker
    read_at: float
    last_success: float = 0.0


class ProviderBreakers:
    """Every provider's breaker, as this instance sees the shared rows."""

    def __init__(
        self,
        table: TableClient,
        policy: BreakerPolicy,
        *,
        clock: Callable[[], float] = time.time,
        refresh_seconds: float = BREAKER_REFRESH_SECONDS,
    ) -> None:
        self._table = table
        self.policy = policy
        self._clock = clock
        self._refresh_seconds = refresh_seconds
        self._copies: dict[str, _Copy] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._locks_lock = threading.Lock()

    def verdict(self, provider: str, trial_seconds: float) -> Verdict:
        """Whether an attempt may use `provider` now; TRIAL means this attempt is its trial
        (it must report succeeded, failed or unused_trial)."""
        if not self.policy.enabled:
            return Verdict.SEND
        with self._lock_for(provider):
            now = self._clock()
            copy = self._current(provider, now)
            verdict = self.policy.verdict(copy.row, now)
            if verdict is not Verdict.TRIAL:
                return verdict
            taken = self._change(
                provider, lambda row, at: self.policy.take_trial(row, at, trial_seconds)
            )
            if taken is None:
                # Storage failed: better a second trial than none.
                return Verdict.TRIAL
            if taken.written:
                logger.warning(
                    "Provider %s breaker half-open after %.0fs open: one trial mail goes to it",
                    provider,
                    now - copy.row.opened_at,
                    extra={"provider": provider},
                )
                return Verdict.TRIAL
            # Another instance changed it first: decide on the row as it is now.
            verdict = self.policy.verdict(taken.row, now)
            return Verdict.SKIP if verdict is Verdict.TRIAL else verdict

    def reopens_in(self, provider: str) -> float:
        """Seconds until `provider` may be tried again, from this instance's copy."""
        with self._lock_for(provider):
            copy = self._copies.get(provider)
            return self.policy.reopens_in(copy.row, self._clock()) if copy else 0.0

    def succeeded(self, provider: str) -> None:
        """A mail went by `provider` (or it answered for good): a breaker not closed closes."""
        if not self.policy.enabled:
            return
        with self._lock_for(provider):
            now = self._clock()
            copy = self._current(provider, now)
            copy.last_success = now
            if copy.row.state is BreakerState.CLOSED:
                return
            before = copy.row
            changed = self._change(provider, lambda row, at: self.policy.after_success(row))
            if changed is not None and changed.written:
                logger.warning(
                    "Provider %s breaker closed: a mail was sent by it (it was %s, opened %s "
                    "time(s))",
                    provider,
                    before.state.value,
                    before.opened,
                    extra={"provider": provider},
                )

    def failed(self, provider: str) -> None:
        """A retryable (or ambiguous) failure of `provider`."""
        if not self.policy.enabled:
            return
        with self._lock_for(provider):
            now = self._clock()
            copy = self._current(provider, now)
            last_success = copy.last_success
            before = copy.row.state
            changed = self._change(
                provider, lambda row, at: self.policy.after_failure(row, at, last_success)
            )
            if changed is None or not changed.written:
                return
            row = changed.row
            if row.state is BreakerState.OPEN and before is not BreakerState.OPEN:
                logger.warning(
                    "Provider %s breaker %s after %s retryable failure(s): nothing goes to it "
                    "for %.0fs (opened %s time(s))",
                    provider,
                    "reopened, its trial failed" if before is BreakerState.HALF_OPEN else "opened",
                    row.failures,
                    self.policy.cooldown_seconds,
                    row.opened,
                    extra={"provider": provider},
                )

    def unused_trial(self, provider: str) -> None:
        """A trial taken but not sent (the mail was held or went no further): due again."""
        with self._lock_for(provider):
            self._change(provider, self.policy.after_unused_trial)

    def state(self, provider: str) -> Breaker:
        """This instance's copy of the provider's row, read again if it is old."""
        with self._lock_for(provider):
            return self._current(provider, self._clock()).row

    # ---- the row -------------------------------------------------------------------------

    def _current(self, provider: str, now: float) -> _Copy:
        """The copy, read again once older than the refresh interval; under the lock."""
        copy = self._copies.get(provider)
        if copy is not None and now - copy.read_at < self._refresh_seconds:
            return copy
        try:
            row = self._read(provider)
        except AzureError as error:
            logger.warning(
                "Provider %s breaker row not read (%s): going by this instance's copy",
                provider,
                type(error).__name__,
                extra={"provider": provider},
            )
            row = copy.row if copy is not None else Breaker()
        if copy is None:
            copy = self._copies[provider] = _Copy(row, now)
        else:
            copy.row, copy.read_at = row, now
        return copy

    def _change(
        self, provider: str, transition: Callable[[Breaker, float], Breaker | None]
    ) -> _Changed | None:
        """Apply `transition` to the row and write it if it changed, only over the row it was
        computed from; on a conflict, read again and decide again. None if storage failed."""
        copy = self._copies[provider]
        for attempt in range(BREAKER_WRITE_ATTEMPTS):
            now = self._clock()
            changed = transition(copy.row, now)
            if changed is None:
                return _Changed(copy.row, written=False)
            try:
                etag = self._write(provider, changed)
            except (ResourceModifiedError, ResourceExistsError, ResourceNotFoundError):
                if attempt + 1 == BREAKER_WRITE_ATTEMPTS:
                    break
                try:
                    copy.row, copy.read_at = self._read(provider), self._clock()
                except AzureError:
                    return None
                continue
            except AzureError as error:
                logger.warning(
                    "Provider %s breaker row not written (%s)",
                    provider,
                    type(error).__name__,
                    extra={"provider": provider},
                )
                return None
            copy.row, copy.read_at = replace(changed, etag=etag), now
            return _Changed(copy.row, written=True)
        logger.warning(
            "Provider %s breaker row kept changing: left as it is",
            provider,
            extra={"provider": provider},
        )
        return None

    def _read(self, provider: str) -> Breaker:
        try:
            entity = self._table.get_entity(PARTITION_PREFIX + provider, BREAKER_ROW)
        except ResourceNotFoundError:
            return Breaker()
        return _from_entity(entity)

    def _write(self, provider: str, row: Breaker) -> str | None:
        return write_unless_changed(self._table, _to_entity(provider, row), row.etag)

    def _lock_for(self, provider: str) -> threading.Lock:
        with self._locks_lock:
            return self._locks.setdefault(provider, threading.Lock())


@dataclass(frozen=True)
class _Changed:
    """The row after a change, and whether this instance wrote it."""

    row: Breaker
    written: bool


def _to_entity(provider: str, row: Breaker) -> dict[str, Any]:
    return {
        "PartitionKey": PARTITION_PREFIX + provider,
        "RowKey": BREAKER_ROW,
        "state": row.state.value,
        "failures": row.failures,
        "run_started_at": row.run_started_at,
        "opened_at": row.opened_at,
        "trial_until": row.trial_until,
        "opened": row.opened,
    }


def _from_entity(entity: Any) -> Breaker:
    try:
        state = BreakerState(entity.get("state", BreakerState.CLOSED.value))
    except ValueError:
        state = BreakerState.CLOSED
    return Breaker(
        state=state,
        failures=int(entity.get("failures", 0)),
        run_started_at=float(entity.get("run_started_at", 0.0)),
        opened_at=float(entity.get("opened_at", 0.0)),
        trial_until=float(entity.get("trial_until", 0.0)),
        opened=int(entity.get("opened", 0)),
        etag=entity.metadata.get("etag"),
    )
