"""Delivery with the providers' circuit breakers and send-rate brakes: open providers passed
over, messages held back (never an attempt, never dead-lettered for it), what is recorded."""

from __future__ import annotations

from datetime import timedelta
from typing import cast

from azure.data.tables import TableClient

from shared.brake import SendRateBrake
from shared.breaker import BreakerPolicy, BreakerState, ProviderBreakers, Verdict
from shared.delivery import Delivery, DeliveryOutcome
from shared.errors import PermanentDeliveryError, RetryableDeliveryError
from shared.message_ids import new_message_id
from shared.models import QueueEnvelope
from shared.status import MessageState, MessageStatus
from tests.fakes import (
    Clock,
    FakeActivityLog,
    FakeMailQueue,
    FakeMailSender,
    FakeMessageBodyStore,
    FakeStatusStore,
    FakeTableClient,
    JitterAt,
)
from tests.samples import NOW, envelope, settings_with

LATER = NOW + timedelta(minutes=5)
T0 = 1_800_000_000.0
COOLDOWN = 30.0
UNAVAILABLE = RetryableDeliveryError("SendGrid answered 503", status_code=503)
TIMED_OUT = RetryableDeliveryError("no answer from SendGrid: ReadTimeout", ambiguous=True)
REFUSED = PermanentDeliveryError("SendGrid refused the message with 400", status_code=400)


class Guarded:
    """Delivery through scripted SendGrid and SMTP senders, with breakers (opening after 2
    failures) and, if asked, brakes, all on one in-memory table and a settable clock."""

    def __init__(
        self,
        *sendgrid: str | Exception | None,
        smtp: tuple[str | Exception | None, ...] = (),
        rates: dict[str, int] | None = None,
        **settings: str,
    ) -> None:
        self.clock = Clock(T0)
        self.table = FakeTableClient()
        self.queue = FakeMailQueue()
        self.statuses = FakeStatusStore(self.queue.journal)
        self.sendgrid = FakeMailSender(*sendgrid, default_id="sg-id")  # type: ignore[arg-type]
        self.smtp = FakeMailSender(*smtp, default_id="<id@example.com>", name="smtp")  # type: ignore[arg-type]
        self.breakers = self.instance_breakers()
        self.brake = (
            SendRateBrake(
                cast("TableClient", self.table),
                rates,
                clock=self.clock,
                sleep=lambda seconds: None,
                max_wait_seconds=0,
            )
            if rates
            else None
        )
        self.delivery = Delivery(
            senders={"sendgrid": self.sendgrid, "smtp": self.smtp},
            queue=self.queue,
            bodies=FakeMessageBodyStore(journal=self.queue.journal),
            statuses=self.statuses,
            activity=FakeActivityLog(),
            settings=settings_with(
                MAIL_PROVIDERS="sendgrid,smtp", SMTP_HOST="smtp.example.com", **settings
            ),
            now=lambda: LATER,
            rng=JitterAt(0.0),
            breakers=self.breakers,
            brake=self.brake,
        )

    def instance_breakers(self) -> ProviderBreakers:
        """Breakers on the shared table, as another instance would have them."""
        return ProviderBreakers(
            cast("TableClient", self.table),
            BreakerPolicy(failures=2, cooldown_seconds=COOLDOWN),
            clock=self.clock,
        )

    def open(self, provider: str) -> None:
        other = self.instance_breakers()
        other.failed(provider)
        other.failed(provider)
        # This instance's copy is read again.
        self.clock.now += 10

    def deliver(self, queued: QueueEnvelope | str) -> DeliveryOutcome:
        text = queued if isinstance(queued, str) else queued.to_json()
        return self.delivery.deliver(text.encode())

    def take_queued(self) -> tuple[str, int]:
        """The one message on the queue (its text and delay), taken off it."""
        [queued] = self.queue.messages
        self.queue.messages.clear()
        return queued.text, queued.delay_seconds

    def status(self, message_id: str) -> MessageStatus:
        status = self.statuses.get(message_id)
        assert status is not None
        return status


