from __future__ import annotations

import json
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from azure.core.pipeline.transport import RequestsTransport
from azure.storage.queue import QueueClient, TextBase64DecodePolicy

import admin.__main__ as admin_main
from devstack.azurite import Azurite
from shared.blobs import MessageBodyStore
from shared.clients import ClientStore
from shared.dead_letters import DeadLetters
from shared.models import DeadLetter, QueueEnvelope
from shared.queue import MailQueue
from shared.replay_advice import CAUSES, HOST_MOVED, NOT_AN_ENVELOPE, SENDER_IDENTITY
from shared.sendgrid_client import provider_errors
from shared.sendgrid_v3.error_format import UNVERIFIED_SENDER_BODY
from shared.settings import Settings
from shared.status import MessageState, MessageStatus, StatusStore
from tests.integration.conftest import base64_queue_client, time_limit
from tests.samples import BASE_ENV, CLIENT, NOW, envelope

REPLAYED_AT = NOW + timedelta(days=1)
REFUSED_AT = NOW + timedelta(minutes=1)
UNREADABLE_REASON = "not a mailgate envelope: 1 problem(s), first at the top level"
[UNVERIFIED], _ = provider_errors(json.dumps(UNVERIFIED_SENDER_BODY))
REFUSED_REASON = f"SendGrid refused the message with 403: {UNVERIFIED}"


@pytest.fixture
def dead_letters(
    mail_queue: MailQueue, message_bodies: MessageBodyStore, statuses: StatusStore
) -> DeadLetters:
    return DeadLetters(mail_queue.poison, mail_queue, message_bodies, statuses, lambda: REPLAYED_AT)


def refused_by_sendgrid(mail_queue: MailQueue, statuses: StatusStore, id: str) -> None:
    """Dead-letter a message as delivery does: the envelope with why, then status `failed`."""
    record = DeadLetter(
        reason=REFUSED_REASON,
        status_code=403,
        provider_error=json.dumps(UNVERIFIED_SENDER_BODY),
        attempts=2,
        at=REFUSED_AT,
        cause=SENDER_IDENTITY,
        provider_errors=[UNVERIFIED],
    )
    mail_queue.dead_letter(
        envelope(id=id, attempt=2).model_copy(update={"dead_letter": record}).to_json()
    )
    statuses.put(
        MessageStatus(
            id=id,
            state=MessageState.FAILED,
            accepted_at=NOW,
            updated_at=REFUSED_AT,
            attempts=2,
            last_status_code=403,
            last_error=REFUSED_REASON,
            provider_errors=(UNVERIFIED,),
            last_error_cause=SENDER_IDENTITY,
        )
    )


def moved_by_the_host(azurite: Azurite, mail_queue: MailQueue, id: str) -> None:
    """A bare envelope, copied to the poison queue as the host does (base64, 7-day expiry)."""
    base64_queue_client(azurite, mail_queue.poison_name).send_message(
        envelope(id=id, attempt=3).to_json()
    )


def unreadable(mail_queue: MailQueue) -> None:
    """An unreadable queue message as delivery dead-letters it."""
    mail_queue.dead_letter(
        json.dumps(
            {
                "dead_letter": {"reason": UNREADABLE_REASON, "attempts": 1, "at": "2026-03-02"},
                "raw_message": "hello",
            }
        )
    )


@pytest.fixture
def poison_queue(azurite: Azurite, mail_queue: MailQueue, statuses: StatusStore) -> None:
    """msg-a and msg-b refused by SendGrid, msg-c moved by the host, one unreadable message."""
    refused_by_sendgrid(mail_queue, statuses, "msg-a")
    refused_by_sendgrid(mail_queue, statuses, "msg-b")
    moved_by_the_host(azurite, mail_queue, "msg-c")
    unreadable(mail_queue)


def visible_poison_ids(
    azurite: Azurite, mail_queue: MailQueue, client: QueueClient | None = None
) -> list[str | None]:
    """The ids of the messages a receive on the poison queue would get right now.

    A peek, not a receive: receiving hides what it returns for its visibility timeout, and the
    SDK's receive pages on until a page comes back empty, so when the next page's request comes
    later than that timeout (a loaded machine) the first page's messages come back in it and
    are counted twice.
    """
    client = client or base64_queue_client(azurite, mail_queue.poison_name)
    ids: list[str | None] = []
    for message in client.peek_messages(max_messages=32):
        document = json.loads(message.content)
        ids.append(document.get("id"))
    return sorted(ids, key=none_last)


