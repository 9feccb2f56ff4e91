"""Storage queue triggers with the semantics of the host's Storage extension 5.x listener.

Per message: undecodable base64, or a dequeue count already past maxDequeueCount, goes to
`<queue>-poison` without a call; a body that is not UTF-8 fails the invocation at binding
(the function is not called) and is retried like any failure; success deletes; failure
releases it after visibilityTimeout, or at maxDequeueCount copies the original text to the
poison queue and deletes it. A failure includes a function that ends its worker process (see
host_invoke): the host survives a worker crash and settles the message like any failure. Only
a host that dies itself (the instance) leaves its messages invisible until the 10-minute hold
it received them with runs out (QueueListener.cs, QueueProcessor.cs in the Storage extension).
A queue ending in `-poison` has no poison queue: as in the host, its failed messages are
neither released nor deleted, so they return after that hold.
Unlike the host (which waits for it), a missing trigger queue is created.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import functools
import logging
import random
import re
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.functions.queue import QueueMessage as FunctionQueueMessage
from azure.storage.queue import LinearRetry, QueueClient, QueueMessage

from devstack.host_invoke import FunctionSpec, HostError, Invoker
from shared.queue import storage_transport

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential

logger = logging.getLogger(__name__)

T = TypeVar("T")

POISON_SUFFIX = "-poison"
# The host receives a message invisible for 10 minutes and renews that halfway while it runs;
# it shows only when the host itself dies mid-call (a failed call is released at once).
MESSAGE_HOLD_SECONDS = 600
MIN_POLLING_SECONDS = 0.1
MAX_BATCH_SIZE = 32
# A binding without `connection` uses the WebJobs SDK's ConnectionStringNames.Storage, so
# AzureWebJobsStorage (the section name with its AzureWebJobs prefix).
DEFAULT_CONNECTION = "Storage"
# Storage errors after which the host gives up on a message quietly: someone else has it.
_GONE_CODES = {
    "MessageNotFound",
    "QueueNotFound",
    "PopReceiptMismatch",
    "QueueBeingDeleted",
    "QueueDisabled",
}

_QUEUE_ENDPOINTS = {"accountname", "queueserviceuri", "serviceuri"}

_TIMESPAN = re.compile(r"(?:(\d+)\.)?(\d+):(\d+)(?::(\d+)(?:\.(\d{1,7}))?)?")
_TIMESPAN_DAYS_FIRST = re.compile(r"(\d+):(\d+):(\d+):(\d+)(?:\.(\d{1,7}))?")


def parse_timespan(value: object) -> float:
    """Seconds in a .NET TimeSpan such as `00:01:00`, parsed as the host's TimeSpan.Parse does.

    A bare number is a count of DAYS there (so `2000` is 2000 days, not milliseconds: the
    Functions 1.x millisecond form is gone since 2.x), and `24:00:00` is 24 days.
    """
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise HostError(f"'{value}' is not a TimeSpan (hh:mm:ss)")
    text = str(value).strip()
    if text.isdigit():
        return int(text) * 86400.0
    days_first = _TIMESPAN_DAYS_FIRST.fullmatch(text)
    plain = _TIMESPAN.fullmatch(text)
    if days_first:
        days, hours, minutes, seconds, fraction = days_first.groups()
    elif plain:
        days, hours, minutes, seconds, fraction = plain.groups()
        if days is None and seconds is not None and int(hours) > 23:
            # TimeSpan.Parse reads an out-of-range "hh:mm:ss" as "d:hh:mm".
            days, hours, minutes, seconds = hours, minutes, seconds, None
    else:
        raise HostError(f"'{value}' is not a TimeSpan (hh:mm:ss)")
    if int(hours) > 23 or int(minutes) > 59 or int(seconds or 0) > 59:
        raise HostError(f"'{value}' is out of range for a TimeSpan")
    total = int(days or 0) * 86400 + int(hours) * 3600 + int(minutes) * 60 + int(seconds or 0)
    return total + (int(fraction) / 10 ** len(fraction) if fraction else 0.0)


def _option(section: Mapping[str, Any], name: str) -> Any:
    """A host.json option, matched case-insensitively as .NET configuration does."""
    return next((v for k, v in section.items() if k.lower() == name.lower()), None)


@dataclass(frozen=True)
class QueueOptions:
    """host.json `extensions.queues`, with the Storage extension 5.x defaults."""

    batch_size: int = 16
    new_batch_threshold: int = 8
    max_polling_interval: float = 60.0
    visibility_timeout: float = 0.0
    max_dequeue_count: int = 5
    message_encoding: str = "base64"

    @classmethod
    def from_host_json(cls, host_json: Mapping[str, Any], cpu_count: int) -> QueueOptions:
        """Read and check the options; newBatchThreshold defaults to batchSize/2 x cores."""
        extensions = _option(host_json, "extensions") or {}
        section: Mapping[str, Any] = _option(extensions, "queues") or {}

        def integer(name: str, default: int, low: int, high: int) -> int:
            raw = _option(section, name)
            if raw is None:
                return default
            try:
                number = int(str(raw))
            except ValueError:
                raise HostError(f"host.json queues.{name}: '{raw}' is not an integer") from None
            if not low <= number <= high:
                raise HostError(f"host.json queues.{name}: {number} is not in [{low}, {high}]")
            return number

        def timespan(name: str, default: float) -> float:
            raw = _option(section, name)
            if raw is None:
                return default
            if isinstance(raw, int) and not isinstance(raw, bool):
                logger.warning(
                    "host.json queues.%s is the number %d: the Functions host reads a bare number "
                    'as that many DAYS (TimeSpan.Parse); write a TimeSpan such as "00:00:02"',
                    name,
                    raw,
                )
            try:
                return parse_timespan(raw)
            except HostError as exc:
                raise HostError(f"host.json queues.{name}: {exc}") from None

        batch_size = integer("batchSize", 16, 1, MAX_BATCH_SIZE)
        max_polling = timespan("maxPollingInterval", 60.0)
        if max_polling < MIN_POLLING_SECONDS:
            raise HostError("host.json queues.maxPollingInterval must not be less than 00:00:00.1")
        encoding = str(_option(section, "messageEncoding") or "base64").lower()
        if encoding not in ("base64", "none"):
            raise HostError(f"host.json queues.messageEncoding: '{encoding}' is not base64 or none")
        return cls(
            batch_size=batch_size,
            new_batch_threshold=integer(
                "newBatchThreshold", batch_size // 2 * cpu_count, 0, 2**31 - 1
            ),
            max_polling_interval=max_polling,
            visibility_timeout=timespan("visibilityTimeout", 0.0),
            max_dequeue_count=integer("maxDequeueCount", 5, 1, 2**31 - 1),
            message_encoding=encoding,
        )


def get_setting(settings: Mapping[str, str], name: str) -> str | None:
    """An app setting by name; like .NET configuration, names are case-insensitive."""
    if name in settings:
        return settings[name]
    return next((v for k, v in settings.items() if k.lower() == name.lower()), None)


def _checked(name: str, value: str) -> str:
    if value.startswith("@Microsoft.KeyVault("):
        raise HostError(f"App setting '{name}' is an unresolved Key Vault reference: {value}")
    return value


class UnresolvedSetting(HostError):
    """A binding's `%NAME%` names an app setting that is not set."""