def test_should_send_by_the_next_provider_without_trying_one_whose_breaker_is_open() -> None:
    guarded = Guarded()
    guarded.open("sendgrid")

    outcome = guarded.deliver(envelope(id="b1"))

    assert (outcome.result, outcome.provider, outcome.attempt) == ("sent", "smtp", 1)
    assert guarded.sendgrid.envelopes == []
    status = guarded.status("b1")
    assert status.providers_tried == ("smtp",)
    assert status.providers_skipped == ("sendgrid",)
    assert status.to_document()["providers_skipped"] == ["sendgrid"]


def test_should_hold_a_message_back_unsent_and_uncounted_while_every_breaker_is_open() -> None:
    guarded = Guarded()
    guarded.open("sendgrid")
    guarded.open("smtp")

    outcome = guarded.deliver(envelope(id="b2"))

    assert outcome.result == "postponed"
    assert "circuit breaker of sendgrid, smtp is open" in (outcome.reason or "")
    assert guarded.sendgrid.envelopes == []
    assert guarded.smtp.envelopes == []
    text, delay = guarded.take_queued()
    held = QueueEnvelope.model_validate_json(text)
    assert (held.attempt, held.postponed, held.provider) == (1, 1, None)
    # Back once the first cool-down is over: sendgrid's, 10 s from now (smtp's 10 s later).
    assert 10 < delay <= 10 + 3
    # Its record was never claimed: nothing to wait out when it comes back.
    assert guarded.statuses.get("b2") is None
    assert guarded.queue.poison_texts == []


def test_should_name_a_held_message_in_the_write_that_puts_it_back() -> None:
    guarded = Guarded()
    guarded.open("sendgrid")
    guarded.open("smtp")
    message_id = new_message_id(NOW, "app")

    assert guarded.deliver(envelope(id=message_id)).result == "postponed"

    # Its id is the request's client request id, which Storage's logs keep.
    assert [m.request_id for m in guarded.queue.messages] == [message_id]


def test_should_never_dead_letter_a_message_held_back_however_often() -> None:
    guarded = Guarded(MAX_DELIVERY_ATTEMPTS="1")
    guarded.open("sendgrid")
    guarded.open("smtp")

    text = envelope(id="b3").to_json()
    for _ in range(30):
        assert guarded.deliver(text).result == "postponed"
        text, _ = guarded.take_queued()
        # The breakers stay open: the clock does not pass their cool-down.

    held = QueueEnvelope.model_validate_json(text)
    assert (held.attempt, held.postponed) == (1, 30)
    assert guarded.queue.poison_texts == []
    guarded.clock.now += COOLDOWN
    assert (guarded.deliver(text).result, guarded.sendgrid.envelopes != []) == ("sent", True)


def test_should_hold_a_message_longer_each_time_the_breakers_hold_it_again() -> None:
    guarded = Guarded()
    guarded.open("sendgrid")
    guarded.open("smtp")
    text = envelope(id="b5").to_json()
    delays = []
    for _ in range(8):
        assert guarded.deliver(text).result == "postponed"
        text, delay = guarded.take_queued()
        delays.append(delay)

    # First the cool-down's remainder (10 s and the spread); then, as the trials keep failing
    # (here the clock stands still), 15 s doubling as for any put-back, at most 5 minutes.
    assert 10 < delays[0] <= 13
    assert delays == sorted(delays)
    assert 150 <= delays[-1] <= 300


def test_should_keep_a_mail_whose_last_failure_was_ambiguous_waiting_for_its_provider() -> None:
    guarded = Guarded(TIMED_OUT)
    guarded.deliver(envelope(id="b4"))
    text, _ = guarded.take_queued()
    guarded.open("sendgrid")

    outcome = guarded.deliver(text)

    # smtp is closed, but a copy by it could be a second one: it waits for sendgrid.
    assert outcome.result == "postponed"
    assert "the provider this attempt must use" in (outcome.reason or "")
    assert guarded.smtp.envelopes == []


