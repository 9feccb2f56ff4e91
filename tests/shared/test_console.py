"""The operator console's data (depths, the hour per minute, latest messages, one message) and
its page (self-contained, allowed by hash, with no key in it)."""

from __future__ import annotations

import base64
import hashlib
import itertools
import re
from datetime import datetime, timedelta
from typing import cast

import pytest
from azure.data.tables import TableClient

import shared.console
from shared.activity import ActivityEvent
from shared.console import Console, console_page
from shared.delivery_events import DeliveryEventStore, TimelineEntry
from shared.errors import MessageNotFound, StorageUnavailable
from shared.message_ids import accept_time, new_message_id
from shared.status import MessageState, MessageStatus
from tests.fakes import FakeActivityLog, FakeMailQueue, FakeStatusStore, FakeTableClient
from tests.samples import NOW, envelope

# Mid-minute, so that "this minute" and "the minute before" are both plain to see.
AT = NOW + timedelta(seconds=30)
# Message ids as the gateway gives them (UUIDs): the console looks up no other.
ID_1 = "9a7c2d4e-1b3f-4e5a-8c6d-0f1e2d3c4b5a"
ID_2 = "3e5f7a9b-2c4d-4f6e-9a8b-1c2d3e4f5a6b"
SENT, RETRYING, FAILED = MessageState.SENT, MessageState.RETRYING, MessageState.FAILED
CLIENTS = ("billing", "shop")
RETENTION = timedelta(days=30)


def status(message_id: str, state: MessageState, client: str | None = "billing") -> MessageStatus:
    return MessageStatus(
        id=message_id,
        state=state,
        accepted_at=NOW - timedelta(minutes=5),
        updated_at=NOW,
        attempts=1,
        client=client,
    )


@pytest.fixture
def events() -> DeliveryEventStore:
    return DeliveryEventStore(cast(TableClient, FakeTableClient("mailstatus")))


@pytest.fixture
def console(
    fake_queue: FakeMailQueue,
    fake_statuses: FakeStatusStore,
    fake_activity: FakeActivityLog,
    events: DeliveryEventStore,
) -> Console:
    return Console(
        fake_queue,
        fake_statuses,
        fake_activity,
        events,
        lambda: AT,
        client_names=lambda: CLIENTS,
        status_retention=RETENTION,
    )


def event(
    message_id: str | None, state: MessageState, minutes_ago: int, attempt: int = 1
) -> ActivityEvent:
    return ActivityEvent(message_id, state, attempt, AT - timedelta(minutes=minutes_ago))


def test_should_show_the_depth_of_the_mail_and_poison_queues(
    console: Console, fake_queue: FakeMailQueue
) -> None:
    fake_queue.enqueue(envelope(id="msg-q1"))
    fake_queue.enqueue(envelope(id="msg-q2"))
    fake_queue.dead_letter(envelope(id="msg-q3").to_json())

    summary = console.summary()

    assert summary["queues"] == {
        "mail": {"name": "mail-outbound", "depth": 2},
        "poison": {"name": "mail-outbound-poison", "depth": 1},
    }
    assert summary["generated_at"] == AT.isoformat()


def test_should_count_each_outcome_in_its_minute_over_the_last_hour(
    console: Console, fake_activity: FakeActivityLog
) -> None:
    fake_activity.events += [
        event("msg-1", SENT, 0),
        event("msg-2", SENT, 0),
        event("msg-3", RETRYING, 0),
        event("msg-3", SENT, 2, attempt=2),
        event("msg-4", FAILED, 59),
        event("msg-5", SENT, 60),  # the minute before the hour: not shown
        event(None, FAILED, 1),  # an unreadable queue message still counts
    ]

    minutes = console.summary()["minutes"]

    assert len(minutes) == 60
    assert minutes[0]["minute"] == (NOW - timedelta(minutes=59)).isoformat()
    assert minutes[-1]["minute"] == NOW.isoformat()
    assert minutes[-1] == {"minute": NOW.isoformat(), "sent": 2, "retried": 1, "failed": 0}
    assert minutes[-2] == {
        "minute": (NOW - timedelta(minutes=1)).isoformat(),
        "sent": 0,
        "retried": 0,
        "failed": 1,
    }
    assert (minutes[-3]["sent"], minutes[0]["failed"]) == (1, 1)
    totals = {name: sum(m[name] for m in minutes) for name in ("sent", "retried", "failed")}
    assert totals == {"sent": 3, "retried": 1, "failed": 2}


