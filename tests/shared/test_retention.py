"""Expiry of leftover claim-check bodies, on the in-memory store: which blobs a run deletes.

Against Azurite: tests/integration/test_retention.py; on the local host: tests/e2e.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pytest

import shared.gateway
from shared.errors import StorageUnavailable
from shared.retention import BodyExpiryResult, ExpiryResult, PartitionExpiry, expire_bodies
from tests.fakes import FakeMessageBodyStore

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=timezone.utc)
RETENTION = timedelta(days=8, hours=8)


def written(bodies: FakeMessageBodyStore, name: str, age: timedelta) -> None:
    bodies.put(name, b"{}")
    bodies.modified[name] = NOW - age


def test_should_delete_only_live_bodies_older_than_the_retention() -> None:
    bodies = FakeMessageBodyStore()
    old = RETENTION + timedelta(seconds=1)
    written(bodies, "live/msg-old.json", old)
    written(bodies, "live/msg-fresh.json", RETENTION - timedelta(seconds=1))
    # A dead letter's body and one written before the prefixes: never deleted by age.
    written(bodies, "dead-letters/msg-kept.json", old * 10)
    written(bodies, "msg-root.json", old * 10)

    result = expire_bodies(bodies, NOW, RETENTION, max_blobs=100)

    assert (result.deleted, result.more_left, result.retention) == (1, False, RETENTION)
    assert sorted(bodies.blobs) == [
        "dead-letters/msg-kept.json",
        "live/msg-fresh.json",
        "msg-root.json",
    ]


def test_should_list_at_most_its_bound_and_say_more_are_left() -> None:
    bodies = FakeMessageBodyStore()
    for n in range(5):
        written(bodies, f"live/msg-{n}.json", RETENTION * 2)

    first = expire_bodies(bodies, NOW, RETENTION, max_blobs=3)
    second = expire_bodies(bodies, NOW, RETENTION, max_blobs=3)

    assert (first.deleted, first.more_left) == (3, True)
    assert (second.deleted, second.more_left) == (2, False)
    assert bodies.blobs == {}


def test_should_raise_storage_unavailable_and_keep_the_rest_when_a_delete_fails() -> None:
    bodies = FakeMessageBodyStore()
    written(bodies, "live/msg-a.json", RETENTION * 2)
    bodies.make_unavailable(["delete"])

    with pytest.raises(StorageUnavailable):
        expire_bodies(bodies, NOW, RETENTION, max_blobs=10)

    assert list(bodies.blobs) == ["live/msg-a.json"]


def test_should_refuse_a_bound_below_one() -> None:
    with pytest.raises(ValueError, match="max_blobs"):
        expire_bodies(FakeMessageBodyStore(), NOW, RETENTION, max_blobs=0)


class _Expiring:
    """A gateway whose table expiries answer and whose body expiry fails, as the timer sees it."""

    settings = SimpleNamespace(status_retention_days=30.0)

    def expire_activity(self) -> ExpiryResult:
        return ExpiryResult(5, 2, 0, False, timedelta(days=7))

    def expire_statuses(self) -> PartitionExpiry:
        return PartitionExpiry(partitions=1, deleted=4, calls=2)

    def expire_keys(self) -> PartitionExpiry:
        return PartitionExpiry(deleted=1, calls=1)

    def expire_bodies(self) -> BodyExpiryResult:
        raise StorageUnavailable("container mail-large: ServiceRequestError")


def test_should_report_the_rows_expired_when_the_bodies_cannot_be_reached(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(shared.gateway, "_built_gateway", _Expiring)

    with caplog.at_level(logging.ERROR, logger="shared.gateway"):
        result = shared.gateway.expire_data()

    # The table's part is done and reported whole; the bodies wait for the next run.
    assert result == ExpiryResult(
        5,
        2,
        0,
        False,
        timedelta(days=7),
        statuses=PartitionExpiry(partitions=1, deleted=4, calls=2),
        status_retention=timedelta(days=30),
        keys=PartitionExpiry(deleted=1, calls=1),
    )
    assert result.bodies is None
    assert [r.getMessage() for r in caplog.records] == [
        "Retention: leftover message bodies could not be expired: "
        "container mail-large: ServiceRequestError"
    ]