def test_should_open_a_breaker_on_retryable_failures_and_never_on_permanent_ones() -> None:
    refused = Guarded(REFUSED, REFUSED, REFUSED)
    for index in range(3):
        refused.deliver(envelope(id=f"p{index}"))
    failing = Guarded(UNAVAILABLE, UNAVAILABLE)
    for index in range(2):
        failing.deliver(envelope(id=f"r{index}"))
        failing.queue.messages.clear()

    assert refused.breakers.state("sendgrid").state is BreakerState.CLOSED
    assert failing.breakers.state("sendgrid").state is BreakerState.OPEN
    third = failing.deliver(envelope(id="r3"))
    assert (third.result, third.provider) == ("sent", "smtp")


def test_should_close_the_breaker_when_its_trial_is_sent() -> None:
    guarded = Guarded()
    guarded.open("sendgrid")
    guarded.clock.now += COOLDOWN

    outcome = guarded.deliver(envelope(id="b5"))

    assert (outcome.result, outcome.provider) == ("sent", "sendgrid")
    assert guarded.breakers.state("sendgrid").state is BreakerState.CLOSED
    assert guarded.status("b5").providers_skipped == ()


def test_should_hold_a_message_back_over_the_brake_without_spending_an_attempt() -> None:
    guarded = Guarded(rates={"sendgrid": 1})

    first = guarded.deliver(envelope(id="k1"))
    second = guarded.deliver(envelope(id="k2"))

    assert first.result == "sent"
    assert second.result == "postponed"
    assert "sendgrid's send-rate brake is spent" in (second.reason or "")
    text, delay = guarded.take_queued()
    held = QueueEnvelope.model_validate_json(text)
    assert (held.id, held.attempt, held.postponed) == ("k2", 1, 1)
    assert delay in (1, 2)
    assert [e.id for e in guarded.sendgrid.envelopes] == ["k1"]
    # Over the brake is no failure: nothing went to smtp instead.
    assert guarded.smtp.envelopes == []
    guarded.clock.now += 1
    assert guarded.deliver(text).result == "sent"


def test_should_hold_longer_each_time_a_brake_holds_a_message_back_again() -> None:
    guarded = Guarded(rates={"sendgrid": 1})
    guarded.deliver(envelope(id="k3"))

    delays = []
    text = envelope(id="k4").to_json()
    for _ in range(6):
        guarded.deliver(text)
        text, delay = guarded.take_queued()
        delays.append(delay)

    assert delays == sorted(delays)
    assert delays[-1] <= 16


def test_should_give_a_trial_back_when_the_brake_holds_its_mail() -> None:
    guarded = Guarded(rates={"sendgrid": 1})
    guarded.open("sendgrid")
    guarded.clock.now = T0 + 10 + COOLDOWN
    # Another instance takes this second's one mail.
    other = SendRateBrake(cast("TableClient", guarded.table), {"sendgrid": 1}, clock=guarded.clock)
    assert other.take("sendgrid")

    outcome = guarded.deliver(envelope(id="k7"))

    # The trial was taken, then the mail held back by the brake: the trial is due again at once.
    assert outcome.result == "postponed"
    assert guarded.sendgrid.envelopes == []
    assert guarded.smtp.envelopes == []
    assert guarded.instance_breakers().verdict("sendgrid", 60) is Verdict.TRIAL


def test_should_record_sent_when_a_breaker_was_passed_over_on_a_later_attempt() -> None:
    guarded = Guarded(UNAVAILABLE)
    guarded.deliver(envelope(id="b6"))
    retry, _ = guarded.take_queued()
    # The retry names smtp; smtp opens meanwhile: it goes back to sendgrid, which answers now.
    guarded.open("smtp")

    outcome = guarded.deliver(retry)

    assert (outcome.result, outcome.provider) == ("sent", "sendgrid")
    status = guarded.status("b6")
    assert status.state is MessageState.SENT
    assert (status.providers_tried, status.providers_skipped) == (("sendgrid",), ("smtp",))
