from __future__ import annotations

from collections.abc import Iterator

import pytest

from shared.errors import IdempotencyKeyReused, MessageNotFound
from shared.gateway import Gateway, check_health
from shared.queue import MailQueue
from shared.sendgrid_client import SendGridClient
from shared.settings import Settings
from shared.status import MessageState, StatusStore
from tests.samples import body, message, sendgrid_mail

JSON = "application/json"


@pytest.fixture
def gateway(storage_settings: Settings) -> Iterator[Gateway]:
    """The gateway as the app builds it, on Azurite; these tests never reach SendGrid."""
    sender = SendGridClient.from_settings(storage_settings)
    yield Gateway(
        storage_settings,
        MailQueue.from_settings(storage_settings),
        StatusStore.from_settings(storage_settings),
        sender,
    )
    sender.close()


def test_should_report_healthy_on_fresh_storage_before_any_message(gateway: Gateway) -> None:
    # Storage answers; only the queues and the table have not been created yet (the first
    # message creates them). depths() already reads missing queues as empty, but the table
    # check reads a missing table as storage failing, so a fresh local stack (and any probe
    # that waits for health before sending) sees 503 until someone submits a message.
    report = check_health(lambda: gateway)

    assert report.checks == {"configuration": "ok", "storage": "ok"}
    assert report.queue_depths == {gateway.queue.name: 0, gateway.queue.poison_name: 0}


def test_should_report_the_queue_depths_once_messages_are_queued(gateway: Gateway) -> None:
    gateway.accept(body(message()), JSON)
    gateway.accept(body(message()), JSON)

    report = check_health(lambda: gateway)

    assert report.healthy
    assert report.queue_depths == {gateway.queue.name: 2, gateway.queue.poison_name: 0}


def test_should_record_an_accepted_message_as_queued(gateway: Gateway) -> None:
    accepted = gateway.accept(body(message()), JSON)

    status = gateway.status(accepted.id)

    assert (status.state, status.attempts) == (MessageState.QUEUED, 0)
    assert status.to_document()["status"] == "queued"


def test_should_not_find_a_message_nobody_submitted(gateway: Gateway) -> None:
    gateway.ensure_storage()

    with pytest.raises(MessageNotFound):
        gateway.status("5d0c6a52-7c9e-4a57-9a4e-1f1f6d3b2c10")


def test_should_not_find_a_message_before_the_table_exists(gateway: Gateway) -> None:
    with pytest.raises(MessageNotFound):
        gateway.status("5d0c6a52-7c9e-4a57-9a4e-1f1f6d3b2c10")


def test_should_queue_a_message_once_per_idempotency_key(gateway: Gateway) -> None:
    first = gateway.accept(body(message()), JSON, "order-42")
    again = gateway.accept(body(message()), JSON, "order-42")

    assert (again.id, again.replayed) == (first.id, True)
    assert gateway.queue.depths()[gateway.queue.name] == 1
    with pytest.raises(IdempotencyKeyReused):
        gateway.accept(body(message(subject="Other")), JSON, "order-42")


def test_should_queue_a_sendgrid_v3_body_once_per_idempotency_key_and_record_it(
    gateway: Gateway,
) -> None:
    # send_at is checked against the real clock here: leave it out.
    mail = {k: v for k, v in sendgrid_mail().items() if k != "send_at"}
    del mail["personalizations"][0]["send_at"]

    first = gateway.accept_sendgrid(body(mail), JSON, "v3-order-42")
    again = gateway.accept_sendgrid(body(mail), JSON, "v3-order-42")

    assert (again.id, again.replayed) == (first.id, True)
    assert gateway.queue.depths()[gateway.queue.name] == 1
    assert gateway.status(first.id).state is MessageState.QUEUED