def resolve_setting_expressions(text: str, settings: Mapping[str, str]) -> str:
    """Replace each `%NAME%` with the app setting NAME, as the host resolves binding expressions."""

    def replace(match: re.Match[str]) -> str:
        value = get_setting(settings, match.group(1))
        if value is None:
            # The host's words (Azure/azure-webjobs-sdk, NameResolverExtensions.ResolveWholeString).
            raise UnresolvedSetting(
                f"'%{match.group(1)}%' does not resolve to a value: the app setting "
                f"'{match.group(1)}' is not set"
            )
        return _checked(match.group(1), value)

    return re.sub(r"%([^%]+)%", replace, text)


def _section_entries(settings: Mapping[str, str], section: str) -> dict[str, str]:
    """The settings `<section>__<key>` (or `<section>:<key>`) by lower-case key, as .NET reads
    them (configuration keys ignore case)."""
    entries = {}
    for name in settings:
        for separator in ("__", ":"):
            if name.lower().startswith(section.lower() + separator):
                entries[name[len(section) + len(separator) :].lower()] = name
    return entries


@dataclass(frozen=True)
class StorageConnection:
    """A storage connection as the host resolved it: a connection string, or the entries of
    an identity-based connection (`<section>__<key>`, keys in lower case)."""

    section: str
    connection_string: str | None = field(default=None, repr=False)
    entries: Mapping[str, str] = field(default_factory=dict)

    def service_uri(self, service: str) -> str | None:
        """The URI of `service` (queue, blob, table) in an identity-based connection.

        As the Storage extension builds a client (StorageClientProvider.TryGetServiceUri in
        azure-sdk-for-net's Microsoft.Azure.WebJobs.Extensions.Clients): `accountName` gives
        `https://<account>.<service>.core.windows.net`, else `<service>ServiceUri`; failing
        both, Microsoft.Extensions.Azure's ClientFactory matches the client constructor's own
        parameter, `serviceUri`.
        """
        account = self.entries.get("accountname")
        if account:
            return f"https://{account}.{service}.core.windows.net"
        return self.entries.get(f"{service}serviceuri") or self.entries.get("serviceuri")

    def credential(self) -> TokenCredential:
        """The identity of an identity-based connection, as the host's extensions pick it.

        Microsoft.Extensions.Azure's ClientFactory.CreateCredential (azure-sdk-for-net): with
        `credential` set to `managedidentity`, a ManagedIdentityCredential for the one
        identifier given (`clientId`, `managedIdentityClientId`, `managedIdentityResourceId` or
        `managedIdentityObjectId`; none: the system-assigned identity); with no `credential`, a
        DefaultAzureCredential (AzureComponentFactoryImpl's fallback), told the client id if one
        is given. Secrets and certificates in app settings are not supported here.
        """
        from azure.identity import DefaultAzureCredential, ManagedIdentityCredential

        kind = (self.entries.get("credential") or "").lower()
        client_id = self.entries.get("clientid")
        chosen = {
            key: self.entries[key]
            for key in (
                "clientid",
                "managedidentityclientid",
                "managedidentityresourceid",
                "managedidentityobjectid",
            )
            if self.entries.get(key)
        }
        if kind == "managedidentity":
            if len(chosen) > 1:
                raise HostError(
                    f"Storage connection '{self.section}' names more than one managed identity "
                    f"({', '.join(sorted(chosen))}): give one"
                )
            if "managedidentityresourceid" in chosen:
                return ManagedIdentityCredential(
                    identity_config={"resource_id": chosen["managedidentityresourceid"]}
                )
            if "managedidentityobjectid" in chosen:
                return ManagedIdentityCredential(
                    identity_config={"object_id": chosen["managedidentityobjectid"]}
                )
            return ManagedIdentityCredential(
                client_id=chosen.get("managedidentityclientid") or client_id
            )
        if kind or self.entries.keys() & {"clientsecret", "clientcertificate"}:
            raise HostError(
                f"Storage connection '{self.section}': the local host supports "
                "credential=managedidentity or none (DefaultAzureCredential), not "
                f"'{kind or 'a client secret or certificate'}'"
            )
        return DefaultAzureCredential(
            managed_identity_client_id=chosen.get("managedidentityclientid") or client_id
        )


