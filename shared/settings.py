"""The gateway's settings, read once from a mapping (the app settings) and validated."""

from __future__ import annotations

import base64
import functools
import ipaddress
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from shared.errors import ConfigurationError
from shared.operator_sign_in import OperatorSignIn
from shared.webhook_signature import PUBLIC_KEY_SETTING, normalize_public_key

# The Functions host's own storage: keys, leases, timer schedules (and, by default, the data).
HOST_STORAGE_CONNECTION = "AzureWebJobsStorage"
# The gateway's data: the mail queues, the status and client tables, the large-body container.
# It falls back to HOST_STORAGE_CONNECTION while nothing configures it (see data_connection).
DATA_STORAGE_CONNECTION = "MAILGATE_STORAGE"

DEFAULT_MAIL_QUEUE_NAME = "mail-outbound"
DEFAULT_STATUS_TABLE_NAME = "mailstatus"
DEFAULT_CLIENT_TABLE_NAME = "mailclients"
DEFAULT_LARGE_MESSAGE_CONTAINER_NAME = "mail-large"
DEFAULT_SENDGRID_API_BASE_URL = "https://api.sendgrid.com"
# SendGrid refuses a message of 30 MB or more in total; a larger request could never be sent.
MAX_REQUEST_BYTES_LIMIT = 30_000_000
DEFAULT_MAX_REQUEST_BYTES = MAX_REQUEST_BYTES_LIMIT
# The queue keeps at most 7 days of visibility delay.
MAX_RETRY_DELAY_SECONDS = 7 * 24 * 3600

# The host's poison copy of a message lives 7 days (it sends it with the queue's default
# time-to-live: Azure/azure-sdk-for-net, Microsoft.Azure.WebJobs.Extensions.Storage.Queues,
# QueueProcessor.CopyMessageToPoisonQueueAsync); a day more for what else delays a message.
DEFAULT_LARGE_MESSAGE_RETENTION_MARGIN_DAYS = 8.0

# The host's own poison move: after this many dequeues of one queue message (host.json
# `extensions.queues.maxDequeueCount`, default 5), which an app setting may override.
DEFAULT_MAX_DEQUEUE_COUNT = 5
MAX_DEQUEUE_COUNT_SETTING = "AzureFunctionsJobHost__extensions__queues__maxDequeueCount"
APP_HOST_JSON = Path(__file__).resolve().parents[1] / "host.json"

# 3-63 characters in Azure; 56 at most so that "<name>-poison" still fits.
_QUEUE_NAME = re.compile(r"[a-z0-9](?!.*--)[a-z0-9-]{1,54}[a-z0-9]")
# An address (local@domain) or an @domain, one of each, without separators or spaces.
_SENDER_ENTRY = re.compile(r"[^@\s,;]*@[^@\s,;]+\.[^@\s,;]+")
_TABLE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9]{2,62}")
# 3-63 lowercase letters, digits and single hyphens, starting and ending with a letter or digit.
_CONTAINER_NAME = re.compile(r"[a-z0-9](?!.*--)[a-z0-9-]{1,61}[a-z0-9]")
_LOOPBACK_HOSTS = {"localhost", "127.0.0.1", "::1"}
# The providers delivery can send through (shared/providers.py), by their MAIL_PROVIDERS names.
PROVIDER_NAMES = ("sendgrid", "smtp", "acs")
DEFAULT_MAIL_PROVIDERS = ("sendgrid",)
DEFAULT_SMTP_PORT = 587
# Each provider's send-rate brake (shared/brake.py), by provider name; unset, none. Named one by
# one (not derived from PROVIDER_NAMES) so that every setting stays a fixed, documented name.
MAX_EMAILS_PER_SECOND_SETTINGS = {
    "sendgrid": "SENDGRID_MAX_EMAILS_PER_SECOND",
    "smtp": "SMTP_MAX_EMAILS_PER_SECOND",
    "acs": "ACS_MAX_EMAILS_PER_SECOND",
}
MAX_EMAILS_PER_SECOND_LIMIT = 100_000
# Below 1, one mail every 1/rate seconds: ACS Email's first limits are 30 a minute (0.5).
MIN_EMAILS_PER_SECOND = 0.001
DEFAULT_PROVIDER_BREAKER_FAILURES = 5
DEFAULT_PROVIDER_BREAKER_COOLDOWN_SECONDS = 30.0
# A host name (RFC 1123 labels) or an IPv4 address, bounded; IPv6 is checked as an address.
_HOST_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")


