"""Delivery through more than one provider: which attempt goes where, and what is recorded."""

from __future__ import annotations

from datetime import timedelta

import pytest

from shared.delivery import Delivery, DeliveryOutcome
from shared.errors import PermanentDeliveryError, RetryableDeliveryError
from shared.models import ProviderError, QueueEnvelope
from shared.settings import Settings
from shared.status import MessageState
from tests.fakes import (
    FakeActivityLog,
    FakeMailQueue,
    FakeMailSender,
    FakeMessageBodyStore,
    FakeStatusStore,
    JitterAt,
)
from tests.samples import NOW, envelope, sendgrid_envelope, settings_with

LATER = NOW + timedelta(minutes=5)
UNAVAILABLE = RetryableDeliveryError("SendGrid answered 503", status_code=503)
TIMED_OUT = RetryableDeliveryError("no answer from SendGrid: ReadTimeout", ambiguous=True)
REFUSED = PermanentDeliveryError("SendGrid refused the message with 400", status_code=400)
RELAY_DOWN = RetryableDeliveryError("cannot connect to the SMTP relay", cause="unavailable")


class Providers:
    """A SendGrid and an SMTP sender, each scripted, and the delivery that uses both."""

    def __init__(self, settings: Settings, sendgrid: FakeMailSender, smtp: FakeMailSender) -> None:
        self.queue = FakeMailQueue()
        self.statuses = FakeStatusStore(self.queue.journal)
        self.sendgrid = sendgrid
        self.smtp = smtp
        self.delivery = Delivery(
            senders={"sendgrid": sendgrid, "smtp": smtp},
            queue=self.queue,
            bodies=FakeMessageBodyStore(journal=self.queue.journal),
            statuses=self.statuses,
            activity=FakeActivityLog(),
            settings=settings,
            now=lambda: LATER,
            rng=JitterAt(1.0),
        )

    def deliver(self, queued: QueueEnvelope) -> DeliveryOutcome:
        return self.delivery.deliver(queued.to_json().encode())

    def next_envelope(self) -> QueueEnvelope:
        """The retry the last delivery queued, taken off the queue."""
        retry = self.queue.envelopes[-1]
        self.queue.messages.clear()
        return retry


def providers(
    *sendgrid: str | Exception | None,
    smtp: tuple[str | Exception | None, ...] = (),
    mail_providers: str = "sendgrid,smtp",
    **settings: str,
) -> Providers:
    return Providers(
        settings_with(MAIL_PROVIDERS=mail_providers, SMTP_HOST="smtp.example.com", **settings),
        FakeMailSender(*sendgrid, default_id="sg-id"),  # type: ignore[arg-type]
        FakeMailSender(*smtp, default_id="<smtp-id@example.com>", name="smtp"),  # type: ignore[arg-type]
    )


def test_should_send_by_the_first_provider_when_it_works() -> None:
    both = providers()

    outcome = both.deliver(envelope(id="m1"))

    assert (outcome.result, outcome.provider) == ("sent", "sendgrid")
    assert len(both.sendgrid.envelopes) == 1
    assert both.smtp.envelopes == []


def test_should_send_the_next_attempt_by_the_next_provider_after_a_retryable_failure() -> None:
    both = providers(UNAVAILABLE)

    first = both.deliver(envelope(id="m2"))
    retry = both.next_envelope()
    second = both.deliver(retry)

    assert (first.result, first.provider, first.next_provider) == (
        "retry_scheduled",
        "sendgrid",
        "smtp",
    )
    assert (retry.attempt, retry.provider) == (2, "smtp")
    assert (second.result, second.provider) == ("sent", "smtp")
    status = both.statuses.get("m2")
    assert status is not None
    assert status.state is MessageState.SENT
    assert (status.provider, status.providers_tried) == ("smtp", ("sendgrid", "smtp"))
    assert status.provider_message_id == "<smtp-id@example.com>"
    # The mail handed to the relay is the one accepted, unchanged.
    assert both.smtp.envelopes[0].message == envelope(id="m2").message


def test_should_return_to_the_first_provider_after_the_last_one_failed() -> None:
    both = providers(UNAVAILABLE, smtp=(RELAY_DOWN,))

    both.deliver(envelope(id="m3"))
    both.deliver(both.next_envelope())
    third = both.next_envelope()
    outcome = both.deliver(third)

    assert third.provider == "sendgrid"
    assert (outcome.result, outcome.provider) == ("sent", "sendgrid")
    status = both.statuses.get("m3")
    assert status is not None
    assert status.providers_tried == ("sendgrid", "smtp")


def test_should_not_fail_over_a_permanent_refusal() -> None:
    both = providers(REFUSED)

    outcome = both.deliver(envelope(id="m4"))

    assert (outcome.result, outcome.provider) == ("dead_lettered", "sendgrid")
    assert both.smtp.envelopes == []
    assert both.queue.envelopes == []
    status = both.statuses.get("m4")
    assert status is not None
    assert status.state is MessageState.FAILED
    assert status.providers_tried == ("sendgrid",)
    assert status.provider is None


KEY_REVOKED = PermanentDeliveryError("SendGrid refused the key with 401", status_code=401)
UNVERIFIED = PermanentDeliveryError(
    "SendGrid refused the message with 403",
    status_code=403,
    provider_errors=[
        ProviderError(
            message="The from address does not match a verified Sender Identity.", field="from"
        )
    ],
)
RELAY_AUTH = PermanentDeliveryError("the SMTP relay refused AUTH: 535", cause="smtp_auth")


