"""The operator commands' tables, from the documents their --json prints."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from admin.tables import (
    MIN_LAST_COLUMN,
    age_since,
    client_lines,
    dead_letter_lines,
    human_age,
    one_line,
    table,
    walk_report_lines,
)
from shared.replay_advice import CAUSES, HOST_MOVED, SENDER_IDENTITY

NOW = datetime(2026, 3, 2, 9, 30, tzinfo=timezone.utc)
LONG_REASON = (
    "SendGrid refused the message with 403: The from address does not match a verified Sender "
    "Identity. Mail cannot be sent until this error is resolved. Visit https://sendgrid.com/docs/"
    "for-developers/sending-email/sender-identity/ to see the … (field from)"
)


def letter(id: str | None, age: timedelta | None, **fields: Any) -> dict[str, Any]:
    """A dead letter as the listing's document has it."""
    return {
        "id": id,
        "reason": "SendGrid refused the message with 400",
        "attempts": 1,
        "dead_lettered_at": (NOW - age).isoformat() if age is not None else None,
        "replayable": id is not None,
        **fields,
    }


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (0, "0s"),
        (59.9, "59s"),
        (60, "1m"),
        (3 * 60 + 59, "3m"),
        (2 * 3600 + 5, "2h"),
        (86_399, "23h"),
        (5 * 86_400 + 7_000, "5d"),
        (400 * 86_400, "400d"),
        (-30, "0s"),  # a clock a little ahead of this one
    ],
)
def test_should_show_an_age_in_its_largest_whole_unit(seconds: float, shown: str) -> None:
    assert human_age(seconds) == shown


@pytest.mark.parametrize("iso", [None, "", "yesterday"])
def test_should_show_no_age_without_a_readable_time(iso: str | None) -> None:
    assert age_since(iso, NOW) == "-"


def test_should_put_a_cell_on_one_line_and_cut_it_with_an_ellipsis() -> None:
    assert one_line("a\nb\t c", 10) == "a b c"
    assert one_line("abcdefghijkl", 5) == "abcd…"
    assert len(one_line("x" * 500, 40)) == 40


def test_should_align_columns_and_cut_only_the_last_to_the_width() -> None:
    lines = table(["ID", "N", "REASON"], [["a", "10", "r" * 200], ["bbb", "2", "short"]], 60)

    assert lines[0] == "ID   N   REASON"
    assert lines[1].startswith("a    10  rrr")
    assert len(lines[1]) == 60
    assert lines[1].endswith("…")
    assert lines[2] == "bbb  2   short"


def test_should_keep_some_of_the_last_column_in_a_narrow_terminal() -> None:
    [_, row] = table(["ID", "REASON"], [["x" * 50, "r" * 100]], 40)

    assert row == "x" * 50 + "  " + "r" * (MIN_LAST_COLUMN - 1) + "…"


def test_should_list_dead_letters_with_id_age_attempts_replay_and_a_cut_reason() -> None:
    document = {
        "dead_letters": [
            letter(
                "6f1c0e0e-0000-4000-8000-000000000001",
                timedelta(minutes=3, seconds=10),
                reason=LONG_REASON,
                **CAUSES[SENDER_IDENTITY].to_document(),
            ),
            letter(
                "6f1c0e0e-0000-4000-8000-000000000002",
                None,
                reason="moved to the poison queue by the Functions host after 5 dequeues",
                attempts=3,
                **CAUSES[HOST_MOVED].to_document(),
            ),
            letter(None, None, reason="not a mailgate envelope", attempts=None),
        ]
    }

    lines = dead_letter_lines(document, NOW, 120)

    assert lines[0].split() == ["ID", "AGE", "ATTEMPTS", "REPLAY", "REASON"]
    first = lines[1]
    assert first.startswith("6f1c0e0e-0000-4000-8000-000000000001  3m   1         after fix  ")
    # The reason, its usual beginning made short for the table's room.
    assert "after fix  SendGrid 403: The from address does not match a verifie…" in first
    assert len(first) == 120
    assert first.endswith("…")
    assert lines[2].split()[:4] == ["6f1c0e0e-0000-4000-8000-000000000002", "-", "3", "after"]
    assert lines[3].split()[:4] == ["-", "-", "-", "-"]
    assert "3 dead letter(s)" in lines[5]
    what_to_do = "\n".join(lines[lines.index("What to do:") :])
    assert "sender_identity (1, replay: after fix): Verify the sender in SendGrid" in what_to_do
    assert "host_moved (1, replay: after fix): The function failed" in what_to_do
    assert all(len(line) <= 120 for line in lines)


def test_should_count_each_cause_once_in_what_to_do() -> None:
    advice = CAUSES[SENDER_IDENTITY].to_document()
    document = {"dead_letters": [letter(f"id-{n}", timedelta(hours=2), **advice) for n in range(4)]}

    lines = dead_letter_lines(document, NOW, 100)

    assert [line for line in lines if "sender_identity" in line] == [
        "  sender_identity (4, replay: after fix): Verify the sender in SendGrid (Settings > Sender"
    ]
    assert lines[1].split()[1] == "2h"


def test_should_say_so_when_the_poison_queue_is_empty() -> None:
    assert dead_letter_lines({"dead_letters": []}, NOW, 80) == ["The poison queue is empty."]


def test_should_list_what_a_replay_did_with_each_id() -> None:
    document = {
        "done": ["id-1", "id-2"],
        "skipped": {"id-3": "its client 'app' is disabled; enable it first, or purge"},
        "not_found": ["id-4"],
        "continuation": None,
    }

    lines = walk_report_lines(document, "replayed", 100)

    assert lines == [
        "ID    RESULT     WHY",
        "id-1  replayed",
        "id-2  replayed",
        "id-3  skipped    its client 'app' is disabled; enable it first, or purge",
        "id-4  not found",
        "",
        "2 replayed, 1 skipped, 1 not found.",
    ]


def test_should_say_a_purge_that_met_nothing_in_one_line() -> None:
    document: dict[str, Any] = {"done": [], "skipped": {}, "not_found": [], "continuation": None}

    assert walk_report_lines(document, "purged", 80) == ["0 purged, 0 skipped, 0 not found."]


def test_should_list_clients_with_their_natural_columns_and_never_a_key() -> None:
    clients = [
        {
            "name": "billing",
            "senders": ["invoices@example.com", "@billing.example.com"],
            "rate_per_minute": 120,
            "features": [],
            "enabled": True,
            "created_at": (NOW - timedelta(days=5)).isoformat(),
        },
        {
            "name": "news",
            "senders": ["@news.example.com"],
            "rate_per_minute": 600,
            "features": ["asm", "tracking_settings"],
            "enabled": False,
            "created_at": (NOW - timedelta(minutes=2)).isoformat(),
        },
    ]

    lines = client_lines(clients, NOW, 120)

    assert lines == [
        "NAME     ENABLED  RATE/MIN  FEATURES               AGE  SENDERS",
        "billing  yes      120       -                      5d   "
        "invoices@example.com,@billing.example.com",
        "news     no       600       asm,tracking_settings  2m   @news.example.com",
    ]


def test_should_say_how_to_make_a_client_when_there_is_none() -> None:
    assert client_lines([], NOW, 80)[0].startswith("No clients yet: make client NAME=")