def is_loopback_host(host: str) -> bool:
    """Whether a host name is this machine: the one place a secret may travel unencrypted."""
    return host.lower() in _LOOPBACK_HOSTS


def poison_queue_name(mail_queue_name: str) -> str:
    """The dead-letter queue of a mail queue: its name plus `-poison`, as the host names it."""
    return f"{mail_queue_name}-poison"


@dataclass(frozen=True)
class StorageSettings:
    """How to reach Azure Storage: a connection string, or a service URI and an identity."""

    connection_string: str | None = field(default=None, repr=False)
    queue_service_uri: str | None = None
    table_service_uri: str | None = None
    blob_service_uri: str | None = None
    credential: str | None = None
    client_id: str | None = None


@dataclass(frozen=True)
class Settings:
    """Every setting the gateway reads, validated."""

    storage: StorageSettings
    allowed_senders: tuple[str, ...]
    sendgrid_api_key: str = field(repr=False)
    mail_queue_name: str = DEFAULT_MAIL_QUEUE_NAME
    status_table_name: str = DEFAULT_STATUS_TABLE_NAME
    client_table_name: str = DEFAULT_CLIENT_TABLE_NAME
    large_message_container_name: str = DEFAULT_LARGE_MESSAGE_CONTAINER_NAME
    idempotency_retention_hours: float = 24.0
    # The console's activity rows are deleted this long after their minute (shared/retention.py).
    activity_retention_days: float = 7.0
    # Added to the longest retrying a message can do to give how long a leftover body under
    # live/ is kept (see large_message_retention): the host's poison copy of a message lives 7
    # days, plus a day.
    large_message_retention_margin_days: float = DEFAULT_LARGE_MESSAGE_RETENTION_MARGIN_DAYS
    # Status records and their delivery events are deleted this long after the message was
    # accepted (shared/status_retention.py).
    status_retention_days: float = 30.0
    sendgrid_api_base_url: str = DEFAULT_SENDGRID_API_BASE_URL
    sendgrid_connect_timeout_seconds: float = 5.0
    sendgrid_timeout_seconds: float = 30.0
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    max_delivery_attempts: int = 8
    large_messages_at_once: int = 6
    retry_base_delay_seconds: float = 30.0
    retry_max_delay_seconds: float = 3600.0
    # The Event Webhook's verification key (base64 DER); None leaves the webhook route closed.
    sendgrid_webhook_public_key: str | None = None
    # Operators who may sign in with Entra ID instead of the admin key (shared/operator_sign_in.py).
    operator_sign_in: OperatorSignIn = field(default_factory=OperatorSignIn)
    # The host's, not the gateway's: only to say why a message the host moved is in poison.
    host_max_dequeue_count: int = DEFAULT_MAX_DEQUEUE_COUNT
    # The providers in use, in order of preference (shared/providers.py).
    mail_providers: tuple[str, ...] = DEFAULT_MAIL_PROVIDERS
    # An ambiguous failure (the provider may have taken the mail) moves to the next provider
    # only when this is on: the next one would send a second copy if the first did send.
    failover_on_ambiguous: bool = False
    smtp_host: str | None = None
    smtp_port: int = DEFAULT_SMTP_PORT
    smtp_username: str | None = None
    smtp_password: str | None = field(default=None, repr=False)
    # The acs provider (shared/acs_client.py): its endpoint with the app's identity, or a
    # connection string with an access key (local); the senders its connected domains allow.
    acs_email_endpoint: str | None = None
    acs_email_connection_string: str | None = field(default=None, repr=False)
    acs_email_senders: tuple[str, ...] = ()
    # Each provider's circuit breaker (shared/breaker.py): open after this many retryable
    # failures in a row (0: never), closed again by a trial after the cool-down.
    provider_breaker_failures: int = DEFAULT_PROVIDER_BREAKER_FAILURES
    provider_breaker_cooldown_seconds: float = DEFAULT_PROVIDER_BREAKER_COOLDOWN_SECONDS
    # Each braked provider's most emails per second across all instances (shared/brake.py).
    max_emails_per_second: Mapping[str, float] = field(default_factory=dict)

    @property
    def large_message_retention(self) -> timedelta:
        """How long a body under live/ may be needed: MAX_DELIVERY_ATTEMPTS *
        RETRY_MAX_DELAY_SECONDS (every wait between attempts at its longest) +
        LARGE_MESSAGE_RETENTION_MARGIN_DAYS (the host's poison copy, 7 days, and a day more).
        infra/app/storage.bicep's lifecycle rule computes the same, in whole days."""
        return timedelta(
            seconds=self.max_delivery_attempts * self.retry_max_delay_seconds,
            days=self.large_message_retention_margin_days,
        )

    @property
    def poison_queue_name(self) -> str:
        """The dead-letter queue: the mail queue's name plus `-poison`, as the host names it."""
        return poison_queue_name(self.mail_queue_name)

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        """Build settings from app settings; raise ConfigurationError naming the bad setting.

        The error's message names settings, never their values: it is shown to callers (503).
        Settings holding unresolved Key Vault references are named together with the first
        other setting at fault, if any: each fix costs the operator an app restart.
        """
        try:
            refuse_unresolved_key_vault_references(environ)
        except ConfigurationError as unresolved:
            try:
                cls._build(_Reader(environ, references_unset=True))
            except ConfigurationError as other:
                raise ConfigurationError(f"{unresolved}; {other}") from None
            raise
        return cls._build(_Reader(environ))

    @classmethod
    def _build(cls, reader: _Reader) -> Settings:
        providers = _mail_providers(reader.text("MAIL_PROVIDERS"))
        smtp = "smtp" in providers
        settings = cls(
            storage=_storage_settings(reader),
            allowed_senders=_allowed_senders(reader.text("ALLOWED_SENDERS")),
            # Each provider's own settings are required only while it is in use.
            sendgrid_api_key=(
                reader.required("SENDGRID_API_KEY")
                if "sendgrid" in providers
                else reader.text("SENDGRID_API_KEY") or ""
            ),
            mail_providers=providers,
            failover_on_ambiguous=reader.flag("FAILOVER_ON_AMBIGUOUS", False),
            smtp_host=_smtp_host(
                reader.required("SMTP_HOST") if smtp else reader.text("SMTP_HOST")
            ),
            smtp_port=int(
                reader.number(
                    "SMTP_PORT", DEFAULT_SMTP_PORT, minimum=1, maximum=65535, integer=True
                )
            ),
            smtp_username=reader.text("SMTP_USERNAME"),
            smtp_password=reader.secret("SMTP_PASSWORD"),
            acs_email_endpoint=_acs_endpoint(reader.text("ACS_EMAIL_ENDPOINT")),
            acs_email_connection_string=_acs_connection_string(
                reader.secret("ACS_EMAIL_CONNECTION_STRING")
            ),
            acs_email_senders=_acs_senders(reader.text("ACS_EMAIL_SENDERS"), "acs" in providers),
            provider_breaker_failures=int(
                reader.number(
                    "PROVIDER_BREAKER_FAILURES",
                    DEFAULT_PROVIDER_BREAKER_FAILURES,
                    minimum=0,
                    maximum=1000,
                    integer=True,
                )
            ),
            provider_breaker_cooldown_seconds=reader.number(
                "PROVIDER_BREAKER_COOLDOWN_SECONDS",
                DEFAULT_PROVIDER_BREAKER_COOLDOWN_SECONDS,
                minimum=1,
                maximum=3600,
            ),
            max_emails_per_second=_max_emails_per_second(reader),
            mail_queue_name=_queue_name(reader.text("MAIL_QUEUE_NAME") or DEFAULT_MAIL_QUEUE_NAME),
            status_table_name=_table_name(
                "STATUS_TABLE_NAME", reader.text("STATUS_TABLE_NAME") or DEFAULT_STATUS_TABLE_NAME
            ),
            client_table_name=_table_name(
                "CLIENT_TABLE_NAME", reader.text("CLIENT_TABLE_NAME") or DEFAULT_CLIENT_TABLE_NAME
            ),
            large_message_container_name=_container_name(
                reader.text("LARGE_MESSAGE_CONTAINER_NAME") or DEFAULT_LARGE_MESSAGE_CONTAINER_NAME
            ),
            idempotency_retention_hours=reader.number(
                "IDEMPOTENCY_RETENTION_HOURS", 24.0, minimum=1 / 60, maximum=24 * 30
            ),
            # Fractions allowed, down to a minute, so that tests can see rows expire.
            activity_retention_days=reader.number(
                "ACTIVITY_RETENTION_DAYS", 7.0, minimum=1 / 1440, maximum=3650
            ),
            # Fractions allowed, down to a second, so that tests can see leftover bodies go; in
            # Azure anything under 7 days may delete the body of a message the host moved to
            # the poison queue while that copy still waits there.
            large_message_retention_margin_days=reader.number(
                "LARGE_MESSAGE_RETENTION_MARGIN_DAYS",
                DEFAULT_LARGE_MESSAGE_RETENTION_MARGIN_DAYS,
                minimum=1 / 86400,
                maximum=3650,
            ),
            status_retention_days=reader.number(
                "STATUS_RETENTION_DAYS", 30.0, minimum=1 / 1440, maximum=3650
            ),
            sendgrid_api_base_url=_base_url(
                reader.text("SENDGRID_API_BASE_URL") or DEFAULT_SENDGRID_API_BASE_URL
            ),
            sendgrid_connect_timeout_seconds=reader.number(
                "SENDGRID_CONNECT_TIMEOUT_SECONDS", 5.0, minimum=0.1, maximum=60
            ),
            sendgrid_timeout_seconds=reader.number(
                "SENDGRID_TIMEOUT_SECONDS", 30.0, minimum=0.1, maximum=200
            ),
            max_request_bytes=int(
                reader.number(
                    "MAX_REQUEST_BYTES",
                    DEFAULT_MAX_REQUEST_BYTES,
                    minimum=1024,
                    maximum=MAX_REQUEST_BYTES_LIMIT,
                )
            ),
            max_delivery_attempts=int(
                reader.number("MAX_DELIVERY_ATTEMPTS", 8, minimum=1, maximum=100, integer=True)
            ),
            large_messages_at_once=int(
                reader.number("LARGE_MESSAGES_AT_ONCE", 6, minimum=1, maximum=100, integer=True)
            ),
            retry_base_delay_seconds=reader.number(
                "RETRY_BASE_DELAY_SECONDS", 30.0, minimum=1, maximum=MAX_RETRY_DELAY_SECONDS
            ),
            retry_max_delay_seconds=reader.number(
                "RETRY_MAX_DELAY_SECONDS", 3600.0, minimum=1, maximum=MAX_RETRY_DELAY_SECONDS
            ),
            sendgrid_webhook_public_key=_webhook_public_key(reader.text(PUBLIC_KEY_SETTING)),
            operator_sign_in=OperatorSignIn.from_env(reader.environ),
            host_max_dequeue_count=int(
                reader.number(
                    MAX_DEQUEUE_COUNT_SETTING,
                    host_json_max_dequeue_count(APP_HOST_JSON),
                    minimum=1,
                    maximum=2**31 - 1,
                    integer=True,
                )
            ),
        )
        if settings.client_table_name.lower() == settings.status_table_name.lower():
            raise ConfigurationError("CLIENT_TABLE_NAME must differ from STATUS_TABLE_NAME")
        if (settings.smtp_username is None) != (settings.smtp_password is None) and smtp:
            raise ConfigurationError(
                "SMTP_USERNAME and SMTP_PASSWORD go together: set both (an authenticated "
                "relay) or neither (a loopback relay without AUTH)"
            )
        if "acs" in providers:
            _check_acs_credentials(settings)
        if settings.retry_max_delay_seconds < settings.retry_base_delay_seconds:
            raise ConfigurationError(
                "RETRY_MAX_DELAY_SECONDS must not be smaller than RETRY_BASE_DELAY_SECONDS"
            )
        # Delivery sends a message whose status record it cannot find: a record deleted while
        # a copy of its message may still be on the queue would let that copy send it twice.
        longest_life = settings.max_delivery_attempts * settings.retry_max_delay_seconds
        if settings.status_retention_days * 86400 <= longest_life:
            raise ConfigurationError(
                "STATUS_RETENTION_DAYS must be longer than a message can wait on the queue, "
                "MAX_DELIVERY_ATTEMPTS x RETRY_MAX_DELAY_SECONDS: raise it, or lower those"
            )
        return settings