def resolve_connection(connection: str | None, settings: Mapping[str, str]) -> StorageConnection:
    """The storage connection `connection`, found as the Storage extensions find it.

    The section `AzureWebJobs<X>` if it exists, else `<X>` (WebJobsConfigurationExtensions.cs
    in azure-sdk-for-net's Microsoft.Azure.WebJobs.Extensions.Clients); a section exists with a
    value or with `__` entries, and the first that exists is the only one read. Its value is a
    connection string; entries alone make an identity-based connection. Finding neither is an
    error: the host never falls back to AzureWebJobsStorage.
    """
    name = connection or DEFAULT_CONNECTION
    for section in (f"AzureWebJobs{name}", name):
        value = get_setting(settings, section)
        entries = _section_entries(settings, section)
        if value is None and not entries:
            continue
        if value is not None:
            if not value.strip():
                raise HostError(
                    f"Storage connection '{name}': the app setting '{section}' is empty"
                )
            return StorageConnection(section, connection_string=_checked(section, value))
        # The queue client needs accountName, queueServiceUri or (the SDK constructor's own
        # parameter name, through Microsoft.Extensions.Azure's ClientFactory) serviceUri.
        if not entries.keys() & _QUEUE_ENDPOINTS:
            raise HostError(
                f"Storage connection '{name}' ({', '.join(sorted(entries.values()))}) gives no "
                f"queue service: set '{section}__accountName' or '{section}__queueServiceUri'"
            )
        values = {key: _checked(setting, settings[setting]) for key, setting in entries.items()}
        return StorageConnection(section, entries=values)
    raise HostError(
        f"Storage connection '{name}' is not configured: set the app setting "
        f"'AzureWebJobs{name}' or '{name}' to a connection string, or its "
        "identity-based entries ('__queueServiceUri' and '__credential', ...)"
    )


