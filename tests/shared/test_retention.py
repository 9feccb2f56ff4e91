"""Expiry of leftover claim-check bodies, on the in-memory store: which blobs a run deletes.

Against Azurite: tests/integration/test_retention.py; on the local host: tests/e2e.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from shared.errors import StorageUnavailable
from shared.retention import expire_bodies
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