def mail_queue_settings_from_env(environ: Mapping[str, str]) -> tuple[StorageSettings, str]:
    """Only what reaching the mail queue takes: the storage connection and MAIL_QUEUE_NAME.

    While another setting is wrong, delivery still puts each message back on the queue for
    later with these, and the queue monitor still measures the queues.
    """
    reader = _Reader(environ)
    return _storage_settings(reader), _queue_name(
        reader.text("MAIL_QUEUE_NAME") or DEFAULT_MAIL_QUEUE_NAME
    )


@functools.cache
def host_json_max_dequeue_count(path: Path) -> int:
    """host.json's `extensions.queues.maxDequeueCount` (keys in any case, as the host reads
    them), read once; the host's default 5 when the file or the option is missing or bad."""
    try:
        document = json.loads(path.read_text(encoding="utf-8-sig"))
        value = _option(_option(_option(document, "extensions"), "queues"), "maxDequeueCount")
        count = int(value)
    except (OSError, ValueError, TypeError):
        return DEFAULT_MAX_DEQUEUE_COUNT
    return count if count >= 1 else DEFAULT_MAX_DEQUEUE_COUNT


def _option(section: Any, name: str) -> Any:
    if not isinstance(section, dict):
        raise TypeError(f"no section holding {name}")
    return next((v for k, v in section.items() if k.lower() == name.lower()), None)


