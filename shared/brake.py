"""A send-rate brake per provider, shared by every instance: `<PROVIDER>_MAX_EMAILS_PER_SECOND`.

Flex Consumption scales out to at least 40 instances (its lowest `maximumInstanceCount`), so
an instance count is no brake on how fast mail reaches a provider; a provider's quota (ACS
Email's per-minute limits, a relay's messages per minute) is. The brake counts **mails**, one
per send however many recipients it has: SendGrid's Mail Send, ACS Email's send operation and
an SMTP transaction are each one request to the provider, and per-second limits are on those
(a relay that counts recipients, as Amazon SES does, wants its rate divided by the recipients
a mail usually has).

The design is the client rates' (shared/clients.py), per second instead of per minute: one
Table row per braked provider (`PartitionKey = provider-<name>`, `RowKey = brake`, in the status
table) holds the current window (`window`, the second it starts at) and how many mails all
instances took in it (`count`). A window is one second with `floor(rate)` mails; a rate below 1
makes it `ceil(1 / rate)` seconds with `floor(rate * seconds)` mails (0.5: one mail every two
seconds), so the mails a window allows never exceed the rate. An instance leases tokens of the
window: with none left it raises the row's count by a grant, written only if nobody changed the
row since it was read (If-Match its ETag), and sends the next mails of that window from what it
holds, without a storage call. The first grant of a window is 1, each further one by the same
instance in that window twice the one before, at most `mails // MAX_LEASE_FRACTION` (at least
1). So:

- the rate is an upper bound across instances for each window the row counts (the grants of a
  window add up to at most its mails); tokens leased but unused when the window ends are lost;
- the row's window only moves forward: an instance whose clock is behind counts in the row's
  window, so instances cannot reset each other's count by writing alternate windows;
- an instance that knows from its copy that the window is spent waits for the next one, with
  no storage call, at most MAX_WAIT_SECONDS in all; after that delivery puts the mail back on
  the queue for a few seconds (shared/delivery.py): never dropped, never an attempt.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from azure.core.exceptions import (
    AzureError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
)
from azure.data.tables import TableClient

from shared.breaker import PARTITION_PREFIX
from shared.errors import StorageUnavailable
from shared.status import write_unless_changed

logger = logging.getLogger(__name__)

BRAKE_ROW = "brake"
# An instance leases at most a window's mails // MAX_LEASE_FRACTION (at least 1) at a time.
MAX_LEASE_FRACTION = 10
# Over the brake, a delivery waits this long at most for a token before it is put back.
MAX_WAIT_SECONDS = 1.0
# Conditional writes that lost to another instance are retried this often.
BRAKE_WRITE_ATTEMPTS = 10


@dataclass(frozen=True)
class BrakeRow:
    """A provider's brake row: the window it counts (the second it starts at), and the mails
    taken in it."""

    window: int = 0
    count: int = 0
    etag: str | None = None


@dataclass
class _Lease:
    """This instance's tokens of a provider's rate, and its copy of the row."""

    row: BrakeRow
    window: int = -1
    tokens: int = 0
    grant: int = 0


@dataclass(frozen=True)
class Window:
    """How a rate is counted: `mails` in each window of `seconds`."""

    seconds: int
    mails: int

    @classmethod
    def for_rate(cls, rate: float) -> Window:
        """Whole seconds, and never more mails in one than the rate allows."""
        seconds = 1 if rate >= 1 else math.ceil(1 / rate)
        return cls(seconds, max(1, math.floor(rate * seconds)))

    def start(self, now: float) -> int:
        """The second the window holding `now` starts at, as the row's `window` says it."""
        return math.floor(now / self.seconds) * self.seconds


