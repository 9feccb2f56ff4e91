from __future__ import annotations

import json
import logging
from datetime import timedelta

import pytest

from shared.dead_letters import (
    DeadLetters,
    parse_selection,
    read_entry,
)
from shared.delivery import Delivery
from shared.errors import InvalidMessage, StorageUnavailable
from shared.models import DeadLetter, QueueEnvelope
from shared.sendgrid_client import build_payload
from shared.settings import Settings
from shared.status import MessageState, MessageStatus
from tests.fakes import (
    FakeActivityLog,
    FakeMailQueue,
    FakeMailSender,
    FakeMessageBodyStore,
    FakeStatusStore,
    Journal,
)
from tests.samples import NOW, envelope, sendgrid_envelope, sendgrid_mail

LATER = NOW + timedelta(hours=2)
REFUSED_AT = NOW + timedelta(minutes=1)


def dead_lettered(id: str, attempts: int = 1, reason: str = "SendGrid refused it") -> str:
    """A dead letter as the gateway writes it: the envelope and why."""
    record = DeadLetter(reason=reason, status_code=400, attempts=attempts, at=REFUSED_AT)
    return envelope(id=id, attempt=attempts).model_copy(update={"dead_letter": record}).to_json()


def host_moved(id: str, attempt: int = 2) -> str:
    """A bare envelope, as the host copies it after maxDequeueCount failures."""
    return envelope(id=id, attempt=attempt).to_json()


UNREADABLE = json.dumps(
    {
        "dead_letter": {"reason": "not a mailgate envelope: 1 problem(s)", "attempts": 1},
        "raw_message": "hello",
    }
)


@pytest.fixture
def dead_letters(
    fake_queue: FakeMailQueue, fake_bodies: FakeMessageBodyStore, fake_statuses: FakeStatusStore
) -> DeadLetters:
    return DeadLetters(fake_queue.poison, fake_queue, fake_bodies, fake_statuses, lambda: LATER)


def poison(queue: FakeMailQueue, *texts: str) -> None:
    for text in texts:
        queue.poison_client.send_message(text)


def failed(id: str, attempts: int = 1) -> MessageStatus:
    return MessageStatus(
        id=id,
        state=MessageState.FAILED,
        accepted_at=NOW,
        updated_at=REFUSED_AT,
        attempts=attempts,
        last_status_code=400,
        last_error="SendGrid refused it",
    )


# --- reading poison messages ---------------------------------------------------------------


def test_should_read_a_gateway_dead_letter_with_its_reason() -> None:
    entry = read_entry(dead_lettered("msg-d1", attempts=3, reason="gave up after 3 attempt(s)"))

    assert (entry.message_id, entry.reason, entry.attempts, entry.dead_lettered_at) == (
        "msg-d1",
        "gave up after 3 attempt(s)",
        3,
        REFUSED_AT,
    )
    assert entry.envelope is not None
    assert entry.to_document() == {
        "id": "msg-d1",
        "reason": "gave up after 3 attempt(s)",
        "attempts": 3,
        "dead_lettered_at": REFUSED_AT.isoformat(),
        "replayable": True,
    }


def test_should_read_a_bare_envelope_as_moved_by_the_host_after_its_max_dequeue_count() -> None:
    entry = read_entry(host_moved("msg-d2", attempt=4), host_max_dequeue_count=3)

    assert entry.to_document() == {
        "id": "msg-d2",
        "reason": "moved to the poison queue by the Functions host after 3 dequeues",
        "attempts": 4,
        "dead_lettered_at": None,
        "replayable": True,
    }


def test_should_say_the_hosts_default_of_5_dequeues_when_not_told_otherwise() -> None:
    entry = read_entry(host_moved("msg-d2"))

    assert entry.reason == "moved to the poison queue by the Functions host after 5 dequeues"


