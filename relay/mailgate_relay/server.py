"""The SMTP side: aiosmtpd's server, with mailgate's client keys for AUTH and mailgate's API
behind DATA.

aiosmtpd speaks the protocol (EHLO, STARTTLS, AUTH PLAIN and LOGIN exchanges, SIZE, 8BITMIME,
SMTPUTF8, dot-stuffing, the data size limit); this module adds only what is the relay's own,
at aiosmtpd's documented seams: handler `auth_*` methods (which take the place of the built-in
mechanisms, aiosmtpd smtp.py SMTP.__init__ `_auth_methods`) and `handle_RCPT`/`handle_DATA`
hooks.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from mailgate_relay.convert import (
    MAX_RECIPIENTS,
    NotExpressible,
    mail_request,
    parse,
    sendable_address,
)
from mailgate_relay.gateway import GatewayClient, GatewayUnavailable

logger = logging.getLogger(__name__)

# Until a key check has told the gateway's own limit (MAX_REQUEST_BYTES), the relay advertises
# the gateway's default, which is also SendGrid's limit (shared/settings.py).
DEFAULT_MAX_MESSAGE_BYTES = 30_000_000
# Failed AUTHs from one address wait before their 535: 1 s after the second in a row, doubling
# to at most 30 s; a success or FAILURE_MEMORY_SECONDS without a failure forgets them.
FIRST_DELAY_SECONDS = 1.0
MAX_DELAY_SECONDS = 30.0
FAILURE_MEMORY_SECONDS = 600.0
MAX_ADDRESSES_REMEMBERED = 10_000
IDEMPOTENCY_PREFIX = "smtp-relay-"
# Converting a message at the 30 MB limit takes 1.5-2.5 s and about 95 MB beyond its own bytes
# (measured: docs/relay.md): so many at once, the others wait their turn.
CONVERSIONS_AT_ONCE = 4

Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True)
class Credentials:
    """An authenticated session's client: its name and key (never shown in a repr or log)."""

    name: str
    key: str = field(repr=False)
    max_request_bytes: int = DEFAULT_MAX_MESSAGE_BYTES


@dataclass
class FailureThrottle:
    """Slows down repeated AUTH failures from one address: each waits longer than the last."""

    clock: Callable[[], float] = time.monotonic
    sleep: Sleep = asyncio.sleep
    _failures: OrderedDict[str, tuple[int, float]] = field(default_factory=OrderedDict)

    def delay(self, address: str) -> float:
        """How long the next failure from `address` waits before its answer."""
        count, last = self._failures.get(address, (0, 0.0))
        if count == 0 or self.clock() - last > FAILURE_MEMORY_SECONDS:
            return 0.0
        return float(min(FIRST_DELAY_SECONDS * 2 ** (count - 1), MAX_DELAY_SECONDS))

    async def failed(self, address: str) -> None:
        """Count a failure from `address`, then wait as long as its earlier failures earned."""
        wait = self.delay(address)
        count, _ = self._failures.get(address, (0, 0.0))
        if wait == 0.0:
            count = 0
        self._failures[address] = (count + 1, self.clock())
        self._failures.move_to_end(address)
        while len(self._failures) > MAX_ADDRESSES_REMEMBERED:
            self._failures.popitem(last=False)
        if wait:
            await self.sleep(wait)

    def succeeded(self, address: str) -> None:
        """Forget the address's failures."""
        self._failures.pop(address, None)


def _parse_only(
    server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
) -> AuthResult:
    # aiosmtpd's authenticator is synchronous; the key check needs the network. So the built-in
    # mechanisms only parse the exchange here, and the relay's auth_* methods check the key.
    return AuthResult(success=True, auth_data=data)


def peer_address(session: Session) -> str:
    """The client's IP address (without the port)."""
    # aiosmtpd annotates it as a string; it is the socket's peername, (host, port, ...).
    peer: object = session.peer
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return str(peer)


