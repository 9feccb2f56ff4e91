"""The mail queue and its poison queue in Azure Storage."""

from __future__ import annotations

import base64
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from azure.core.exceptions import AzureError, ResourceExistsError, ResourceNotFoundError
from azure.storage.queue import (
    LinearRetry,
    QueueClient,
    TextBase64DecodePolicy,
    TextBase64EncodePolicy,
)

from shared.errors import StorageUnavailable
from shared.message_ids import storage_request_id
from shared.settings import Settings, StorageSettings, poison_queue_name
from shared.storage_transport import StorageTransport, shared_transport

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential

    from shared.models import QueueEnvelope

logger = logging.getLogger(__name__)

# Messages the gateway queues never expire; the host's own poison copies last 7 days.
NEVER_EXPIRES = -1

# A SAS signature in a URL's query string, as a storage error's message may quote it.
_SIGNATURE = re.compile(r"([?&]sig=)[^&\s'\"]+", re.IGNORECASE)


# The environment variable naming the CA file that TLS to storage is verified against.
CA_FILE_VARIABLE = "SSL_CERT_FILE"


def storage_tls_verify(environ: Mapping[str, str] = os.environ) -> str | bool:
    """What a storage transport verifies TLS with: the CA file SSL_CERT_FILE names, else True.

    SSL_CERT_FILE is OpenSSL's own variable: Python's `ssl` default context and urllib3 honour
    it, `requests` does not (it loads certifi's bundle); the storage transport is given it
    explicitly, so that its fallback to `requests` (a proxy) trusts the same CAs. The gateway
    needs it nowhere in Azure; the local stack's identity mode sets it to certifi's CAs plus
    the local CA that signed Azurite's certificate.
    """
    return environ.get(CA_FILE_VARIABLE) or True


def storage_transport() -> StorageTransport:
    """The transport every storage client of the process shares (shared/storage_transport.py):
    pooled kept-alive connections, prompt timeouts, no proxy settings read from the
    environment, TLS verified with storage_tls_verify()'s CAs."""
    return shared_transport(storage_tls_verify())


# Fail within seconds when storage is down, so callers get a prompt 503; the SDK's default
# retry waits 15 s and more between tries. The arguments of each storage SDK's LinearRetry.
PROMPT_RETRY: dict[str, Any] = {"backoff": 1, "random_jitter_range": 1, "retry_total": 2}


def _client_options() -> dict[str, Any]:
    return {"retry_policy": LinearRetry(**PROMPT_RETRY), "transport": storage_transport()}


@dataclass(frozen=True)
class QueueMeasurement:
    """How full one queue is: its approximate depth and the age of its oldest visible message.

    The depth is the service's approximate count: it includes messages that are invisible
    (scheduled retries, messages being delivered) and may briefly include deleted ones. The
    age is that of the message at the front of the queue among those visible now, from its
    insertion time; None when no message is visible. A retry is a new queue message, so the
    age is how long this copy has waited, not how long ago the mail was accepted.
    """

    queue: str
    depth: int
    oldest_age_seconds: int | None
    exists: bool = True


@dataclass(frozen=True)
class QueueReport:
    """The mail queue's and the poison queue's measurements, taken together."""

    mail: QueueMeasurement
    poison: QueueMeasurement

    @property
    def measurements(self) -> tuple[QueueMeasurement, QueueMeasurement]:
        """Both measurements, the mail queue's first."""
        return (self.mail, self.poison)


def measure_queue(client: QueueClient, now: datetime) -> QueueMeasurement:
    """Measure one queue; a missing queue is empty. StorageUnavailable if storage fails."""
    name = client.queue_name
    try:
        properties = client.get_queue_properties()
        # Peeking neither hides the message nor counts a dequeue.
        peeked = client.peek_messages(max_messages=1)
    except ResourceNotFoundError:
        return QueueMeasurement(name, 0, None, exists=False)
    except AzureError as error:
        raise StorageUnavailable(f"queue {name}: {summary(error)}") from error
    depth = properties.approximate_message_count or 0
    oldest = peeked[0].inserted_on if peeked else None
    if oldest is None:
        return QueueMeasurement(name, depth, None)
    # Server time against ours: a small skew must not make a negative age.
    age = max(0, int((now - oldest).total_seconds()))
    # The count lags behind the queue: a message seen is a message there.
    return QueueMeasurement(name, max(depth, 1), age)