def test_should_say_the_counts_cover_the_whole_hour(
    console: Console, fake_activity: FakeActivityLog
) -> None:
    fake_activity.events.append(event("msg-1", SENT, 3))

    assert console.summary()["activity"] == {
        "rows_read": 1,
        "limit": shared.console.ACTIVITY_READ_LIMIT,
        "complete": True,
        "covers_from": (NOW - timedelta(minutes=59)).isoformat(),
    }


def test_should_say_from_when_the_counts_cover_the_hour_past_the_read_limit(
    console: Console, fake_activity: FakeActivityLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shared.console, "ACTIVITY_READ_LIMIT", 3)
    fake_activity.events += [event(f"msg-{n}", SENT, n) for n in range(5)]

    summary = console.summary()

    # Minutes 0 to 2 fill the limit; minute 2 may have more rows, so only 0 and 1 are whole.
    assert summary["activity"]["complete"] is False
    assert summary["activity"]["covers_from"] == (NOW - timedelta(minutes=1)).isoformat()
    assert sum(m["sent"] for m in summary["minutes"]) == 3


def test_should_list_the_latest_messages_newest_first_in_their_current_state(
    console: Console, fake_activity: FakeActivityLog, fake_statuses: FakeStatusStore
) -> None:
    fake_activity.events += [
        event("msg-old", SENT, 30),
        event("msg-replayed", FAILED, 10),
        event("msg-new", RETRYING, 5),
        event("msg-new", SENT, 1, attempt=2),
        event("msg-gone", SENT, 2),  # its status record is not there (any more)
        event(None, FAILED, 0),
    ]
    for message_id, state in [
        ("msg-old", SENT),
        ("msg-replayed", MessageState.QUEUED),  # replayed since it failed
        ("msg-new", SENT),
    ]:
        fake_statuses.add(status(message_id, state))

    latest = console.summary()["latest"]

    assert [(m["id"], m["status"]) for m in latest] == [
        ("msg-new", "sent"),
        ("msg-replayed", "queued"),
        ("msg-old", "sent"),
    ]
    assert latest[0]["client"] == "billing"
    assert latest[0]["accepted_at"] == (NOW - timedelta(minutes=5)).isoformat()


def test_should_read_at_most_the_latest_twenty_status_records(
    console: Console, fake_activity: FakeActivityLog, fake_statuses: FakeStatusStore
) -> None:
    for n in range(30):
        fake_activity.events.append(event(f"msg-{n:02d}", SENT, n))
        fake_statuses.add(status(f"msg-{n:02d}", SENT))
    reads: list[str] = []
    fake_statuses.after_get = reads.append

    latest = console.summary()["latest"]

    assert [m["id"] for m in latest] == [f"msg-{n:02d}" for n in range(20)]
    assert len(reads) == 20


def test_should_show_any_clients_message_with_the_outcomes_its_record_keeps(
    console: Console, fake_activity: FakeActivityLog, fake_statuses: FakeStatusStore
) -> None:
    retried, sent_at = AT - timedelta(minutes=3), AT - timedelta(minutes=1)
    record = (
        status(ID_1, MessageState.SENDING, client="other")
        .concluded(RETRYING, 1, retried)
        .concluded(SENT, 2, sent_at)
    )
    fake_statuses.add(record)
    # The activity log is the hour's index for the summary, not read for one message.
    fake_activity.make_unavailable(["read"])

    document = console.message(ID_1)

    assert document["status"]["id"] == ID_1
    assert document["status"]["status"] == "sent"
    assert document["status"]["client"] == "other"
    assert document["activity"] == [
        {"state": "retrying", "attempt": 1, "at": retried.isoformat()},
        {"state": "sent", "attempt": 2, "at": sent_at.isoformat()},
    ]


@pytest.mark.parametrize(
    ("message_id", "reads_expected"),
    [(ID_2, 1), ("msg-unknown", 0), ("x" * 65, 0), ("a/b#c?d", 0)],
    ids=["unknown", "not a uuid", "too long", "not a table key"],
)
def test_should_refuse_a_message_that_does_not_exist_with_not_found(
    message_id: str, reads_expected: int, console: Console, fake_statuses: FakeStatusStore
) -> None:
    reads: list[str] = []
    fake_statuses.after_get = reads.append

    with pytest.raises(MessageNotFound):
        console.message(message_id)
    # An id the gateway never gives is not looked up at all.
    assert len(reads) == reads_expected