def test_should_list_a_host_moved_message_with_the_apps_max_dequeue_count(
    fake_queue: FakeMailQueue, fake_bodies: FakeMessageBodyStore, fake_statuses: FakeStatusStore
) -> None:
    poison(fake_queue, host_moved("msg-d2"), dead_lettered("msg-d3", reason="SendGrid said no"))
    dead_letters = DeadLetters(
        fake_queue.poison,
        fake_queue,
        fake_bodies,
        fake_statuses,
        lambda: LATER,
        host_max_dequeue_count=2,
    )

    reasons = [e.reason for e in dead_letters.entries()]

    assert reasons == [
        "moved to the poison queue by the Functions host after 2 dequeues",
        "SendGrid said no",
    ]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (UNREADABLE, "not a mailgate envelope: 1 problem(s)"),
        ("hello", "not a mailgate envelope"),
        ('{"dead_letter": "x"}', "not a mailgate envelope"),
        ("[]", "not a mailgate envelope"),
    ],
)
def test_should_read_an_unreadable_message_as_not_replayable(text: str, reason: str) -> None:
    entry = read_entry(text)

    assert entry.to_document() == {
        "id": None,
        "reason": reason,
        "attempts": None,
        "dead_lettered_at": None,
        "replayable": False,
    }


# --- the selection an operator sends -------------------------------------------------------


def test_should_read_a_selection_of_ids() -> None:
    assert parse_selection(b'{"ids": ["a", "b"]}').chosen() == ["a", "b"]


def test_should_read_a_selection_of_all_with_its_confirmation() -> None:
    selection = parse_selection(b'{"all": true, "confirm": "mail-outbound-poison"}')

    assert selection.chosen() is None
    assert selection.confirm == "mail-outbound-poison"


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"{}",
        b'{"ids": []}',
        b'{"all": false}',
        b'{"ids": ["a"], "all": true}',
        b'{"ids": "a"}',
        b'{"ids": ["a"], "every": true}',
        b"not json",
        b"[]",
    ],
)
def test_should_refuse_a_selection_that_is_not_either_ids_or_all(content: bytes) -> None:
    with pytest.raises(InvalidMessage) as caught:
        parse_selection(content)

    assert caught.value.status == 400
    assert caught.value.problems


# --- list, replay, purge -------------------------------------------------------------------


def test_should_list_every_dead_letter_and_leave_them_all_visible(
    dead_letters: DeadLetters, fake_queue: FakeMailQueue
) -> None:
    poison(fake_queue, dead_lettered("msg-d3"), host_moved("msg-d4"), UNREADABLE)

    entries = dead_letters.entries()

    assert [e.message_id for e in entries] == ["msg-d3", "msg-d4", None]
    assert fake_queue.poison_client.visible_texts == fake_queue.poison_texts
    assert len(fake_queue.poison_texts) == 3


def test_should_list_more_dead_letters_than_one_page_holds(
    dead_letters: DeadLetters, fake_queue: FakeMailQueue
) -> None:
    poison(fake_queue, *(host_moved(f"msg-p{i}") for i in range(70)))

    entries = dead_letters.entries()

    assert sorted(e.message_id or "" for e in entries) == sorted(f"msg-p{i}" for i in range(70))
    assert len(fake_queue.poison_client.visible_texts) == 70


def test_should_replay_a_chosen_dead_letter_as_a_fresh_first_attempt(
    dead_letters: DeadLetters,
    fake_queue: FakeMailQueue,
    fake_statuses: FakeStatusStore,
    journal: Journal,
) -> None:
    fake_statuses.add(failed("msg-d5", attempts=8))
    poison(fake_queue, dead_lettered("msg-d5", attempts=8), dead_lettered("msg-d6"))

    report = dead_letters.replay(["msg-d5"])

    assert report.to_document() == {"done": ["msg-d5"], "skipped": {}, "not_found": []}
    [replayed] = fake_queue.envelopes
    assert replayed == envelope(id="msg-d5", attempt=1)
    assert replayed.dead_letter is None
    status = fake_statuses.records["msg-d5"]
    assert (status.state, status.attempts, status.accepted_at, status.updated_at) == (
        MessageState.QUEUED,
        0,
        NOW,
        LATER,
    )
    assert (status.last_error, status.last_status_code) == (None, None)
    assert status.client == replayed.client == "app"
    # Reset first: delivery skips a message whose status still says failed.
    assert journal == ["status.put queued", "queue.enqueue"]
    assert [read_entry(t).message_id for t in fake_queue.poison_client.visible_texts] == ["msg-d6"]
    assert len(fake_queue.poison_texts) == 1