def normalize_queue_name(name: str) -> str:
    """Lower-case the name as the host does, and check Azure's queue naming rules."""
    lowered = name.lower()
    if not re.fullmatch(r"[a-z0-9](?!.*--)[a-z0-9-]{1,61}[a-z0-9]", lowered):
        raise HostError(
            f"Invalid queue name '{name}': 3-63 characters, letters, digits and single hyphens,"
            " starting and ending with a letter or digit"
        )
    return lowered


def poison_queue_name(name: str) -> str | None:
    """`<name>-poison`, or None where the host keeps no poison queue."""
    if name.endswith(POISON_SUFFIX) or len(name + POISON_SUFFIX) > 63:
        return None
    return name + POISON_SUFFIX


class PollingBackoff:
    """The host's randomized exponential backoff between polls of an empty queue."""

    RANDOMIZATION = 0.2

    def __init__(
        self,
        minimum: float,
        maximum: float,
        rng: Callable[[float, float], float] = random.uniform,
    ) -> None:
        self._minimum = minimum
        self._maximum = maximum
        self._rng = rng
        self._current = 0.0
        self._exponent = 0

    def next_delay(self, found_message: bool) -> float:
        """Seconds to wait: back to the minimum after a message, else roughly doubling to max."""
        if found_message:
            self._current, self._exponent = self._minimum, 1
        elif self._current != self._maximum:
            delay = self._minimum
            if self._exponent > 0:
                factor = self._rng(1 - self.RANDOMIZATION, 1 + self.RANDOMIZATION)
                delay += factor * 2 ** (self._exponent - 1) * self._minimum
            if delay < self._maximum:
                self._current = delay
                self._exponent += 1
            else:
                self._current = self._maximum
        return self._current


def _error_code(error: HttpResponseError) -> str | None:
    """The storage error code (the SDK sets it on the exception it raises)."""
    code = getattr(error, "error_code", None)
    return str(code) if code is not None else None


class _PopReceipt:
    """The message's latest pop receipt: each visibility renewal replaces it."""

    def __init__(self, value: str) -> None:
        self.value = value


