"""The queue monitor's timer function: what it logs about the mail and poison queues."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import cast

import pytest
from azure.data.tables import TableClient
from azure.functions.timer import TimerRequest
from azure.storage.queue import QueueClient

import shared.gateway
from functions.monitor import POISON_WARNING, monitor_queues
from shared.clients import ClientStore
from shared.delivery_events import DeliveryEventStore
from shared.gateway import Gateway
from shared.queue import MailQueue
from shared.settings import Settings
from tests.fakes import (
    FakeActivityLog,
    FakeIdempotencyStore,
    FakeMailSender,
    FakeMessageBodyStore,
    FakeQueueClient,
    FakeStatusStore,
    FakeTableClient,
)
from tests.samples import NOW, envelope

LOGGER = "functions.monitor"
# Words of a message's content that must never reach a log.
SECRETS = ("ann@customer.example.org", "Quarterly figures", "SendGrid refused")


@dataclass
class Queues:
    """The two queues under the real MailQueue, and the time their messages are put there."""

    mail: FakeQueueClient
    poison: FakeQueueClient
    at: datetime = NOW

    def put(self, client: FakeQueueClient, seconds_ago: int, *, delay: int = 0) -> None:
        """A message inserted `seconds_ago` before NOW, invisible for `delay` seconds."""
        self.at = NOW - timedelta(seconds=seconds_ago)
        text = envelope(subject="Quarterly figures", to=["ann@customer.example.org"]).to_json()
        if client is self.poison:
            text = text[:-1] + ', "dead_letter": {"reason": "SendGrid refused it"}}'
        client.send_message(text, visibility_timeout=delay or None)


@pytest.fixture
def queues() -> Queues:
    """Empty mail and poison queues."""
    found = Queues(FakeQueueClient("mail-outbound"), FakeQueueClient("mail-outbound-poison"))
    for client in (found.mail, found.poison):
        client._clock = lambda: found.at
    return found


@pytest.fixture
def gateway(
    monkeypatch: pytest.MonkeyPatch,
    settings: Settings,
    queues: Queues,
    fake_bodies: FakeMessageBodyStore,
    fake_statuses: FakeStatusStore,
    fake_keys: FakeIdempotencyStore,
    fake_sender: FakeMailSender,
    clients: ClientStore,
    fake_activity: FakeActivityLog,
    event_table: FakeTableClient,
) -> Gateway:
    """The gateway get_gateway() returns, its real MailQueue on the in-memory queues, at NOW."""
    queue = MailQueue(cast(QueueClient, queues.mail), cast(QueueClient, queues.poison))
    replacement = Gateway(
        settings,
        queue,
        fake_bodies,
        fake_statuses,
        fake_sender,
        clients,
        now=lambda: NOW,
        keys=fake_keys,
        activity=fake_activity,
        events=DeliveryEventStore(cast(TableClient, event_table)),
    )
    monkeypatch.setattr(shared.gateway, "_gateway", replacement)
    return replacement


def run_monitor(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """Run the function once, as the timer does; the records it logged."""
    with caplog.at_level(logging.INFO, logger=LOGGER):
        monitor_queues(TimerRequest(past_due=False))
    return [r for r in caplog.records if r.name == LOGGER]


def dimensions(record: logging.LogRecord) -> dict[str, object]:
    """The `extra` fields of a record."""
    return {k: getattr(record, k, "-") for k in ("queue", "depth", "oldest_age_seconds")}


@pytest.mark.usefixtures("gateway")
def test_should_log_one_info_line_per_queue_and_no_warning_when_both_are_empty(
    caplog: pytest.LogCaptureFixture,
) -> None:
    records = run_monitor(caplog)

    assert [(r.levelno, r.getMessage()) for r in records] == [
        (logging.INFO, "Queue monitor: queue=mail-outbound depth=0 oldest_age_seconds=none"),
        (logging.INFO, "Queue monitor: queue=mail-outbound-poison depth=0 oldest_age_seconds=none"),
    ]
    assert dimensions(records[0]) == {
        "queue": "mail-outbound",
        "depth": 0,
        "oldest_age_seconds": None,
    }


@pytest.mark.usefixtures("gateway")
def test_should_log_the_depth_and_the_age_of_the_oldest_visible_message(
    queues: Queues, caplog: pytest.LogCaptureFixture
) -> None:
    queues.put(queues.mail, seconds_ago=600, delay=300)  # a retry waiting: counted, not seen
    queues.put(queues.mail, seconds_ago=125)
    queues.put(queues.mail, seconds_ago=20)

    [mail, _] = run_monitor(caplog)

    assert mail.getMessage() == "Queue monitor: queue=mail-outbound depth=3 oldest_age_seconds=125"
    assert dimensions(mail) == {"queue": "mail-outbound", "depth": 3, "oldest_age_seconds": 125}


@pytest.mark.usefixtures("gateway")
def test_should_warn_naming_the_poison_queue_and_its_count_but_no_content(
    queues: Queues, caplog: pytest.LogCaptureFixture
) -> None:
    queues.put(queues.poison, seconds_ago=7200)
    queues.put(queues.poison, seconds_ago=60)

    records = run_monitor(caplog)

    [warning] = [r for r in records if r.levelno == logging.WARNING]
    assert warning.getMessage().startswith(f"{POISON_WARNING}: queue=mail-outbound-poison depth=2;")
    assert (getattr(warning, "queue", None), getattr(warning, "depth", None)) == (
        "mail-outbound-poison",
        2,
    )
    assert "Queue monitor: queue=mail-outbound-poison depth=2 oldest_age_seconds=7200" in [
        r.getMessage() for r in records
    ]
    for secret in SECRETS:
        assert secret not in caplog.text


@pytest.mark.usefixtures("gateway")
def test_should_say_a_missing_queue_does_not_exist_yet_without_warning(
    queues: Queues, caplog: pytest.LogCaptureFixture
) -> None:
    # The poison queue appears with the first dead letter.
    queues.poison.exists = False

    records = run_monitor(caplog)

    assert records[1].getMessage() == (
        "Queue monitor: queue=mail-outbound-poison depth=0 oldest_age_seconds=none "
        "(the queue does not exist yet)"
    )
    assert all(r.levelno == logging.INFO for r in records)
    assert queues.poison.created == 0, "measuring must not create the queue"


@pytest.mark.usefixtures("gateway")
def test_should_log_an_error_and_return_when_storage_is_unavailable(
    queues: Queues, caplog: pytest.LogCaptureFixture
) -> None:
    queues.poison.unavailable = True

    records = run_monitor(caplog)

    [error] = records
    assert error.levelno == logging.ERROR
    assert error.getMessage().startswith("Queue monitor: the queues could not be measured: queue")
    assert "mail-outbound-poison" in error.getMessage()


@pytest.mark.usefixtures("misconfigured")
def test_should_log_an_error_naming_the_settings_and_still_warn_of_dead_letters(
    monkeypatch: pytest.MonkeyPatch, queues: Queues, caplog: pytest.LogCaptureFixture
) -> None:
    # Were the monitor silent, the dead-letters alert would resolve: a false all-clear.
    monkeypatch.setattr(
        shared.gateway,
        "_mail_queue_for",
        lambda storage, name: MailQueue(
            cast(QueueClient, queues.mail), cast(QueueClient, queues.poison)
        ),
    )
    queues.put(queues.poison, seconds_ago=60)

    with caplog.at_level(logging.INFO):
        monitor_queues(TimerRequest(past_due=False))

    [error] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert error.getMessage().startswith("Gateway not configured: SENDGRID_API_KEY: unresolved")
    assert "ALLOWED_SENDERS" in error.getMessage()
    assert "vault.azure.net" not in error.getMessage()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert [w for w in warnings if w.startswith(POISON_WARNING)] == [
        f"{POISON_WARNING}: queue=mail-outbound-poison depth=1; dead letters wait for an "
        "operator (make poison)"
    ]


@pytest.mark.usefixtures("misconfigured")
def test_should_log_the_settings_error_on_every_run(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR):
        for _ in range(3):
            monitor_queues(TimerRequest(past_due=False))

    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len([e for e in errors if e.startswith("Gateway not configured:")]) == 3


@pytest.mark.usefixtures("storage_misconfigured")
def test_should_log_errors_and_return_when_not_even_storage_is_configured(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO):
        monitor_queues(TimerRequest(past_due=False))

    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors[0].startswith("Gateway not configured: ")
    assert errors[-1].startswith("Queue monitor: the queues could not be measured: ")
    assert all("AzureWebJobsStorage is not set" in e for e in errors)
