"""The gateway as one object per process: settings and clients built once, reused by every call."""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from opentelemetry.trace import SpanKind

from shared import telemetry
from shared.activity import ACTIVITY_FLUSH_SECONDS, ActivityLog
from shared.blobs import LargeMessageSlots, MessageBodyStore
from shared.brake import SendRateBrake
from shared.breaker import BreakerPolicy, BreakerState, ProviderBreakers
from shared.clients import Client, ClientStore
from shared.console import Console
from shared.dead_letters import DeadLetters
from shared.delivery import Delivery, DeliveryOutcome, MailSender, postpone
from shared.delivery_events import (
    DeliveryEventStore,
    EventBatchReport,
    parse_event_batch,
    record_event_batch,
)
from shared.errors import Busy, ConfigurationError, MessageNotFound, StorageUnavailable
from shared.idempotency import IdempotencyStore
from shared.message_ids import new_message_id
from shared.providers import senders_from_settings
from shared.queue import MailQueue, QueueReport
from shared.retention import (
    MAX_BODIES_PER_RUN,
    MAX_ROWS_PER_RUN,
    BodyExpiryResult,
    ExpiryResult,
    PartitionExpiry,
    expire_activity,
    expire_bodies,
)
from shared.settings import Settings, StorageSettings, mail_queue_settings_from_env
from shared.status import MessageStatus, StatusStore, known_message_id, waiting_status
from shared.status_retention import expire_keys, expire_statuses
from shared.submission import MAX_QUEUED_JSON_BYTES, AcceptedMessage, Submission
from shared.webhook_signature import SignatureVerifier

logger = logging.getLogger(__name__)

# A large message's turn comes within seconds: the client may try again that soon.
BUSY_RETRY_AFTER_SECONDS = 5


def utc_now() -> datetime:
    """The current time, timezone-aware."""
    return datetime.now(timezone.utc)


