"""Clients: the apps allowed to send, each with a hashed key, its senders and a rate limit.

A client's record and its rate counter live in one Table storage row (the client's name is
the partition), so every instance of the gateway sees the same counts: authenticating a mail
request reads the row, and taking one message from the minute's allowance writes it back only
if nobody changed it since (ETag), retrying on a conflict.

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

from shared.errors import ClientError, RateLimited, StorageUnavailable, Unauthorized
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
_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,38}[a-z0-9])?$")
_SECRET = re.compile(r"^[A-Za-z0-9_-]{43}$")
_BEARER = re.compile(r"^Bearer[ \t]+(?P<key>\S+)[ \t]*$", re.IGNORECASE)


def check_name(name: str) -> str:
    """A client name: 1-40 lowercase letters, digits and inner hyphens; ValueError otherwise."""
    if not _NAME.match(name):
        raise ValueError(
            f"client name {name!r} must be 1 to 40 lowercase letters, digits and hyphens, "
            "starting and ending with a letter or digit"
        )
    return name


def check_rate(rate: int) -> int:
    """A rate limit in messages per minute; ValueError unless 1 to 1,000,000."""
    if not 1 <= rate <= MAX_RATE_PER_MINUTE:
        raise ValueError(f"the rate must be 1 to {MAX_RATE_PER_MINUTE:,} messages per minute")
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
    if not _NAME.match(name) or not _SECRET.match(secret):
        return None
    return name


def bearer_key(authorization: str | None) -> str:
    """The key of an `Authorization: Bearer <key>` header; Unauthorized when there is none."""
    if not authorization:
        raise Unauthorized("send the client key as 'Authorization: Bearer <key>'")
    match = _BEARER.match(authorization)
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

    def may_send_as(self, address: str) -> bool:
        """Whether `address` is one of the client's senders, itself or by its @domain."""
        return sender_allowed(address, self.senders)

    def describe(self) -> dict[str, Any]:
        """What an operator may see of the client (never the key or its digest)."""
        return {
            "name": self.name,
            "senders": list(self.senders),
            "rate_per_minute": self.rate_per_minute,
            "enabled": self.enabled,
            "created_at": self.created_at.isoformat(),
        }


class ClientStore:
    """Client records in their own table."""

    def __init__(self, table: TableClient, *, clock: Callable[[], float] = time.time) -> None:
        self.table = table
        self._clock = clock
        # Per client: a lock, and the rate counter as this instance last wrote it.
        self._locks: dict[str, threading.Lock] = {}
        self._locks_lock = threading.Lock()
        self._counters: dict[str, Client] = {}

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
        self, name: str, senders: str, rate_per_minute: int = DEFAULT_RATE_PER_MINUTE
    ) -> tuple[Client, str]:
        """A new client and its key (shown only now); ClientError if the name is taken."""
        try:
            client = Client(
                name=check_name(name),
                senders=parse_senders(senders, "SENDERS"),
                rate_per_minute=check_rate(rate_per_minute),
                enabled=True,
                key_digest="",
                created_at=datetime.fromtimestamp(self._clock(), timezone.utc),
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
        if not _NAME.match(name):
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
        """Enable or disable a client; its key stops (or starts) working at once."""
        return self._update(name, {"enabled": enabled})

    def rotate(self, name: str) -> tuple[Client, str]:
        """A new key for the client; the old one stops working at once."""
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

        `counted`: the request goes on to take() a message from the client's rate. Then the
        client may be the one this instance last wrote (its rate counter) instead of a fresh
        read, because take() writes the row only if nobody changed it since: a key rotated or
        a client disabled meanwhile makes that write fail, and the row is read again. This
        saves one storage call per accepted message.
        """
        key = bearer_key(authorization)
        name = client_name_of(key)
        if counted and name:
            with self._locks_lock:
                cached = self._counters.get(name)
            if cached is not None and cached.enabled and _same_key(key, cached.key_digest):
                return cached
        client = self.get(name) if name else None
        # Compared in constant time even when there is no such client.
        if not _same_key(key, client.key_digest if client else key_digest("")) or client is None:
            raise Unauthorized("the client key is not valid")
        if not client.enabled:
            raise Unauthorized(f"the client {client.name!r} is disabled")
        return client

    def take(self, client: Client) -> Client:
        """Count one message against the client's rate; RateLimited when over it this minute.

        Threads of one instance count one at a time, from the row as this instance last wrote
        it, so they never conflict with each other; a conflict means another instance (or an
        operator) wrote the row, and it is read again (and the key and enabled flag checked
        again). A 429 is answered only from a row read in this call.
        """
        with self._lock_for(client.name):
            counter = self._counters.get(client.name, client)
            read_now = counter.etag is None
            if read_now:  # not read from the table: nothing to write against
                counter = self._reread(client)
            for attempt in range(1, RATE_WRITE_ATTEMPTS + 1):
                now = self._clock()
                window = int(now // WINDOW_SECONDS)
                count = counter.count if counter.window == window else 0
                if count >= counter.rate_per_minute:
                    if not read_now:
                        # The count only grows within a minute, but the client may have been
                        # disabled since this instance's copy: refuse with what the row says.
                        counter, read_now = self._reread(client), True
                        continue
                    retry_after = max(1, math.ceil((window + 1) * WINDOW_SECONDS - now))
                    raise RateLimited(
                        f"the client {client.name!r} may send {counter.rate_per_minute} "
                        f"message(s) per minute; retry in {retry_after}s",
                        retry_after,
                    )
                try:
                    metadata = self.table.update_entity(
                        {
                            "PartitionKey": client.name,
                            "RowKey": CLIENT_ROW,
                            "window": window,
                            "count": count + 1,
                        },
                        mode=UpdateMode.MERGE,
                        etag=counter.etag,
                        match_condition=MatchConditions.IfNotModified,
                    )
                except ResourceModifiedError:
                    counter, read_now = self._reread(client), True
                    # Instances that collided spread out before trying again.
                    time.sleep(random.uniform(0, RATE_CONFLICT_PAUSE_SECONDS * attempt))  # noqa: S311
                    continue
                except AzureError as error:
                    raise StorageUnavailable(f"client table: {type(error).__name__}") from error
                counter = replace(counter, window=window, count=count + 1, etag=metadata["etag"])
                self._counters[client.name] = counter
                return counter
        raise StorageUnavailable(
            f"the rate counter of {client.name!r} kept changing; too many concurrent requests"
        )

    def _reread(self, client: Client) -> Client:
        """The client's row as it is now; Unauthorized if its key changed or it is disabled."""
        fresh = self.get(client.name)
        if fresh is None or not hmac.compare_digest(fresh.key_digest, client.key_digest):
            raise Unauthorized("the client key is not valid")
        if not fresh.enabled:
            raise Unauthorized(f"the client {client.name!r} is disabled")
        return fresh

    def _lock_for(self, name: str) -> threading.Lock:
        with self._locks_lock:
            return self._locks.setdefault(name, threading.Lock())


def _same_key(key: str, digest: str) -> bool:
    return hmac.compare_digest(key_digest(key), digest)


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
    )