class QueueListener:
    """Polls one queue for one function and settles each message as the host does."""

    def __init__(
        self,
        spec: FunctionSpec,
        queue: QueueClient,
        poison: QueueClient | None,
        options: QueueOptions,
        invoker: Invoker,
        io: Executor,
        hold_seconds: int = MESSAGE_HOLD_SECONDS,
    ) -> None:
        self.spec = spec
        self._queue = queue
        self._poison = poison
        self._options = options
        self._invoker = invoker
        self._io = io
        self._hold = hold_seconds
        self._param = spec.trigger.name
        self._stopping = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._poller: asyncio.Task[None] | None = None

    @property
    def queue_name(self) -> str:
        """Name of the queue this listener polls."""
        return str(self._queue.queue_name)

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a blocking storage call off the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._io, functools.partial(fn, *args, **kwargs))

    async def start(self) -> None:
        """Create the queue if missing, then start polling."""
        await self._ensure_queue()
        self._poller = asyncio.create_task(self._poll(), name=f"poll {self.queue_name}")

    async def _ensure_queue(self) -> None:
        try:
            await self._call(self._queue.create_queue)
        except ResourceExistsError:
            return
        except Exception as exc:
            logger.error(
                "Cannot create queue '%s' (will retry while polling): %s", self.queue_name, exc
            )
            return
        # The real host waits for a missing queue; creating it keeps local start-up simple.
        logger.info("Created queue '%s'", self.queue_name)

    async def stop(self, timeout: float) -> bool:
        """Stop polling and wait up to `timeout` s for in-flight messages; True if all finished."""
        self._stopping.set()
        if self._poller is not None:
            await self._poller
        if not self._tasks:
            return True
        _, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
        return not pending

    async def _poll(self) -> None:
        backoff = PollingBackoff(MIN_POLLING_SECONDS, self._options.max_polling_interval)
        found_since_delay = False
        while not self._stopping.is_set():
            # Fetch a new batch only once in-flight work drops to newBatchThreshold.
            while len(self._tasks) > self._options.new_batch_threshold:
                await asyncio.wait(set(self._tasks), return_when=asyncio.FIRST_COMPLETED)
            if self._stopping.is_set():
                break
            messages = await self._receive()
            if messages:
                for message in messages:
                    task = asyncio.create_task(self._process(message))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
                found_since_delay = True
                continue
            delay = backoff.next_delay(found_since_delay)
            found_since_delay = False
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=delay)

    async def _receive(self) -> list[QueueMessage]:
        def receive() -> list[QueueMessage]:
            return receive_batch(self._queue, self._options.batch_size, self._hold)

        try:
            return await self._call(receive)
        except ResourceNotFoundError:
            logger.warning("Queue '%s' not found; creating it", self.queue_name)
            await self._ensure_queue()
        except Exception as exc:
            logger.warning("Polling queue '%s' failed: %s", self.queue_name, exc)
        return []

    async def _process(self, message: QueueMessage) -> None:
        try:
            await self._settle(message)
        except Exception:
            logger.exception(
                "Unexpected error handling message '%s' of '%s'", message.id, self.queue_name
            )

    async def _settle(self, message: QueueMessage) -> None:
        body = self._decode(message)
        dequeue_count = message.dequeue_count or 0
        if body is None or dequeue_count > self._options.max_dequeue_count:
            # Undecodable (the SDK's decode failure) or already over the limit: no call.
            await self._move_to_poison(message)
            return
        receipt = _PopReceipt(message.pop_receipt or "")
        done = asyncio.Event()
        renewer = asyncio.create_task(self._keep_invisible(message, receipt, done))
        reason = f"New queue message detected on '{self.queue_name}'."
        try:
            await self._invoker.invoke(self.spec, lambda: self._bind(message, body), reason)
            succeeded = True
        except Exception:
            succeeded = False
        finally:
            # Let a renewal under way finish, so the receipt used below is the current one.
            done.set()
            await renewer
        if succeeded:
            await self._delete(message, receipt.value)
        elif self._poison is None:
            # As the host: no release, so the message stays invisible instead of looping fast.
            logger.warning(
                "Message '%s' failed; '%s' has no poison queue", message.id, self.queue_name
            )
        elif dequeue_count >= self._options.max_dequeue_count:
            await self._move_to_poison(message, receipt.value)
        else:
            await self._release(message, receipt.value)

    def _decode(self, message: QueueMessage) -> bytes | None:
        """The message body as bytes, or None if its base64 does not decode."""
        text = message.content or ""
        if self._options.message_encoding == "none":
            return str(text).encode("utf-8")
        try:
            # .NET's Convert.FromBase64String skips white space; anything else must be base64.
            return base64.b64decode("".join(str(text).split()), validate=True)
        except (binascii.Error, ValueError):
            return None

    def _bind(self, message: QueueMessage, body: bytes) -> dict[str, Any]:
        logger.info(
            "Trigger Details: MessageId: %s, DequeueCount: %s, InsertedOn: %s",
            message.id,
            message.dequeue_count,
            message.inserted_on,
        )
        try:
            # The host hands the worker a string, decoded as strict UTF-8.
            body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise HostError(
                f"Exception binding parameter '{self._param}': the message body is not valid UTF-8"
            ) from exc
        queue_message = FunctionQueueMessage(
            id=message.id,
            body=body,
            dequeue_count=message.dequeue_count,
            expiration_time=message.expires_on,
            insertion_time=message.inserted_on,
            time_next_visible=message.next_visible_on,
            pop_receipt=message.pop_receipt,
        )
        return {self._param: queue_message}

    async def _keep_invisible(
        self, message: QueueMessage, receipt: _PopReceipt, done: asyncio.Event
    ) -> None:
        """Renew the message's invisibility halfway through each hold while the function runs."""
        while True:
            try:
                await asyncio.wait_for(done.wait(), timeout=self._hold / 2)
                return
            except asyncio.TimeoutError:
                pass
            try:
                updated = await self._call(
                    self._queue.update_message,
                    message.id,
                    pop_receipt=receipt.value,
                    visibility_timeout=self._hold,
                )
            except Exception as exc:
                logger.warning("Cannot renew the visibility of message '%s': %s", message.id, exc)
                return
            receipt.value = updated.pop_receipt or receipt.value

    async def _delete(self, message: QueueMessage, pop_receipt: str | None = None) -> None:
        try:
            await self._call(
                self._queue.delete_message, message.id, pop_receipt or message.pop_receipt
            )
        except HttpResponseError as exc:
            if _error_code(exc) not in _GONE_CODES:
                raise
            logger.info(
                "Unable to delete queue message '%s' from '%s' (%s): it was updated or removed",
                message.id,
                self.queue_name,
                _error_code(exc),
            )

    async def _release(self, message: QueueMessage, pop_receipt: str) -> None:
        try:
            await self._call(
                self._queue.update_message,
                message.id,
                pop_receipt=pop_receipt,
                visibility_timeout=int(self._options.visibility_timeout),
            )
        except HttpResponseError as exc:
            if _error_code(exc) not in _GONE_CODES:
                raise

    async def _move_to_poison(self, message: QueueMessage, pop_receipt: str | None = None) -> None:
        if self._poison is None:
            logger.warning(
                "Message '%s' of '%s' cannot be processed and there is no poison queue",
                message.id,
                self.queue_name,
            )
            return
        logger.warning(
            "Message has reached MaxDequeueCount of %d. Moving message to queue '%s'.",
            self._options.max_dequeue_count,
            self._poison.queue_name,
        )
        # The original text, still encoded as it arrived; default time-to-live (7 days).
        content = message.content or ""
        try:
            await self._call(self._poison.send_message, content)
        except ResourceNotFoundError:
            with contextlib.suppress(ResourceExistsError):
                await self._call(self._poison.create_queue)
            await self._call(self._poison.send_message, content)
        await self._delete(message, pop_receipt)

    def close(self) -> None:
        """Close the storage clients."""
        self._queue.close()
        if self._poison is not None:
            self._poison.close()


