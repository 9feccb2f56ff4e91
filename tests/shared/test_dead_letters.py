from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta

import pytest

from shared.blobs import body_blob_name, kept_body_blob_name
from shared.dead_letters import (
    DeadLetterPage,
    DeadLetters,
    parse_listing_query,
    parse_selection,
    read_entry,
)
from shared.delivery import Delivery
from shared.errors import InvalidMessage, StorageUnavailable
from shared.models import DeadLetter, ProviderError, QueueEnvelope
from shared.openapi import DeadLetterDocument
from shared.poison_walk import DEFAULT_PAGE_LIMIT, HOLD_SECONDS, MAX_PAGE_LIMIT
from shared.replay_advice import (
    CAUSES,
    HOST_MOVED,
    INVALID_REQUEST,
    NOT_AN_ENVELOPE,
    SENDER_IDENTITY,
    Replay,
)
from shared.sendgrid_client import build_payload
from shared.settings import Settings
from shared.status import MessageState, MessageStatus
from tests.fakes import (
    Clock,
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
        "status_code": 400,
        **CAUSES[INVALID_REQUEST].to_document(),
    }


def test_should_read_sendgrids_errors_and_the_cause_the_gateway_wrote() -> None:
    record = DeadLetter(
        reason="SendGrid refused the message with 403: not verified (field from)",
        status_code=403,
        provider_error='{"errors": [{"message": "raw, as it came", "field": "from"}]}',
        attempts=1,
        at=REFUSED_AT,
        cause=SENDER_IDENTITY,
        provider_errors=[ProviderError(message="not verified", field="from")],
    )
    text = envelope(id="msg-d4").model_copy(update={"dead_letter": record}).to_json()

    document = read_entry(text).to_document()

    assert document["provider_errors"] == [{"message": "not verified", "field": "from"}]
    assert document["reason"] == "SendGrid refused the message with 403: not verified (field from)"
    assert (document["cause"], document["replay"]) == (SENDER_IDENTITY, "after_fix")
    assert document["action"].startswith("Verify the sender in SendGrid")


def test_should_list_a_dead_letter_as_the_published_contract_describes_it() -> None:
    record = DeadLetter(
        reason="SendGrid refused the message with 403: not verified (field from)",
        status_code=403,
        attempts=1,
        at=REFUSED_AT,
        cause=SENDER_IDENTITY,
        provider_errors=[ProviderError(message="not verified", field="from")],
    )
    text = envelope(id="msg-d7").model_copy(update={"dead_letter": record}).to_json()

    document = DeadLetterDocument.model_validate(read_entry(text).to_document())

    assert document.replay is Replay.AFTER_FIX


def test_should_derive_errors_and_cause_of_a_dead_letter_written_before_they_were_kept() -> None:
    # As older gateways wrote it: SendGrid's body as it came, and a status code; the body
    # quotes an address and the mail's own subject.
    subject = "Quarterly salary statement"
    raw = {
        "errors": [
            {
                "message": f"The from address does not match a verified Sender Identity: "
                f"payroll@example.com ({subject})",
                "field": "from",
                "help": None,
            }
        ]
    }
    record = DeadLetter(
        reason="SendGrid refused the message with 403",
        status_code=403,
        provider_error=json.dumps(raw),
        attempts=1,
        at=REFUSED_AT,
    )
    old = envelope(id="msg-d5", subject=subject).model_copy(update={"dead_letter": record})
    written = json.loads(old.to_json())
    assert "cause" not in written["dead_letter"]

    entry = read_entry(json.dumps(written))

    [error] = entry.provider_errors
    assert error.field == "from"
    assert error.message == (
        "The from address does not match a verified Sender Identity: *@example.com (…)"
    )
    assert entry.cause == SENDER_IDENTITY
    assert entry.reason == "SendGrid refused the message with 403"
    assert entry.to_document()["replay"] == "after_fix"