KEY_VAULT_REFERENCE_PREFIX = "@Microsoft.KeyVault("


def refuse_unresolved_key_vault_references(environ: Mapping[str, str]) -> None:
    """Raise ConfigurationError naming every setting that still holds a Key Vault reference.

    App Service leaves the reference text in place when it cannot resolve it (the secret is
    missing, or the app's identity may not read it); the app must not start on such a value.
    """
    unresolved = sorted(
        name
        for name, value in environ.items()
        if value.strip().startswith(KEY_VAULT_REFERENCE_PREFIX)
    )
    if unresolved:
        raise ConfigurationError(
            f"{', '.join(unresolved)}: unresolved Key Vault reference(s); check the secret exists "
            "and the app's identity may read it (Key Vault Secrets User), then restart the app"
        )


class _Reader:
    """Reads settings, treating blanks as missing and unresolved Key Vault references as errors
    (or, with `references_unset`, as settings not given, and required ones as present)."""

    def __init__(self, environ: Mapping[str, str], *, references_unset: bool = False) -> None:
        self._environ = environ
        self._references_unset = references_unset

    @property
    def environ(self) -> Mapping[str, str]:
        return self._environ

    def _is_reference(self, name: str) -> bool:
        return self._environ.get(name, "").strip().startswith(KEY_VAULT_REFERENCE_PREFIX)

    def text(self, name: str) -> str | None:
        value = self._environ.get(name, "").strip()
        if self._references_unset and self._is_reference(name):
            return None
        if value.startswith(KEY_VAULT_REFERENCE_PREFIX):
            # App Service leaves the reference text in place when it cannot resolve it.
            raise ConfigurationError(
                f"{name} is an unresolved Key Vault reference: check the secret exists and the "
                "app's identity may read it (Key Vault Secrets User)"
            )
        return value or None

    def required(self, name: str) -> str:
        value = self.text(name)
        if value is None and self._references_unset and self._is_reference(name):
            return ""
        if value is None:
            raise ConfigurationError(f"{name} is required but not set")
        return value

    def secret(self, name: str) -> str | None:
        """An optional secret: an unresolved reference, while references count as unset, is
        taken as given (so that it is not also reported as missing)."""
        value = self.text(name)
        if value is None and self._references_unset and self._is_reference(name):
            return ""
        return value

    def number(
        self,
        name: str,
        default: float,
        *,
        minimum: float,
        maximum: float,
        integer: bool = False,
    ) -> float:
        raw = self.text(name)
        if raw is None:
            return default
        try:
            value = int(raw) if integer else float(raw)
        except ValueError:
            kind = "a whole number" if integer else "a number"
            raise ConfigurationError(f"{name} must be {kind}") from None
        if not minimum <= value <= maximum:
            raise ConfigurationError(f"{name} must be between {minimum:g} and {maximum:g}")
        return value

    def flag(self, name: str, default: bool) -> bool:
        raw = self.text(name)
        if raw is None:
            return default
        if raw.lower() not in ("true", "false"):
            raise ConfigurationError(f"{name} must be true or false")
        return raw.lower() == "true"

    def connection(self, name: str) -> str | None:
        return connection_setting(self._environ, name)


