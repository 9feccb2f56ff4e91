"""Clients: the apps allowed to send, each with a hashed key, its senders, features and a rate.

The rate counts emails, not requests, as SendGrid does: a request takes one per recipient
(shared/policy.py counts them), so a request to 1,000 recipients takes 1,000 of the minute.

A client's record and its rate counter live in one Table storage row (the client's name is
the partition), so every instance of the gateway sees the same count: authenticating a mail
request reads the row, and the count is raised only if nobody changed the row since it was read
(ETag), retrying on a conflict.

An instance does not write the row for every request: it leases tokens of the minute's
allowance. With too few left for a request of `n` emails, it raises the row's count by a grant
of `min(max(block, n - held), rate - count)` and keeps what the request does not use, so the
next requests of that minute cost no storage call. The first block of a minute is 1 token; each
further one by the same instance in that minute is twice the one before, at most
`rate // MAX_LEASE_FRACTION` (and at least 1). So:

- the rate is an exact upper bound across instances: every grant is written to the one row, and
  the grants of a minute add up to at most `rate_per_minute`;
- the row's minute (`window`) only ever moves forward: an instance whose clock is behind the
  one that wrote the row counts in the row's minute, not its own, so two instances with skewed
  clocks cannot reset each other's count by writing alternate minutes;
- tokens an instance was granted but did not use are lost when the minute ends (at most a tenth
  of the rate per instance, less one), so a busy client spread over many instances may get
  slightly fewer than its rate; a client sending now and then still costs one write a request;
- a client disabled, its key rotated or its features changed is seen as such within
  CLIENT_CHECK_SECONDS: an instance serving from its tokens reads the row again once its copy
  is older than that.

Keys are `mg_<client name>_<secret>`, the secret 32 random bytes. Only a SHA-256 digest of the
whole key is stored: a fast hash is enough for a key with 256 bits of entropy (there is nothing
to brute-force), and it keeps authentication to one table read. The key is shown once, when it
is made.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import random
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import (
    AzureError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
)
from azure.data.tables import TableClient, UpdateMode

from shared.errors import (
    ClientError,
    InvalidMessage,
    RateLimited,
    StorageUnavailable,
    Unauthorized,
)
from shared.policy import parse_features
from shared.settings import Settings, parse_senders, sender_allowed
from shared.status import table_client

logger = logging.getLogger(__name__)

KEY_PREFIX = "mg_"
CLIENT_ROW = "client"
DEFAULT_RATE_PER_MINUTE = 600
MAX_RATE_PER_MINUTE = 1_000_000
WINDOW_SECONDS = 60
# Optimistic writes of the rate counter that lost to another instance are retried this often.
RATE_WRITE_ATTEMPTS = 10
RATE_CONFLICT_PAUSE_SECONDS = 0.01
# An instance leases at most rate_per_minute // MAX_LEASE_FRACTION tokens (at least 1) at a time.
MAX_LEASE_FRACTION = 10
# An instance serving from its leased tokens checks the client's row at least this often.
CLIENT_CHECK_SECONDS = 2.0
# Each matched whole (fullmatch): a `$` would let a final newline through.
_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,38}[a-z0-9])?")
_SECRET = re.compile(r"[A-Za-z0-9_-]{43}")
_BEARER = re.compile(r"Bearer[ \t]+(?P<key>\S+)[ \t]*", re.IGNORECASE)


def check_name(name: str) -> str:
    """A client name: 1-40 lowercase letters, digits and inner hyphens; ValueError otherwise."""
    if not _NAME.fullmatch(name):
        raise ValueError(
            f"client name {name!r} must be 1 to 40 lowercase letters, digits and hyphens, "
            "starting and ending with a letter or digit"
        )
    return name


def check_rate(rate: int) -> int:
    """A rate limit in emails per minute; ValueError unless 1 to 1,000,000."""
    if not 1 <= rate <= MAX_RATE_PER_MINUTE:
        raise ValueError(f"the rate must be 1 to {MAX_RATE_PER_MINUTE:,} emails per minute")
    return rate


def key_digest(key: str) -> str:
    """What is stored of a key."""
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def new_key(name: str) -> str:
    """A fresh key for the named client."""
    return f"{KEY_PREFIX}{name}_{secrets.token_urlsafe(32)}"


def client_name_of(key: str) -> str | None:
    """The client a well-formed key names, or None for anything else."""
    if not key.startswith(KEY_PREFIX):
        return None
    name, _, secret = key[len(KEY_PREFIX) :].partition("_")
    if not _NAME.fullmatch(name) or not _SECRET.fullmatch(secret):
        return None
    return name


def bearer_key(authorization: str | None) -> str:
    """The key of an `Authorization: Bearer <key>` header; Unauthorized when there is none."""
    if not authorization:
        raise Unauthorized("send the client key as 'Authorization: Bearer <key>'")
    match = _BEARER.fullmatch(authorization)
    if match is None:
        raise Unauthorized("the Authorization header must be 'Bearer <key>'")
    return match["key"]


@dataclass(frozen=True)
class Client:
    """An app allowed to send through the gateway."""

    name: str
    senders: tuple[str, ...]
    rate_per_minute: int
    enabled: bool
    key_digest: str
    created_at: datetime
    # The rate counter: the minute (seconds since the epoch // 60) it counts, and its count.
    window: int = 0
    count: int = 0
    etag: str | None = None
    # The account-wide controls it may use (shared/policy.py FEATURES); none unless granted.
    features: frozenset[str] = frozenset()

    def may_send_as(self, address: str) -> bool:
        """Whether `address` is one of the client's senders, itself or by its @domain."""
        return sender_allowed(address, self.senders)

    def describe(self) -> dict[str, Any]:
        """What an operator may see of the client (never the key or its digest)."""
        return {
            "name": self.name,
            "senders": list(self.senders),
            "rate_per_minute": self.rate_per_minute,
            "features": sorted(self.features),
            "enabled": self.enabled,
            "created_at": self.created_at.isoformat(),
        }


