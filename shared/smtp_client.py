"""The `smtp` provider: a mail as a MIME message built with the standard library, sent through an
authenticated relay over STARTTLS on pooled connections, each failure classified.

Classification (RFC 5321 reply codes; smtplib raises SMTPServerDisconnected for a connection
lost or timed out while reading a reply):

    when                                              error        cause
    no connection, TLS handshake, timeout, a reply    retryable    unavailable
    lost, or any 4xx, before the DATA terminator
    AUTH refused (530, 534, 535, 538)                 permanent    smtp_auth
    no STARTTLS off loopback, no AUTH, a 5xx greeting permanent    smtp_config
    a 5xx to MAIL FROM, RCPT TO or DATA               permanent    smtp_rejected
    the terminator sent, then no reply                ambiguous    outcome_unknown

Every recipient is checked (RCPT TO) before DATA, and one refused refuses the whole mail: a
relay's partial acceptance would send to some recipients only, silently different.
"""

from __future__ import annotations

import base64
import logging
import re
import smtplib
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from email import policy
from email.headerregistry import Address as HeaderAddress
from email.message import EmailMessage
from email.utils import format_datetime

from opentelemetry.trace import SpanKind

from shared import telemetry
from shared.errors import DeliveryError, PermanentDeliveryError, RetryableDeliveryError
from shared.models import (
    MAX_PROVIDER_MESSAGE_CHARS,
    Address,
    MailRequest,
    ProviderError,
    QueueEnvelope,
)
from shared.replay_advice import (
    NO_PROVIDER,
    OUTCOME_UNKNOWN,
    SMTP_AUTH,
    SMTP_CONFIG,
    SMTP_REJECTED,
    UNAVAILABLE,
)
from shared.sendgrid_client import mail_text, shown_provider_text
from shared.settings import Settings, is_loopback_host

logger = logging.getLogger(__name__)

# Each socket operation (connect, a reply, the message's bytes) waits at most this long.
SMTP_TIMEOUT_SECONDS = 30.0
# Connections open at once per process, each used by one delivery at a time; a delivery waits
# up to SMTP_TIMEOUT_SECONDS for one. Above the queue trigger's 24 deliveries in flight per
# instance (host.json), so it sets no pace but bounds what a relay sees from one instance.
MAX_CONNECTIONS = 24
# A connection is closed after this long or this many mails, whichever comes first: relays
# drop old sessions and cap mails per session; a reused one is checked with NOOP once idle.
MAX_CONNECTION_AGE_SECONDS = 60.0
MAX_MAILS_PER_CONNECTION = 100
NOOP_AFTER_IDLE_SECONDS = 5.0
# RFC 4954 AUTH failures: 530 authentication required, 534 mechanism too weak, 535 credentials
# invalid, 538 encryption required for the mechanism.
AUTH_FAILURE_CODES = frozenset({530, 534, 535, 538})
# Built with 7bit transfer encodings (quoted-printable, base64), so that no relay needs
# 8BITMIME; serialized with CRLF line endings (policy.SMTP).
MIME_POLICY = policy.SMTP.clone(cte_type="7bit")
TERMINATOR = b".\r\n"
_LINE_ENDS = re.compile(rb"\r\n|\n|\r(?!\n)")
_LEADING_DOT = re.compile(rb"(?m)^\.")


def header_address(address: Address) -> HeaderAddress:
    """An address as a header carries it: its display name and its address."""
    return HeaderAddress(display_name=address.name or "", addr_spec=address.email)