def connection_setting(environ: Mapping[str, str], connection: str) -> str | None:
    """The setting the Functions host reads connection `connection` from, or None if unset.

    As the host's storage extensions resolve a binding's `connection` (azure-sdk-for-net,
    Microsoft.Azure.WebJobs.Extensions.Clients, WebJobsConfigurationExtensions.cs): the section
    `AzureWebJobs<connection>` if it exists, else `<connection>`; a section exists when it has a
    value (a connection string) or entries `<section>__<key>` (an identity-based connection).
    A named connection that neither configures is an error there, never AzureWebJobsStorage.
    """
    for setting in (f"AzureWebJobs{connection}", connection):
        if environ.get(setting, "").strip():
            return setting
        entries = setting.lower() + "__"
        if any(k.lower().startswith(entries) and environ[k].strip() for k in list(environ)):
            return setting
    return None


def data_connection(environ: Mapping[str, str]) -> str:
    """The connection holding the gateway's data, which the queue trigger binds too.

    MAILGATE_STORAGE once any setting configures it, else AzureWebJobsStorage: because the
    host fails a binding to an unconfigured named connection instead of falling back, the
    trigger must name AzureWebJobsStorage itself while MAILGATE_STORAGE is unset. Reading
    which settings exist cannot fail, so the trigger may call this when the app is indexed.
    """
    if connection_setting(environ, DATA_STORAGE_CONNECTION):
        return DATA_STORAGE_CONNECTION
    return HOST_STORAGE_CONNECTION