def lease_grant(mails: int, count: int, previous_grant: int) -> int:
    """How many tokens an instance leases with none left: its block (1, then twice its last
    grant of the same window, at most mails // MAX_LEASE_FRACTION), within what is left."""
    block = min(2 * previous_grant if previous_grant else 1, max(1, mails // MAX_LEASE_FRACTION))
    return max(0, min(block, mails - count))


def window_of(now: float) -> int:
    """The second a time falls in: the window of a rate of 1 or more."""
    return math.floor(now)


class SendRateBrake:
    """The braked providers' rates, shared through their rows."""

    def __init__(
        self,
        table: TableClient,
        rates: Mapping[str, float],
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        max_wait_seconds: float = MAX_WAIT_SECONDS,
    ) -> None:
        self._table = table
        self.rates = dict(rates)
        self._windows = {provider: Window.for_rate(rate) for provider, rate in rates.items()}
        self._clock = clock
        self._sleep = sleep
        self._max_wait = max_wait_seconds
        self._leases: dict[str, _Lease] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._locks_lock = threading.Lock()

    def take(self, provider: str) -> bool:
        """Take one mail of `provider`'s rate, waiting for the next window if this one is spent
        (MAX_WAIT_SECONDS at most); False if none could be taken in that time. Always True
        for a provider without a brake, with no storage call.

        Raises StorageUnavailable when the row cannot be read or written: then the delivery
        waits on the queue, as for any storage failure, rather than exceed the rate.
        """
        window = self._windows.get(provider)
        if window is None:
            return True
        deadline = self._clock() + self._max_wait
        while True:
            with self._lock_for(provider):
                wait = self._take(provider, window)
            if wait is None:
                return True
            now = self._clock()
            if now + wait > deadline:
                return False
            self._sleep(wait)

    def _take(self, provider: str, plan: Window) -> float | None:
        """None once a token is taken, else how long until the next window; under the lock."""
        lease = self._leases.setdefault(provider, _Lease(BrakeRow()))
        for _ in range(BRAKE_WRITE_ATTEMPTS):
            now = self._clock()
            # Never the row's window moved back (see the module's docstring).
            window = max(plan.start(now), lease.row.window)
            if lease.window == window and lease.tokens > 0:
                lease.tokens -= 1
                return None
            count = lease.row.count if lease.row.window == window else 0
            previous = lease.grant if lease.window == window else 0
            grant = lease_grant(plan.mails, count, previous)
            if grant == 0:
                # Spent: the count only grows within a window, so this copy is proof enough.
                return max(0.001, window + plan.seconds - now)
            try:
                etag = self._write(provider, BrakeRow(window, count + grant, lease.row.etag))
            except (ResourceModifiedError, ResourceExistsError, ResourceNotFoundError):
                lease.row = self._read(provider)
                continue
            except AzureError as error:
                raise StorageUnavailable(
                    f"send-rate brake of {provider}: {type(error).__name__}"
                ) from error
            lease.row = BrakeRow(window, count + grant, etag)
            lease.window, lease.tokens, lease.grant = window, grant - 1, grant
            return None
        raise StorageUnavailable(
            f"the send-rate brake of {provider} kept changing; too many instances at once"
        )

    def _read(self, provider: str) -> BrakeRow:
        try:
            entity = self._table.get_entity(PARTITION_PREFIX + provider, BRAKE_ROW)
        except ResourceNotFoundError:
            return BrakeRow()
        except AzureError as error:
            raise StorageUnavailable(
                f"send-rate brake of {provider}: {type(error).__name__}"
            ) from error
        return _from_entity(entity)

    def _write(self, provider: str, row: BrakeRow) -> str | None:
        entity = {
            "PartitionKey": PARTITION_PREFIX + provider,
            "RowKey": BRAKE_ROW,
            # A double, exact for whole seconds: azure-data-tables writes a plain int as Edm.Int32
            # and refuses one of 2**31 or more (_serialize.py), which seconds reach in 2038.
            "window": float(row.window),
            "count": row.count,
        }
        return write_unless_changed(self._table, entity, row.etag)

    def _lock_for(self, provider: str) -> threading.Lock:
        with self._locks_lock:
            return self._locks.setdefault(provider, threading.Lock())


def _from_entity(entity: Any) -> BrakeRow:
    return BrakeRow(
        window=int(float(entity.get("window", 0))),
        count=int(entity.get("count", 0)),
        etag=entity.metadata.get("etag"),
    )