class Gateway:
    """Accepts messages onto the queue, delivers them from it, and reports on them."""

    def __init__(
        self,
        settings: Settings,
        queue: MailQueue,
        bodies: MessageBodyStore,
        statuses: StatusStore,
        sender: MailSender | None,
        clients: ClientStore,
        *,
        senders: dict[str, MailSender] | None = None,
        now: Callable[[], datetime] = utc_now,
        new_id: Callable[[datetime, str], str] = new_message_id,
        rng: random.Random | None = None,
        keys: IdempotencyStore | None = None,
        activity: ActivityLog | None = None,
        events: DeliveryEventStore | None = None,
        breakers: ProviderBreakers | None = None,
        brake: SendRateBrake | None = None,
    ) -> None:
        self.settings = settings
        # Each provider's circuit breaker and send-rate brake (shared/breaker.py, brake.py).
        self.breakers = breakers
        self.brake = brake
        self.queue = queue
        self.bodies = bodies
        self.statuses = statuses
        self.keys = keys or IdempotencyStore(
            statuses.table, timedelta(hours=settings.idempotency_retention_hours)
        )
        self.clients = clients
        # Its rows live in the status table, in partitions of their own. Written at once unless
        # the caller passes a buffered log, as from_settings does.
        self.activity = activity or ActivityLog(statuses.table)
        # SendGrid's delivery events live beside the status records, in the same table.
        self.events = events or DeliveryEventStore(statuses.table)
        self.signatures = SignatureVerifier(settings.sendgrid_webhook_public_key)
        self.dead_letters = DeadLetters(
            queue.poison,
            queue,
            bodies,
            statuses,
            now,
            host_max_dequeue_count=settings.host_max_dequeue_count,
            clients=clients,
            allowed_senders=settings.allowed_senders,
        )
        self.console = Console(
            queue,
            statuses,
            self.activity,
            self.events,
            now,
            client_names=lambda: [c.name for c in clients.all()],
            status_retention=timedelta(days=settings.status_retention_days),
        )
        # Accepting and delivering take turns for the memory large messages need.
        self.large_messages = LargeMessageSlots(settings.large_messages_at_once)
        self._delivery = Delivery(
            sender=sender,
            senders=senders,
            queue=queue,
            bodies=bodies,
            statuses=statuses,
            activity=self.activity,
            settings=settings,
            now=now,
            rng=rng,
            large_messages=self.large_messages,
            breakers=breakers,
            brake=brake,
        )
        self._submission = Submission(settings, queue, bodies, self.keys, now, new_id, rate=clients)
        self._now = now
        self._storage_ready = False
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> Gateway:
        """A gateway talking to the configured storage account and SendGrid endpoint.

        Its activity log is written in the background, in batches (see shared/activity.py):
        delivery waits on no storage call for the console's view.
        """
        statuses = StatusStore.from_settings(settings)
        return cls(
            settings,
            MailQueue.from_settings(settings),
            MessageBodyStore.from_settings(settings),
            statuses,
            None,
            ClientStore.from_settings(settings),
            senders=senders_from_settings(settings),
            activity=ActivityLog(statuses.table, flush_seconds=ACTIVITY_FLUSH_SECONDS),
            # Their rows live in the status table, in partitions of their own (provider-<name>).
            breakers=ProviderBreakers(
                statuses.table,
                BreakerPolicy(
                    settings.provider_breaker_failures, settings.provider_breaker_cooldown_seconds
                ),
            ),
            brake=(
                SendRateBrake(statuses.table, settings.max_emails_per_second)
                if settings.max_emails_per_second
                else None
            ),
        )

    def authenticate(self, authorization: str | None, *, counted: bool = False) -> Client:
        """The client an `Authorization: Bearer <key>` header stands for; Unauthorized if none.

        `counted`: the request goes on to accept a message, which counts it against the
        client's rate (see ClientStore.authenticate).
        """
        self.ensure_storage()
        return self.clients.authenticate(authorization, counted=counted)

    def accept(
        self,
        body: bytes,
        content_type: str | None,
        client: Client,
        idempotency_key: str | None = None,
    ) -> AcceptedMessage:
        """Validate the message, count its emails against the client's rate, and durably queue
        it (see shared/submission.py)."""
        return self._accept(
            self._submission.message, "v1", body, content_type, client, idempotency_key
        )

    def accept_sendgrid(
        self,
        body: bytes,
        content_type: str | None,
        client: Client,
        idempotency_key: str | None = None,
    ) -> AcceptedMessage:
        """Validate a SendGrid v3 Mail Send body, count its emails against the client's rate,
        and durably queue it as the client sent it."""
        return self._accept(
            self._submission.sendgrid_mail, "v3", body, content_type, client, idempotency_key
        )

    def _accept(
        self,
        submit: Callable[[bytes, str | None, Client, str | None], AcceptedMessage],
        api: str,
        body: bytes,
        content_type: str | None,
        client: Client,
        idempotency_key: str | None,
    ) -> AcceptedMessage:
        with telemetry.span("mailgate.accept", kind=SpanKind.SERVER, api=api, client=client.name):
            self.ensure_storage()
            # A client this instance knows to be over its rate costs no parsing (nor a slot).
            self.clients.refuse_if_spent(client)
            if len(body) <= MAX_QUEUED_JSON_BYTES:
                return submit(body, content_type, client, idempotency_key)
            with self.large_messages.slot() as turn:
                if turn:
                    # The emails are taken from the client's rate once its turn came and the
                    # body was found valid: a Busy answer is not counted.
                    return submit(body, content_type, client, idempotency_key)
            raise Busy(
                f"{self.large_messages.limit} large message(s) are being worked on in this "
                "instance already; try again in a few seconds",
                BUSY_RETRY_AFTER_SECONDS,
            )

    def deliver(self, body: bytes, dequeue_count: int = 1) -> DeliveryOutcome:
        """Deliver one queue message, scheduling a retry or dead letter if it fails, or put it
        back for later when storage fails (see shared/delivery.py)."""
        try:
            self.ensure_storage()
        except StorageUnavailable as error:
            return postpone(self.queue, body, str(error))
        return self._delivery.deliver(body, dequeue_count)

    def provider_guards(self) -> dict[str, dict[str, Any]]:
        """Each provider in use: its circuit breaker as this instance sees it (its copy of the
        row, read again once BREAKER_REFRESH_SECONDS old) and its brake, for the admin."""
        guards: dict[str, dict[str, Any]] = {}
        for provider in self.settings.mail_providers:
            guard: dict[str, Any] = {
                "max_emails_per_second": self.settings.max_emails_per_second.get(provider)
            }
            if self.breakers is None or not self.breakers.policy.enabled:
                guard["breaker"] = "off"
            else:
                row = self.breakers.state(provider)
                guard["breaker"] = row.state.value
                guard["failures"] = row.failures
                guard["opened"] = row.opened
                if row.state is not BreakerState.CLOSED:
                    guard["tried_again_in_seconds"] = math.ceil(self.breakers.reopens_in(provider))
            guards[provider] = guard
        return guards

    def status(self, message_id: str, client: Client) -> MessageStatus:
        """The client's own message's status; MessageNotFound for no message or another's, and
        without a storage call for an id the gateway never gives."""
        message_id = known_message_id(message_id)
        status = self.statuses.get(message_id)
        if status is None:
            # Still on the queue (no attempt has written its record), if its id says so.
            retention = timedelta(days=self.settings.status_retention_days)
            status = waiting_status(message_id, client.name, self._now(), retention)
        # Another client's message reads as no message at all: ids are not secrets to probe.
        if status is None or status.client != client.name:
            raise MessageNotFound(f"no message has the id {message_id!r}")
        return status

    def measure_queues(self) -> QueueReport:
        """How full the mail and poison queues are now; a missing queue counts as empty."""
        # Read-only on purpose: a monitor that created the queues would hide a missing one.
        return self.queue.measure(self._now())

    def expire_activity(self, max_rows: int = MAX_ROWS_PER_RUN) -> ExpiryResult:
        """Delete the console's activity rows older than ACTIVITY_RETENTION_DAYS, at most
        `max_rows` of them; StorageUnavailable if the table cannot be reached."""
        retention = timedelta(days=self.settings.activity_retention_days)
        return expire_activity(self.statuses.table, self._now(), retention, max_rows=max_rows)

    def expire_bodies(self, max_blobs: int = MAX_BODIES_PER_RUN) -> BodyExpiryResult:
        """Delete the claim-check bodies left under live/ longer than any message may need them
        (Settings.large_message_retention); StorageUnavailable if the container cannot be
        reached."""
        retention = self.settings.large_message_retention
        return expire_bodies(self.bodies, self._now(), retention, max_blobs=max_blobs)

    def client_document(self, client: Client) -> dict[str, Any]:
        """What `GET /api/v1/client` tells a client of itself and of the gateway's limits: its
        name (the key's owner, so an SMTP relay can check a user name against its key) and the
        largest request body accepted. Never the key, its digest or the senders."""
        return {"name": client.name, "max_request_bytes": self.settings.max_request_bytes}

    def expire_statuses(self) -> PartitionExpiry:
        """Delete the status records, with their delivery events, of the messages accepted more
        than STATUS_RETENTION_DAYS ago; StorageUnavailable if the table cannot be reached."""
        retention = timedelta(days=self.settings.status_retention_days)
        return expire_statuses(self.statuses.table, self._now(), retention)

    def expire_keys(self) -> PartitionExpiry:
        """Delete the idempotency keys of periods no claim reads any more."""
        retention = timedelta(hours=self.settings.idempotency_retention_hours)
        return expire_keys(self.statuses.table, self._now(), retention)

    def status_document(self, message_id: str, client: Client) -> dict[str, Any]:
        """The client's own message's status as `GET /api/v1/messages/{id}` shows it, with what
        SendGrid's events said of it once there are any."""
        status = self.status(message_id, client)
        document = status.to_document()
        delivery = self.events.get(status.id)
        if delivery is not None:
            document.update(delivery.to_document())
        return document

    def verify_sendgrid_signature(
        self, body: bytes, signature: str | None, timestamp: str | None
    ) -> None:
        """Return if SendGrid signed this Event Webhook body lately; else SignatureRejected, or
        EventWebhookNotConfigured without SENDGRID_WEBHOOK_PUBLIC_KEY."""
        self.signatures.verify(body, signature, timestamp, self._now())

    def record_sendgrid_events(self, body: bytes) -> EventBatchReport:
        """Record a signed Event Webhook batch; InvalidEventBatch if it is not one."""
        events = parse_event_batch(body)
        self.ensure_storage()
        return record_event_batch(events, self.statuses, self.events, self._now())

    def ensure_storage(self) -> None:
        """Create the queues, the status table and the body container once per process."""
        if self._storage_ready:
            return
        with self._lock:
            if not self._storage_ready:
                self.queue.ensure_exists()
                self.statuses.ensure_exists()
                self.clients.ensure_exists()
                self.bodies.ensure_exists()
                self._storage_ready = True