def _storage_settings(reader: _Reader) -> StorageSettings:
    # The binding `AzureWebJobsStorage` would be looked up as AzureWebJobsAzureWebJobsStorage
    # first; nobody sets that, so the host storage is read under its own name.
    name = reader.connection(DATA_STORAGE_CONNECTION) or HOST_STORAGE_CONNECTION
    connection_string = reader.text(name)
    if connection_string:
        _check_connection_string(name, connection_string)
        return StorageSettings(connection_string=connection_string)
    prefix = f"{name}__"
    # The Storage extension's order for each client (StorageClientProvider.TryGetServiceUri in
    # Microsoft.Azure.WebJobs.Extensions.Clients): accountName, then `<service>ServiceUri`.
    account = reader.text(prefix + "accountName")
    queue_uri: str | None
    table_uri: str | None
    blob_uri: str | None
    if account:
        queue_uri = f"https://{account}.queue.core.windows.net"
        table_uri = f"https://{account}.table.core.windows.net"
        blob_uri = f"https://{account}.blob.core.windows.net"
    else:
        queue_uri = reader.text(prefix + "queueServiceUri")
        table_uri = reader.text(prefix + "tableServiceUri")
        # A bare `serviceUri` names one service. For AzureWebJobsStorage it is the blob
        # service's (the host's BlobServiceClientProvider falls back to it; Microsoft's
        # "Connecting to host storage with an identity"), and a connection that serves
        # queues, tables and blobs cannot use it for more than one of them (Microsoft's queue
        # binding reference, "Identity-based connections"). The queue trigger would take it
        # as a last resort (Microsoft.Extensions.Azure's ClientFactory matches QueueServiceClient's
        # `serviceUri` parameter), so a queue left to it is refused rather than guessed.
        blob_uri = reader.text(prefix + "blobServiceUri") or reader.text(prefix + "serviceUri")
    if not queue_uri:
        hint = ""
        if reader.text(prefix + "serviceUri"):
            hint = f"; {prefix}serviceUri is taken as the blob service's URI, never the queue's"
        # A chosen MAILGATE_STORAGE is configured by definition, only without a queue service.
        problem = "is not set" if name == HOST_STORAGE_CONNECTION else "names no queue service"
        raise ConfigurationError(
            f"{name} {problem}: give a connection string, or {prefix}accountName (or "
            f"{prefix}queueServiceUri, {prefix}tableServiceUri and {prefix}blobServiceUri) for "
            f"an identity-based connection{hint}"
        )
    if not table_uri:
        raise ConfigurationError(
            f"{prefix}tableServiceUri is required with {prefix}queueServiceUri: "
            "message status lives in Table storage"
        )
    if not blob_uri:
        raise ConfigurationError(
            f"{prefix}blobServiceUri (or {prefix}serviceUri) is required with "
            f"{prefix}queueServiceUri: "
            "messages too large for one queue message are kept in Blob storage"
        )
    return StorageSettings(
        queue_service_uri=queue_uri,
        table_service_uri=table_uri,
        blob_service_uri=blob_uri,
        credential=reader.text(prefix + "credential"),
        client_id=reader.text(prefix + "clientId"),
    )


