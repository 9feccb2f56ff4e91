"""Refused requests as an audit trail that a flood of them cannot turn into a flood of lines.

Every 4xx answer of a client route or of SendGrid's Event Webhook is recorded here as a kind of
refusal: the route (its function name, which is also its operationId in the OpenAPI document),
the status, who asked (the client's name; UNKNOWN_CLIENT without a valid key; SENDGRID_CALLER
for a request SendGrid signed) and the caller's address. Never the key, nor the body.

A kind is logged at once the first time, as a WARNING

    Requests refused: route=<name> status=<code> client=<name> address=<ip> count=1

and then at most once per REFUSAL_LOG_SECONDS, with the count of the refusals of that kind since
its previous line: every refused request is counted in exactly one line, however fast they come.
A count comes due when the interval since the kind's last line has passed; the next refusal of
any kind writes what is due, and a daemon thread writes it when no refusal comes (it sleeps
until then, and the process writes what is left at exit, best effort). In OpenTelemetry mode the
worker exports lines logged off an invocation's thread too (shared/telemetry.py). The numbers
are in the message text, which is what the alert on a burst of 401s (infra/app/alerts.bicep)
reads; `extra` carries them as custom dimensions as well.

The kinds kept at once are bounded by MAX_KINDS: past it, a refusal from a new address is
counted under `address=other`. A kind with no refusal for a whole interval is forgotten.

The caller's address is the `client-ip` header that App Service's front end sets on every
request, overwriting any a caller sent, so it cannot be spoofed (Azure/app-service-linux-docs,
Things_You_Should_Know/headers.md); the Functions host hands every request header to the Python
worker, lower-cased (Azure/azure-functions-host, src/WebJobs.Script.Grpc/MessageExtensions/
GrpcMessageConversionExtensions.cs, ToRpcHttp). Its value is `<ip>:<port>`; only the ip is
kept, as the port changes with every connection. `X-Forwarded-For` is not used: its first
entries are whatever the caller wrote.
"""

from __future__ import annotations

import atexit
import contextlib
import ipaddress
import logging
import math
import re
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

logger = logging.getLogger(__name__)

# The start of every line; infra/app/alerts.bicep alerts on it.
REFUSED = "Requests refused"
REFUSAL_LOG_SECONDS = 60.0
MAX_KINDS = 1_000
# Who asked, when it was not a client: client names are lowercase letters, digits and hyphens,
# so neither can be taken for one.
UNKNOWN_CLIENT = "unknown key"
SENDGRID_CALLER = "sendgrid signature"
UNKNOWN_ADDRESS = "unknown"
OTHER_ADDRESSES = "other"
CLIENT_IP_HEADER = "client-ip"
# Longer than any ip:port ("[" + 45 characters of IPv6 + "]:65535"): not an address.
_MAX_ADDRESS_LENGTH = 64
# `IPv4:port` or `[IPv6]:port`, or a bare address; no IPv6 zone (`%eth0`), which is free text.
_CLIENT_IP = re.compile(
    r"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\](?::[0-9]{1,5})?"
    r"|(?P<v4>[0-9.]+)(?::[0-9]{1,5})?"
    r"|(?P<bare>[0-9A-Fa-f:.]+))"
)


@dataclass(frozen=True)
class RefusalKind:
    """What the refusals counted together have in common."""

    route: str
    status: int
    client: str
    address: str


@dataclass
class _Tally:
    """When a kind was last logged (the log's clock), and its refusals since."""

    logged_at: float
    unlogged: int = 0


def caller_address(headers: Mapping[str, str]) -> str:
    """The caller's ip from the front end's `client-ip` header, or UNKNOWN_ADDRESS."""
    text = (headers.get(CLIENT_IP_HEADER) or "").strip()
    if not text or len(text) > _MAX_ADDRESS_LENGTH:
        return UNKNOWN_ADDRESS
    match = _CLIENT_IP.fullmatch(text)
    if match is None:
        return UNKNOWN_ADDRESS
    try:
        return str(ipaddress.ip_address(match["v6"] or match["v4"] or match["bare"]))
    except ValueError:
        return UNKNOWN_ADDRESS