def test_should_replay_every_dead_letter_but_skip_unreadable_ones(
    dead_letters: DeadLetters, fake_queue: FakeMailQueue
) -> None:
    poison(fake_queue, dead_lettered("msg-d7"), UNREADABLE, host_moved("msg-d8"))

    report = dead_letters.replay(None)

    assert report.done == ["msg-d7", "msg-d8"]
    [(skipped_id, why)] = report.skipped.items()
    assert skipped_id.startswith("mail-outbound-poison-")
    assert why == "not a mailgate envelope"
    assert report.not_found == []
    assert [e.id for e in fake_queue.envelopes] == ["msg-d7", "msg-d8"]
    assert fake_queue.poison_client.visible_texts == [UNREADABLE]


def test_should_replay_a_message_dead_lettered_twice_only_once(
    dead_letters: DeadLetters, fake_queue: FakeMailQueue
) -> None:
    poison(fake_queue, dead_lettered("msg-d9"), host_moved("msg-d9"))

    report = dead_letters.replay(["msg-d9"])

    assert report.done == ["msg-d9"]
    assert [e.id for e in fake_queue.envelopes] == ["msg-d9"]


def test_should_report_ids_that_are_not_dead_lettered(
    dead_letters: DeadLetters, fake_queue: FakeMailQueue
) -> None:
    poison(fake_queue, dead_lettered("msg-d10"))

    replayed = dead_letters.replay(["msg-d10", "msg-nope"])
    purged = dead_letters.purge(["msg-d10", "msg-gone"])

    assert (replayed.done, replayed.not_found) == (["msg-d10"], ["msg-nope"])
    assert (purged.done, purged.not_found) == ([], ["msg-d10", "msg-gone"])


def test_should_keep_a_dead_letter_whose_replay_could_not_be_queued(
    dead_letters: DeadLetters, fake_queue: FakeMailQueue
) -> None:
    poison(fake_queue, dead_lettered("msg-d11"))
    fake_queue.make_unavailable(["enqueue"])

    with pytest.raises(StorageUnavailable):
        dead_letters.replay(["msg-d11"])

    assert len(fake_queue.poison_texts) == 1


def test_should_not_send_a_replayed_message_again_when_it_was_already_sent(
    dead_letters: DeadLetters,
    fake_queue: FakeMailQueue,
    fake_statuses: FakeStatusStore,
    settings: Settings,
) -> None:
    # A copy of a sent message can reach the poison queue: a redelivered copy whose status
    # read failed five times while storage was down is moved there by the host. Replaying
    # it resets the status to queued, and delivery then sends the mail a second time.
    fake_statuses.add(
        MessageStatus(
            id="msg-d12",
            state=MessageState.SENT,
            accepted_at=NOW,
            updated_at=REFUSED_AT,
            attempts=1,
            provider_message_id="sg-12",
        )
    )
    poison(fake_queue, host_moved("msg-d12", attempt=1))
    sender = FakeMailSender()
    delivery = Delivery(
        sender=sender,
        queue=fake_queue,
        bodies=FakeMessageBodyStore(),
        statuses=fake_statuses,
        activity=FakeActivityLog(),
        settings=settings,
        now=lambda: LATER,
    )

    dead_letters.replay(None)
    for queued in fake_queue.messages:
        delivery.deliver(queued.text.encode())

    assert sender.payloads == []
    status = fake_statuses.records["msg-d12"]
    assert (status.state, status.provider_message_id) == (MessageState.SENT, "sg-12")


def test_should_purge_only_the_chosen_dead_letters(
    dead_letters: DeadLetters, fake_queue: FakeMailQueue
) -> None:
    poison(fake_queue, dead_lettered("msg-d13"), dead_lettered("msg-d14"), UNREADABLE)

    report = dead_letters.purge(["msg-d13"])

    assert report.to_document() == {"done": ["msg-d13"], "skipped": {}, "not_found": []}
    assert [read_entry(t).message_id for t in fake_queue.poison_client.visible_texts] == [
        "msg-d14",
        None,
    ]
    assert fake_queue.envelopes == []


def test_should_purge_every_dead_letter_unreadable_ones_included(
    dead_letters: DeadLetters, fake_queue: FakeMailQueue
) -> None:
    poison(fake_queue, dead_lettered("msg-d15"), UNREADABLE)

    report = dead_letters.purge(None)

    assert report.done[0] == "msg-d15"
    assert report.done[1].startswith("mail-outbound-poison-")
    assert fake_queue.poison_texts == []