@pytest.mark.parametrize(
    "refusal",
    [
        KEY_REVOKED,
        PermanentDeliveryError("SendGrid forbade the send with 403", status_code=403),
    ],
    ids=["401", "403"],
)
def test_should_fail_over_a_refusal_of_the_providers_key_or_account(
    refusal: PermanentDeliveryError,
) -> None:
    both = providers(refusal)

    first = both.deliver(envelope(id="m20"))
    retry = both.next_envelope()
    second = both.deliver(retry)

    # SendGrid refuses any mail now (a revoked key, a suspended account): the relay may not.
    assert (first.result, first.next_provider) == ("retry_scheduled", "smtp")
    assert (retry.attempt, retry.provider) == (2, "smtp")
    assert (second.result, second.provider) == ("sent", "smtp")
    status = both.statuses.get("m20")
    assert status is not None
    assert status.providers_tried == ("sendgrid", "smtp")


def test_should_fail_over_a_relay_refusing_its_credentials() -> None:
    both = providers(smtp=(RELAY_AUTH,), mail_providers="smtp,sendgrid")

    first = both.deliver(envelope(id="m21"))
    second = both.deliver(both.next_envelope())

    assert (first.result, first.next_provider) == ("retry_scheduled", "sendgrid")
    assert (second.result, second.provider) == ("sent", "sendgrid")


def test_should_not_fail_over_an_unverified_sender() -> None:
    both = providers(UNVERIFIED)

    outcome = both.deliver(envelope(id="m22"))

    # The mail's own sender, to be verified on SendGrid: no other provider is asked.
    assert (outcome.result, outcome.provider) == ("dead_lettered", "sendgrid")
    assert both.smtp.envelopes == []
    status = both.statuses.get("m22")
    assert status is not None
    assert status.last_error_cause == "sender_identity"


@pytest.mark.parametrize(
    ("mail_providers", "attempt"), [("sendgrid", 1), ("sendgrid,smtp", 8)], ids=["alone", "last"]
)
def test_should_dead_letter_a_refused_key_with_no_provider_or_attempt_left(
    mail_providers: str, attempt: int
) -> None:
    both = providers(KEY_REVOKED, mail_providers=mail_providers)

    outcome = both.deliver(envelope(id="m23").model_copy(update={"attempt": attempt}))

    assert outcome.result == "dead_lettered"
    status = both.statuses.get("m23")
    assert status is not None
    assert status.last_error_cause == "api_key"


def test_should_retry_an_ambiguous_failure_on_the_same_provider_by_default() -> None:
    both = providers(TIMED_OUT)

    outcome = both.deliver(envelope(id="m5"))

    assert outcome.next_provider == "sendgrid"
    assert both.next_envelope().provider == "sendgrid"


def test_should_fail_over_an_ambiguous_failure_when_allowed() -> None:
    both = providers(TIMED_OUT, FAILOVER_ON_AMBIGUOUS="true")

    outcome = both.deliver(envelope(id="m6"))

    assert outcome.next_provider == "smtp"
    assert both.next_envelope().provider == "smtp"


def test_should_keep_a_mail_smtp_cannot_carry_on_sendgrid_across_retries() -> None:
    both = providers(UNAVAILABLE)

    first = both.deliver(envelope(id="m7", categories=["orders"]))
    retry = both.next_envelope()
    second = both.deliver(retry)

    assert first.next_provider == "sendgrid"
    assert retry.provider == "sendgrid"
    assert (second.result, second.provider) == ("sent", "sendgrid")
    assert both.smtp.envelopes == []


def test_should_keep_a_v3_body_on_sendgrid() -> None:
    both = providers(UNAVAILABLE, mail_providers="smtp,sendgrid")

    outcome = both.deliver(sendgrid_envelope(id="m8"))

    assert (outcome.provider, outcome.next_provider) == ("sendgrid", "sendgrid")
    assert both.smtp.envelopes == []


def test_should_start_with_smtp_when_it_comes_first() -> None:
    both = providers(mail_providers="smtp,sendgrid")

    outcome = both.deliver(envelope(id="m9"))

    assert (outcome.result, outcome.provider) == ("sent", "smtp")
    assert both.sendgrid.envelopes == []


def test_should_dead_letter_a_queued_mail_no_provider_in_use_can_carry() -> None:
    # Accepted while SendGrid was listed; MAIL_PROVIDERS has only smtp now.
    only_smtp = providers(mail_providers="smtp")

    outcome = only_smtp.deliver(envelope(id="m10", categories=["orders"]))

    assert outcome.result == "dead_lettered"
    assert outcome.reason is not None
    assert "#/categories" in outcome.reason
    status = only_smtp.statuses.get("m10")
    assert status is not None
    assert status.last_error_cause == "no_provider"
    assert only_smtp.smtp.envelopes == []
    assert only_smtp.sendgrid.envelopes == []


@pytest.mark.parametrize("named", ["smtp", "acs"])
def test_should_send_by_the_first_provider_when_the_named_one_is_not_in_use(named: str) -> None:
    only_sendgrid = providers(mail_providers="sendgrid")

    outcome = only_sendgrid.deliver(
        envelope(id="m11", attempt=2).model_copy(update={"provider": named})
    )

    assert (outcome.result, outcome.provider) == ("sent", "sendgrid")


def test_should_dead_letter_when_the_attempts_run_out_on_whichever_provider() -> None:
    both = providers(MAX_DELIVERY_ATTEMPTS="2", smtp=(RELAY_DOWN,))

    both.deliver(envelope(id="m12").model_copy(update={"attempt": 2, "provider": "smtp"}))

    status = both.statuses.get("m12")
    assert status is not None
    assert status.state is MessageState.FAILED
    assert status.providers_tried == ("smtp",)
    assert status.last_error_cause == "unavailable"
