from __future__ import annotations

import base64
import json
import time
from datetime import datetime, timedelta, timezone

from devstack.azurite import Azurite
from shared.models import DeadLetter
from shared.queue import MailQueue, QueueMeasurement
from shared.settings import Settings
from tests.integration.conftest import base64_queue_client, plain_queue_client
from tests.samples import NOW, envelope


def test_should_report_missing_queues_as_empty(storage_settings: Settings) -> None:
    queue = MailQueue.from_settings(storage_settings)

    assert queue.depths() == {queue.name: 0, queue.poison_name: 0}


def test_should_report_the_depth_of_the_mail_and_poison_queues(mail_queue: MailQueue) -> None:
    for id in ("msg-q1", "msg-q2", "msg-q3"):
        mail_queue.enqueue(envelope(id=id))
    mail_queue.dead_letter(envelope(id="msg-q4").to_json())

    assert mail_queue.depths() == {mail_queue.name: 3, mail_queue.poison_name: 1}


def test_should_count_delayed_retries_in_the_depth(mail_queue: MailQueue) -> None:
    mail_queue.enqueue(envelope(id="msg-q5", attempt=2), delay_seconds=600)

    assert mail_queue.depths()[mail_queue.name] == 1


def test_should_put_base64_of_the_envelope_json_on_the_wire(
    azurite: Azurite, mail_queue: MailQueue
) -> None:
    queued = envelope(id="msg-q6")

    mail_queue.enqueue(queued)

    [raw] = plain_queue_client(azurite, mail_queue.name).peek_messages(max_messages=5)
    assert raw.content != queued.to_json()
    assert json.loads(base64.b64decode(raw.content, validate=True)) == json.loads(queued.to_json())


def test_should_put_base64_on_the_poison_queue_too(azurite: Azurite, mail_queue: MailQueue) -> None:
    text = json.dumps({"dead_letter": {"reason": "r\u00e9ason"}, "raw_message": "x"})

    mail_queue.dead_letter(text)

    [raw] = plain_queue_client(azurite, mail_queue.poison_name).peek_messages()
    assert base64.b64decode(raw.content, validate=True).decode() == text


def test_should_be_read_back_as_the_host_decodes_it(
    azurite: Azurite, mail_queue: MailQueue
) -> None:
    queued = envelope(id="msg-q7", subject="Gr\u00fc\u00dfe \u2709")

    mail_queue.enqueue(queued)

    [message] = base64_queue_client(azurite, mail_queue.name).receive_messages()
    assert message.content == queued.to_json()


def test_should_keep_dead_letters_without_expiry(azurite: Azurite, mail_queue: MailQueue) -> None:
    record = DeadLetter(reason="SendGrid refused the message with 400", attempts=1, at=NOW)
    mail_queue.dead_letter(envelope().model_copy(update={"dead_letter": record}).to_json())

    [message] = plain_queue_client(azurite, mail_queue.poison_name).peek_messages()

    assert message.expires_on is not None
    assert message.expires_on > datetime.now(timezone.utc) + timedelta(days=365 * 100)


def test_should_keep_a_retry_invisible_for_its_delay(
    azurite: Azurite, mail_queue: MailQueue
) -> None:
    mail_queue.enqueue(envelope(id="msg-q8", attempt=2), delay_seconds=1)
    client = plain_queue_client(azurite, mail_queue.name)

    hidden = client.peek_messages()
    time.sleep(1.5)
    visible = client.peek_messages()

    assert hidden == []
    assert len(visible) == 1


def test_should_answer_the_check_once_the_queues_exist(mail_queue: MailQueue) -> None:
    mail_queue.check()
    mail_queue.ensure_exists()


def test_should_measure_missing_queues_as_empty_without_creating_them(
    storage_settings: Settings, azurite: Azurite
) -> None:
    queue = MailQueue.from_settings(storage_settings)

    report = queue.measure(datetime.now(timezone.utc))

    assert report.mail == QueueMeasurement(queue.name, 0, None, exists=False)
    assert report.poison == QueueMeasurement(queue.poison_name, 0, None, exists=False)
    assert queue.depths() == {queue.name: 0, queue.poison_name: 0}


def test_should_measure_the_age_of_the_oldest_visible_message_only(
    mail_queue: MailQueue,
) -> None:
    # A retry scheduled for later is counted but not seen; the visible one is.
    mail_queue.enqueue(envelope(id="msg-m1", attempt=2), delay_seconds=600)
    mail_queue.enqueue(envelope(id="msg-m2"))
    later = datetime.now(timezone.utc) + timedelta(seconds=90)

    report = mail_queue.measure(later)

    assert report.mail.depth == 2
    assert report.mail.oldest_age_seconds is not None
    assert 85 <= report.mail.oldest_age_seconds <= 95
    assert report.poison == QueueMeasurement(mail_queue.poison_name, 0, None)


def test_should_leave_a_measured_message_visible_and_undequeued(
    azurite: Azurite, mail_queue: MailQueue
) -> None:
    mail_queue.dead_letter(envelope(id="msg-m3").to_json())

    for _ in range(2):
        assert mail_queue.measure(datetime.now(timezone.utc)).poison.depth == 1

    [message] = base64_queue_client(azurite, mail_queue.poison_name).receive_messages()
    assert message.dequeue_count == 1


def test_should_measure_a_queue_holding_raw_text(azurite: Azurite, mail_queue: MailQueue) -> None:
    # A producer that forgot base64: the host will move it to poison, the monitor still reads.
    plain_queue_client(azurite, mail_queue.name).send_message('{"not": "base64"}')

    report = mail_queue.measure(datetime.now(timezone.utc))

    assert report.mail.depth == 1
    assert report.mail.oldest_age_seconds is not None
