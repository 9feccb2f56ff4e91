from __future__ import annotations

import base64
import os
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timezone

import pytest
from azure.storage.blob import BlobServiceClient

from devstack.azurite import Azurite
from shared.blobs import MessageBodyStore, body_blob_name
from shared.clients import Client, ClientStore
from shared.errors import (
    IdempotencyKeyReused,
    MessageNotFound,
    PermanentDeliveryError,
    RateLimited,
)
from shared.gateway import Gateway, check_health
from shared.providers import SendGridSender
from shared.queue import MailQueue
from shared.retention import expire_bodies
from shared.sendgrid_client import SendGridClient
from shared.settings import Settings
from shared.status import MessageState, StatusStore, table_client
from tests.fakes import FakeMailSender
from tests.integration.conftest import base64_queue_client
from tests.samples import ALL_FEATURES, CLIENT, body, message, sendgrid_mail

JSON = "application/json"


@pytest.fixture
def client(gateway: Gateway) -> Client:
    """A client allowed the samples' senders, in Azurite."""
    gateway.ensure_storage()
    created, _ = gateway.clients.create("app", ",".join(CLIENT.senders), features=ALL_FEATURES)
    return created


@pytest.fixture
def gateway(storage_settings: Settings) -> Iterator[Gateway]:
    """The gateway as the app builds it, on Azurite; these tests never reach SendGrid."""
    sender = SendGridSender(SendGridClient.from_settings(storage_settings))
    yield Gateway(
        storage_settings,
        MailQueue.from_settings(storage_settings),
        MessageBodyStore.from_settings(storage_settings),
        StatusStore.from_settings(storage_settings),
        sender,
        ClientStore.from_settings(storage_settings),
    )
    sender.close()


def test_should_report_healthy_on_fresh_storage_before_any_message(gateway: Gateway) -> None:
    # Storage answers; only the queues and the table have not been created yet (the first
    # message creates them). depths() already reads missing queues as empty, but the table
    # check reads a missing table as storage failing, so a fresh local stack (and any probe
    # that waits for health before sending) sees 503 until someone submits a message.
    report = check_health(gateway)

    assert report.checks == {"configuration": "ok", "storage": "ok"}
    assert report.queue_depths == {gateway.queue.name: 0, gateway.queue.poison_name: 0}


def test_should_report_the_queue_depths_once_messages_are_queued(
    gateway: Gateway, client: Client
) -> None:
    gateway.accept(body(message()), JSON, client)
    gateway.accept(body(message()), JSON, client)

    report = check_health(gateway)

    assert report.healthy
    assert report.queue_depths == {gateway.queue.name: 2, gateway.queue.poison_name: 0}


def test_should_show_an_accepted_message_as_queued_before_any_record(
    gateway: Gateway, client: Client
) -> None:
    accepted = gateway.accept(body(message()), JSON, client)
    # The accept's one storage call was the enqueue: delivery's first attempt writes the record.
    assert gateway.statuses.get(accepted.id) is None

    status = gateway.status(accepted.id, client)

    assert (status.state, status.attempts, status.client) == (MessageState.QUEUED, 0, "app")
    assert status.to_document()["status"] == "queued"


def test_should_not_find_a_message_nobody_submitted(gateway: Gateway, client: Client) -> None:
    gateway.ensure_storage()

    with pytest.raises(MessageNotFound):
        gateway.status("5d0c6a52-7c9e-4a57-9a4e-1f1f6d3b2c10", client)


def test_should_not_find_a_message_before_the_table_exists(gateway: Gateway) -> None:
    with pytest.raises(MessageNotFound):
        gateway.status("5d0c6a52-7c9e-4a57-9a4e-1f1f6d3b2c10", CLIENT)


def test_should_queue_a_message_once_per_idempotency_key(gateway: Gateway, client: Client) -> None:
    first = gateway.accept(body(message()), JSON, client, "order-42")
    again = gateway.accept(body(message()), JSON, client, "order-42")

    assert (again.id, again.replayed) == (first.id, True)
    assert gateway.queue.depths()[gateway.queue.name] == 1
    with pytest.raises(IdempotencyKeyReused):
        gateway.accept(body(message(subject="Other")), JSON, client, "order-42")


def test_should_show_a_message_only_to_the_client_that_sent_it(
    gateway: Gateway, client: Client
) -> None:
    other, _ = gateway.clients.create("other", ",".join(CLIENT.senders))
    accepted = gateway.accept(body(message()), JSON, client)

    assert gateway.status(accepted.id, client).client == "app"
    with pytest.raises(MessageNotFound):
        gateway.status(accepted.id, other)


