"""`mailgate-relay`: an SMTP server that hands each message to mailgate over HTTPS.

Settings come from flags, else from the environment (MAILGATE_URL, MAILGATE_RELAY_*), else the
defaults for `make relay` beside `make run`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import ssl
import sys
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial

from aiosmtpd.smtp import SMTP

from mailgate_relay.gateway import GatewayClient
from mailgate_relay.server import (
    DEFAULT_MAX_MESSAGE_BYTES,
    FailureThrottle,
    RelayHandler,
    _parse_only,
    is_loopback,
)

logger = logging.getLogger("mailgate_relay")

# An SMTP client that says nothing this long is dropped (RFC 5321 section 4.5.3.2.7 asks a
# server to wait at least 5 minutes).
IDLE_TIMEOUT_SECONDS = 300


@dataclass(frozen=True)
class RelaySettings:
    """Where the relay listens, where mailgate is, and the TLS it offers."""

    host: str
    port: int
    mailgate_url: str
    tls_cert: str | None
    tls_key: str | None
    max_message_bytes: int | None
    hostname: str

    @property
    def loopback(self) -> bool:
        """Listening on loopback only: AUTH may then go without STARTTLS."""
        return is_loopback(self.host)


class SettingsError(Exception):
    """A setting is missing or wrong; the message names it."""


def parse_settings(argv: Sequence[str], environ: Mapping[str, str]) -> RelaySettings:
    """Settings from flags, else the environment, else the defaults; SettingsError if wrong."""
    parser = argparse.ArgumentParser(
        prog="mailgate-relay",
        description="An SMTP server that hands each message to mailgate's HTTP API.",
    )
    parser.add_argument(
        "--host",
        default=environ.get("MAILGATE_RELAY_HOST", "127.0.0.1"),
        help="listen address (MAILGATE_RELAY_HOST, default 127.0.0.1)",
    )
    parser.add_argument(
        "--port",
        default=environ.get("MAILGATE_RELAY_PORT", "2525"),
        help="listen port (MAILGATE_RELAY_PORT, default 2525)",
    )
    parser.add_argument(
        "--mailgate-url",
        default=environ.get("MAILGATE_URL", "http://127.0.0.1:7071"),
        help="mailgate's base URL (MAILGATE_URL, default http://127.0.0.1:7071)",
    )
    parser.add_argument(
        "--tls-cert",
        default=environ.get("MAILGATE_RELAY_TLS_CERT"),
        help="PEM certificate (chain) for STARTTLS (MAILGATE_RELAY_TLS_CERT); required unless "
        "listening on loopback",
    )
    parser.add_argument(
        "--tls-key",
        default=environ.get("MAILGATE_RELAY_TLS_KEY"),
        help="PEM private key for STARTTLS (MAILGATE_RELAY_TLS_KEY)",
    )
    parser.add_argument(
        "--max-message-bytes",
        default=environ.get("MAILGATE_RELAY_MAX_MESSAGE_BYTES"),
        help="largest message accepted and advertised with SIZE (MAILGATE_RELAY_MAX_MESSAGE_"
        "BYTES); default: mailgate's own limit, learned at the first AUTH",
    )
    parser.add_argument(
        "--hostname",
        default=environ.get("MAILGATE_RELAY_HOSTNAME") or socket.gethostname(),
        help="the name the relay greets with (MAILGATE_RELAY_HOSTNAME, default this host's)",
    )
    args = parser.parse_args(list(argv))
    # 0: any free port (the log line says which).
    port = _integer("MAILGATE_RELAY_PORT", args.port, 0, 65535)
    most = (
        None
        if args.max_message_bytes in (None, "")
        else _integer("MAILGATE_RELAY_MAX_MESSAGE_BYTES", args.max_message_bytes, 1, 10**9)
    )
    if not str(args.mailgate_url).startswith(("http://", "https://")):
        raise SettingsError("MAILGATE_URL must be an http:// or https:// URL")
    settings = RelaySettings(
        host=args.host,
        port=port,
        mailgate_url=args.mailgate_url,
        tls_cert=args.tls_cert or None,
        tls_key=args.tls_key or None,
        max_message_bytes=most,
        hostname=args.hostname,
    )
    if bool(settings.tls_cert) != bool(settings.tls_key):
        raise SettingsError("MAILGATE_RELAY_TLS_CERT and MAILGATE_RELAY_TLS_KEY go together")
    if not settings.loopback and not settings.tls_cert:
        raise SettingsError(
            f"listening on {settings.host}, which is not loopback, needs a certificate and key "
            "for STARTTLS (MAILGATE_RELAY_TLS_CERT, MAILGATE_RELAY_TLS_KEY): the client key "
            "would otherwise cross the network in plain text"
        )
    return settings


def _integer(name: str, value: str, least: int, most: int) -> int:
    try:
        number = int(value)
    except ValueError:
        raise SettingsError(f"{name} must be a whole number") from None
    if not least <= number <= most:
        raise SettingsError(f"{name} must be between {least} and {most}")
    return number


def tls_context(settings: RelaySettings) -> ssl.SSLContext | None:
    """The server's TLS context for STARTTLS, or None without a certificate."""
    if not settings.tls_cert or not settings.tls_key:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(settings.tls_cert, settings.tls_key)
    return context