def build_mime(envelope: QueueEnvelope, now: datetime) -> EmailMessage:
    """The MIME message for a `/api/v1/messages` mail: From, To, Cc, Reply-To, Subject, Date,
    Message-ID and the custom headers; text and html as multipart/alternative, inline parts
    related to the html by Content-ID, attachments after. Bcc is never a header: it is only in
    the envelope (`envelope_recipients`).

    The Message-ID is the gateway's id at the sender's domain (unless the client set its own):
    a mail sent twice (after an ambiguous failure) carries the same one, which receivers can
    take for a duplicate.
    """
    request = _request_of(envelope)
    message = EmailMessage(policy=MIME_POLICY)
    message["From"] = header_address(request.from_)
    message["To"] = [header_address(a) for a in request.to]
    if request.cc:
        message["Cc"] = [header_address(a) for a in request.cc]
    if request.reply_to is not None:
        message["Reply-To"] = header_address(request.reply_to)
    if request.subject is not None:
        message["Subject"] = request.subject
    message["Date"] = format_datetime(now.astimezone(timezone.utc))
    custom = {name.lower() for name in request.headers}
    if "message-id" not in custom:
        message["Message-ID"] = f"<{envelope.id}@{_domain_for_id(request.from_)}>"
    for name, value in request.headers.items():
        message[name] = value
    if request.text is not None:
        message.set_content(request.text)
    if request.html is not None:
        if request.text is None:
            message.set_content(request.html, subtype="html")
        else:
            message.add_alternative(request.html, subtype="html")
    # Inline parts belong to the html that shows them (multipart/related), else to the message.
    html = message.get_body(("html",)) if request.html is not None else None
    for attachment in request.attachments:
        maintype, subtype = _content_type(attachment.content_type)
        data = base64.b64decode(attachment.content)
        cid = f"<{attachment.content_id}>" if attachment.content_id else None
        if attachment.disposition == "inline":
            holder = html if isinstance(html, EmailMessage) else message
            holder.add_related(
                data,
                maintype=maintype,
                subtype=subtype,
                cid=cid,
                filename=attachment.filename,
                disposition="inline",
            )
        else:
            message.add_attachment(
                data, maintype=maintype, subtype=subtype, cid=cid, filename=attachment.filename
            )
    return message


def envelope_recipients(request: MailRequest) -> list[str]:
    """Every recipient the relay is given (RCPT TO): to, cc and bcc."""
    return [a.email for a in (*request.to, *request.cc, *request.bcc)]


def _request_of(envelope: QueueEnvelope) -> MailRequest:
    if envelope.message is None:
        # shared/providers.py keeps v3 bodies on SendGrid: only an edited queue message gets here.
        raise PermanentDeliveryError(
            "an SMTP relay cannot send a SendGrid v3 body", cause=NO_PROVIDER
        )
    return envelope.message


def _domain_for_id(sender: Address) -> str:
    try:
        return sender.domain.encode("idna").decode("ascii")
    except UnicodeError:
        return "mailgate.invalid"


def _content_type(content_type: str | None) -> tuple[str, str]:
    maintype, _, subtype = (content_type or "").partition(";")[0].strip().lower().partition("/")
    if not maintype or not subtype or "/" in subtype:
        return "application", "octet-stream"
    return maintype, subtype


def _wire_bytes(message: EmailMessage, utf8: bool) -> bytes:
    """The message as DATA carries it, without the terminator: CRLF lines, leading dots
    doubled (RFC 5321 4.5.2), ending in CRLF."""
    content = message.as_bytes(policy=policy.SMTPUTF8 if utf8 else MIME_POLICY)
    # Each pass copies the message (tens of MB for a large one): only when it has work to do.
    # policy.SMTP writes CRLF throughout; the count is the check.
    if content.count(b"\n") != content.count(b"\r\n"):
        content = _LINE_ENDS.sub(b"\r\n", content)
    if content.startswith(b".") or b"\n." in content:
        content = _LEADING_DOT.sub(b"..", content)
    if not content.endswith(b"\r\n"):
        content += b"\r\n"
    return content


@dataclass
class _Connection:
    smtp: smtplib.SMTP
    opened_at: float
    used_at: float
    mails: int = 0
    broken: bool = False