def test_should_leave_out_the_advice_of_an_old_dead_letter_that_cannot_tell_its_cause() -> None:
    record = DeadLetter(reason="its body is missing", attempts=1, at=REFUSED_AT)
    text = envelope(id="msg-d6").model_copy(update={"dead_letter": record}).to_json()

    document = read_entry(text).to_document()

    assert document["reason"] == "its body is missing"
    assert not {"cause", "replay", "action", "status_code", "provider_errors"} & set(document)


def test_should_read_a_bare_envelope_as_moved_by_the_host_after_its_max_dequeue_count() -> None:
    entry = read_entry(host_moved("msg-d2", attempt=4), host_max_dequeue_count=3)

    assert entry.to_document() == {
        "id": "msg-d2",
        "reason": "moved to the poison queue by the Functions host after 3 dequeues",
        "attempts": 4,
        "dead_lettered_at": None,
        "replayable": True,
        **CAUSES[HOST_MOVED].to_document(),
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
        **CAUSES[NOT_AN_ENVELOPE].to_document(),
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
    refused = replace(failed("msg-d5", attempts=8), state=MessageState.SENDING).concluded(
        MessageState.FAILED, 8, REFUSED_AT, attempts=8
    )
    fake_statuses.add(refused)
    poison(fake_queue, dead_lettered("msg-d5", attempts=8), dead_lettered("msg-d6"))

    report = dead_letters.replay(["msg-d5"])

    assert report.to_document() == {
        "done": ["msg-d5"],
        "skipped": {},
        "not_found": [],
        "continuation": None,
    }
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
    # What became of it before the replay stays in the record, for the console's timeline.
    assert status.outcomes == refused.outcomes != ()
    # Reset first: delivery skips a message whose status still says failed. Marked before the
    # record, so that no expiry run sees the new record without the mark.
    assert journal == ["status.mark_replayed", "status.put queued", "queue.enqueue"]
    assert fake_statuses.replayed == {"msg-d5": LATER}
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

    assert report.to_document() == {
        "done": ["msg-d13"],
        "skipped": {},
        "not_found": [],
        "continuation": None,
    }
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
    assert dead_letters.purge(None).to_document() == {
        "done": [],
        "skipped": {},
        "not_found": [],
        "continuation": None,
    }


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
    queued, body = envelope(id=id).claim_checked(kept_body_blob_name(id))
    bodies.put(kept_body_blob_name(id), body.to_json())
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
        "blob": "dead-letters/msg-b1.json",
        "status_code": 400,
        **CAUSES[INVALID_REQUEST].to_document(),
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
    stored = fake_bodies.blobs["dead-letters/msg-b3.json"]

    report = dead_letters.replay(["msg-b3"])

    assert report.done == ["msg-b3"]
    [replayed] = fake_queue.envelopes
    assert (replayed.id, replayed.attempt, replayed.blob, replayed.message) == (
        "msg-b3",
        1,
        "dead-letters/msg-b3.json",
        None,
    )
    assert fake_bodies.blobs == {"dead-letters/msg-b3.json": stored}


def test_should_replay_a_message_the_host_moved_naming_its_body_moved_out_of_the_live_prefix(
    dead_letters: DeadLetters,
    fake_queue: FakeMailQueue,
    fake_bodies: FakeMessageBodyStore,
    fake_statuses: FakeStatusStore,
) -> None:
    # The host's poison copy is the queue message as it was: a bare envelope naming live/.
    queued, body = envelope(id="msg-bh").claim_checked(body_blob_name("msg-bh"))
    fake_bodies.put("live/msg-bh.json", body.to_json())
    poison(fake_queue, queued.to_json())

    report = dead_letters.replay(["msg-bh"])

    assert report.done == ["msg-bh"]
    [replayed] = fake_queue.envelopes
    # Its body's age would otherwise count from the first accept, not from the replay.
    assert replayed.blob == "dead-letters/msg-bh.json"
    assert fake_bodies.blobs == {"dead-letters/msg-bh.json": body.to_json()}
    assert fake_queue.poison_texts == []


def test_should_leave_a_dead_letter_in_place_when_its_live_body_cannot_be_kept(
    dead_letters: DeadLetters,
    fake_queue: FakeMailQueue,
    fake_bodies: FakeMessageBodyStore,
    fake_statuses: FakeStatusStore,
) -> None:
    queued, body = envelope(id="msg-bf").claim_checked(body_blob_name("msg-bf"))
    fake_bodies.put("live/msg-bf.json", body.to_json())
    poison(fake_queue, queued.to_json())
    fake_bodies.make_unavailable(["copy"])

    with pytest.raises(StorageUnavailable):
        dead_letters.replay(["msg-bf"])

    assert fake_queue.envelopes == []
    assert len(fake_queue.poison_texts) == 1
    assert list(fake_bodies.blobs) == ["live/msg-bf.json"]


def test_should_take_the_kept_copy_back_when_the_replay_cannot_be_queued(
    dead_letters: DeadLetters,
    fake_queue: FakeMailQueue,
    fake_bodies: FakeMessageBodyStore,
    fake_statuses: FakeStatusStore,
) -> None:
    queued, body = envelope(id="msg-bq").claim_checked(body_blob_name("msg-bq"))
    fake_bodies.put("live/msg-bq.json", body.to_json())
    poison(fake_queue, queued.to_json())
    fake_queue.make_unavailable(["enqueue"])

    with pytest.raises(StorageUnavailable):
        dead_letters.replay(["msg-bq"])

    assert len(fake_queue.poison_texts) == 1
    assert list(fake_bodies.blobs) == ["live/msg-bq.json"]


def test_should_replay_a_body_under_an_older_root_name_with_that_name(
    dead_letters: DeadLetters,
    fake_queue: FakeMailQueue,
    fake_bodies: FakeMessageBodyStore,
    fake_statuses: FakeStatusStore,
) -> None:
    queued, body = envelope(id="msg-br").claim_checked("msg-br.json")
    fake_bodies.put("msg-br.json", body.to_json())
    poison(fake_queue, queued.to_json())

    dead_letters.replay(["msg-br"])

    [replayed] = fake_queue.envelopes
    assert replayed.blob == "msg-br.json"
    assert list(fake_bodies.blobs) == ["msg-br.json"]


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
    assert list(fake_bodies.blobs) == ["dead-letters/msg-b6.json"]
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
    assert "dead-letters/msg-b9.json" in fake_bodies.blobs
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
    assert "dead-letters/msg-b10.json" in fake_bodies.blobs
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "dead-letters/msg-b10.json" in warning.getMessage()


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
    assert "dead-letters/msg-b11.json" in fake_bodies.blobs


# --- walks in bounded calls: limits, continuations, holds ----------------------------------


def walked_dead_letters(
    fake_queue: FakeMailQueue,
    fake_bodies: FakeMessageBodyStore,
    fake_statuses: FakeStatusStore,
    monotonic: Clock | None = None,
    now: Callable[[], datetime] = lambda: LATER,
) -> DeadLetters:
    return DeadLetters(
        fake_queue.poison,
        fake_queue,
        fake_bodies,
        fake_statuses,
        now,
        monotonic=monotonic or Clock(0.0),
    )


def listing_pages(dead_letters: DeadLetters, limit: int) -> list[DeadLetterPage]:
    pages = [dead_letters.list_page(limit)]
    while pages[-1].continuation is not None:
        assert len(pages) < 100, "the walk does not end"
        pages.append(dead_letters.list_page(limit, pages[-1].continuation))
    return pages


def test_should_list_a_page_at_a_time_each_dead_letter_once_leaving_all_visible(
    dead_letters: DeadLetters, fake_queue: FakeMailQueue
) -> None:
    texts = [host_moved(f"msg-l{i}") for i in range(7)]
    poison(fake_queue, *texts)

    pages = []
    page = dead_letters.list_page(3)
    while True:
        # Nothing a call received stays hidden after it.
        assert len(fake_queue.poison_client.visible_texts) == 7
        pages.append([e.message_id for e in page.entries])
        if page.continuation is None:
            break
        page = dead_letters.list_page(3, page.continuation)

    assert pages == [["msg-l0", "msg-l1", "msg-l2"], ["msg-l3", "msg-l4", "msg-l5"], ["msg-l6"]]
    assert sorted(fake_queue.poison_client.visible_texts) == sorted(texts)


def test_should_end_a_walk_that_comes_round_to_the_messages_it_released(
    dead_letters: DeadLetters, fake_queue: FakeMailQueue
) -> None:
    # 40 messages: the second receive returns the last 8 and then the first ones again.
    poison(fake_queue, *(host_moved(f"msg-r{i:02}") for i in range(40)))

    [page] = listing_pages(dead_letters, 100)

    assert [e.message_id for e in page.entries] == [f"msg-r{i:02}" for i in range(40)]
    assert len(fake_queue.poison_client.visible_texts) == 40


def test_should_stop_a_walk_whose_released_messages_were_all_deleted_meanwhile(
    dead_letters: DeadLetters, fake_queue: FakeMailQueue, caplog: pytest.LogCaptureFixture
) -> None:
    poison(fake_queue, *(host_moved(f"msg-g{i:02}") for i in range(40)))
    first = dead_letters.list_page(10)
    assert first.continuation is not None
    # Another operator purges the 8 messages the walk would know it had come round by.
    dead_letters.purge([f"msg-g{i:02}" for i in range(8)])

    continuation: str | None = first.continuation
    listed = len(first.entries)
    with caplog.at_level(logging.WARNING, logger="shared.poison_walk"):
        while continuation is not None:
            page = dead_letters.list_page(10, continuation)
            continuation, listed = page.continuation, listed + len(page.entries)
            assert listed < 1000, "the walk does not end"

    # Its bound: the depth when it began plus one call's most.
    assert listed == 40 + MAX_PAGE_LIMIT
    assert "stopped after" in caplog.text


def test_should_receive_no_more_than_a_call_has_time_for_and_go_on_next_call(
    fake_queue: FakeMailQueue, fake_bodies: FakeMessageBodyStore, fake_statuses: FakeStatusStore
) -> None:
    poison(fake_queue, *(host_moved(f"msg-t{i:03}") for i in range(100)))
    clock = Clock(0.0)

    def slow_receive() -> None:
        clock.now += 4.0

    fake_queue.poison_client.on_receive = slow_receive
    dead_letters = walked_dead_letters(fake_queue, fake_bodies, fake_statuses, clock)

    first = dead_letters.list_page(MAX_PAGE_LIMIT)
    clock.now += 60.0
    second = dead_letters.list_page(MAX_PAGE_LIMIT, first.continuation)

    # Two receives of 32 take 8 s of the 10 s budget, at 0.125 s a message: the third asks
    # for no more than the 2 s left have time for.
    assert len(first.entries) == 32 + 32 + 16
    assert first.continuation is not None
    listed = [e.message_id for e in first.entries + second.entries]
    assert listed == [f"msg-t{i:03}" for i in range(100)]
    assert second.continuation is None


def test_should_renew_a_hold_running_short_before_replaying_the_message(
    fake_queue: FakeMailQueue,
    fake_bodies: FakeMessageBodyStore,
    fake_statuses: FakeStatusStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    poison(fake_queue, dead_lettered("msg-h1"), dead_lettered("msg-h2"))
    [_, second_queue_message] = fake_queue.poison_client.peek_messages(2)
    clock = Clock(0.0)
    read_status = fake_statuses.get

    def slow_get(message_id: str) -> MessageStatus | None:
        clock.now += 20.0  # storage answering slowly
        return read_status(message_id)

    monkeypatch.setattr(fake_statuses, "get", slow_get)
    dead_letters = walked_dead_letters(fake_queue, fake_bodies, fake_statuses, clock)

    report = dead_letters.replay(None)

    assert report.done == ["msg-h1", "msg-h2"]
    # msg-h1 had 40 s of its 60 s hold left; msg-h2 20 s: held again before its replay.
    [(renewed, seconds)] = fake_queue.poison_client.updates
    assert seconds == HOLD_SECONDS
    assert renewed == second_queue_message.id
    assert fake_queue.poison_texts == []
    assert [e.id for e in fake_queue.envelopes] == ["msg-h1", "msg-h2"]


def test_should_replay_ids_found_in_later_calls_and_report_the_missing_only_at_the_end(
    dead_letters: DeadLetters, fake_queue: FakeMailQueue
) -> None:
    poison(fake_queue, *(dead_lettered(f"msg-i{i}") for i in range(6)))

    reports = [dead_letters.replay_page(["msg-i5", "msg-i1", "msg-gone"], limit=3)]
    while reports[-1].continuation is not None:
        assert len(reports) < 10, "the walk does not end"
        ids = ["msg-i1", "msg-gone", "msg-i5"]  # the same selection, in another order
        reports.append(dead_letters.replay_page(ids, 3, reports[-1].continuation))

    assert [r.done for r in reports[:2]] == [["msg-i1"], ["msg-i5"]]
    assert [r.not_found for r in reports] == [[]] * (len(reports) - 1) + [["msg-gone"]]
    assert [e.id for e in fake_queue.envelopes] == ["msg-i1", "msg-i5"]
    assert len(fake_queue.poison_client.visible_texts) == 4


def test_should_end_a_replay_by_ids_once_every_id_is_found(
    dead_letters: DeadLetters, fake_queue: FakeMailQueue
) -> None:
    poison(fake_queue, *(dead_lettered(f"msg-e{i}") for i in range(6)))

    report = dead_letters.replay_page(["msg-e1"], limit=3)

    assert (report.done, report.not_found, report.continuation) == (["msg-e1"], [], None)
    assert len(fake_queue.poison_client.visible_texts) == 5


def test_should_replay_every_dead_letter_once_over_several_calls(
    dead_letters: DeadLetters, fake_queue: FakeMailQueue, fake_statuses: FakeStatusStore
) -> None:
    # Two copies of msg-a4 in different calls, an unreadable message and a sent message's copy.
    poison(fake_queue, *(dead_lettered(f"msg-a{i}") for i in range(5)))
    poison(fake_queue, UNREADABLE, host_moved("msg-a4"), host_moved("msg-sent"))
    fake_statuses.add(
        MessageStatus(id="msg-sent", state=MessageState.SENT, accepted_at=NOW, updated_at=NOW)
    )

    report = dead_letters.replay_page(None, limit=2)
    calls = 1
    while report.continuation is not None:
        report.merge(dead_letters.replay_page(None, 2, report.continuation))
        calls += 1
        assert calls < 10, "the walk does not end"

    assert report.done == [f"msg-a{i}" for i in range(5)]
    assert sorted(report.skipped.values()) == [
        "already sent; purge this copy",
        "not a mailgate envelope",
    ]
    assert [e.id for e in fake_queue.envelopes] == [f"msg-a{i}" for i in range(5)]
    # What was not replayed stays, visible.
    left = [read_entry(t).message_id for t in fake_queue.poison_client.visible_texts]
    assert sorted(left, key=lambda id: id or "") == [None, "msg-a4", "msg-sent"]


def test_should_not_replay_again_a_message_dead_lettered_again_during_the_walk(
    dead_letters: DeadLetters,
    fake_queue: FakeMailQueue,
    fake_statuses: FakeStatusStore,
) -> None:
    poison(fake_queue, dead_lettered("msg-x"), dead_lettered("msg-y"), dead_lettered("msg-z"))

    first = dead_letters.replay_page(None, limit=1)
    # Its delivery is refused again at once, and the gateway dead-letters it again.
    fake_statuses.put(failed("msg-x", attempts=1).moved(MessageState.FAILED, LATER))
    poison(fake_queue, dead_lettered("msg-x", reason="refused again"))
    second = dead_letters.replay_page(None, MAX_PAGE_LIMIT, first.continuation)

    assert (first.done, second.done, second.continuation) == (["msg-x"], ["msg-y", "msg-z"], None)
    assert [e.id for e in fake_queue.envelopes] == ["msg-x", "msg-y", "msg-z"]
    assert [read_entry(t).reason for t in fake_queue.poison_texts] == ["refused again"]


def test_should_purge_a_page_at_a_time_and_every_copy_of_the_chosen_ids(
    dead_letters: DeadLetters, fake_queue: FakeMailQueue
) -> None:
    poison(fake_queue, *(dead_lettered(f"msg-p{i}") for i in range(5)), dead_lettered("msg-p1"))

    first = dead_letters.purge_page(["msg-p1", "msg-p9"], limit=4)
    second = dead_letters.purge_page(["msg-p9", "msg-p1"], 4, first.continuation)

    assert (first.done, first.not_found) == (["msg-p1"], [])
    assert (second.done, second.not_found, second.continuation) == (["msg-p1"], ["msg-p9"], None)
    assert sorted(read_entry(t).message_id or "" for t in fake_queue.poison_texts) == [
        "msg-p0",
        "msg-p2",
        "msg-p3",
        "msg-p4",
    ]


# --- continuations that do not belong -------------------------------------------------------


@pytest.fixture
def listing_continuation(dead_letters: DeadLetters, fake_queue: FakeMailQueue) -> str:
    poison(fake_queue, *(dead_lettered(f"msg-c{i}") for i in range(3)))
    continuation = dead_letters.list_page(1).continuation
    assert continuation is not None
    return continuation


def refusal(call: Callable[[], object]) -> tuple[str, str]:
    with pytest.raises(InvalidMessage) as caught:
        call()
    [problem] = caught.value.problems
    return problem.pointer, problem.detail


@pytest.mark.parametrize(
    "continuation",
    ["not base64!", "e30", "x" * 3000, base64.urlsafe_b64encode(b'{"v": 2}').decode()],
    ids=["not base64", "empty object", "too long", "another version"],
)
def test_should_refuse_a_continuation_this_api_did_not_give_out(
    dead_letters: DeadLetters, continuation: str
) -> None:
    assert refusal(lambda: dead_letters.list_page(10, continuation)) == (
        "?continuation",
        "is not one this API gave out",
    )


def test_should_refuse_a_listing_continuation_for_a_replay(
    dead_letters: DeadLetters, listing_continuation: str
) -> None:
    assert refusal(lambda: dead_letters.replay_page(None, 10, listing_continuation)) == (
        "#/continuation",
        "belongs to a list walk, not a replay",
    )


def test_should_refuse_a_replay_continuation_for_other_ids(
    dead_letters: DeadLetters, fake_queue: FakeMailQueue
) -> None:
    poison(fake_queue, *(dead_lettered(f"msg-s{i}") for i in range(3)))
    continuation = dead_letters.replay_page(["msg-s2"], limit=1).continuation
    assert continuation is not None

    pointer, detail = refusal(lambda: dead_letters.replay_page(["msg-s1"], 1, continuation))
    assert pointer == "#/continuation"
    assert detail.startswith("belongs to another selection")
    assert refusal(lambda: dead_letters.replay_page(None, 1, continuation))[0] == "#/continuation"
    # The same ids in another order are the same selection.
    assert dead_letters.replay_page(["msg-s2", "msg-s2"], 5, continuation).done == ["msg-s2"]


def test_should_refuse_a_continuation_older_than_an_hour(
    fake_queue: FakeMailQueue,
    fake_bodies: FakeMessageBodyStore,
    fake_statuses: FakeStatusStore,
    listing_continuation: str,
) -> None:
    later = walked_dead_letters(
        fake_queue, fake_bodies, fake_statuses, now=lambda: LATER + timedelta(minutes=61)
    )

    assert refusal(lambda: later.list_page(10, listing_continuation)) == (
        "?continuation",
        "has expired: start the walk again without it",
    )


def test_should_refuse_a_continuation_whose_found_ids_do_not_fit_its_selection(
    dead_letters: DeadLetters, fake_queue: FakeMailQueue
) -> None:
    poison(fake_queue, *(dead_lettered(f"msg-f{i}") for i in range(3)))
    continuation = dead_letters.replay_page(["msg-f2"], limit=1).continuation
    assert continuation is not None
    state = json.loads(base64.urlsafe_b64decode(continuation + "=" * (-len(continuation) % 4)))
    state["found"] = base64.urlsafe_b64encode(b"\xff\xff").decode()
    forged = base64.urlsafe_b64encode(json.dumps(state).encode()).decode().rstrip("=")

    assert refusal(lambda: dead_letters.replay_page(["msg-f2"], 1, forged))[1] == (
        "is not one this API gave out"
    )


@pytest.mark.parametrize(
    ("params", "pointer"),
    [
        ({"limit": "0"}, "?limit"),
        ({"limit": str(MAX_PAGE_LIMIT + 1)}, "?limit"),
        ({"limit": "ten"}, "?limit"),
        ({"continuation": ""}, "?continuation"),
        ({"continuation": "x" * 2049}, "?continuation"),
    ],
)
def test_should_refuse_a_listing_query_out_of_bounds_naming_the_parameter(
    params: dict[str, str], pointer: str
) -> None:
    with pytest.raises(InvalidMessage) as caught:
        parse_listing_query(params)

    assert [p.pointer for p in caught.value.problems] == [pointer]


def test_should_read_a_listing_query_with_defaults_and_ignore_the_hosts_parameters() -> None:
    assert parse_listing_query({"code": "admin-key"}).limit == DEFAULT_PAGE_LIMIT
    query = parse_listing_query({"limit": "25", "continuation": "abc"})
    assert (query.limit, query.continuation) == (25, "abc")


@pytest.mark.parametrize(
    ("content", "pointer"),
    [
        (b'{"all": true, "limit": 0}', "#/limit"),
        (b'{"all": true, "limit": 501}', "#/limit"),
        (b'{"all": true, "continuation": ""}', "#/continuation"),
        (b'{"ids": [""]}', "#/ids/0"),
        (b'{"ids": ["' + b"x" * 65 + b'"]}', "#/ids/0"),
        (b'{"all": true, "confirm": "' + b"x" * 64 + b'"}', "#/confirm"),
    ],
)
def test_should_refuse_a_selection_out_of_bounds_naming_the_field(
    content: bytes, pointer: str
) -> None:
    with pytest.raises(InvalidMessage) as caught:
        parse_selection(content)

    assert [p.pointer for p in caught.value.problems] == [pointer]


# --- a dead letter that outlived its status record (STATUS_RETENTION_DAYS) ---------------------


def test_should_list_replay_and_purge_dead_letters_whose_status_records_expired(
    dead_letters: DeadLetters,
    fake_queue: FakeMailQueue,
    fake_bodies: FakeMessageBodyStore,
    fake_statuses: FakeStatusStore,
) -> None:
    # No status record for either: the retention timer deleted them while they waited.
    poison(fake_queue, dead_lettered("msg-x1"), claim_checked_dead_letter(fake_bodies, "msg-x2"))

    listed = [entry.message_id for entry in dead_letters.entries()]
    replayed = dead_letters.replay(["msg-x1"])
    purged = dead_letters.purge(["msg-x2"])

    assert listed == ["msg-x1", "msg-x2"]
    assert (replayed.done, replayed.skipped) == (["msg-x1"], {})
    # A new record, as a replay writes one: the message can be followed again.
    status = fake_statuses.records["msg-x1"]
    assert (status.state, status.accepted_at, status.updated_at) == (
        MessageState.QUEUED,
        NOW,
        LATER,
    )
    assert (purged.done, fake_queue.poison_texts) == (["msg-x2"], [])
    # No live copy can need the body without a record saying so: it goes with the dead letter.
    assert "msg-x2.json" not in fake_bodies.blobs