@dataclass
class _Lease:
    """This instance's tokens of one client's rate, and its copy of the row they came from.

    Changed only under the client's lock.
    """

    # The row as this instance last read or wrote it, and when (the store's clock).
    client: Client
    checked_at: float
    # The window the tokens are for, how many are left, and the last grant in that window.
    window: int = -1
    tokens: int = 0
    grant: int = 0


class ClientStore:
    """Client records in their own table."""

    def __init__(self, table: TableClient, *, clock: Callable[[], float] = time.time) -> None:
        self.table = table
        self._clock = clock
        # Per client: a lock, and this instance's lease of the rate (with its copy of the row).
        self._locks: dict[str, threading.Lock] = {}
        self._locks_lock = threading.Lock()
        self._leases: dict[str, _Lease] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> ClientStore:
        """A store on the configured table (CLIENT_TABLE_NAME)."""
        return cls(table_client(settings, settings.client_table_name))

    def ensure_exists(self) -> None:
        """Create the table if it is missing."""
        try:
            self.table.create_table()
        except ResourceExistsError:
            pass
        except AzureError as error:
            raise StorageUnavailable(f"client table: {type(error).__name__}") from error

    # ---- for operators -------------------------------------------------------------------

    def create(
        self,
        name: str,
        senders: str,
        rate_per_minute: int = DEFAULT_RATE_PER_MINUTE,
        features: str = "",
    ) -> tuple[Client, str]:
        """A new client and its key (shown only now); ClientError if the name is taken.

        `features`: comma-separated names from shared/policy.py FEATURES; none by default.
        """
        try:
            client = Client(
                name=check_name(name),
                senders=parse_senders(senders, "SENDERS"),
                rate_per_minute=check_rate(rate_per_minute),
                enabled=True,
                key_digest="",
                created_at=datetime.fromtimestamp(self._clock(), timezone.utc),
                features=parse_features(features),
            )
        except ValueError as error:
            raise ClientError(str(error)) from None
        key = new_key(name)
        client = replace(client, key_digest=key_digest(key))
        try:
            metadata = self.table.create_entity(_to_entity(client))
        except ResourceExistsError:
            raise ClientError(f"a client named {name!r} exists already") from None
        except AzureError as error:
            raise StorageUnavailable(f"client table: {type(error).__name__}") from error
        return replace(client, etag=metadata.get("etag")), key

    def get(self, name: str) -> Client | None:
        """The named client, or None."""
        if not _NAME.fullmatch(name):
            return None
        try:
            entity = self.table.get_entity(name, CLIENT_ROW)
        except ResourceNotFoundError:
            return None
        except AzureError as error:
            raise StorageUnavailable(f"client table: {type(error).__name__}") from error
        return _from_entity(entity)

    def all(self) -> list[Client]:
        """Every client, by name."""
        try:
            entities = list(self.table.query_entities(f"RowKey eq '{CLIENT_ROW}'"))
        except ResourceNotFoundError:
            return []
        except AzureError as error:
            raise StorageUnavailable(f"client table: {type(error).__name__}") from error
        return sorted((_from_entity(e) for e in entities), key=lambda c: c.name)

    def set_enabled(self, name: str, enabled: bool) -> Client:
        """Enable or disable a client; its key stops (or starts) working at once, except that
        an instance serving mail from leased tokens notices within CLIENT_CHECK_SECONDS."""
        return self._update(name, {"enabled": enabled})

    def set_features(self, name: str, features: str) -> Client:
        """Replace the client's features (comma-separated, or `none`); ClientError naming an
        unknown one. An instance serving mail from leased tokens notices within
        CLIENT_CHECK_SECONDS."""
        try:
            chosen = parse_features(features)
        except ValueError as error:
            raise ClientError(str(error)) from None
        return self._update(name, {"features": _features_column(chosen)})

    def rotate(self, name: str) -> tuple[Client, str]:
        """A new key for the client; the old one stops working at once (for mail, within
        CLIENT_CHECK_SECONDS on an instance serving it from leased tokens)."""
        key = new_key(check_name(name))
        return self._update(name, {"key_digest": key_digest(key)}), key

    def _update(self, name: str, fields: dict[str, Any]) -> Client:
        try:
            self.table.update_entity(
                {"PartitionKey": name, "RowKey": CLIENT_ROW, **fields},
                mode=UpdateMode.MERGE,
            )
        except ResourceNotFoundError:
            raise ClientError(f"there is no client named {name!r}") from None
        except AzureError as error:
            raise StorageUnavailable(f"client table: {type(error).__name__}") from error
        client = self.get(name)
        if client is None:
            raise ClientError(f"there is no client named {name!r}")
        return client

    # ---- for requests --------------------------------------------------------------------

    def authenticate(self, authorization: str | None, *, counted: bool = False) -> Client:
        """The enabled client whose key the header carries; Unauthorized otherwise.

        `counted`: the request goes on to take() emails from the client's rate. Then the client
        may be this instance's copy of the row (from its rate lease) instead of a fresh read,
        if that copy was read or written less than CLIENT_CHECK_SECONDS ago; and a conditional
        write of the count fails if the row changed, so a key rotated, a client disabled or its
        features changed meanwhile are noticed within that time. This saves one storage call
        per accepted request. A fresh read of a counted request renews the lease's copy.
        """
        key = bearer_key(authorization)
        name = client_name_of(key)
        now = self._clock()
        if counted and name:
            with self._locks_lock:
                lease = self._leases.get(name)
            if lease is not None and now - lease.checked_at < CLIENT_CHECK_SECONDS:
                cached = lease.client
                if cached.enabled and _same_key(key, cached.key_digest):
                    return cached
        client = self.get(name) if name else None
        # Compared in constant time even when there is no such client.
        if not _same_key(key, client.key_digest if client else key_digest("")) or client is None:
            raise Unauthorized("the client key is not valid")
        if not client.enabled:
            raise Unauthorized(f"the client {client.name!r} is disabled", client.name)
        if counted:
            self._renew(client, now)
        return client

    def refuse_if_spent(self, client: Client) -> None:
        """RateLimited if this instance knows, without a storage call, that the client has no
        email left this minute: its copy of the row, checked less than CLIENT_CHECK_SECONDS
        ago, counts the whole rate, and it holds no token.

        Called before a request is parsed, so that a client over its rate costs no parsing;
        the exact count is taken (take) once the request is valid and its emails are known.
        """
        with self._lock_for(client.name):
            now = self._clock()
            lease = self._leases.get(client.name)
            if lease is None or lease.tokens > 0 or now - lease.checked_at >= CLIENT_CHECK_SECONDS:
                return
            counter = lease.client
            window = max(_window(now), counter.window)
            if counter.window == window and counter.count >= counter.rate_per_minute:
                raise _rate_limited(client.name, counter.rate_per_minute, window, now)

    def take(self, client: Client, emails: int = 1) -> Client:
        """Count a request's emails against the client's rate; RateLimited (429) when fewer
        are left this minute, InvalidMessage (400) when they are more than the whole rate.

        Most requests are served from tokens this instance leased for the current minute, with
        no storage call. With too few tokens, the instance writes the row (MERGE, If-Match its
        copy's ETag) raising `count` by a grant of `min(max(block, emails - held), rate -
        count)` and keeps what the request does not use: the first block of a minute is 1,
        each further one twice the one before, at most `max(1, rate // MAX_LEASE_FRACTION)`.
        A refused request takes nothing; the tokens held stay. Bounds:

        - all instances together never admit more than the rate in a minute (the grants are
          written to the one row, conditionally); tokens unused when the minute ends are lost,
          at most a tenth of the rate per instance (more only if a request that could not be
          queued gave its emails back);
        - the minute counted is the later of this instance's and the row's, so the row's
          minute never moves back however the instances' clocks differ;
        - before serving from tokens, the instance reads the row again (Unauthorized if the
          client is disabled or its key changed) once its copy was last read or written
          CLIENT_CHECK_SECONDS ago or more; a successful conditional write counts as a read.

        Threads of one instance take the client's lock: briefly for tokens, and across the
        storage call of a refill or a check (rare). A write that conflicts means another
        instance (or an operator) wrote the row; it is read again and the key and enabled flag
        checked again. A 429 is answered only from a row read or written in this call, so a
        disabled client over its rate gets 401. Returns this instance's copy of the row.
        """
        if emails < 1:
            raise ValueError(f"a request takes at least 1 email, not {emails}")
        with self._lock_for(client.name):
            now = self._clock()
            lease = self._leases.get(client.name)
            if lease is not None and lease.tokens >= emails and lease.window >= _window(now):
                if now - lease.checked_at >= CLIENT_CHECK_SECONDS or not _same_row_key(
                    lease.client, client
                ):
                    self._check(client, now)
                lease.tokens -= emails
                return lease.client
            return self._refill(client, lease, emails)

    def give_back(self, client: Client, emails: int) -> None:
        """Return emails a request took but did not send (it could not be queued) to this
        instance's tokens, if their minute is not over; no storage call."""
        with self._lock_for(client.name):
            lease = self._leases.get(client.name)
            if lease is not None and lease.window >= _window(self._clock()):
                lease.tokens += emails

    def _refill(self, client: Client, lease: _Lease | None, emails: int) -> Client:
        """Lease a grant of tokens from the row and use `emails` of them; under the lock."""
        counter = lease.client if lease is not None else client
        # Not read from the table (nothing to write against), not enabled, or another key than
        # the request's: read the row first.
        read_now = counter.etag is None or not counter.enabled or not _same_row_key(counter, client)
        if read_now:
            counter = self._check(client, self._clock())
        for attempt in range(1, RATE_WRITE_ATTEMPTS + 1):
            now = self._clock()
            # Never the row's minute moved back: an instance whose clock is behind another's
            # counts in the minute that one started (the row's), not in its own earlier one.
            window = max(_window(now), counter.window)
            rate = counter.rate_per_minute
            count = counter.count if counter.window == window else 0
            lease = self._leases.get(client.name)
            held = lease.tokens if lease is not None and lease.window == window else 0
            needed = emails - held
            if emails > rate or needed > rate - count:
                if not read_now:
                    # The count only grows within a minute, but the client may have been
                    # disabled (or its rate changed) since this instance's copy: refuse with
                    # what the row says.
                    counter, read_now = self._check(client, now), True
                    continue
                if emails > rate:
                    raise InvalidMessage(
                        f"the request makes {emails} emails, more than the client "
                        f"{client.name!r} may send in a minute ({rate}): it can never pass"
                    )
                raise _rate_limited(client.name, rate, window, now, emails, rate - count + held)
            previous = lease.grant if lease is not None and lease.window == window else 0
            block = min(2 * previous if previous else 1, max(1, rate // MAX_LEASE_FRACTION))
            grant = min(max(block, needed), rate - count)
            try:
                metadata = self.table.update_entity(
                    {
                        "PartitionKey": client.name,
                        "RowKey": CLIENT_ROW,
                        "window": window,
                        "count": count + grant,
                    },
                    mode=UpdateMode.MERGE,
                    etag=counter.etag,
                    match_condition=MatchConditions.IfNotModified,
                )
            except ResourceModifiedError:
                counter, read_now = self._check(client, self._clock()), True
                # Instances that collided spread out before trying again.
                time.sleep(random.uniform(0, RATE_CONFLICT_PAUSE_SECONDS * attempt))  # noqa: S311
                continue
            except AzureError as error:
                raise StorageUnavailable(f"client table: {type(error).__name__}") from error
            counter = replace(counter, window=window, count=count + grant, etag=metadata["etag"])
            # The write matched the copy's ETag: the copy was current, so this is a check too.
            self._leases[client.name] = _Lease(
                counter,
                checked_at=now,
                window=window,
                tokens=held + grant - emails,
                grant=grant,
            )
            return counter
        raise StorageUnavailable(
            f"the rate counter of {client.name!r} kept changing; too many concurrent requests"
        )

    def _renew(self, fresh: Client, now: float) -> None:
        """Keep a row just read (and found valid) as the lease's copy, if there is a lease."""
        with self._lock_for(fresh.name):
            lease = self._leases.get(fresh.name)
            if lease is not None and now >= lease.checked_at:
                lease.client, lease.checked_at = fresh, now

    def _check(self, client: Client, now: float) -> Client:
        """The row read again (see _reread), kept as this instance's copy; under the lock.

        `now` is taken before the read, so the copy is never thought fresher than it is.
        """
        fresh = self._reread(client)
        lease = self._leases.get(client.name)
        if lease is None:
            self._leases[client.name] = _Lease(fresh, checked_at=now)
        else:
            # Its tokens stay: they are counted in the row already.
            lease.client, lease.checked_at = fresh, now
        return fresh

    def _reread(self, client: Client) -> Client:
        """The client's row as it is now; Unauthorized if its key changed or it is disabled."""
        fresh = self.get(client.name)
        if fresh is None or not hmac.compare_digest(fresh.key_digest, client.key_digest):
            raise Unauthorized("the client key is not valid")
        if not fresh.enabled:
            raise Unauthorized(f"the client {client.name!r} is disabled", client.name)
        return fresh

    def _lock_for(self, name: str) -> threading.Lock:
        with self._locks_lock:
            return self._locks.setdefault(name, threading.Lock())


def _same_key(key: str, digest: str) -> bool:
    return hmac.compare_digest(key_digest(key), digest)


def _same_row_key(copy: Client, client: Client) -> bool:
    """Whether this instance's copy of the row has the key the request was checked against."""
    return hmac.compare_digest(copy.key_digest, client.key_digest)


def _rate_limited(
    name: str, rate: int, window: int, now: float, emails: int = 1, left: int = 0
) -> RateLimited:
    """The 429 for a request of `emails` with `left` of the minute's rate, and when to retry."""
    retry_after = max(1, math.ceil((window + 1) * WINDOW_SECONDS - now))
    wanted = f"; the request makes {emails} and {left} are left" if emails > 1 else ""
    return RateLimited(
        f"the client {name!r} may send {rate} email(s) per minute{wanted}; retry in {retry_after}s",
        retry_after,
    )


def _features_column(features: frozenset[str]) -> str:
    return ",".join(sorted(features))


def _window(now: float) -> int:
    """The minute a time falls in, as the row's `window` counts it."""
    return int(now // WINDOW_SECONDS)


def _to_entity(client: Client) -> dict[str, Any]:
    return {
        "PartitionKey": client.name,
        "RowKey": CLIENT_ROW,
        "senders": ",".join(client.senders),
        "rate_per_minute": client.rate_per_minute,
        "enabled": client.enabled,
        "key_digest": client.key_digest,
        "created_at": client.created_at,
        "window": client.window,
        "count": client.count,
        "features": _features_column(client.features),
    }


def _from_entity(entity: Any) -> Client:
    return Client(
        name=entity["PartitionKey"],
        senders=tuple(s for s in entity["senders"].split(",") if s),
        rate_per_minute=int(entity["rate_per_minute"]),
        enabled=bool(entity["enabled"]),
        key_digest=entity["key_digest"],
        created_at=entity["created_at"],
        window=int(entity.get("window", 0)),
        count=int(entity.get("count", 0)),
        etag=entity.metadata.get("etag"),
        # A row from before features existed has none: the secure default.
        features=frozenset(f for f in str(entity.get("features") or "").split(",") if f),
    )