def test_should_find_nothing_in_an_empty_poison_queue(dead_letters: DeadLetters) -> None:
    assert dead_letters.entries() == []
    assert dead_letters.replay(["msg-x"]).not_found == ["msg-x"]
    assert dead_letters.purge(None).to_document() == {"done": [], "skipped": {}, "not_found": []}


def test_should_report_storage_unavailable_when_the_poison_queue_does_not_answer(
    dead_letters: DeadLetters, fake_queue: FakeMailQueue
) -> None:
    fake_queue.poison_client.unavailable = True

    with pytest.raises(StorageUnavailable, match="mail-outbound-poison"):
        dead_letters.entries()


def test_should_replay_a_v3_body_unchanged(
    dead_letters: DeadLetters, fake_queue: FakeMailQueue
) -> None:
    record = DeadLetter(reason="SendGrid refused it", status_code=400, attempts=2, at=REFUSED_AT)
    queued = sendgrid_envelope(id="msg-v3", attempt=2)
    poison(fake_queue, queued.model_copy(update={"dead_letter": record}).to_json())

    report = dead_letters.replay(["msg-v3"])

    assert report.done == ["msg-v3"]
    [replayed] = fake_queue.envelopes
    assert replayed == queued.model_copy(update={"attempt": 1})
    assert json.loads(fake_queue.messages[0].text)["sendgrid"] == sendgrid_mail()


def test_should_keep_replayed_envelopes_readable_by_delivery(
    dead_letters: DeadLetters, fake_queue: FakeMailQueue
) -> None:
    poison(fake_queue, dead_lettered("msg-d16", attempts=5))

    dead_letters.replay(["msg-d16"])

    [queued] = fake_queue.messages
    assert QueueEnvelope.model_validate_json(queued.text).attempt == 1
    assert "dead_letter" not in json.loads(queued.text)
    assert queued.delay_seconds == 0


# --- claim-checked messages: bodies in blobs -----------------------------------------------


def claim_checked_dead_letter(bodies: FakeMessageBodyStore, id: str) -> str:
    """A dead letter whose body is in a blob, the blob written as submit writes it."""
    queued, body = envelope(id=id).claim_checked(f"{id}.json")
    bodies.put(f"{id}.json", body.to_json())
    record = DeadLetter(reason="SendGrid refused it", status_code=400, attempts=1, at=REFUSED_AT)
    return queued.model_copy(update={"dead_letter": record}).to_json()


def test_should_list_a_claim_checked_dead_letter_with_its_blob_without_reading_it(
    dead_letters: DeadLetters, fake_queue: FakeMailQueue, fake_bodies: FakeMessageBodyStore
) -> None:
    poison(fake_queue, claim_checked_dead_letter(fake_bodies, "msg-b1"), dead_lettered("msg-b2"))
    fake_bodies.make_unavailable()

    documents = [e.to_document() for e in dead_letters.entries()]

    assert documents[0] == {
        "id": "msg-b1",
        "reason": "SendGrid refused it",
        "attempts": 1,
        "dead_lettered_at": REFUSED_AT.isoformat(),
        "replayable": True,
        "blob": "msg-b1.json",
    }
    assert "blob" not in documents[1]


def test_should_replay_a_claim_checked_message_with_the_same_blob(
    dead_letters: DeadLetters,
    fake_queue: FakeMailQueue,
    fake_bodies: FakeMessageBodyStore,
    fake_statuses: FakeStatusStore,
) -> None:
    poison(fake_queue, claim_checked_dead_letter(fake_bodies, "msg-b3"))
    fake_statuses.add(failed("msg-b3"))
    stored = fake_bodies.blobs["msg-b3.json"]

    report = dead_letters.replay(["msg-b3"])

    assert report.done == ["msg-b3"]
    [replayed] = fake_queue.envelopes
    assert (replayed.id, replayed.attempt, replayed.blob, replayed.message) == (
        "msg-b3",
        1,
        "msg-b3.json",
        None,
    )
    assert fake_bodies.blobs == {"msg-b3.json": stored}