class SlowSession(requests.Session):
    """Every request after the first leaves 1.5 s late, as on a loaded machine."""

    requests_sent = 0

    def request(self, *args: Any, **kwargs: Any) -> requests.Response:
        self.requests_sent += 1
        if self.requests_sent > 1:
            time.sleep(1.5)
        return super().request(*args, **kwargs)


def none_last(id: str | None) -> tuple[bool, str]:
    """Sort ids alphabetically, unreadable messages (no id) last."""
    return (id is None, id or "")


def mail_envelopes(azurite: Azurite, mail_queue: MailQueue) -> list[QueueEnvelope]:
    client = base64_queue_client(azurite, mail_queue.name)
    return sorted(
        (QueueEnvelope.model_validate_json(m.content) for m in client.peek_messages(32)),
        key=lambda e: e.id,
    )


@pytest.mark.usefixtures("poison_queue")
def test_should_list_each_kind_of_dead_letter_and_leave_them_visible(
    azurite: Azurite, mail_queue: MailQueue, dead_letters: DeadLetters
) -> None:
    with time_limit(30):
        entries = dead_letters.entries()

    documents = sorted((e.to_document() for e in entries), key=lambda d: none_last(d["id"]))
    assert documents == [
        {
            "id": "msg-a",
            "reason": REFUSED_REASON,
            "attempts": 2,
            "dead_lettered_at": REFUSED_AT.isoformat(),
            "replayable": True,
            "status_code": 403,
            "provider_errors": [UNVERIFIED.model_dump()],
            **CAUSES[SENDER_IDENTITY].to_document(),
        },
        {
            "id": "msg-b",
            "reason": REFUSED_REASON,
            "attempts": 2,
            "dead_lettered_at": REFUSED_AT.isoformat(),
            "replayable": True,
            "status_code": 403,
            "provider_errors": [UNVERIFIED.model_dump()],
            **CAUSES[SENDER_IDENTITY].to_document(),
        },
        {
            "id": "msg-c",
            "reason": "moved to the poison queue by the Functions host after 5 dequeues",
            "attempts": 3,
            "dead_lettered_at": None,
            "replayable": True,
            **CAUSES[HOST_MOVED].to_document(),
        },
        {
            "id": None,
            "reason": UNREADABLE_REASON,
            "attempts": None,
            "dead_lettered_at": None,
            "replayable": False,
            **CAUSES[NOT_AN_ENVELOPE].to_document(),
        },
    ]
    assert visible_poison_ids(azurite, mail_queue) == ["msg-a", "msg-b", "msg-c", None]


def test_should_count_each_visible_poison_message_once_however_late_the_reads_come(
    azurite: Azurite, mail_queue: MailQueue
) -> None:
    # The listing test failed once under load: its check received with a 1 s hold and paged
    # on, and a second page requested over a second later returned the first page again.
    moved_by_the_host(azurite, mail_queue, "msg-a")
    moved_by_the_host(azurite, mail_queue, "msg-b")
    slow = QueueClient.from_connection_string(
        azurite.connection_string,
        mail_queue.poison_name,
        message_decode_policy=TextBase64DecodePolicy(),
        transport=RequestsTransport(session=SlowSession(), session_owner=True),
    )

    with time_limit(30):
        ids = visible_poison_ids(azurite, mail_queue, slow)

    assert ids == ["msg-a", "msg-b"]


def test_should_list_more_dead_letters_than_one_receive_returns(
    azurite: Azurite, mail_queue: MailQueue, dead_letters: DeadLetters
) -> None:
    for number in range(40):
        moved_by_the_host(azurite, mail_queue, f"msg-{number:02}")

    with time_limit(30):
        entries = dead_letters.entries()

    assert sorted(e.message_id or "" for e in entries) == [f"msg-{n:02}" for n in range(40)]
    assert mail_queue.depths()[mail_queue.poison_name] == 40


def test_should_list_nothing_when_the_poison_queue_does_not_exist(
    storage_settings: Settings, statuses: StatusStore
) -> None:
    queue = MailQueue.from_settings(storage_settings)
    bodies = MessageBodyStore.from_settings(storage_settings)

    assert DeadLetters(queue.poison, queue, bodies, statuses, lambda: NOW).entries() == []