def send_from_threads(
    stores: tuple[ClientStore, ...], key: str, threads_each: int, requests_each: int
) -> tuple[list[str], bool]:
    """Counted requests from `threads_each` threads per store: their outcomes, and whether a
    minute boundary fell in the middle (it resets the count: then more than the rate pass)."""
    outcomes: list[str] = []

    def send(store: ClientStore) -> None:
        for _ in range(requests_each):
            try:
                store.take(store.authenticate(f"Bearer {key}", counted=True))
                outcomes.append("ok")
            except RateLimited:
                outcomes.append("limited")

    threads = [threading.Thread(target=send, args=(store,)) for store in stores * threads_each]
    window = int(time.time() // 60)
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes, int(time.time() // 60) != window


def test_should_count_the_rate_in_the_table_across_gateway_instances(
    gateway: Gateway, client: Client, storage_settings: Settings
) -> None:
    """Two instances, four threads each, 40 requests against a rate of 15: exactly 15 pass
    (a rate under 20 leases one token per write, so no token is left unused)."""
    second = ClientStore.from_settings(storage_settings)
    _, key = gateway.clients.create("tiny", ",".join(CLIENT.senders), 15)

    outcomes, crossed_a_minute = send_from_threads((gateway.clients, second), key, 4, 5)

    assert outcomes.count("ok") == 15 or crossed_a_minute, outcomes
    assert len(outcomes) == 40


def test_should_never_pass_the_rate_across_instances_leasing_tokens(
    gateway: Gateway, client: Client, storage_settings: Settings
) -> None:
    """Two instances, four threads each, 320 requests against a rate of 200 (leases of up to
    20 tokens): at most 200 pass, and at least 200 - 2 x 19, since each instance can be left
    with at most 19 unused tokens of its last lease when the others are refused."""
    second = ClientStore.from_settings(storage_settings)
    _, key = gateway.clients.create("busy", ",".join(CLIENT.senders), 200)

    outcomes, crossed_a_minute = send_from_threads((gateway.clients, second), key, 4, 40)

    row = second.get("busy")
    assert row is not None
    if not crossed_a_minute:
        assert 200 - 2 * 19 <= outcomes.count("ok") <= 200, outcomes.count("ok")
        # A 429 is answered only from a row that had counted the whole rate.
        assert row.count == 200
    assert len(outcomes) == 320


def test_should_carry_a_large_message_through_a_blob_and_delete_the_blob_once_sent(
    storage_settings: Settings, azurite: Azurite
) -> None:
    sender = FakeMailSender("sg-large")
    gateway = Gateway(
        storage_settings,
        MailQueue.from_settings(storage_settings),
        MessageBodyStore.from_settings(storage_settings),
        StatusStore.from_settings(storage_settings),
        sender,
        ClientStore.from_settings(storage_settings),
    )
    content = os.urandom(2 * 1024 * 1024)
    attachment = {"filename": "big.bin", "content": base64.b64encode(content).decode()}

    gateway.ensure_storage()
    client, _ = gateway.clients.create(CLIENT.name, ",".join(CLIENT.senders))
    accepted = gateway.accept(body(message(attachments=[attachment])), JSON, client)

    [queued] = base64_queue_client(azurite, storage_settings.mail_queue_name).receive_messages()
    # A reference to the 2 MB body (and at most a trace context), not the body.
    assert len(queued.content) < 1024
    assert gateway.bodies.get(body_blob_name(accepted.id)) is not None

    outcome = gateway.deliver(queued.content.encode())

    assert (outcome.result, outcome.provider_message_id) == ("sent", "sg-large")
    [payload] = sender.payloads
    assert base64.b64decode(payload["attachments"][0]["content"]) == content
    assert gateway.bodies.get(body_blob_name(accepted.id)) is None
    assert gateway.status(accepted.id, client).state is MessageState.SENT


def large_gateway(storage_settings: Settings, sender: FakeMailSender) -> Gateway:
    return Gateway(
        storage_settings,
        MailQueue.from_settings(storage_settings),
        MessageBodyStore.from_settings(storage_settings),
        StatusStore.from_settings(storage_settings),
        sender,
        ClientStore.from_settings(storage_settings),
    )


def accept_large(gateway: Gateway, azurite: Azurite, settings: Settings) -> tuple[str, bytes]:
    """Accept a 2 MB message; its id and the queue message's text, taken off the queue."""
    gateway.ensure_storage()
    client, _ = gateway.clients.create(CLIENT.name, ",".join(CLIENT.senders))
    content = base64.b64encode(os.urandom(2 * 1024 * 1024)).decode()
    accepted = gateway.accept(
        body(message(attachments=[{"filename": "big.bin", "content": content}])), JSON, client
    )
    queue = base64_queue_client(azurite, settings.mail_queue_name)
    [queued] = queue.receive_messages()
    queue.delete_message(queued)
    return accepted.id, queued.content.encode()


def blob_names(gateway: Gateway, azurite: Azurite) -> list[str]:
    container = BlobServiceClient.from_connection_string(
        azurite.connection_string
    ).get_container_client(gateway.bodies.container_name)
    return sorted(b.name for b in container.list_blobs())


def test_should_keep_a_dead_letters_body_past_live_retention_then_replay_and_send_it(
    storage_settings: Settings, azurite: Azurite
) -> None:
    refusal = PermanentDeliveryError("SendGrid refused the message", status_code=400)
    sender = FakeMailSender(refusal, "sg-2")
    gateway = large_gateway(storage_settings, sender)
    message_id, text = accept_large(gateway, azurite, storage_settings)

    assert gateway.deliver(text).result == "dead_lettered"
    assert blob_names(gateway, azurite) == [f"dead-letters/{message_id}.json"]
    [entry] = gateway.dead_letters.entries()
    assert entry.blob == f"dead-letters/{message_id}.json"

    # Long after any live body would have gone, the dead letter's is still there.
    later = datetime.now(timezone.utc) + storage_settings.large_message_retention * 10
    expired = expire_bodies(
        gateway.bodies, later, storage_settings.large_message_retention, max_blobs=100
    )
    assert expired.deleted == 0
    assert gateway.dead_letters.replay([message_id]).done == [message_id]
    [replayed] = base64_queue_client(azurite, storage_settings.mail_queue_name).receive_messages()
    outcome = gateway.deliver(replayed.content.encode())

    assert (outcome.result, outcome.provider_message_id) == ("sent", "sg-2")
    assert len(sender.payloads) == 2
    assert sender.payloads[1] == sender.payloads[0]
    assert blob_names(gateway, azurite) == []


def test_should_delete_a_moved_body_with_its_purged_dead_letter(
    storage_settings: Settings, azurite: Azurite
) -> None:
    sender = FakeMailSender(PermanentDeliveryError("SendGrid refused the message", status_code=400))
    gateway = large_gateway(storage_settings, sender)
    message_id, text = accept_large(gateway, azurite, storage_settings)
    gateway.deliver(text)

    report = gateway.dead_letters.purge([message_id])

    assert report.done == [message_id]
    assert blob_names(gateway, azurite) == []


def test_should_queue_a_sendgrid_v3_body_once_per_idempotency_key_and_record_it(
    gateway: Gateway, client: Client
) -> None:
    # send_at is checked against the real clock here: leave it out.
    mail = {k: v for k, v in sendgrid_mail().items() if k != "send_at"}
    del mail["personalizations"][0]["send_at"]

    first = gateway.accept_sendgrid(body(mail), JSON, client, "v3-order-42")
    again = gateway.accept_sendgrid(body(mail), JSON, client, "v3-order-42")

    assert (again.id, again.replayed) == (first.id, True)
    assert gateway.queue.depths()[gateway.queue.name] == 1
    assert gateway.status(first.id, client).state is MessageState.QUEUED


def test_should_write_delivery_activity_in_the_background_when_built_from_settings(
    storage_settings: Settings,
    azurite: Azurite,
    gateway: Gateway,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sender = FakeMailSender("sg-1")
    monkeypatch.setattr(
        "shared.gateway.senders_from_settings", lambda settings: {"sendgrid": sender}
    )
    built = Gateway.from_settings(storage_settings)
    built.ensure_storage()
    client, _ = built.clients.create(CLIENT.name, ",".join(CLIENT.senders))
    accepted = built.accept(body(message()), JSON, client)
    [queued] = base64_queue_client(azurite, storage_settings.mail_queue_name).receive_messages()

    try:
        assert built.deliver(queued.content.encode()).result == "sent"

        # Tests that build Gateway(...) themselves keep the log that writes at once.
        assert (built.activity.buffered, gateway.activity.buffered) == (True, False)
        deadline = time.monotonic() + 5
        # Read by another gateway on the same table: the row really is in storage.
        while [m["id"] for m in gateway.console.summary()["latest"]] != [accepted.id]:
            assert time.monotonic() < deadline, "the activity row was not written within 5 s"
            time.sleep(0.05)
    finally:
        built.activity.close()


def test_should_never_reset_the_count_across_instances_whose_clocks_differ(
    gateway: Gateway, client: Client, storage_settings: Settings
) -> None:
    """Two instances, four threads each, their clocks 2 s apart at a minute's end (simulated:
    the real time runs on from 59 s into a minute): 10-email requests against a rate of 100.
    The instance behind counts in the row's minute once the other moved it on, so at most one
    minute's rate passes in each of the two minutes, never a fresh count per write."""
    start, began = 29_833_333 * 60 + 59.0, time.monotonic()

    def behind() -> float:
        return start + time.monotonic() - began

    stores = (
        ClientStore(
            table_client(storage_settings, storage_settings.client_table_name), clock=behind
        ),
        ClientStore(
            table_client(storage_settings, storage_settings.client_table_name),
            clock=lambda: behind() + 2.0,
        ),
    )
    _, key = gateway.clients.create("skewed", ",".join(CLIENT.senders), 100)
    outcomes: list[str] = []

    def send(store: ClientStore) -> None:
        for _ in range(20):
            try:
                store.take(store.authenticate(f"Bearer {key}", counted=True), 10)
                outcomes.append("ok")
            except RateLimited:
                outcomes.append("limited")

    threads = [threading.Thread(target=send, args=(store,)) for store in stores * 4]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    row = gateway.clients.get("skewed")
    assert row is not None
    assert outcomes.count("ok") * 10 <= 2 * 100, outcomes.count("ok")
    assert (row.window, row.count) == (29_833_333 + 1, 100)
    assert len(outcomes) == 160
