"""The key arithmetic of status and idempotency-key expiry: id prefixes, ranges, boundaries."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import pytest

from shared.activity import partition_of
from shared.idempotency import period_partition, period_start_partition
from shared.message_ids import new_message_id
from shared.status import known_message_id
from shared.status_retention import (
    V7_SINCE,
    WATERMARK_PARTITION,
    expiring_message_id,
    id_prefix,
    status_expiry_range,
)

NOW = datetime(2027, 1, 15, 12, 0, 0, tzinfo=timezone.utc)
MONTH = timedelta(days=30)
HASH = "ab" * 32


def v7_id(at: datetime) -> str:
    """A message id made at `at`, as the gateway makes one for a message accepted then."""
    return new_message_id(at, "app")


def test_should_make_lowercase_uuid7_ids_the_gateway_itself_accepts() -> None:
    before = datetime.now(timezone.utc)
    made = [new_message_id(datetime.now(timezone.utc), "app") for _ in range(50)]
    after = datetime.now(timezone.utc)

    for message_id in made:
        assert known_message_id(message_id) == message_id
        assert uuid.UUID(message_id).version == 7
        assert expiring_message_id(message_id)
        # Its first 13 characters are its time: between the clock's readings around it.
        assert id_prefix(before) <= message_id[:13] <= id_prefix(after + timedelta(seconds=1))
    assert len(set(made)) == 50


def test_should_write_the_prefix_as_the_milliseconds_since_1970_in_hex() -> None:
    at = datetime(2026, 12, 5, 0, 0, 0, 123_000, tzinfo=timezone.utc)

    assert id_prefix(at) == "{:08x}-{:04x}".format(*divmod(1_796_428_800_123, 1 << 16))
    assert id_prefix(datetime(1970, 1, 1, tzinfo=timezone.utc)) == "00000000-0000"


@pytest.mark.parametrize(
    ("accepted", "expires"),
    [
        (NOW - MONTH - timedelta(milliseconds=1), True),
        (NOW - MONTH, False),  # the cutoff's own millisecond stays
        (NOW - MONTH + timedelta(milliseconds=1), False),
        (V7_SINCE, True),
        (NOW, False),
    ],
)
def test_should_put_a_message_in_range_exactly_when_accepted_before_the_cutoff(
    accepted: datetime, expires: bool
) -> None:
    start, end = status_expiry_range(NOW - MONTH, None)

    assert (start <= v7_id(accepted) < end) is expires


def test_should_start_at_the_watermark_once_there_is_one() -> None:
    watermark = v7_id(NOW - timedelta(days=40))

    start, end = status_expiry_range(NOW - MONTH, watermark)

    assert (start, end) == (watermark, id_prefix(NOW - MONTH))
    # A watermark older than the first v7 id changes nothing.
    assert status_expiry_range(NOW - MONTH, "0")[0] == id_prefix(V7_SINCE)


def test_should_never_put_another_kind_of_partition_in_range() -> None:
    # Even the furthest cutoff a prefix of decimal digits allows (the year 10889).
    far = datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(milliseconds=0x9FFFFFFFFFFF)
    start, end = status_expiry_range(far, None)
    others = [
        partition_of(NOW),
        partition_of(datetime(1970, 1, 1, tzinfo=timezone.utc)),
        "activity-",
        "idempotency-" + HASH,
        period_partition(HASH, NOW, timedelta(hours=24)),
        "health",
        WATERMARK_PARTITION,
    ]

    assert [other for other in others if start <= other < end] == []


@pytest.mark.parametrize(
    ("partition", "ours"),
    [
        ("0194a1b2-c3d4-7e5f-8a6b-7c8d9e0f1a2b", True),
        # A legacy uuid4 id in the same range of time digits: skipped.
        ("0194a1b2-c3d4-4e5f-8a6b-7c8d9e0f1a2b", False),
        # Not a message id as the gateway writes it: upper case, a wrong variant, too short.
        ("0194A1B2-C3D4-7E5F-8A6B-7C8D9E0F1A2B", False),
        ("0194a1b2-c3d4-7e5f-ca6b-7c8d9e0f1a2b", False),
        ("0194a1b2-c3d4-7e5f-8a6b", False),
        ("0194a1b2-c3d4", False),
    ],
)
def test_should_delete_only_partitions_named_by_a_uuid7(partition: str, ours: bool) -> None:
    assert expiring_message_id(partition) is ours


def test_should_cut_periods_at_multiples_of_the_retention_since_1970() -> None:
    day = timedelta(hours=24)
    midnight = datetime(2027, 1, 15, tzinfo=timezone.utc)
    start = int(midnight.timestamp())

    assert period_start_partition(midnight, day) == f"idem-{start:011d}"
    assert period_start_partition(midnight - timedelta(microseconds=1), day) == (
        f"idem-{start - 86400:011d}"
    )
    assert period_start_partition(midnight, day, periods_back=2) == f"idem-{start - 172800:011d}"
    assert period_partition(HASH, midnight, day) == f"idem-{start:011d}-{HASH}"
    # A minute's retention, as tests use it.
    assert period_start_partition(midnight + timedelta(seconds=61), timedelta(minutes=1)) == (
        f"idem-{start + 60:011d}"
    )


def test_should_sort_key_periods_by_time_apart_from_the_older_layout() -> None:
    day = timedelta(hours=24)
    older = period_partition(HASH, NOW - 3 * day, day)
    newer = period_partition("00" * 32, NOW, day)
    end = period_start_partition(NOW, day, periods_back=2)

    assert "idem-" <= older < end <= newer
    # The layout before: never between the bounds, whatever its hash.
    assert not "idem-" <= "idempotency-" + "0" * 64 < end