@pytest.mark.usefixtures("poison_queue")
def test_should_replay_chosen_dead_letters_as_fresh_first_attempts(
    azurite: Azurite, mail_queue: MailQueue, statuses: StatusStore, dead_letters: DeadLetters
) -> None:
    with time_limit(30):
        report = dead_letters.replay(["msg-a", "msg-c", "msg-unknown"])

    assert sorted(report.done) == ["msg-a", "msg-c"]
    assert (report.skipped, report.not_found) == ({}, ["msg-unknown"])
    assert mail_envelopes(azurite, mail_queue) == [
        envelope(id="msg-a", attempt=1),
        envelope(id="msg-c", attempt=1),
    ]
    for id in ("msg-a", "msg-c"):
        status = statuses.get(id)
        assert status is not None
        assert (status.state, status.attempts) == (MessageState.QUEUED, 0)
        assert (status.accepted_at, status.updated_at) == (NOW, REPLAYED_AT)
        assert (status.last_status_code, status.last_error) == (None, None)
    untouched = statuses.get("msg-b")
    assert untouched is not None
    assert untouched.state is MessageState.FAILED
    # The rest are back on the poison queue at once, not hidden for the listing's hold.
    assert visible_poison_ids(azurite, mail_queue) == ["msg-b", None]


def test_should_put_replayed_envelopes_on_the_wire_without_their_dead_letter(
    azurite: Azurite, mail_queue: MailQueue, statuses: StatusStore, dead_letters: DeadLetters
) -> None:
    refused_by_sendgrid(mail_queue, statuses, "msg-a")

    dead_letters.replay(["msg-a"])

    [message] = base64_queue_client(azurite, mail_queue.name).peek_messages()
    document = json.loads(message.content)
    assert "dead_letter" not in document
    assert (document["id"], document["attempt"]) == ("msg-a", 1)


@pytest.mark.usefixtures("poison_queue")
def test_should_replay_every_dead_letter_skipping_the_unreadable(
    azurite: Azurite, mail_queue: MailQueue, dead_letters: DeadLetters
) -> None:
    with time_limit(30):
        report = dead_letters.replay(None)

    assert sorted(report.done) == ["msg-a", "msg-b", "msg-c"]
    assert list(report.skipped.values()) == ["not a mailgate envelope"]
    assert report.not_found == []
    assert [e.id for e in mail_envelopes(azurite, mail_queue)] == ["msg-a", "msg-b", "msg-c"]
    assert visible_poison_ids(azurite, mail_queue) == [None]


@pytest.mark.usefixtures("poison_queue")
def test_should_purge_chosen_dead_letters(
    azurite: Azurite, mail_queue: MailQueue, dead_letters: DeadLetters
) -> None:
    with time_limit(30):
        report = dead_letters.purge(["msg-b", "msg-gone"])

    assert report.to_document() == {
        "done": ["msg-b"],
        "skipped": {},
        "not_found": ["msg-gone"],
        "continuation": None,
    }
    assert visible_poison_ids(azurite, mail_queue) == ["msg-a", "msg-c", None]
    assert mail_envelopes(azurite, mail_queue) == []


@pytest.mark.usefixtures("poison_queue")
def test_should_purge_every_dead_letter(
    azurite: Azurite, mail_queue: MailQueue, dead_letters: DeadLetters
) -> None:
    with time_limit(30):
        report = dead_letters.purge(None)

    assert len(report.done) == 4
    assert {"msg-a", "msg-b", "msg-c"} <= set(report.done)
    assert mail_queue.depths()[mail_queue.poison_name] == 0
    assert mail_envelopes(azurite, mail_queue) == []


def test_should_list_a_raw_text_message_the_host_copied_to_the_poison_queue(
    azurite: Azurite, mail_queue: MailQueue, dead_letters: DeadLetters
) -> None:
    # The host copies an undecodable (raw text) message to the poison queue as it was, not
    # base64: listing must show it rather than fail on it.
    raw = QueueClient.from_connection_string(azurite.connection_string, mail_queue.poison_name)
    raw.send_message('{"not": "base64"}')

    with time_limit(30):
        [entry] = dead_letters.entries()

    assert entry.message_id is None
    assert entry.reason == "not a mailgate envelope"
    assert entry.envelope is None


# --- the operator command behind `make poison`, `make replay`, `make purge` ------------------


