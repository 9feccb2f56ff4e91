"""Delivering one queued message: send it once, schedule a retry, dead-letter it with its reason,
or put it back for later.

The status record guards against double sends: a message whose record says `sent` or `failed`
is never sent again, and a worker claims the record (`sending`, written only if nobody changed
it since it was read) before it calls a provider (shared/providers.py). The one window left is
between the provider's answer and the write of `sent` right after it: a worker that dies there
leaves `sending`, and the next copy of the message sends it again once that claim is older than
a whole provider call could be.

A message that cannot be worked on now (storage fails, the settings are wrong, another worker
holds its claim, a newer mailgate wrote it) is put back on the queue as a new message with a
delay, rather than raised to the Functions host: the host counts every failed invocation and
moves the message to the poison queue, without a reason, after maxDequeueCount of them (5 in
host.json, each after visibilityTimeout, 30 s), which a storage outage of minutes would spend.
Only when the queue itself refuses the message does the error reach the host. A message that
must not go now (every provider it may use has its circuit breaker open, or its provider's
send-rate brake is spent: shared/breaker.py, shared/brake.py) is held back the same way, with
shorter delays, before its record is claimed: no attempt is spent and nothing dead-lettered.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Literal, TypeVar

from opentelemetry.trace import SpanKind
from pydantic import ValidationError

from shared import telemetry
from shared.acs_client import ACS_LONGEST_SEND_SECONDS
from shared.activity import ActivityEvent, ActivityLog
from shared.blobs import (
    LargeMessageSlots,
    MessageBodyStore,
    body_blob_name,
    kept_body_blob_name,
    own_body_blob_names,
)
from shared.brake import SendRateBrake
from shared.breaker import ProviderBreakers, Verdict
from shared.errors import (
    ConcurrentUpdate,
    DeliveryError,
    DeliveryInProgress,
    NotDeliverable,
    PermanentDeliveryError,
    RetryableDeliveryError,
    StorageUnavailable,
)
from shared.models import (
    ENVELOPE_VERSION,
    STORED_BODY_VERSION,
    WRITTEN_BY_GATEWAY,
    DeadLetter,
    QueueEnvelope,
    StoredBody,
)
from shared.providers import (
    ACS,
    SMTP,
    MailSender,
    check_deliverable,
    eligible,
    next_provider,
    provider_for_attempt,
    usable,
)
from shared.queue import MailQueue
from shared.replay_advice import (
    ACS_CONFIG,
    API_KEY,
    FORBIDDEN,
    NO_PROVIDER,
    NOT_AN_ENVELOPE,
    SENDER_NOT_ALLOWED,
    SMTP_AUTH,
    SMTP_CONFIG,
    advice_for,
    classify,
)
from shared.settings import MAX_RETRY_DELAY_SECONDS, Settings, sender_allowed
from shared.smtp_client import SMTP_TIMEOUT_SECONDS
from shared.status import FINAL_STATES, MessageState, MessageStatus, StatusStore

logger = logging.getLogger(__name__)
T = TypeVar("T")

# Writing `sent` is retried in place for this long: giving up means a redelivery sends again.
SENT_WRITE_ATTEMPTS = 5
SENT_WRITE_PAUSE_SECONDS = 0.2
CLAIM_MARGIN_SECONDS = 10
# A message put back for later waits 15 s, then twice as long each time again, up to 5 minutes:
# about 13 times in an hour of outage.
POSTPONE_FIRST_SECONDS = 15
POSTPONE_MAX_SECONDS = 300
# A message a newer mailgate wrote waits for a newer worker, which a rolling deploy brings soon.
NEWER_VERSION_DELAY_SECONDS = 60
# A message held back by a send-rate brake comes back after 1-2 s, then longer each time it is
# held again, up to this: a backlog drains at the rate with a few put-backs per message.
BRAKE_HOLD_MAX_SECONDS = 16
# Spread over this much more than the breaker's remaining cool-down, so that messages held
# together do not all come back in the same second.
BREAKER_HOLD_JITTER_SECONDS = 3


__all__ = ["Delivery", "DeliveryOutcome", "HeldBack", "MailSender", "hold", "postpone"]
# An SMTP send is several round trips (greeting, EHLO, STARTTLS, AUTH, MAIL, RCPT, DATA), each
# bounded by SMTP_TIMEOUT_SECONDS; a claim outlives this many of them.
SMTP_CLAIM_ROUND_TRIPS = 3


@dataclass(frozen=True)
class DeliveryOutcome:
    """What became of one delivery attempt."""

    result: Literal["sent", "retry_scheduled", "dead_lettered", "skipped", "postponed"]
    message_id: str | None
    attempt: int
    provider_message_id: str | None = None
    # The provider the attempt used, and the one the next attempt uses if one is scheduled.
    provider: str | None = None
    next_provider: str | None = None
    retry_in_seconds: int | None = None
    reason: str | None = None


def retry_delay_seconds(
    attempt: int,
    settings: Settings,
    retry_after: float | None,
    rng: random.Random | None = None,
) -> int:
    """Exponential backoff with full jitter, never sooner than SendGrid asked; at least 1 s."""
    ceiling = min(
        settings.retry_base_delay_seconds * 2.0 ** (attempt - 1), settings.retry_max_delay_seconds
    )
    # Full jitter spreads retries of many messages that failed together (AWS architecture blog).
    backoff = (rng or random).uniform(0, ceiling)
    # Retrying before SendGrid's own Retry-After only earns another 429 and wastes an attempt.
    asked = min(retry_after or 0.0, MAX_RETRY_DELAY_SECONDS)
    return max(1, math.ceil(max(backoff, asked)))


def postpone_delay_seconds(times: int, rng: random.Random | None = None) -> int:
    """How long a message put back for the `times`-th time waits: doubling, jittered, capped."""
    ceiling = min(POSTPONE_FIRST_SECONDS * 2.0 ** (times - 1), POSTPONE_MAX_SECONDS)
    # Equal jitter: never less than half the ceiling, so an outage is not hammered.
    return max(1, math.ceil((rng or random).uniform(ceiling / 2, ceiling)))


def postpone(
    queue: MailQueue, body: bytes, reason: str, rng: random.Random | None = None
) -> DeliveryOutcome:
    """Put a queue message back on the mail queue for later, its `postponed` count raised.

    Every other field stays as it was, known to this version or not. Raises StorageUnavailable
    when the queue refuses it: then the host's own retry is the only way left.
    """
    text, message_id, attempt, times = _counted_postponement(body)
    delay = postpone_delay_seconds(times, rng)
    queue.put_back(text, delay_seconds=delay, message_id=message_id)
    logger.warning(
        "Message %s put back for %ss (time %s; nothing was sent): %s",
        message_id,
        delay,
        times,
        reason,
        extra={"mailgate_id": message_id, "postponed": times},
    )
    return DeliveryOutcome("postponed", message_id, attempt, retry_in_seconds=delay, reason=reason)


class HeldBack(Exception):
    """An attempt that cannot go now (every provider it may use has its breaker open, or its
    provider's send-rate brake is spent): the message is put back for `delay_seconds`, which
    spends neither an attempt nor the host's dequeue count."""

    def __init__(self, reason: str, delay_seconds: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.delay_seconds = delay_seconds


def hold(queue: MailQueue, body: bytes, held: HeldBack) -> DeliveryOutcome:
    """Put a message held back by a breaker or a brake on the queue again, unchanged but for
    its `postponed` count, visible after the hold's delay.

    It is a new queue message, and this invocation returns normally: the host deletes the one
    it received (Azure/azure-sdk-for-net, Microsoft.Azure.WebJobs.Extensions.Storage.Queues,
    QueueProcessor.CompleteProcessingMessageAsync deletes on success and moves to poison only
    a failed invocation's message whose DequeueCount reached maxDequeueCount), and the new one
    starts at dequeue count 0: a message held a hundred times never reaches the poison queue
    for it, nor does its `attempt` change. Raises StorageUnavailable if the queue refuses it.
    """
    text, message_id, attempt, times = _counted_postponement(body)
    queue.put_back(text, delay_seconds=held.delay_seconds, message_id=message_id)
    logger.info(
        "Message %s held back for %ss (time %s; nothing was sent, no attempt spent): %s",
        message_id,
        held.delay_seconds,
        times,
        held.reason,
        extra={"mailgate_id": message_id, "postponed": times},
    )
    return DeliveryOutcome(
        "postponed", message_id, attempt, retry_in_seconds=held.delay_seconds, reason=held.reason
    )


def brake_hold_seconds(times: int, rng: random.Random | None = None) -> int:
    """How long a message held back by a brake for the `times`-th time waits: 1-2 s first,
    doubling, at most BRAKE_HOLD_MAX_SECONDS."""
    ceiling = min(2.0 ** max(0, times - 1), BRAKE_HOLD_MAX_SECONDS / 2)
    return max(1, math.ceil((rng or random).uniform(ceiling, 2 * ceiling)))


@dataclass(frozen=True)
class ProviderChoice:
    """The provider an attempt uses, whether it is its breaker's trial, and the providers
    passed over because their breakers were open."""

    provider: str
    trial: bool = False
    skipped: tuple[str, ...] = ()


def _counted_postponement(body: bytes) -> tuple[str, str | None, int, int]:
    """The text to put back, the message's id and attempt if it has them, and how many times
    it has been put back now."""
    text = body.decode("utf-8", errors="replace")
    try:
        document = json.loads(text)
    except ValueError:
        document = None
    if not isinstance(document, dict):
        return text, None, 1, 1
    times = _count(document.get("postponed"), 0) + 1
    document["postponed"] = times
    message_id = document.get("id")
    return (
        json.dumps(document, ensure_ascii=False, separators=(",", ":")),
        message_id if isinstance(message_id, str) else None,
        _count(document.get("attempt"), 1),
        times,
    )


def _count(value: Any, default: int) -> int:
    counted = isinstance(value, int) and not isinstance(value, bool) and value >= 0
    return value if counted else default


def newer_version(text: str | bytes, newest: int = ENVELOPE_VERSION) -> int | None:
    """The version of an envelope (or, with `newest` STORED_BODY_VERSION, a stored body) a
    newer mailgate wrote, else None."""
    try:
        document = json.loads(text)
    except ValueError:
        return None
    version = document.get("version") if isinstance(document, dict) else None
    if isinstance(version, int) and not isinstance(version, bool) and version > newest:
        return version
    return None


class NewerVersion(Exception):
    """A stored body a newer mailgate wrote: its message waits for a newer worker."""

    def __init__(self, version: int) -> None:
        super().__init__(f"its body was written by a newer mailgate (version {version})")
        self.version = version


class Delivery:
    """Delivers queue messages with the status record as the guard against double sends."""

    def __init__(
        self,
        *,
        sender: MailSender | None = None,
        senders: Mapping[str, MailSender] | None = None,
        queue: MailQueue,
        bodies: MessageBodyStore,
        statuses: StatusStore,
        activity: ActivityLog,
        settings: Settings,
        now: Callable[[], datetime],
        rng: random.Random | None = None,
        large_messages: LargeMessageSlots | None = None,
        breakers: ProviderBreakers | None = None,
        brake: SendRateBrake | None = None,
    ) -> None:
        # By provider name (shared/providers.py); a lone `sender` is SendGrid's.
        self._senders: Mapping[str, MailSender] = (
            senders if senders is not None else ({"sendgrid": sender} if sender else {})
        )
        self._providers = usable(self._senders, settings.mail_providers)
        self._queue = queue
        self._bodies = bodies
        self._statuses = statuses
        self._activity = activity
        self._settings = settings
        self._now = now
        self._rng = rng or random.Random()  # noqa: S311 (jitter, not security)
        self._large_messages = large_messages or LargeMessageSlots(settings.large_messages_at_once)
        # A claim older than one whole SendGrid call (and a margin for clock skew between
        # instances) belongs to a worker that died.
        longest_call = settings.sendgrid_connect_timeout_seconds + settings.sendgrid_timeout_seconds
        if SMTP in self._providers:
            longest_call = max(longest_call, SMTP_CLAIM_ROUND_TRIPS * SMTP_TIMEOUT_SECONDS)
        if ACS in self._providers:
            longest_call = max(longest_call, ACS_LONGEST_SEND_SECONDS)
        self._claim_timeout = timedelta(seconds=longest_call + CLAIM_MARGIN_SECONDS)
        # Shared by all instances (shared/breaker.py, shared/brake.py); None: none of either.
        self._breakers = breakers
        self._brake = brake

    def deliver(self, body: bytes, dequeue_count: int = 1) -> DeliveryOutcome:
        """Try to send one queue message; the queue carries any retry, wait or dead letter.

        Raises StorageUnavailable only when the queue cannot take the message back for later:
        then the host tries it again. Nothing was sent in that case.
        """
        try:
            envelope = QueueEnvelope.model_validate_json(body, context=WRITTEN_BY_GATEWAY)
        except ValidationError as error:
            with telemetry.span("mailgate.deliver", kind=SpanKind.CONSUMER):
                version = newer_version(body)
                if version is not None:
                    return self._leave_for_newer_worker(body, version)
                return self._dead_letter_unreadable(body, error)
        # Every attempt continues the trace its message's accept began.
        with telemetry.span(
            "mailgate.deliver",
            kind=SpanKind.CONSUMER,
            context=telemetry.context_from(envelope.trace),
            id=envelope.id,
            attempt=envelope.attempt,
            client=envelope.client,
        ) as current:
            if dequeue_count > 1:
                # The gateway's own retries are new queue messages: a repeat of this one means
                # an earlier invocation crashed or could not write its outcome.
                logger.warning(
                    "Message %s attempt %s is delivered again (dequeue count %s)",
                    envelope.id,
                    envelope.attempt,
                    dequeue_count,
                    extra=_ids(envelope),
                )
            try:
                outcome = self._deliver_in_turn(envelope, body)
            except (StorageUnavailable, ConcurrentUpdate, DeliveryInProgress) as error:
                outcome = postpone(self._queue, body, str(error), self._rng)
            except NewerVersion as error:
                outcome = self._leave_for_newer_worker(body, error.version)
            except HeldBack as held:
                outcome = hold(self._queue, body, held)
            current.set_attribute("mailgate.result", outcome.result)
            return outcome

    def _deliver_in_turn(self, envelope: QueueEnvelope, body: bytes) -> DeliveryOutcome:
        """Deliver; a body kept in a blob only while one of the large-message slots is held,
        else the message is put back for later."""
        if envelope.blob is None:
            return self._deliver(envelope)
        with self._large_messages.slot() as turn:
            if turn:
                return self._deliver(envelope)
        return postpone(
            self._queue,
            body,
            f"{self._large_messages.limit} large message(s) are in this instance's memory "
            "already (LARGE_MESSAGES_AT_ONCE)",
            self._rng,
        )

    def _leave_for_newer_worker(self, body: bytes, version: int) -> DeliveryOutcome:
        """Put back, unchanged, a message this worker cannot read but a newer one can.

        During a rolling deploy old and new workers read the same queue (Flex Consumption has
        no deployment slots): what the new ones write, the old ones leave to them.
        """
        self._queue.put_back(
            body.decode("utf-8", errors="replace"), delay_seconds=NEWER_VERSION_DELAY_SECONDS
        )
        logger.warning(
            "Queue message of envelope version %s, newer than this worker reads (%s): put back "
            "for %ss for a newer worker",
            version,
            ENVELOPE_VERSION,
            NEWER_VERSION_DELAY_SECONDS,
        )
        return DeliveryOutcome(
            "postponed",
            None,
            0,
            retry_in_seconds=NEWER_VERSION_DELAY_SECONDS,
            reason=f"envelope version {version} is newer than this worker reads",
        )

    def _deliver(self, envelope: QueueEnvelope) -> DeliveryOutcome:
        loaded = None
        choice: ProviderChoice | None = None
        if envelope.attempt == 1:
            # Read before the claim, so that a storage failure here leaves nothing to wait out.
            loaded = self._load_body(envelope)
            # Chosen before the claim, so that a message held back leaves its record as it was.
            choice = self._choose(envelope, loaded, pinned=False)
            # The record as the accept left it, unread: none (or, from an accept made before
            # accepts stopped writing it, `queued` with the ETag the envelope carries). The
            # claim fails if anyone wrote it since.
            claimed = self._claim_unless_raised(choice, lambda: self._claim_as_accepted(envelope))
            if claimed is not None:
                return self._send(envelope, claimed, loaded, choice)
            # The record must be read, and the choice made again on what it says.
            self._give_back_trial(choice)
            choice = None
        with telemetry.span("mailgate.status.read", id=envelope.id):
            status = self._statuses.get(envelope.id) or _first_status(envelope)
        skip = self._reason_to_skip(envelope, status)
        if skip is not None:
            logger.info("Message %s not sent again: %s", envelope.id, skip, extra=_ids(envelope))
            if status.state is MessageState.SENT:
                # A copy that outlived the send (a replay, a lost delete) may find the body
                # still there if the delete after the send failed.
                self._delete_body(envelope)
            return DeliveryOutcome("skipped", envelope.id, envelope.attempt, reason=skip)
        if loaded is None:
            # Read before the claim, so that a storage failure here leaves nothing to wait out.
            loaded = self._load_body(envelope)
        # After an ambiguous failure the provider may have sent it: unless the operator allows
        # a second copy, this attempt waits for that provider, breaker or not.
        pinned = status.ambiguous and not self._settings.failover_on_ambiguous
        choice = self._choose(envelope, loaded, pinned=pinned)
        with telemetry.span("mailgate.status.write", id=envelope.id, state="sending"):
            status = self._claim_unless_raised(
                choice,
                lambda: self._statuses.claim(
                    status.moved(MessageState.SENDING, self._now(), attempts=envelope.attempt)
                ),
            )
        return self._send(envelope, status, loaded, choice)

    def _choose(
        self, envelope: QueueEnvelope, loaded: QueueEnvelope | PermanentDeliveryError, pinned: bool
    ) -> ProviderChoice | None:
        """The provider this attempt uses, past open breakers and within its brake; None when
        there is nothing to send (the body is bad, or no provider can carry it).

        Raises HeldBack when every provider it may use has its breaker open (it comes back
        when the first one's cool-down ends), or when its provider's brake is spent.
        """
        if isinstance(loaded, PermanentDeliveryError):
            return None
        candidates = eligible(self._providers, loaded, acs_senders=self._settings.acs_email_senders)
        if not candidates:
            return None
        first = provider_for_attempt(candidates, envelope.provider)
        at = candidates.index(first)
        # From the provider the attempt names on, as failover would go.
        order = (first,) if pinned else candidates[at:] + candidates[:at]
        skipped: list[str] = []
        chosen = None
        for provider in order:
            verdict = (
                self._breakers.verdict(provider, self._claim_timeout.total_seconds())
                if self._breakers is not None
                else Verdict.SEND
            )
            if verdict is not Verdict.SKIP:
                chosen = ProviderChoice(provider, verdict is Verdict.TRIAL, tuple(skipped))
                break
            skipped.append(provider)
        if chosen is None:
            assert self._breakers is not None
            wait = min(self._breakers.reopens_in(p) for p in skipped)
            delay = max(
                math.ceil(wait) + self._rng.randint(1, BREAKER_HOLD_JITTER_SECONDS),
                # Held again and again (the trials keep failing): longer each time, as for any
                # put-back, so that a long outage costs each waiting message a put every few
                # minutes rather than every cool-down. The provider back, it waits 5 min at most.
                postpone_delay_seconds((envelope.postponed or 0) + 1, self._rng),
            )
            why = "it is the provider this attempt must use" if pinned else "no other can send it"
            raise HeldBack(
                f"the circuit breaker of {', '.join(skipped)} is open (failing); {why}", delay
            )
        if self._brake is not None and not self._taken(chosen):
            raise HeldBack(
                f"{chosen.provider}'s send-rate brake is spent for now "
                "(<PROVIDER>_MAX_EMAILS_PER_SECOND)",
                brake_hold_seconds((envelope.postponed or 0) + 1, self._rng),
            )
        if chosen.skipped:
            logger.info(
                "Message %s attempt %s goes by %s: the circuit breaker of %s is open",
                envelope.id,
                envelope.attempt,
                chosen.provider,
                ", ".join(chosen.skipped),
                extra={**_ids(envelope), "provider": chosen.provider},
            )
        return chosen

    def _taken(self, choice: ProviderChoice) -> bool:
        """Whether a mail of the chosen provider's brake was taken; a trial not sent is given
        back to its breaker."""
        assert self._brake is not None
        try:
            taken = self._brake.take(choice.provider)
        except StorageUnavailable:
            self._give_back_trial(choice)
            raise
        if not taken:
            self._give_back_trial(choice)
        return taken

    def _claim_unless_raised(self, choice: ProviderChoice | None, claim: Callable[[], T]) -> T:
        """The claim's result; a trial taken for this attempt is given back if it raises (the
        message waits, another may take the trial at once)."""
        try:
            return claim()
        except BaseException:
            self._give_back_trial(choice)
            raise

    def _give_back_trial(self, choice: ProviderChoice | None) -> None:
        if choice is not None and choice.trial and self._breakers is not None:
            self._breakers.unused_trial(choice.provider)

    def _claim_as_accepted(self, envelope: QueueEnvelope) -> MessageStatus | None:
        """Claim a message as its accept left it: insert its first record, or, for a message
        whose accept wrote a `queued` record (before the accept stopped writing one), replace
        that record by its ETag. None if anyone wrote it since (a replay, a copy delivered
        twice, an attempt cut short after its claim): then it must be read."""
        accepted = replace(_first_status(envelope), etag=envelope.status_etag)
        try:
            with telemetry.span("mailgate.status.write", id=envelope.id, state="sending"):
                return self._statuses.claim(
                    accepted.moved(MessageState.SENDING, self._now(), attempts=envelope.attempt)
                )
        except ConcurrentUpdate:
            return None

    def _send(
        self,
        envelope: QueueEnvelope,
        status: MessageStatus,
        loaded: QueueEnvelope | PermanentDeliveryError,
        choice: ProviderChoice | None,
    ) -> DeliveryOutcome:
        """Send a claimed message by the chosen provider and record the outcome."""
        if isinstance(loaded, PermanentDeliveryError):
            # The claim went through, so nobody sent it meanwhile (and deleted the body then).
            return self._dead_letter(envelope, status, loaded, loaded.reason)
        acs_senders = self._settings.acs_email_senders
        candidates = eligible(self._providers, loaded, acs_senders=acs_senders)
        if not candidates or choice is None:
            error = _no_provider(self._providers, loaded, acs_senders)
            return self._dead_letter(envelope, status, error, error.reason)
        provider = choice.provider
        status = replace(
            status,
            providers_tried=status.tried(provider),
            providers_skipped=status.skipped(choice.skipped),
        )
        try:
            provider_id = self._senders[provider].send(loaded)
        except PermanentDeliveryError as error:
            following = next_provider(
                candidates, provider, ambiguous=False, failover_on_ambiguous=False
            )
            if (
                _provider_fault(error)
                and following != provider
                and envelope.attempt < self._settings.max_delivery_attempts
            ):
                # The provider refuses everything (its key, account or configuration), not this
                # mail: the next provider may send it, and the breaker learns of the failure.
                self._report(provider, failed=True)
                return self._schedule_retry(
                    envelope, status, _as_retryable(error), provider, following
                )
            # The provider answered: it is the mail's fault (or, with no other provider to take
            # it, the operator's to fix before a replay).
            self._report(provider, failed=False)
            return self._dead_letter(envelope, status, error, error.reason, provider)
        except RetryableDeliveryError as error:
            self._report(provider, failed=True)
            if envelope.attempt >= self._settings.max_delivery_attempts:
                reason = f"gave up after {envelope.attempt} attempt(s): {error.reason}"
                return self._dead_letter(envelope, status, error, reason, provider)
            following = next_provider(
                candidates,
                provider,
                ambiguous=error.ambiguous,
                failover_on_ambiguous=self._settings.failover_on_ambiguous,
            )
            return self._schedule_retry(envelope, status, error, provider, following)
        with telemetry.span("mailgate.status.write", id=envelope.id, state="sent"):
            recorded = self._record_sent(status, provider_id, provider)
        # After `sent` is written: a breaker's write must not widen the window in which a
        # worker dying leaves `sending` behind (see the module's docstring).
        self._report(provider, failed=False)
        if recorded:
            # Only once `sent` is recorded: were the record still `sending`, a later copy must
            # still find the body to send (the documented duplicate) rather than fail for good.
            self._delete_body(envelope)
        telemetry.sent.add(1)
        telemetry.latency.record((self._now() - envelope.accepted_at).total_seconds())
        self._record(envelope.id, MessageState.SENT, envelope.attempt)
        domains = loaded.recipient_domains()
        logger.info(
            "Message %s sent on attempt %s to %s recipient domain(s) %s by %s, id %s",
            envelope.id,
            envelope.attempt,
            len(domains),
            ",".join(domains),
            provider,
            provider_id,
            extra={**_ids(envelope), "provider": provider},
        )
        return DeliveryOutcome(
            "sent",
            envelope.id,
            envelope.attempt,
            provider_message_id=provider_id,
            provider=provider,
        )

    def _report(self, provider: str, *, failed: bool) -> None:
        """Tell the provider's breaker how its send went (no storage call while it is closed
        and the send went well)."""
        if self._breakers is None:
            return
        if failed:
            self._breakers.failed(provider)
        else:
            self._breakers.succeeded(provider)

    def _record(
        self, message_id: str | None, state: MessageState, attempt: int, at: datetime | None = None
    ) -> None:
        # For the operator's per-minute view; best effort, after the status record is written.
        self._activity.record(ActivityEvent(message_id, state, attempt, at or self._now()))

    def _reason_to_skip(self, envelope: QueueEnvelope, status: MessageStatus) -> str | None:
        if status.state in FINAL_STATES:
            return f"it is already {status.state.value}"
        if status.state is MessageState.RETRYING and envelope.attempt <= status.attempts:
            return f"a later attempt ({status.attempts + 1}) is already scheduled"
        if status.state is MessageState.SENDING:
            if self._now() - status.updated_at < self._claim_timeout:
                raise DeliveryInProgress(f"message {envelope.id} is being sent by another worker")
            # The claimant died mid-attempt: this is the documented window for a second send.
            logger.warning(
                "Message %s: attempt %s never finished; sending again (may duplicate)",
                envelope.id,
                status.attempts,
                extra=_ids(envelope),
            )
        return None

    def _load_body(self, envelope: QueueEnvelope) -> QueueEnvelope | PermanentDeliveryError:
        """The envelope with its body in it, read from its blob if it has one.

        A blob that is missing or unreadable is an error no retry can fix, returned for the
        caller to dead-letter. Raises StorageUnavailable when the blob cannot be read now: the
        message then waits on the queue.
        """
        if envelope.blob is None:
            return self._allowed(envelope)
        if envelope.blob not in own_body_blob_names(envelope.id):
            # The accept names a body's blob after its message: anything else was written by
            # someone else (the host's admin API can put anything on the queue).
            own = body_blob_name(envelope.id)
            return PermanentDeliveryError(f"it names blob {envelope.blob!r}, not its own ({own})")
        content = self._bodies.get(envelope.blob)
        if content is None:
            return PermanentDeliveryError(
                f"its body, blob {envelope.blob}, is missing: there is nothing to send"
            )
        try:
            stored = StoredBody.model_validate_json(content, context=WRITTEN_BY_GATEWAY)
        except ValidationError as error:
            version = newer_version(content, STORED_BODY_VERSION)
            if version is not None:
                raise NewerVersion(version) from None
            return PermanentDeliveryError(
                f"its body, blob {envelope.blob}, is not a mailgate message body: "
                + _problems(error)
            )
        if stored.id != envelope.id:
            return PermanentDeliveryError(
                f"its body, blob {envelope.blob}, belongs to message {stored.id}"
            )
        return self._allowed(envelope.with_body(stored))

    def _allowed(self, envelope: QueueEnvelope) -> QueueEnvelope | PermanentDeliveryError:
        """The envelope, or an error if a `from` is outside ALLOWED_SENDERS.

        Checked again at delivery: the accept checked it, but whoever holds the host's master
        key can put any message on the queue through the host's admin API.
        """
        senders = envelope.sender_addresses()
        refused = sorted(
            {
                a.rpartition("@")[2].lower() or "(none)"
                for a in senders
                if not sender_allowed(a, self._settings.allowed_senders)
            }
        )
        if not senders or refused:
            # The domain only: a full address never goes into a reason, which is logged.
            return PermanentDeliveryError(
                "its sender is not allowed by ALLOWED_SENDERS (domain "
                + (", ".join(refused) or "(none)")
                + ")",
                cause=SENDER_NOT_ALLOWED,
            )
        return envelope

    def _delete_body(self, envelope: QueueEnvelope) -> None:
        if envelope.blob is None:
            return
        try:
            self._bodies.delete(envelope.blob)
        except StorageUnavailable as error:
            # A leftover blob costs only its space; raising would have the host try again.
            logger.warning(
                "Message %s: its body, blob %s, was not deleted: %s",
                envelope.id,
                envelope.blob,
                error,
                extra=_ids(envelope),
            )

    def _record_sent(self, status: MessageStatus, provider_id: str | None, provider: str) -> bool:
        """Write `sent`, retrying in place; False if it could not be recorded."""
        sent = status.concluded(
            MessageState.SENT,
            status.attempts,
            self._now(),
            provider_message_id=provider_id,
            provider=provider,
            last_status_code=None,
            last_error=None,
            provider_errors=(),
            last_error_cause=None,
            ambiguous=False,
        )
        for attempt in range(1, SENT_WRITE_ATTEMPTS + 1):
            try:
                self._statuses.put(sent)
                return True
            except StorageUnavailable as error:
                if attempt == SENT_WRITE_ATTEMPTS:
                    # Raising would have the host send it again: keep the mail single instead.
                    logger.error(
                        "Message %s was sent but its status could not be recorded: %s",
                        status.id,
                        error,
                        extra={"mailgate_id": status.id},
                    )
                    return False
                time.sleep(SENT_WRITE_PAUSE_SECONDS * attempt)
        return False

    def _schedule_retry(
        self,
        envelope: QueueEnvelope,
        status: MessageStatus,
        error: RetryableDeliveryError,
        provider: str,
        following: str,
    ) -> DeliveryOutcome:
        delay = retry_delay_seconds(
            envelope.attempt, self._settings, error.retry_after_seconds, self._rng
        )
        now = self._now()
        # The next copy first: if that fails, this copy stays on the queue and the host
        # retries it (the claim says `sending`, so no copy is mistaken for a stale one).
        with telemetry.span("mailgate.enqueue", id=envelope.id, attempt=envelope.attempt + 1):
            self._queue.enqueue(
                envelope.model_copy(
                    update={
                        "attempt": envelope.attempt + 1,
                        "postponed": None,
                        # Named only when there is a choice: one provider leaves it unset.
                        "provider": following if len(self._providers) > 1 else None,
                    }
                ),
                delay_seconds=delay,
            )
        retrying = status.concluded(
            MessageState.RETRYING,
            envelope.attempt,
            now,
            next_attempt_at=now + timedelta(seconds=delay),
            last_status_code=error.status_code,
            last_error=error.reason,
            provider_errors=error.provider_errors,
            last_error_cause=None,
            ambiguous=error.ambiguous,
        )
        try:
            with telemetry.span("mailgate.status.write", id=envelope.id, state="retrying"):
                self._statuses.put(retrying)
        except StorageUnavailable as status_error:
            # The retry is queued; its claim will find `sending` and wait out the claim timeout.
            logger.warning(
                "Message %s: retry queued but its status not recorded: %s",
                envelope.id,
                status_error,
                extra=_ids(envelope),
            )
        telemetry.retried.add(1)
        self._record(envelope.id, MessageState.RETRYING, envelope.attempt, now)
        logger.warning(
            "Message %s attempt %s failed (%s%s) by %s; retrying in %ss by %s",
            envelope.id,
            envelope.attempt,
            error.reason,
            ", outcome unknown" if error.ambiguous else "",
            provider,
            delay,
            following,
            extra={**_ids(envelope), "provider": provider},
        )
        return DeliveryOutcome(
            "retry_scheduled",
            envelope.id,
            envelope.attempt,
            retry_in_seconds=delay,
            reason=error.reason,
            provider=provider,
            next_provider=following,
        )

    def _dead_letter(
        self,
        envelope: QueueEnvelope,
        status: MessageStatus,
        error: DeliveryError,
        reason: str,
        provider: str | None = None,
    ) -> DeliveryOutcome:
        now = self._now()
        retryable = isinstance(error, RetryableDeliveryError)
        ambiguous = isinstance(error, RetryableDeliveryError) and error.ambiguous
        cause = error.cause or classify(
            error.status_code, error.provider_errors, retryable=retryable, ambiguous=ambiguous
        )
        record = DeadLetter(
            reason=reason,
            status_code=error.status_code,
            provider_error=error.provider_error,
            attempts=envelope.attempt,
            at=now,
            cause=cause,
            provider_errors=list(error.provider_errors) or None,
        )
        # The body first, then the poison copy naming it, then the status: a status of `failed`
        # must never point at nothing, nor a dead letter at a body retention may delete.
        kept = keep_body(self._bodies, envelope)
        try:
            with telemetry.span("mailgate.dead_letter", id=envelope.id):
                self._queue.dead_letter(
                    kept.model_copy(update={"dead_letter": record}).to_json(), message_id=kept.id
                )
        except StorageUnavailable:
            if kept.blob != envelope.blob:
                # Nothing names the copy, and nothing deletes a kept body by age: take it back.
                self._delete_body(kept)
            raise
        with telemetry.span("mailgate.status.write", id=envelope.id, state="failed"):
            self._statuses.put(
                status.concluded(
                    MessageState.FAILED,
                    envelope.attempt,
                    now,
                    last_status_code=error.status_code,
                    last_error=reason,
                    provider_errors=error.provider_errors,
                    last_error_cause=cause,
                    ambiguous=ambiguous,
                )
            )
        if kept.blob != envelope.blob:
            # Left behind, it would only wait for retention (shared/retention.py).
            self._delete_body(envelope)
        telemetry.dead_lettered.add(1)
        self._record(envelope.id, MessageState.FAILED, envelope.attempt, now)
        advice = advice_for(cause)
        logger.error(
            "Message %s dead-lettered to %s: %s (%s)",
            envelope.id,
            self._queue.poison_name,
            reason,
            f"cause {advice.cause}, replay {advice.replay.value}" if advice else "cause unknown",
            extra={**_ids(envelope), "cause": cause},
        )
        return DeliveryOutcome(
            "dead_lettered", envelope.id, envelope.attempt, reason=reason, provider=provider
        )

    def _dead_letter_unreadable(self, body: bytes, error: ValidationError) -> DeliveryOutcome:
        reason = "not a mailgate envelope: " + _problems(error)
        record = DeadLetter(reason=reason, attempts=1, at=self._now(), cause=NOT_AN_ENVELOPE)
        self._queue.dead_letter(
            json.dumps(
                {
                    "dead_letter": record.model_dump(mode="json", exclude_none=True),
                    "raw_message": body.decode("utf-8", errors="replace"),
                }
            )
        )
        self._record(None, MessageState.FAILED, 1, record.at)
        logger.error("Unreadable queue message dead-lettered: %s", reason)
        return DeliveryOutcome("dead_lettered", None, 1, reason=reason)


def keep_body(bodies: MessageBodyStore, envelope: QueueEnvelope) -> QueueEnvelope:
    """The envelope naming its body's kept copy, copied from live/ for a dead letter or a
    replay; as it is if its body is not a live one, or is missing.

    A live body is deleted once older than the longest a message can live (shared/retention.py);
    a dead letter waits for an operator for as long as it takes. The live blob is left for the
    caller to delete once the envelope naming the copy is written. Raises StorageUnavailable
    when the copy fails.
    """
    if envelope.blob is None or envelope.blob != body_blob_name(envelope.id):
        return envelope
    kept = kept_body_blob_name(envelope.id)
    if not bodies.copy(envelope.blob, kept):
        return envelope
    return envelope.model_copy(update={"blob": kept})


# Refusals of everything a provider is asked to send, whatever the mail: SendGrid's 401 (the key
# invalid or revoked, the account suspended or out of credits) and 403 other than an unverified
# sender (the key's permissions, a blocked account), a relay refusing AUTH or offering no
# STARTTLS, ACS refusing the identity or key. An unverified sender stays the mail's own: its
# sender needs fixing on that provider, as issue 17 has it.
PROVIDER_FAULTS = frozenset({API_KEY, FORBIDDEN, SMTP_AUTH, SMTP_CONFIG, ACS_CONFIG})


def _provider_fault(error: PermanentDeliveryError) -> bool:
    """Whether a permanent refusal is the provider's (it would refuse any mail now)."""
    cause = error.cause or classify(error.status_code, error.provider_errors, retryable=False)
    return cause in PROVIDER_FAULTS


def _as_retryable(error: PermanentDeliveryError) -> RetryableDeliveryError:
    """A provider's refusal of everything, as a failure the next provider may not have."""
    return RetryableDeliveryError(
        error.reason,
        status_code=error.status_code,
        provider_error=error.provider_error,
        provider_errors=error.provider_errors,
        cause=error.cause or classify(error.status_code, error.provider_errors, retryable=False),
    )


def _no_provider(
    providers: tuple[str, ...], loaded: QueueEnvelope, acs_senders: tuple[str, ...] = ()
) -> PermanentDeliveryError:
    """The error of a mail no provider in use can carry (MAIL_PROVIDERS changed since it was
    accepted, or its queue message was edited): the fields that keep it from each."""
    detail = "no provider is configured (MAIL_PROVIDERS)"
    try:
        check_deliverable(providers, loaded.message, loaded.sendgrid, acs_senders=acs_senders)
    except NotDeliverable as refusal:
        detail = (
            refusal.detail + ": " + "; ".join(f"{p.pointer} {p.detail}" for p in refusal.problems)
        )
    return PermanentDeliveryError(detail, cause=NO_PROVIDER)


def _first_status(envelope: QueueEnvelope) -> MessageStatus:
    """The record a message has before anyone wrote one, or as its accept wrote it."""
    return MessageStatus.queued(envelope.id, envelope.accepted_at, envelope.client)


def _problems(error: ValidationError) -> str:
    """How many problems and where the first is, without the values (they may be mail)."""
    return f"{error.error_count()} problem(s), first at " + (
        ".".join(str(p) for p in error.errors()[0]["loc"]) or "the top level"
    )


def _ids(envelope: QueueEnvelope) -> dict[str, Any]:
    return {"mailgate_id": envelope.id, "attempt": envelope.attempt}
