"""Message ids: time-ordered UUIDv7s that say when, and for which client, a message was accepted."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import pytest

from shared.message_ids import (
    CLOCK_SKEW,
    accept_time,
    accepted_at,
    new_message_id,
    waiting_since,
)
from shared.status import known_message_id

AT = datetime(2026, 12, 5, 9, 30, 0, 123_000, tzinfo=timezone.utc)
RETENTION = timedelta(days=30)


@pytest.fixture
def fixed_random(monkeypatch: pytest.MonkeyPatch) -> None:
    """The id's random bits all one byte, so that a test's ids are the same on every run."""
    monkeypatch.setattr("shared.message_ids.secrets.token_bytes", lambda n: b"\xa5" * n)


def test_should_say_when_and_for_whom_the_message_was_accepted() -> None:
    message_id = new_message_id(AT, "billing")

    assert accepted_at(message_id, "billing") == AT
    assert accepted_at(message_id, "shop") is None
    assert accepted_at(message_id, "billing ") is None


def test_should_be_a_lowercase_uuid7_the_gateway_looks_up() -> None:
    message_id = new_message_id(AT, "billing")

    assert known_message_id(message_id) == message_id
    parsed = uuid.UUID(message_id)
    assert (parsed.version, parsed.variant) == (7, uuid.RFC_4122)
    # The first 48 bits are the time in milliseconds, as RFC 9562 puts them.
    milliseconds = (AT - datetime(1970, 1, 1, tzinfo=timezone.utc)) // timedelta(milliseconds=1)
    assert parsed.int >> 80 == milliseconds


def test_should_keep_the_accept_time_to_the_millisecond() -> None:
    now = AT + timedelta(microseconds=999)

    assert accept_time(now) == AT
    assert accepted_at(new_message_id(now, "billing"), "billing") == AT


@pytest.mark.usefixtures("fixed_random")
@pytest.mark.parametrize("position", [p for p in range(36) if p not in (8, 13, 14, 18, 23)])
def test_should_not_take_an_id_with_any_one_digit_mistyped(position: int) -> None:
    message_id = new_message_id(AT, "billing")
    digit = message_id[position]
    mistyped = message_id[:position] + ("0" if digit != "0" else "1") + message_id[position + 1 :]

    assert accepted_at(mistyped, "billing") is None


@pytest.mark.parametrize(
    "message_id",
    [
        "0b6e8c1e-2f6a-4d3c-9a51-7f2d1e0c9b84",  # a uuid4, as ids were at first
        "019aeb5c-43c0-7a5d-8f3e-21d4c5b6a7f8",  # a UUIDv7 with no check, as ids were next
    ],
)
def test_should_not_take_ids_made_before_they_carried_a_check(message_id: str) -> None:
    assert accepted_at(message_id, "billing") is None


def test_should_give_ids_that_differ_within_one_millisecond() -> None:
    made = {new_message_id(AT, "billing") for _ in range(10_000)}

    assert len(made) == 10_000


@pytest.mark.parametrize(
    ("accepted", "waiting"),
    [
        (AT - timedelta(seconds=1), True),
        (AT - RETENTION, True),  # the cutoff's own millisecond, as expiry keeps it
        (AT - RETENTION - timedelta(milliseconds=1), False),  # its record would be expired
        (AT + CLOCK_SKEW, True),  # another instance's clock a little ahead
        (AT + CLOCK_SKEW + timedelta(milliseconds=1), False),
    ],
)
def test_should_read_a_message_as_waiting_only_within_the_retention(
    accepted: datetime, waiting: bool
) -> None:
    message_id = new_message_id(accepted, "billing")

    assert waiting_since(message_id, "billing", AT, RETENTION) == (accepted if waiting else None)
    assert waiting_since(message_id, "shop", AT, RETENTION) is None