def smtp_factory(
    settings: RelaySettings, handler: RelayHandler, context: ssl.SSLContext | None
) -> SMTP:
    """One aiosmtpd SMTP protocol object per connection."""
    with warnings.catch_warnings():
        # aiosmtpd warns on every connection when AUTH is allowed without TLS: on loopback
        # that is the relay's choice (nothing crosses a network), said once at start instead.
        warnings.filterwarnings("ignore", "Requiring AUTH while not requiring TLS")
        return _smtp(settings, handler, context)


def _smtp(settings: RelaySettings, handler: RelayHandler, context: ssl.SSLContext | None) -> SMTP:
    return SMTP(
        handler,
        data_size_limit=handler.max_message_bytes,
        enable_SMTPUTF8=True,
        # Bytes, as they came: 8BITMIME is advertised, and the parser decodes each part itself.
        decode_data=False,
        hostname=settings.hostname,
        ident="mailgate-relay",
        tls_context=context,
        # Off loopback, nothing but EHLO, STARTTLS, NOOP and QUIT before TLS.
        require_starttls=not settings.loopback,
        timeout=IDLE_TIMEOUT_SECONDS,
        auth_required=True,
        auth_require_tls=not settings.loopback,
        authenticator=_parse_only,
    )


async def serve(settings: RelaySettings, started: asyncio.Event | None = None) -> None:
    """Run the relay until cancelled."""
    gateway = GatewayClient(settings.mailgate_url)
    handler = RelayHandler(
        gateway,
        FailureThrottle(),
        max_message_bytes=settings.max_message_bytes or DEFAULT_MAX_MESSAGE_BYTES,
        size_is_fixed=settings.max_message_bytes is not None,
    )
    context = tls_context(settings)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        partial(smtp_factory, settings, handler, context), settings.host, settings.port
    )
    ports = sorted({s.getsockname()[1] for s in server.sockets})
    logger.info(
        "mailgate-relay listening on %s port %s, submitting to %s (STARTTLS %s)",
        settings.host,
        ",".join(map(str, ports)),
        settings.mailgate_url,
        "offered" if context else "not offered: loopback only",
    )
    if settings.loopback:
        logger.info("AUTH is allowed without STARTTLS: the relay listens on loopback only")
    if started is not None:
        started.set()
    try:
        async with server:
            await server.serve_forever()
    finally:
        await gateway.close()


class _KnownNoise(logging.Filter):
    """Drops two warnings aiosmtpd logs about itself: per connection, that AUTH is allowed
    without TLS (the relay allows it on loopback only, and says so once); per successful AUTH,
    that Session.login_data is deprecated (aiosmtpd 1.4's own SMTP.smtp_AUTH sets it)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(
            ("auth_required == True but auth_require_tls", "Session.login_data is deprecated")
        )


def quiet_aiosmtpd(aiosmtpd_log: logging.Logger) -> None:
    """Keep aiosmtpd's logger (`mail.log`) to what an operator needs."""
    # aiosmtpd logs every command line (MAIL FROM and RCPT TO with full addresses) at INFO.
    aiosmtpd_log.setLevel(logging.WARNING)
    aiosmtpd_log.addFilter(_KnownNoise())


def configure_logging() -> None:
    """Log lines to stderr; aiosmtpd's own INFO lines are left out, as they hold addresses."""
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    quiet_aiosmtpd(logging.getLogger("mail.log"))
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    """The `mailgate-relay` command."""
    configure_logging()
    try:
        settings = parse_settings(sys.argv[1:] if argv is None else argv, os.environ)
    except SettingsError as error:
        print(f"mailgate-relay: {error}", file=sys.stderr)
        return 2
    try:
        tls_context(settings)
    except (OSError, ssl.SSLError) as error:
        print(
            f"mailgate-relay: the TLS certificate or key cannot be read: {error}", file=sys.stderr
        )
        return 2
    loop = asyncio.new_event_loop()
    task = loop.create_task(serve(settings))
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        loop.run_until_complete(task)
    loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