def test_should_send_a_replayed_claim_checked_message_intact(
    dead_letters: DeadLetters,
    fake_queue: FakeMailQueue,
    fake_bodies: FakeMessageBodyStore,
    fake_statuses: FakeStatusStore,
    settings: Settings,
) -> None:
    poison(fake_queue, claim_checked_dead_letter(fake_bodies, "msg-b4"))
    fake_statuses.add(failed("msg-b4"))
    sender = FakeMailSender()
    delivery = Delivery(
        sender=sender,
        queue=fake_queue,
        bodies=fake_bodies,
        statuses=fake_statuses,
        activity=FakeActivityLog(),
        settings=settings,
        now=lambda: LATER,
    )

    dead_letters.replay(None)
    [queued] = fake_queue.messages
    outcome = delivery.deliver(queued.text.encode())

    assert outcome.result == "sent"
    assert sender.payloads == [build_payload(envelope(id="msg-b4"))]
    assert fake_bodies.blobs == {}


def test_should_delete_the_blob_of_each_purged_dead_letter_and_no_other(
    dead_letters: DeadLetters,
    fake_queue: FakeMailQueue,
    fake_bodies: FakeMessageBodyStore,
    fake_statuses: FakeStatusStore,
) -> None:
    poison(
        fake_queue,
        claim_checked_dead_letter(fake_bodies, "msg-b5"),
        claim_checked_dead_letter(fake_bodies, "msg-b6"),
        dead_lettered("msg-b7"),
    )
    fake_statuses.add(failed("msg-b5"))

    report = dead_letters.purge(["msg-b5", "msg-b7"])

    assert report.done == ["msg-b5", "msg-b7"]
    assert list(fake_bodies.blobs) == ["msg-b6.json"]
    assert [read_entry(t).message_id for t in fake_queue.poison_client.visible_texts] == ["msg-b6"]


def test_should_delete_the_blob_once_when_purging_two_copies_of_a_message(
    dead_letters: DeadLetters, fake_queue: FakeMailQueue, fake_bodies: FakeMessageBodyStore
) -> None:
    text = claim_checked_dead_letter(fake_bodies, "msg-b8")
    poison(fake_queue, text, text)
    fake_bodies.journal.clear()

    report = dead_letters.purge(None)

    assert report.done == ["msg-b8", "msg-b8"]
    assert fake_bodies.blobs == {}
    assert fake_bodies.journal == ["blobs.delete"]


def test_should_keep_the_blob_of_a_purged_copy_while_a_replayed_copy_is_on_its_way(
    dead_letters: DeadLetters,
    fake_queue: FakeMailQueue,
    fake_bodies: FakeMessageBodyStore,
    fake_statuses: FakeStatusStore,
) -> None:
    # Two poison copies of one message; a replay re-enqueues one and leaves the other.
    text = claim_checked_dead_letter(fake_bodies, "msg-b9")
    poison(fake_queue, text, text)
    fake_statuses.add(failed("msg-b9"))
    dead_letters.replay(["msg-b9"])

    report = dead_letters.purge(["msg-b9"])

    assert report.done == ["msg-b9"]
    assert fake_queue.poison_texts == []
    assert "msg-b9.json" in fake_bodies.blobs
    assert fake_statuses.records["msg-b9"].state is MessageState.QUEUED


def test_should_purge_even_when_the_blob_cannot_be_deleted(
    dead_letters: DeadLetters,
    fake_queue: FakeMailQueue,
    fake_bodies: FakeMessageBodyStore,
    caplog: pytest.LogCaptureFixture,
) -> None:
    poison(fake_queue, claim_checked_dead_letter(fake_bodies, "msg-b10"))
    fake_bodies.make_unavailable(["delete"])

    with caplog.at_level(logging.WARNING, logger="shared.dead_letters"):
        report = dead_letters.purge(["msg-b10"])

    assert report.done == ["msg-b10"]
    assert fake_queue.poison_texts == []
    assert "msg-b10.json" in fake_bodies.blobs
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "msg-b10.json" in warning.getMessage()


def test_should_keep_the_blob_when_the_status_cannot_be_read_while_purging(
    dead_letters: DeadLetters,
    fake_queue: FakeMailQueue,
    fake_bodies: FakeMessageBodyStore,
    fake_statuses: FakeStatusStore,
) -> None:
    poison(fake_queue, claim_checked_dead_letter(fake_bodies, "msg-b11"))
    fake_statuses.make_unavailable(["get"])

    report = dead_letters.purge(["msg-b11"])

    assert report.done == ["msg-b11"]
    assert "msg-b11.json" in fake_bodies.blobs