@dataclass(frozen=True)
class HealthReport:
    """Which parts of the gateway work, and how full its queues are."""

    checks: dict[str, str] = field(default_factory=dict)
    queue_depths: dict[str, int] = field(default_factory=dict)
    # Optional, so not a check: without a key the gateway works, the webhook route is closed.
    event_webhook: str = "not checked"

    @property
    def healthy(self) -> bool:
        """True when every check passed."""
        return all(result == "ok" for result in self.checks.values())


def check_health(gateway: Gateway) -> HealthReport:
    """Check that storage (queues, table, blobs) answers, and the queue depths.

    A gateway exists only once its settings are valid: the configuration check passed.
    """
    event_webhook = "configured" if gateway.signatures.configured else "not configured"
    try:
        depths = gateway.queue.depths()
        gateway.statuses.check()
        gateway.bodies.check()
    except StorageUnavailable as error:
        return HealthReport(
            {"configuration": "ok", "storage": f"error: {error}"}, event_webhook=event_webhook
        )
    return HealthReport({"configuration": "ok", "storage": "ok"}, depths, event_webhook)


# Anonymous health probes share one answer per instance, at most this old: a flood of them
# costs one storage check every few seconds, not one each.
HEALTH_CACHE_SECONDS = 5.0


@dataclass(frozen=True)
class HealthStatus:
    """What anyone may know of the gateway's health: whether it works, and whether its
    settings are right (which ones are wrong is for the admin key)."""

    healthy: bool
    configured: bool