class MailQueue:
    """Puts envelopes on the mail queue (base64, as the host reads them) and the poison queue."""

    def __init__(self, mail: QueueClient, poison: QueueClient) -> None:
        self._mail = mail
        self._poison = poison

    @classmethod
    def from_settings(cls, settings: Settings) -> MailQueue:
        """Create the clients once; each holds its own connection pool."""
        return cls.from_storage(settings.storage, settings.mail_queue_name)

    @classmethod
    def from_storage(cls, storage: StorageSettings, mail_queue_name: str) -> MailQueue:
        """The mail queue `mail_queue_name` and its poison queue in `storage`."""
        credential = None if storage.connection_string else token_credential(storage)
        return cls(
            _queue_client(storage, mail_queue_name, credential),
            _queue_client(storage, poison_queue_name(mail_queue_name), credential),
        )

    @property
    def name(self) -> str:
        """The mail queue's name."""
        return self._mail.queue_name

    @property
    def poison_name(self) -> str:
        """The poison queue's name."""
        return self._poison.queue_name

    @property
    def poison(self) -> QueueClient:
        """The poison queue's client, for operators' tools."""
        return self._poison

    def depths(self) -> dict[str, int]:
        """Approximate number of messages in the mail and poison queues."""
        depths: dict[str, int] = {}
        for client in (self._mail, self._poison):
            try:
                properties = client.get_queue_properties()
                depths[client.queue_name] = properties.approximate_message_count or 0
            except ResourceNotFoundError:
                depths[client.queue_name] = 0
            except AzureError as error:
                raise StorageUnavailable(f"queue {client.queue_name}: {summary(error)}") from error
        return depths

    def measure(self, now: datetime) -> QueueReport:
        """The depth and oldest visible message's age of the mail and poison queues, at `now`."""
        return QueueReport(measure_queue(self._mail, now), measure_queue(self._poison, now))

    def ensure_exists(self) -> None:
        """Create the mail and poison queues if they are missing."""
        for client in (self._mail, self._poison):
            try:
                client.create_queue()
            except ResourceExistsError:
                pass
            except AzureError as error:
                raise StorageUnavailable(f"cannot create queue {client.queue_name}") from error

    def check(self) -> None:
        """Raise StorageUnavailable unless the mail queue answers."""
        try:
            self._mail.get_queue_properties()
        except AzureError as error:
            raise StorageUnavailable(f"queue {self._mail.queue_name}: {summary(error)}") from error

    def enqueue(self, envelope: QueueEnvelope, *, delay_seconds: int = 0) -> None:
        """Put an envelope on the mail queue, visible after `delay_seconds`; it never expires."""
        # The default time-to-live (7 days from the enqueue) would silently drop a message the
        # gateway could not deliver in time, or a retry delayed by days.
        self._send(
            self._mail,
            envelope.to_json(),
            envelope.id,
            visibility_timeout=delay_seconds or None,
            time_to_live=NEVER_EXPIRES,
        )

    def put_back(self, text: str, *, delay_seconds: int, message_id: str | None = None) -> None:
        """Put a message's text back on the mail queue as it is, visible after `delay_seconds`.

        For a message that could not be worked on now (storage, settings, a newer envelope
        version): a new queue message starts with a dequeue count of 0, so waiting spends
        nothing of the host's maxDequeueCount. `message_id`: the message's, if it has one.
        """
        self._send(
            self._mail,
            text,
            message_id,
            visibility_timeout=max(1, delay_seconds),
            time_to_live=NEVER_EXPIRES,
        )

    def dead_letter(self, text: str, *, message_id: str | None = None) -> None:
        """Put a dead-letter record on the poison queue, where it stays until an operator acts."""
        self._send(self._poison, text, message_id, time_to_live=NEVER_EXPIRES)

    @staticmethod
    def _send(
        client: QueueClient, text: str, message_id: str | None, **options: int | None
    ) -> None:
        try:
            # The message's id names the request in Storage's logs (shared/message_ids.py);
            # without one the SDK's StorageHeadersPolicy makes up a uuid1.
            client.send_message(text, client_request_id=storage_request_id(message_id), **options)
        except AzureError as error:
            raise StorageUnavailable(f"queue {client.queue_name}: {summary(error)}") from error


def token_credential(storage: StorageSettings) -> TokenCredential:
    """The identity the host itself would use for this connection."""
    from azure.identity import DefaultAzureCredential, ManagedIdentityCredential

    if (storage.credential or "").lower() == "managedidentity":
        return ManagedIdentityCredential(client_id=storage.client_id)
    return DefaultAzureCredential(managed_identity_client_id=storage.client_id)


class RawTextFallbackDecodePolicy(TextBase64DecodePolicy):
    """Base64 as the gateway writes it, else the raw text (the host's copy of a raw message)."""

    def decode(self, content: str, response: Any) -> str:
        """The decoded text, or the content itself when it is not base64 of UTF-8."""
        try:
            return base64.b64decode(content, validate=True).decode("utf-8")
        except ValueError:
            return content


def _queue_client(
    storage: StorageSettings, name: str, credential: TokenCredential | None
) -> QueueClient:
    # The host's default messageEncoding is base64; raw text would go straight to poison. Raw
    # text may still sit on either queue (a producer that forgot base64, until the host moves
    # it; the host's poison copy of it): reading it, as a peek does, must not fail.
    options: dict[str, Any] = {
        **_client_options(),
        "message_encode_policy": TextBase64EncodePolicy(),
        "message_decode_policy": RawTextFallbackDecodePolicy(),
    }
    if storage.connection_string:
        return QueueClient.from_connection_string(storage.connection_string, name, **options)
    assert storage.queue_service_uri is not None
    return QueueClient(storage.queue_service_uri, name, credential=credential, **options)


def summary(error: AzureError) -> str:
    """The error's type and the first line of its message, signatures masked: for a log or a 503.

    A connection error's message quotes the request's URL, and with a SAS connection string
    that URL carries the signature (`sig=`), a secret: it would reach the logs, and through
    GET /api/health/details the admin.
    """
    first_line = str(error.message or error).splitlines()[0]
    return type(error).__name__ + ": " + _SIGNATURE.sub(r"\1REDACTED", first_line)[:200]
