"""A real SMTP relay for tests: aiosmtpd on a free loopback port, STARTTLS with a test CA and
AUTH required, keeping every mail it accepts and answering as a test scripts it."""

from __future__ import annotations

import socket
import ssl
import threading
from collections import deque
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import certifi
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

USERNAME = "relay-user"
PASSWORD = "relay-password-not-a-secret"


@dataclass(frozen=True)
class ReceivedMail:
    """One mail as the relay received it: its envelope and its bytes."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    content: bytes

    @property
    def message(self) -> EmailMessage:
        """The content parsed as a MIME message."""
        parsed = message_from_bytes(self.content, policy=policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed


@dataclass
class _Handler:
    mails: list[ReceivedMail] = field(default_factory=list)
    # Replies to the next DATA commands, instead of 250 ("451 ...", "550 ..."), in order.
    data_replies: deque[str] = field(default_factory=deque)
    lock: threading.Lock = field(default_factory=threading.Lock)
    # The client ends (address, port) that said EHLO: one per TCP connection.
    peers: set[Any] = field(default_factory=set)

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        with self.lock:
            self.peers.add(session.peer)
        session.host_name = hostname
        return responses

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            if self.data_replies:
                return self.data_replies.popleft()
            self.mails.append(
                ReceivedMail(envelope.mail_from, tuple(envelope.rcpt_tos), envelope.content)
            )
        return "250 2.0.0 OK queued"


def _authenticate(
    server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
) -> AuthResult:
    ok = isinstance(auth_data, LoginPassword) and (
        auth_data.login == USERNAME.encode() and auth_data.password == PASSWORD.encode()
    )
    return AuthResult(success=ok, handled=False)


def free_port(host: str = "127.0.0.1") -> int:
    """A loopback port nobody listens on now."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


class SmtpRelay:
    """The relay, started on enter and stopped on exit.

    `starttls=False` serves plain SMTP without AUTH (as a loopback relay may).
    """

    def __init__(self, directory: Path, *, starttls: bool = True, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = free_port(host)
        self._handler = _Handler()
        ca = trustme.CA(organization_name="mailgate test relay")
        server_cert = ca.issue_cert(self.host, "localhost")
        self.ca_file = directory / "relay-ca.pem"
        ca.cert_pem.write_to_path(str(self.ca_file))
        # For a process that trusts through SSL_CERT_FILE: the public CAs and this one.
        self.ca_bundle = directory / "relay-ca-bundle.pem"
        self.ca_bundle.write_bytes(Path(certifi.where()).read_bytes() + self.ca_file.read_bytes())
        server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_cert.configure_cert(server_context)
        options: dict[str, Any] = (
            {
                "tls_context": server_context,
                "require_starttls": True,
                "authenticator": _authenticate,
                "auth_required": True,
                "auth_require_tls": True,
            }
            if starttls
            else {}
        )
        self._controller = Controller(self._handler, hostname=self.host, port=self.port, **options)

    def client_tls(self) -> ssl.SSLContext:
        """A client context that trusts this relay's certificate."""
        return ssl.create_default_context(cafile=str(self.ca_file))

    @property
    def mails(self) -> list[ReceivedMail]:
        """The mails accepted so far."""
        with self._handler.lock:
            return list(self._handler.mails)

    @property
    def connections(self) -> int:
        """How many sessions said EHLO (a reused connection says it once)."""
        with self._handler.lock:
            return len(self._handler.peers)

    def answer_data(self, *replies: str) -> None:
        """Answer the next DATA commands with these replies instead of accepting the mail."""
        with self._handler.lock:
            self._handler.data_replies.extend(replies)

    def reset(self) -> None:
        """Forget the mails and scripted replies."""
        with self._handler.lock:
            self._handler.mails.clear()
            self._handler.data_replies.clear()
            self._handler.peers.clear()

    def __enter__(self) -> SmtpRelay:
        self._controller.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._controller.stop()