def _check_connection_string(name: str, connection_string: str) -> None:
    pairs = dict(part.split("=", 1) for part in connection_string.split(";") if "=" in part.strip())
    keys = {key.strip().lower() for key in pairs}
    if "usedevelopmentstorage" in keys or "accountname" in keys:
        return
    if "queueendpoint" in keys:
        # Without an account name the clients know only the endpoints given: the gateway uses
        # all three services.
        missing = [e for e in ("TableEndpoint", "BlobEndpoint") if e.lower() not in keys]
        if not missing:
            return
        raise ConfigurationError(
            f"{name} gives QueueEndpoint but not {' or '.join(missing)}: status "
            "records live in Table storage and large messages in Blob storage"
        )
    raise ConfigurationError(
        f"{name} is not a storage connection string: it needs AccountName, "
        "QueueEndpoint or UseDevelopmentStorage=true"
    )


def sender_allowed(address: str, senders: tuple[str, ...]) -> bool:
    """Whether an address is among `senders` (lower-case entries) itself or by its @domain."""
    address = address.lower()
    return address in senders or "@" + address.rpartition("@")[2] in senders


def parse_senders(raw: str | None, source: str) -> tuple[str, ...]:
    """Comma-separated addresses and @domains, lower-cased; ValueError naming `source` if bad."""
    entries = tuple(e.strip().lower() for e in (raw or "").split(",") if e.strip())
    if not entries:
        raise ValueError(
            f"{source} is empty: list the addresses and @domains that may send, "
            "for example 'noreply@example.com,@example.org'"
        )
    for position, entry in enumerate(entries, 1):
        if not _SENDER_ENTRY.fullmatch(entry):
            raise ValueError(f"{source} entry {position} is neither an address nor an @domain")
    return entries


def _allowed_senders(raw: str | None) -> tuple[str, ...]:
    try:
        return parse_senders(raw, "ALLOWED_SENDERS")
    except ValueError as error:
        raise ConfigurationError(str(error)) from None


def _queue_name(name: str) -> str:
    if not _QUEUE_NAME.fullmatch(name):
        raise ConfigurationError(
            "MAIL_QUEUE_NAME is not a valid queue name: 3-56 lowercase letters, digits "
            "and single hyphens, starting and ending with a letter or digit"
        )
    if name.endswith("-poison"):
        raise ConfigurationError("MAIL_QUEUE_NAME must not end in '-poison'")
    return name


def _table_name(setting: str, name: str) -> str:
    if not _TABLE_NAME.fullmatch(name):
        raise ConfigurationError(
            f"{setting} is not a valid table name: 3-63 letters and digits, starting with a letter"
        )
    return name


def _container_name(name: str) -> str:
    if not _CONTAINER_NAME.fullmatch(name):
        raise ConfigurationError(
            "LARGE_MESSAGE_CONTAINER_NAME is not a valid blob container name: 3-63 "
            "lowercase letters, digits and single hyphens, starting and ending with a letter or "
            "digit"
        )
    return name


def _webhook_public_key(text: str | None) -> str | None:
    if text is None:
        return None
    try:
        return normalize_public_key(text)
    except ValueError as error:
        raise ConfigurationError(
            f"{PUBLIC_KEY_SETTING} is not SendGrid's verification key: {error}; copy it from "
            "SendGrid's Mail Settings, Event Webhook, Signature Verification"
        ) from None