class SmtpSender:
    """Sends mail through one SMTP relay, STARTTLS and AUTH on each pooled connection."""

    def __init__(
        self,
        host: str,
        port: int,
        username: str | None = None,
        password: str | None = None,
        *,
        timeout: float = SMTP_TIMEOUT_SECONDS,
        max_connections: int = MAX_CONNECTIONS,
        tls: ssl.SSLContext | None = None,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
    ) -> None:
        self._host = host
        self._port = port
        self._username = username
        self._password = password
        self._timeout = timeout
        # The system's CAs (SSL_CERT_FILE where set), hostname checked.
        self._tls = tls or ssl.create_default_context()
        self._clock = clock
        self._now = now
        self._idle: list[_Connection] = []
        self._lock = threading.Lock()
        self._max_connections = max_connections
        self._slots = threading.BoundedSemaphore(max_connections)
        # EHLO's name: the machine's own, without the DNS lookup smtplib's default makes.
        self._local_name = socket.gethostname() or "localhost"

    @classmethod
    def from_settings(cls, settings: Settings) -> SmtpSender:
        """A sender for the configured relay."""
        if settings.smtp_host is None:
            raise ValueError("SMTP_HOST is not set")
        return cls(
            settings.smtp_host,
            settings.smtp_port,
            settings.smtp_username,
            settings.smtp_password,
        )

    def send(self, envelope: QueueEnvelope) -> str | None:
        """Send one mail; return its Message-ID, or raise a DeliveryError."""
        request = _request_of(envelope)
        message = build_mime(envelope, self._now())
        recipients = envelope_recipients(request)
        utf8 = not all(a.isascii() for a in (request.from_.email, *recipients))
        mail = mail_text(request.model_dump(mode="json", by_alias=True))
        with (
            telemetry.span("mailgate.smtp.send", kind=SpanKind.CLIENT),
            self._connection() as connection,
        ):
            try:
                _transact(connection.smtp, request.from_.email, recipients, message, utf8, mail)
            except BaseException:
                connection.broken = True
                raise
            connection.mails += 1
        # A plain str: the header object would not go into a table.
        header = message["Message-ID"]
        return str(header) if header is not None else None

    def close(self) -> None:
        """Close the idle connections."""
        with self._lock:
            idle, self._idle = self._idle, []
        for connection in idle:
            _quit(connection.smtp)

    @contextmanager
    def _connection(self) -> Iterator[_Connection]:
        if not self._slots.acquire(timeout=self._timeout):
            raise RetryableDeliveryError(
                f"all {self._max_connections} SMTP connections stayed busy", cause=UNAVAILABLE
            )
        connection: _Connection | None = None
        try:
            connection = self._reused() or self._open()
            yield connection
        finally:
            if connection is not None:
                connection.used_at = self._clock()
                if connection.broken:
                    connection.smtp.close()
                else:
                    with self._lock:
                        self._idle.append(connection)
            self._slots.release()

    def _reused(self) -> _Connection | None:
        """An idle connection still fit for a mail; the unfit ones are closed."""
        while True:
            with self._lock:
                if not self._idle:
                    return None
                connection = self._idle.pop()
            now = self._clock()
            if (
                now - connection.opened_at > MAX_CONNECTION_AGE_SECONDS
                or connection.mails >= MAX_MAILS_PER_CONNECTION
            ):
                _quit(connection.smtp)
                continue
            if now - connection.used_at > NOOP_AFTER_IDLE_SECONDS and not _answers(connection):
                connection.smtp.close()
                continue
            return connection

    def _open(self) -> _Connection:
        """A new session: EHLO, STARTTLS (required off loopback), EHLO again, AUTH."""
        # Connected by the constructor, which also keeps the host name STARTTLS checks the
        # relay's certificate against (connect() alone does not); it closes itself if it fails.
        smtp: smtplib.SMTP | None = None
        try:
            smtp = smtplib.SMTP(
                self._host, self._port, timeout=self._timeout, local_hostname=self._local_name
            )
            smtp.ehlo()
            if smtp.has_extn("starttls"):
                smtp.starttls(context=self._tls)
                smtp.ehlo()
            elif not is_loopback_host(self._host):
                # The password (and the mail) would cross the network in clear text.
                raise PermanentDeliveryError(
                    "the SMTP relay offers no STARTTLS, and SMTP_HOST is not loopback",
                    cause=SMTP_CONFIG,
                )
            if self._username is not None:
                smtp.login(self._username, self._password or "")
        except smtplib.SMTPAuthenticationError as error:
            _close(smtp)
            raise _refusal("AUTH", error.smtp_code, error.smtp_error, "") from None
        except smtplib.SMTPNotSupportedError:
            _close(smtp)
            raise PermanentDeliveryError(
                "the SMTP relay offers no AUTH for SMTP_USERNAME", cause=SMTP_CONFIG
            ) from None
        except smtplib.SMTPResponseException as error:
            _close(smtp)
            raise _refusal("the greeting", error.smtp_code, error.smtp_error, "") from None
        except (OSError, smtplib.SMTPException) as error:
            _close(smtp)
            raise RetryableDeliveryError(
                f"cannot connect to the SMTP relay: {type(error).__name__}", cause=UNAVAILABLE
            ) from None
        except BaseException:
            _close(smtp)
            raise
        now = self._clock()
        return _Connection(smtp, opened_at=now, used_at=now)