@dataclass
class RelayHandler:
    """The relay's aiosmtpd handler: keys checked at AUTH, mail submitted at DATA."""

    gateway: GatewayClient
    throttle: FailureThrottle = field(default_factory=FailureThrottle)
    # The gateway's limit, once a key check told it; new connections advertise it.
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    size_is_fixed: bool = False
    _converting: asyncio.Semaphore = field(
        default_factory=lambda: asyncio.Semaphore(CONVERSIONS_AT_ONCE)
    )

    async def auth_PLAIN(self, server: SMTP, args: list[str]) -> AuthResult:
        """AUTH PLAIN: the user name is the client's name, the password its key."""
        parsed = await SMTP.auth_PLAIN(server, None, args)
        return await self._check(server, parsed)

    async def auth_LOGIN(self, server: SMTP, args: list[str]) -> AuthResult:
        """AUTH LOGIN: the user name is the client's name, the password its key."""
        parsed = await SMTP.auth_LOGIN(server, None, args)
        return await self._check(server, parsed)

    async def _check(self, server: SMTP, parsed: AuthResult) -> AuthResult:
        if not parsed.success or not isinstance(parsed.auth_data, LoginPassword):
            return parsed
        assert server.session is not None
        address = peer_address(server.session)
        name = parsed.auth_data.login.decode("utf-8", "replace")
        key = parsed.auth_data.password.decode("utf-8", "replace")
        try:
            info = await self.gateway.check_key(key)
        except GatewayUnavailable as error:
            logger.warning("AUTH could not be checked: %s", error)
            return AuthResult(
                success=False,
                handled=False,
                message="454 4.7.0 mailgate cannot check the key now; try again later",
            )
        if info is None or info.name != name:
            # The same answer for an unknown key and another client's key: a key is not
            # confirmed to exist by naming the wrong client.
            logger.info(
                "AUTH refused from %s (%s)",
                address,
                "unknown key" if info is None else "a key of another client",
            )
            await self.throttle.failed(address)
            return AuthResult(success=False, handled=False)
        self.throttle.succeeded(address)
        if not self.size_is_fixed:
            self.max_message_bytes = info.max_request_bytes
        # This session's limit from now on (aiosmtpd reads it at MAIL's SIZE and during DATA).
        server.data_size_limit = self.max_message_bytes
        logger.info("AUTH for client %s from %s", info.name, address)
        return AuthResult(
            success=True,
            auth_data=Credentials(info.name, key, info.max_request_bytes),
        )

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        """Take up to MAX_RECIPIENTS recipients; past that, 452 (the MTA sends the rest in
        another transaction, RFC 5321 section 4.5.3.1.10)."""
        if len(envelope.rcpt_tos) >= MAX_RECIPIENTS:
            return f"452 4.5.3 at most {MAX_RECIPIENTS} recipients per message"
        try:
            sendable_address(address)
        except NotExpressible as refusal:
            # RFC 6531 section 3.7.4.1: a non-ASCII address this server cannot deliver.
            return f"553 5.6.7 {refusal.reason}"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        """Submit the message to mailgate; 250 with its id only after mailgate's 202."""
        # aiosmtpd annotates it as None: it holds what the auth_* method returned.
        credentials: object = session.auth_data
        if not isinstance(credentials, Credentials):
            return "530 5.7.0 Authentication required"
        raw = envelope.original_content or b""
        mail_from = envelope.mail_from or ""
        try:
            # Parsing up to the size limit takes a while: not on the loop every session shares.
            async with self._converting:
                body = await asyncio.to_thread(request_body, raw, mail_from, envelope.rcpt_tos)
        except NotExpressible as refusal:
            logger.info(
                "Refused a message of %d bytes from client %s: %s",
                len(raw),
                credentials.name,
                refusal.reason,
            )
            return f"554 5.6.0 mailgate cannot send this message as it is: {refusal.reason}"
        except Exception as error:
            # The parser's own failures on broken input. The same message would fail the same
            # way again: a permanent refusal, not a 451. Only the error's type is logged: its
            # text may quote the message.
            logger.warning(
                "A message of %d bytes from client %s could not be read: %s",
                len(raw),
                credentials.name,
                type(error).__name__,
            )
            return f"554 5.6.0 the message could not be read ({type(error).__name__})"
        limit = min(credentials.max_request_bytes, server.data_size_limit or len(body))
        if len(body) > limit:
            return f"552 5.3.4 the message is too large for mailgate (at most {limit} bytes)"
        key = await asyncio.to_thread(_idempotency_key, raw, credentials.name, envelope)
        submitted = await self.gateway.submit(body, credentials.key, key)
        logger.info(
            "Message of %d bytes from client %s to %d recipient(s) at %s: %s",
            len(raw),
            credentials.name,
            len(envelope.rcpt_tos),
            ",".join(sorted({r.rpartition("@")[2].lower() for r in envelope.rcpt_tos})[:10]),
            submitted.reply.split(":")[0] if submitted.message_id is None else submitted.reply,
            extra={"mailgate_id": submitted.message_id},
        )
        return submitted.reply


def request_body(raw: bytes, mail_from: str, recipients: list[str]) -> bytes:
    """The JSON body of `POST /api/v1/messages` for the message; NotExpressible if none."""
    request = mail_request(raw, mail_from, recipients)
    try:
        return json.dumps(request, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        # Undecodable bytes the parser kept as surrogate escapes, in a name or header.
        raise NotExpressible("it has bytes that are not valid in their charset") from None


def _idempotency_key(raw: bytes, client: str, envelope: Envelope) -> str | None:
    # The MTA sends a mail again when it got no answer (mailgate may have accepted it before
    # the line broke): the same message, from the same client, to the same recipients, takes
    # the same key, and mailgate answers its first 202 again instead of sending it twice.
    # Only for a mail with a Message-ID: without one, two identical alerts are two mails.
    message = parse(raw.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n")
    if message.get("Message-ID") is None:
        return None
    digest = hashlib.sha256()
    for part in (
        client.encode(),
        *(r.encode("utf-8", "surrogateescape") for r in envelope.rcpt_tos),
    ):
        digest.update(part + b"\0")
    digest.update(raw)
    return IDEMPOTENCY_PREFIX + digest.hexdigest()


def is_loopback(host: str) -> bool:
    """Whether the listen address is loopback only (plain-text AUTH is allowed there)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