def receive_batch(queue: QueueClient, count: int, hold: int) -> list[QueueMessage]:
    """Up to `count` messages, invisible for `hold` seconds, in one request, as the host's
    listener asks for a batch (the first page only: the SDK's pager would ask again)."""
    pages = queue.receive_messages(
        messages_per_page=count, max_messages=count, visibility_timeout=hold
    ).by_page()
    return list(next(pages, []))


def create_clients(
    connection: StorageConnection, queue_name: str
) -> tuple[QueueClient, QueueClient | None]:
    """Clients for the queue and its poison queue, reading and writing raw message text."""
    queue_uri = connection.service_uri("queue")
    credential = None if connection.connection_string else connection.credential()

    def client(name: str) -> QueueClient:
        # Short retries: the SDK's default waits 15 s and more between attempts, which
        # would stall start-up and shutdown for minutes when Azurite is not running.
        options: dict[str, Any] = {
            "retry_policy": LinearRetry(backoff=1, retry_total=3, random_jitter_range=1),
            # The gateway's transport: the host receives and deletes every message, and with
            # azure-core's default transport that would cost it more CPU than most functions.
            # It trusts the local CA of the identity mode's HTTPS, if any (SSL_CERT_FILE).
            "transport": storage_transport(),
        }
        if connection.connection_string:
            return QueueClient.from_connection_string(connection.connection_string, name, **options)
        assert queue_uri is not None  # resolve_connection requires a queue service
        return QueueClient(queue_uri, name, credential=credential, **options)

    poison_name = poison_queue_name(queue_name)
    return client(queue_name), client(poison_name) if poison_name else None