def _mail_providers(raw: str | None) -> tuple[str, ...]:
    entries = tuple(e.strip().lower() for e in (raw or "").split(",") if e.strip())
    if not entries:
        return DEFAULT_MAIL_PROVIDERS
    for entry in entries:
        if entry not in PROVIDER_NAMES:
            # The name is the operator's own text, cut short: it may be anything.
            raise ConfigurationError(
                f"MAIL_PROVIDERS names an unknown provider {entry[:40]!r}: use "
                + ", ".join(PROVIDER_NAMES)
            )
    if len(set(entries)) != len(entries):
        raise ConfigurationError("MAIL_PROVIDERS names a provider more than once")
    return entries


def _max_emails_per_second(reader: _Reader) -> dict[str, float]:
    rates: dict[str, float] = {}
    for provider, setting in MAX_EMAILS_PER_SECOND_SETTINGS.items():
        if reader.text(setting) is not None:
            rates[provider] = reader.number(
                setting, 0, minimum=MIN_EMAILS_PER_SECOND, maximum=MAX_EMAILS_PER_SECOND_LIMIT
            )
    return rates


def _smtp_host(host: str | None) -> str | None:
    if host is None or _HOST_NAME.fullmatch(host):
        return host
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ConfigurationError("SMTP_HOST is not a host name or IP address") from None
    return host


def _acs_endpoint(url: str | None) -> str | None:
    if url is None:
        return None
    parts = urlsplit(url)
    # The SDK sends the identity's token only over https (azure-core's BearerTokenCredentialPolicy).
    if parts.scheme != "https" or not parts.hostname or parts.query or parts.fragment:
        raise ConfigurationError(
            "ACS_EMAIL_ENDPOINT is not an https URL such as "
            "https://<resource>.communication.azure.com"
        )
    return url.rstrip("/")


def _acs_connection_string(text: str | None) -> str | None:
    if not text:
        return text
    try:
        acs_connection_parts(text)
    except ValueError as error:
        raise ConfigurationError(f"ACS_EMAIL_CONNECTION_STRING {error}") from None
    return text


def acs_connection_parts(text: str) -> tuple[str, str]:
    """The endpoint (scheme kept) and access key of an ACS connection string,
    `endpoint=https://<resource>.communication.azure.com/;accesskey=<base64 key>`; ValueError
    saying what is wrong, never quoting it."""
    pairs = {
        key.strip().lower(): value.strip()
        for key, _, value in (part.partition("=") for part in text.split(";") if part.strip())
    }
    endpoint, key = pairs.get("endpoint", ""), pairs.get("accesskey", "")
    if not endpoint or not key:
        raise ValueError("needs endpoint=...;accesskey=..., as the resource's Keys page gives it")
    parts = urlsplit(endpoint)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValueError("has an endpoint that is not an http(s) URL")
    if parts.scheme == "http" and not is_loopback_host(parts.hostname):
        # The key signs every request; the mail itself would cross the network in clear text.
        raise ValueError("must use an https endpoint unless it is loopback")
    try:
        if not base64.b64decode(key, validate=True):
            raise ValueError
    except ValueError:
        raise ValueError("has an access key that is not base64") from None
    return endpoint.rstrip("/"), key


def _acs_senders(raw: str | None, in_use: bool) -> tuple[str, ...]:
    if raw is None and not in_use:
        return ()
    try:
        return parse_senders(raw, "ACS_EMAIL_SENDERS")
    except ValueError as error:
        raise ConfigurationError(
            f"{error}: ACS sends only from its connected domains' senders"
        ) from None


def _check_acs_credentials(settings: Settings) -> None:
    endpoint, connection = settings.acs_email_endpoint, settings.acs_email_connection_string
    if endpoint is None and connection is None:
        raise ConfigurationError(
            "MAIL_PROVIDERS lists acs: set ACS_EMAIL_ENDPOINT (the app's managed identity) or "
            "ACS_EMAIL_CONNECTION_STRING (an access key)"
        )
    if endpoint is not None and connection:
        raise ConfigurationError(
            "set ACS_EMAIL_ENDPOINT (the app's managed identity) or ACS_EMAIL_CONNECTION_STRING "
            "(an access key), not both"
        )


def _base_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in {"https", "http"} or not parts.hostname:
        raise ConfigurationError("SENDGRID_API_BASE_URL is not an http(s) URL")
    if parts.scheme == "http" and not is_loopback_host(parts.hostname):
        # The API key travels in a header: never in clear text off this machine.
        raise ConfigurationError("SENDGRID_API_BASE_URL must use https unless it is loopback")
    return url.rstrip("/")