@pytest.fixture
def admin_environment(
    azurite: Azurite,
    storage_settings: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The admin command's settings in the environment (no local.settings.json), and walks of
    10 messages a call, so that 25 dead letters take three."""
    values = {
        **BASE_ENV,
        "AzureWebJobsStorage": azurite.connection_string,
        "MAIL_QUEUE_NAME": storage_settings.mail_queue_name,
        "STATUS_TABLE_NAME": storage_settings.status_table_name,
        "CLIENT_TABLE_NAME": storage_settings.client_table_name,
        "LARGE_MESSAGE_CONTAINER_NAME": storage_settings.large_message_container_name,
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(admin_main, "MAX_PAGE_LIMIT", 10)
    # The dead letters' client, which a replay checks is still there and enabled.
    clients = ClientStore.from_settings(storage_settings)
    clients.ensure_exists()
    if clients.get(CLIENT.name) is None:
        clients.create(CLIENT.name, ",".join(CLIENT.senders))


def run_admin(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[Any, list[str]]:
    """The command's JSON result (--json) and its progress lines."""
    assert admin_main.main([*argv, "--json"]) == 0
    captured = capsys.readouterr()
    return json.loads(captured.out), captured.err.splitlines()


def admin_table(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, *argv: str
) -> list[str]:
    """What the command prints by default, in a terminal 160 columns wide."""
    monkeypatch.setenv("COLUMNS", "160")
    assert admin_main.main(list(argv)) == 0
    return capsys.readouterr().out.splitlines()


@pytest.mark.usefixtures("admin_environment")
def test_should_list_replay_and_purge_the_whole_poison_queue_from_the_command_line(
    azurite: Azurite,
    mail_queue: MailQueue,
    statuses: StatusStore,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ids = [f"msg-{number:02}" for number in range(25)]
    for id in ids:
        refused_by_sendgrid(mail_queue, statuses, id)
    unreadable(mail_queue)

    listed, listing_progress = run_admin(capsys, "list")
    replayed, replay_progress = run_admin(capsys, "replay", "--all")
    purged, _ = run_admin(capsys, "purge", "--all", "--confirm", mail_queue.poison_name)

    assert sorted(d["id"] or "" for d in listed["dead_letters"]) == ["", *ids]
    assert listing_progress == [
        "mailgate admin: 10 dead letter(s) listed so far...",
        "mailgate admin: 20 dead letter(s) listed so far...",
    ]
    assert sorted(replayed["done"]) == ids
    assert list(replayed["skipped"].values()) == ["not a mailgate envelope"]
    assert replayed["continuation"] is None
    assert replay_progress[0] == "mailgate admin: 10 dead letter(s) replayed so far..."
    assert sorted(e.id for e in all_mail_envelopes(azurite, mail_queue)) == ids
    assert len(purged["done"]) == 1
    assert mail_queue.depths()[mail_queue.poison_name] == 0


def all_mail_envelopes(azurite: Azurite, mail_queue: MailQueue) -> list[QueueEnvelope]:
    """Every envelope on the mail queue (received, then deleted: the test's own)."""
    client = base64_queue_client(azurite, mail_queue.name)
    envelopes = []
    while page := list(client.receive_messages(messages_per_page=32, max_messages=32)):
        for message in page:
            envelopes.append(QueueEnvelope.model_validate_json(message.content))
            client.delete_message(message)
    return envelopes


@pytest.mark.usefixtures("admin_environment")
def test_should_print_the_poison_queue_as_a_table_by_default_and_as_json_when_asked(
    azurite: Azurite,
    mail_queue: MailQueue,
    statuses: StatusStore,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    refused_by_sendgrid(mail_queue, statuses, "msg-t1")
    moved_by_the_host(azurite, mail_queue, "msg-t2")

    lines = admin_table(capsys, monkeypatch, "list")
    listed, _ = run_admin(capsys, "list")

    assert lines[0].split() == ["ID", "AGE", "ATTEMPTS", "REPLAY", "REASON"]
    rows = {line.split()[0]: line for line in lines[1:3]}
    assert rows["msg-t1"].split()[2:5] == ["2", "after", "fix"]
    assert (
        "SendGrid 403: The from address does not match a verified Sender Identity"
        in (rows["msg-t1"])
    )
    assert rows["msg-t2"].split()[1:5] == ["-", "3", "after", "fix"]
    assert all(len(line) <= 160 for line in lines)
    assert any(
        line.startswith("  sender_identity (1, replay: after fix): Verify") for line in lines
    )
    # --json: the whole reason, SendGrid's errors and the advice, as the admin route has them.
    documents = {d["id"]: d for d in listed["dead_letters"]}
    assert documents["msg-t1"]["reason"] == REFUSED_REASON
    assert documents["msg-t1"]["provider_errors"] == [UNVERIFIED.model_dump()]
    assert documents["msg-t1"]["replay"] == "after_fix"
    assert set(listed) == {"dead_letters"}


@pytest.mark.usefixtures("admin_environment")
def test_should_print_what_a_replay_did_as_a_table(
    mail_queue: MailQueue,
    statuses: StatusStore,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    refused_by_sendgrid(mail_queue, statuses, "msg-t3")

    lines = admin_table(capsys, monkeypatch, "replay", "msg-t3", "msg-gone")

    assert lines == [
        "ID        RESULT     WHY",
        "msg-t3    replayed",
        "msg-gone  not found",
        "",
        "1 replayed, 0 skipped, 1 not found.",
    ]