class HealthCache:
    """One HealthStatus, worked out again once it is `max_age_seconds` old.

    One caller at a time works it out; the others meanwhile get the previous answer (before the
    first, they wait for it), so probes never pile up behind a slow storage check.
    """

    def __init__(
        self,
        check: Callable[[], HealthStatus],
        max_age_seconds: float = HEALTH_CACHE_SECONDS,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._check = check
        self._max_age = max_age_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._done = threading.Condition(self._lock)
        self._current: HealthStatus | None = None
        self._checked_at = 0.0
        self._checking = False

    def get(self) -> HealthStatus:
        """The current answer, worked out now if it is too old."""
        with self._lock:
            while True:
                current = self._current
                if current is not None and (
                    self._checking or self._clock() - self._checked_at < self._max_age
                ):
                    return current
                if not self._checking:
                    break
                self._done.wait()
            self._checking = True
        status: HealthStatus | None = None
        try:
            status = self._check()
            return status
        finally:
            with self._lock:
                if status is not None:
                    self._current, self._checked_at = status, self._clock()
                self._checking = False
                self._done.notify_all()


def _check_public_health() -> HealthStatus:
    try:
        gateway = get_gateway()
    except ConfigurationError:
        return HealthStatus(healthy=False, configured=False)
    return HealthStatus(healthy=check_health(gateway).healthy, configured=True)


_health_cache = HealthCache(_check_public_health)


def public_health() -> HealthStatus:
    """The anonymous health answer of this instance, at most HEALTH_CACHE_SECONDS old."""
    return _health_cache.get()


_gateway: Gateway | None = None
_gateway_lock = threading.Lock()

# The start of the ERROR line logged while the settings are wrong; infra/app/alerts.bicep
# alerts on it.
NOT_CONFIGURED = "Gateway not configured"
# While the settings are wrong, every request would log the same error: once a minute will do.
NOT_CONFIGURED_LOG_SECONDS = 60.0
_not_configured_logged: dict[str, float] = {}


def get_gateway() -> Gateway:
    """The process's gateway, built from the app settings on first use.

    Raises ConfigurationError, naming the settings at fault, for as long as they are wrong:
    the app still starts and indexes every function (an import error would leave the host
    running none, every route a 404), and each function answers for itself (HTTP 503,
    deliveries put back for later, the queue monitor logging an ERROR).
    """
    try:
        return _built_gateway()
    except ConfigurationError as error:
        _log_not_configured(error)
        raise


def _built_gateway() -> Gateway:
    global _gateway
    if _gateway is None:
        with _gateway_lock:
            if _gateway is None:
                _gateway = Gateway.from_settings(Settings.from_env(os.environ))
    return _gateway


def _log_not_configured(error: ConfigurationError) -> None:
    now = time.monotonic()
    last = _not_configured_logged.get(str(error))
    if last is None or now - last >= NOT_CONFIGURED_LOG_SECONDS:
        _not_configured_logged[str(error)] = now
        logger.error("%s: %s", NOT_CONFIGURED, error)


def deliver_queued(body: bytes, dequeue_count: int = 1) -> DeliveryOutcome:
    """The queue trigger's work: deliver one message; while the settings are wrong, put it
    back on the queue for later, unsent, so that the host's poison move never takes it."""
    try:
        gateway = get_gateway()
    except ConfigurationError as error:
        return postpone(_mail_queue_alone(), body, f"{NOT_CONFIGURED}: {error}")
    return gateway.deliver(body, dequeue_count)


def measure_queues() -> QueueReport:
    """How full the mail and poison queues are, for the queue monitor.

    While the settings are wrong it logs an ERROR naming them, every run (the alert on dead
    letters waiting must not resolve just because the gateway cannot start), and measures the
    queues with the storage settings alone if those are right.
    """
    try:
        gateway = _built_gateway()
    except ConfigurationError as error:
        logger.error("%s: %s", NOT_CONFIGURED, error)
        return _mail_queue_alone().measure(utc_now())
    return gateway.measure_queues()


def expire_data() -> ExpiryResult | None:
    """The retention timer's work: expire what is due; None, after logging an ERROR naming
    the settings at fault, while the settings are wrong (every run, as the queue monitor)."""
    try:
        gateway = _built_gateway()
    except ConfigurationError as error:
        logger.error("%s: %s", NOT_CONFIGURED, error)
        return None
    activity = gateway.expire_activity()
    result = dataclasses.replace(
        activity,
        statuses=gateway.expire_statuses(),
        status_retention=timedelta(days=gateway.settings.status_retention_days),
        keys=gateway.expire_keys(),
    )
    try:
        bodies = gateway.expire_bodies()
    except StorageUnavailable as error:
        # The rows' part is done and reported; the bodies wait for the next run.
        logger.error("Retention: leftover message bodies could not be expired: %s", error)
        return result
    return dataclasses.replace(result, bodies=bodies)


def _mail_queue_alone() -> MailQueue:
    """The mail queue from the storage settings and MAIL_QUEUE_NAME alone, built once per
    distinct pair; raises ConfigurationError if those are wrong too."""
    return _mail_queue_for(*mail_queue_settings_from_env(os.environ))


@functools.lru_cache(maxsize=1)
def _mail_queue_for(storage: StorageSettings, mail_queue_name: str) -> MailQueue:
    return MailQueue.from_storage(storage, mail_queue_name)