def _transact(
    smtp: smtplib.SMTP,
    sender: str,
    recipients: list[str],
    message: EmailMessage,
    utf8: bool,
    mail: str,
) -> None:
    """MAIL FROM, RCPT TO for each recipient, DATA; raise the DeliveryError a failure means."""
    try:
        options: list[str] = []
        if utf8:
            if not smtp.has_extn("smtputf8"):
                raise PermanentDeliveryError(
                    "the SMTP relay does not take addresses beyond ASCII (no SMTPUTF8)",
                    cause=SMTP_REJECTED,
                )
            options.append("SMTPUTF8")
        code, reply = smtp.mail(sender, options)
        if code != 250:
            raise _refusal("MAIL FROM", code, reply, mail)
        for recipient in recipients:
            code, reply = smtp.rcpt(recipient)
            if code not in (250, 251):
                raise _refusal("RCPT TO", code, reply, mail)
        code, reply = smtp.docmd("DATA")
        if code != 354:
            raise _refusal("DATA", code, reply, mail)
        # smtplib.SMTP.data's steps, apart, so that a failure is known to come before the
        # terminator was sent (sendall raised: the relay has no complete mail) or after.
        smtp.send(_wire_bytes(message, utf8))
        smtp.send(TERMINATOR)
    except DeliveryError:
        raise
    except (OSError, smtplib.SMTPException) as error:
        raise RetryableDeliveryError(
            f"the SMTP relay's connection failed before the mail was sent: {type(error).__name__}",
            cause=UNAVAILABLE,
        ) from None
    try:
        code, reply = smtp.getreply()
    except (OSError, smtplib.SMTPException) as error:
        raise RetryableDeliveryError(
            "no answer from the SMTP relay after the mail was sent: "
            f"{type(error).__name__}; it may have taken it",
            ambiguous=True,
            cause=OUTCOME_UNKNOWN,
        ) from None
    if code != 250:
        raise _refusal("DATA", code, reply, mail)


def _refusal(stage: str, code: int, reply: bytes | str, mail: str) -> DeliveryError:
    """The error a relay's reply stands for: its text masked (no addresses, none of the mail's
    own text) and bounded."""
    text = reply.decode("utf-8", errors="replace") if isinstance(reply, bytes) else str(reply)
    shown = shown_provider_text(text, MAX_PROVIDER_MESSAGE_CHARS, mail)
    errors = (ProviderError(message=shown),) if shown else ()
    reason = f"the SMTP relay answered {code} to {stage}" + (f": {shown}" if shown else "")
    if 400 <= code < 500:
        return RetryableDeliveryError(reason, provider_errors=errors, cause=UNAVAILABLE)
    if code in AUTH_FAILURE_CODES:
        cause = SMTP_AUTH
    elif stage == "the greeting":
        cause = SMTP_CONFIG
    else:
        cause = SMTP_REJECTED
    return PermanentDeliveryError(reason, provider_errors=errors, cause=cause)


def _close(smtp: smtplib.SMTP | None) -> None:
    if smtp is not None:
        smtp.close()


def _answers(connection: _Connection) -> bool:
    try:
        code, _ = connection.smtp.noop()
    except (OSError, smtplib.SMTPException):
        return False
    return code == 250


def _quit(smtp: smtplib.SMTP) -> None:
    try:
        smtp.quit()
    except (OSError, smtplib.SMTPException):
        smtp.close()