def test_should_show_a_message_waiting_on_the_queue_as_queued_for_the_client_its_id_names(
    console: Console,
) -> None:
    # No attempt has written its record yet: the id says when, and for whom.
    accepted = accept_time(AT - timedelta(seconds=2))

    document = console.message(new_message_id(accepted, "shop"))

    assert document["status"]["status"] == "queued"
    assert document["status"]["client"] == "shop"
    assert document["status"]["accepted_at"] == accepted.isoformat()
    assert document["activity"] == []


@pytest.mark.parametrize(
    "message_id",
    [
        new_message_id(AT - timedelta(seconds=2), "a client since deleted"),
        new_message_id(AT - RETENTION - timedelta(minutes=1), "shop"),
    ],
    ids=["no client's", "older than the retention"],
)
def test_should_not_find_a_message_without_a_record_its_id_gives_no_client_now(
    message_id: str, console: Console
) -> None:
    with pytest.raises(MessageNotFound):
        console.message(message_id)


def test_should_let_storage_unavailable_through(
    console: Console, fake_activity: FakeActivityLog
) -> None:
    fake_activity.make_unavailable(["read"])

    with pytest.raises(StorageUnavailable):
        console.summary()


# --- the page ---------------------------------------------------------------------------------


def inline(tag: str, html: str) -> list[str]:
    return re.findall(rf"<{tag}\b[^>]*>(.*?)</{tag}>", html, flags=re.DOTALL)


def sha256_source(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def test_should_allow_exactly_the_pages_own_script_and_style() -> None:
    page = console_page()
    policy = dict(
        directive.strip().split(" ", 1)
        for directive in page.headers["Content-Security-Policy"].split(";")
    )
    [script] = inline("script", page.html)
    [style] = inline("style", page.html)

    assert policy["default-src"] == "'none'"
    assert policy["script-src"] == sha256_source(script)
    assert policy["style-src"] == sha256_source(style)
    assert policy["connect-src"] == "'self'"
    assert policy["frame-ancestors"] == "'none'"
    assert "@STYLE@" not in page.html
    assert "@SCRIPT@" not in page.html


def test_should_load_nothing_from_outside_the_page() -> None:
    html = console_page().html

    # No element fetches anything but the page's own routes: no src, no stylesheet or font link,
    # no CSS import or url(); the only link is the empty data: icon that stops a favicon request.
    assert re.findall(r"\bsrc\s*=", html) == []
    assert re.findall(r"<link\b[^>]*>", html) == ['<link rel="icon" href="data:,">']
    assert "@import" not in html
    assert "url(" not in html
    addresses = set(re.findall(r"https?://[^\s'\"`)]+", html))
    assert addresses == {"http://www.w3.org/2000/svg"}  # a namespace name, never fetched


def test_should_keep_the_key_out_of_the_page_and_its_copies() -> None:
    page = console_page()

    # The page is the same bytes for every request: nothing of the request can be in it.
    assert "x-functions-key" in page.html  # the script sends the key the operator typed
    assert page.headers["Referrer-Policy"] == "no-referrer"
    assert page.headers["Cache-Control"] == "no-store"


def test_should_build_the_page_once() -> None:
    assert console_page() is console_page()


def test_should_place_each_minute_from_its_start(console: Console) -> None:
    minutes = console.summary()["minutes"]

    starts = [datetime.fromisoformat(m["minute"]) for m in minutes]
    assert all(b - a == timedelta(minutes=1) for a, b in itertools.pairwise(starts))
    assert all(s.second == 0 and s.microsecond == 0 for s in starts)


def test_should_show_what_sendgrids_events_said_of_a_message(
    console: Console, fake_statuses: FakeStatusStore, events: DeliveryEventStore
) -> None:
    fake_statuses.add(status(ID_1, MessageState.SENT))
    delivered = TimelineEntry("delivered", AT, "sg-event-1", recipient_domain="example.net")
    events.record(ID_1, [delivered], AT)

    shown = console.message(ID_1)["status"]

    assert shown["delivery"] == "delivered"
    assert shown["timeline"] == [delivered.to_document()]