class RefusalLog:
    """Counts refusals by kind and logs each kind at most once per interval (see the module).

    `background=False` starts no thread: due counts are then written by the next `record`, or
    by `write_due()` and `flush()` (for tests, with their own clock).
    """

    def __init__(
        self,
        interval_seconds: float = REFUSAL_LOG_SECONDS,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_kinds: int = MAX_KINDS,
        background: bool = True,
    ) -> None:
        self._interval = interval_seconds
        self._clock = clock
        self._max_kinds = max_kinds
        self._background = background
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._tallies: dict[RefusalKind, _Tally] = {}
        # The earliest time a tally may be due: nothing is scanned before it.
        self._next_due = math.inf
        self._writer: threading.Thread | None = None

    def record(self, kind: RefusalKind) -> None:
        """Count one refusal; log it at once if its kind is new, with whatever else is due."""
        with self._lock:
            now = self._clock()
            lines = self._take_due(now)
            tally = self._tallies.get(kind)
            if tally is None and len(self._tallies) >= self._max_kinds:
                kind = replace(kind, address=OTHER_ADDRESSES)
                tally = self._tallies.get(kind)
            if tally is None:
                self._tallies[kind] = _Tally(logged_at=now)
                self._next_due = min(self._next_due, now + self._interval)
                self._changed.notify_all()
                lines.append((kind, 1))
            else:
                tally.unlogged += 1
            if self._background and self._writer is None:
                self._start_writer()
        _write(lines)

    def write_due(self) -> None:
        """Log the counts whose interval has passed, and forget kinds idle for one."""
        with self._lock:
            lines = self._take_due(self._clock())
        _write(lines)

    def flush(self) -> None:
        """Log every count not logged yet, due or not."""
        with self._lock:
            now = self._clock()
            lines = [(k, t.unlogged) for k, t in self._tallies.items() if t.unlogged]
            for kind, _ in lines:
                self._tallies[kind] = _Tally(logged_at=now)
        _write(lines)

    def _take_due(self, now: float) -> list[tuple[RefusalKind, int]]:
        # With the lock held.
        if now < self._next_due:
            return []
        lines: list[tuple[RefusalKind, int]] = []
        next_due = math.inf
        for kind, tally in list(self._tallies.items()):
            if now - tally.logged_at >= self._interval:
                if not tally.unlogged:
                    del self._tallies[kind]
                    continue
                lines.append((kind, tally.unlogged))
                tally.logged_at, tally.unlogged = now, 0
            next_due = min(next_due, tally.logged_at + self._interval)
        self._next_due = next_due
        return lines

    def _start_writer(self) -> None:
        # With the lock held.
        self._writer = threading.Thread(
            target=self._write_when_due, name="mailgate-refusal-log", daemon=True
        )
        self._writer.start()
        atexit.register(_flush_at_exit, weakref.ref(self))

    def _write_when_due(self) -> None:
        # The writer thread: sleeps until the earliest count comes due, then writes what is due.
        while True:
            with self._lock:
                while (delay := self._next_due - self._clock()) > 0:
                    self._changed.wait(None if math.isinf(delay) else delay)
                lines = self._take_due(self._clock())
            _write(lines)


def _write(lines: list[tuple[RefusalKind, int]]) -> None:
    for kind, count in lines:
        logger.warning(
            "%s: route=%s status=%d client=%s address=%s count=%d",
            REFUSED,
            kind.route,
            kind.status,
            kind.client,
            kind.address,
            count,
            extra={
                "refused_route": kind.route,
                "refused_status": kind.status,
                "refused_client": kind.client,
                "refused_address": kind.address,
                "refused_count": count,
            },
        )


def _flush_at_exit(log: weakref.ref[RefusalLog]) -> None:
    # Best effort: counts not logged yet when the interpreter exits.
    alive = log()
    if alive is not None:
        with contextlib.suppress(Exception):
            alive.flush()


_refusals = RefusalLog()


def record_refusal(route: str, status: int, client: str, headers: Mapping[str, str]) -> None:
    """Count a refused request in the process's refusal log."""
    _refusals.record(RefusalKind(route, status, client, caller_address(headers)))
