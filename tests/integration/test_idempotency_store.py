from __future__ import annotations

import hashlib
import threading
from datetime import datetime, timedelta, timezone

import pytest
from azure.data.tables import TableClient

from shared.errors import IdempotencyKeyInUse, IdempotencyKeyReused
from shared.idempotency import PENDING_TIMEOUT, IdempotencyStore, KeyClaim

T0 = datetime(2026, 3, 2, 9, 30, tzinfo=timezone.utc)
RETENTION = timedelta(hours=24)
KEY = "order-42"
BODY = b'{"to": ["someone@example.net"], "subject": "Hello"}'
OTHER_BODY = b'{"to": ["someone@example.net"], "subject": "Changed"}'


def test_should_claim_a_new_key_for_the_new_message(keys: IdempotencyStore) -> None:
    claim = keys.claim(KEY, BODY, "msg-1", T0)

    assert claim.replay is False
    assert (claim.record.message_id, claim.record.completed) == ("msg-1", False)


def test_should_replay_a_completed_key_with_the_original_message_id(
    keys: IdempotencyStore,
) -> None:
    keys.complete(keys.claim(KEY, BODY, "msg-1", T0).record)

    again = keys.claim(KEY, BODY, "msg-2", T0 + timedelta(hours=23))

    assert again.replay is True
    assert (again.record.message_id, again.record.completed) == ("msg-1", True)


@pytest.mark.parametrize("completed", [False, True], ids=["pending", "completed"])
def test_should_refuse_a_key_reused_with_another_body(
    completed: bool, keys: IdempotencyStore
) -> None:
    first = keys.claim(KEY, BODY, "msg-1", T0)
    if completed:
        keys.complete(first.record)

    with pytest.raises(IdempotencyKeyReused):
        keys.claim(KEY, OTHER_BODY, "msg-2", T0 + timedelta(seconds=1))


@pytest.mark.parametrize(
    "age", [timedelta(0), timedelta(seconds=30), PENDING_TIMEOUT - timedelta(milliseconds=1)]
)
def test_should_refuse_a_pending_key_while_it_is_fresh(
    age: timedelta, keys: IdempotencyStore
) -> None:
    keys.claim(KEY, BODY, "msg-1", T0)

    with pytest.raises(IdempotencyKeyInUse):
        keys.claim(KEY, BODY, "msg-2", T0 + age)


def test_should_take_over_an_abandoned_pending_key_keeping_its_message_id(
    keys: IdempotencyStore,
) -> None:
    keys.claim(KEY, BODY, "msg-1", T0)
    later = T0 + PENDING_TIMEOUT + timedelta(seconds=1)

    taken = keys.claim(KEY, BODY, "msg-2", later)

    assert taken.replay is False
    assert (taken.record.message_id, taken.record.created_at) == ("msg-1", later)
    # The takeover is a fresh claim: a third request meanwhile waits for it.
    with pytest.raises(IdempotencyKeyInUse):
        keys.claim(KEY, BODY, "msg-3", later + timedelta(seconds=1))
    keys.complete(taken.record)
    assert keys.claim(KEY, BODY, "msg-4", later + timedelta(seconds=2)).record.message_id == (
        "msg-1"
    )


@pytest.mark.parametrize("body", [BODY, OTHER_BODY], ids=["same body", "another body"])
def test_should_claim_a_key_anew_once_its_retention_has_passed(
    body: bytes, keys: IdempotencyStore
) -> None:
    keys.complete(keys.claim(KEY, BODY, "msg-1", T0).record)

    fresh = keys.claim(KEY, body, "msg-2", T0 + RETENTION + timedelta(seconds=1))

    assert fresh.replay is False
    assert (fresh.record.message_id, fresh.record.completed) == ("msg-2", False)


def test_should_still_replay_on_the_last_moment_of_retention(keys: IdempotencyStore) -> None:
    keys.complete(keys.claim(KEY, BODY, "msg-1", T0).record)

    assert keys.claim(KEY, BODY, "msg-2", T0 + RETENTION).replay is True


def test_should_forget_a_released_key(keys: IdempotencyStore) -> None:
    keys.release(keys.claim(KEY, BODY, "msg-1", T0).record)

    again = keys.claim(KEY, BODY, "msg-2", T0 + timedelta(seconds=1))

    assert (again.replay, again.record.message_id) == (False, "msg-2")


def test_should_keep_different_keys_apart(keys: IdempotencyStore) -> None:
    first = keys.claim("key-a", BODY, "msg-1", T0)
    second = keys.claim("key-b", BODY, "msg-2", T0)

    assert (first.record.message_id, second.record.message_id) == ("msg-1", "msg-2")


def test_should_store_keys_and_bodies_only_as_digests(
    keys: IdempotencyStore, status_table: TableClient
) -> None:
    keys.claim(KEY, BODY, "msg-1", T0)

    [entity] = status_table.list_entities()

    # In the partition of its period: T0's day, periods being IDEMPOTENCY_RETENTION_HOURS long.
    day = int(datetime(2026, 3, 2, tzinfo=timezone.utc).timestamp())
    assert entity["PartitionKey"] == f"idem-{day:011d}-{hashlib.sha256(KEY.encode()).hexdigest()}"
    assert entity["body_hash"] == hashlib.sha256(BODY).hexdigest()
    stored = repr(dict(entity))
    assert KEY not in stored
    assert "someone@example.net" not in stored


def test_should_let_exactly_one_of_20_concurrent_requests_claim_a_key(
    keys: IdempotencyStore,
) -> None:
    start = threading.Barrier(20)
    claims: list[KeyClaim] = []
    refusals: list[Exception] = []
    lock = threading.Lock()

    def request(number: int) -> None:
        start.wait()
        try:
            claim = keys.claim(KEY, BODY, f"msg-{number}", T0)
            if not claim.replay:
                # The winner finishes at once: later requests may see it completed.
                keys.complete(claim.record)
            with lock:
                claims.append(claim)
        except Exception as error:  # every outcome is counted below
            with lock:
                refusals.append(error)

    requests = [threading.Thread(target=request, args=(n,)) for n in range(20)]
    for thread in requests:
        thread.start()
    for thread in requests:
        thread.join(timeout=60)

    [winner] = [c for c in claims if not c.replay]
    replays = [c for c in claims if c.replay]
    assert all(c.record.message_id == winner.record.message_id for c in replays)
    assert all(isinstance(e, IdempotencyKeyInUse) for e in refusals), refusals
    # Every request but the winner was answered: with a replay or a refusal.
    assert len(replays) + len(refusals) == 20 - 1


def test_should_let_exactly_one_of_several_requests_take_over_an_abandoned_key(
    keys: IdempotencyStore,
) -> None:
    keys.claim(KEY, BODY, "msg-0", T0)
    later = T0 + PENDING_TIMEOUT + timedelta(seconds=5)
    start = threading.Barrier(8)
    outcomes: list[str] = []

    def request(number: int) -> None:
        start.wait()
        try:
            claim = keys.claim(KEY, BODY, f"msg-{number}", later)
            outcomes.append(f"took over {claim.record.message_id}")
        except IdempotencyKeyInUse:
            outcomes.append("in use")

    requests = [threading.Thread(target=request, args=(n,)) for n in range(1, 9)]
    for thread in requests:
        thread.start()
    for thread in requests:
        thread.join(timeout=60)

    assert sorted(outcomes) == ["in use"] * 7 + ["took over msg-0"]


# --- across the end of a period --------------------------------------------------------------

END_OF_DAY = datetime(2026, 3, 3, tzinfo=timezone.utc)


def test_should_replay_a_key_completed_just_before_its_period_ended(
    keys: IdempotencyStore,
) -> None:
    keys.complete(keys.claim(KEY, BODY, "msg-1", END_OF_DAY - timedelta(milliseconds=1)).record)

    again = keys.claim(KEY, BODY, "msg-2", END_OF_DAY)

    assert (again.replay, again.record.message_id) == (True, "msg-1")


def test_should_refuse_a_key_pending_from_the_period_before_while_it_is_fresh(
    keys: IdempotencyStore,
) -> None:
    keys.claim(KEY, BODY, "msg-1", END_OF_DAY - timedelta(seconds=1))

    with pytest.raises(IdempotencyKeyInUse):
        keys.claim(KEY, BODY, "msg-2", END_OF_DAY + timedelta(seconds=1))
    with pytest.raises(IdempotencyKeyReused):
        keys.claim(KEY, OTHER_BODY, "msg-3", END_OF_DAY + timedelta(seconds=2))


def test_should_take_over_an_abandoned_key_of_the_period_before_where_it_is(
    keys: IdempotencyStore, status_table: TableClient
) -> None:
    first = keys.claim(KEY, BODY, "msg-1", END_OF_DAY - timedelta(seconds=1))
    later = END_OF_DAY + PENDING_TIMEOUT

    taken = keys.claim(KEY, BODY, "msg-2", later)
    keys.complete(taken.record)

    assert (taken.replay, taken.record.message_id) == (False, "msg-1")
    assert taken.record.partition == first.record.partition
    assert [e["PartitionKey"] for e in status_table.list_entities()] == [first.record.partition]
    assert keys.claim(KEY, BODY, "msg-3", later + timedelta(seconds=1)).replay is True


def test_should_claim_a_key_anew_in_its_own_period_once_the_older_one_passed_retention(
    keys: IdempotencyStore, status_table: TableClient
) -> None:
    keys.complete(keys.claim(KEY, BODY, "msg-1", END_OF_DAY - timedelta(hours=1)).record)
    later = END_OF_DAY - timedelta(hours=1) + RETENTION + timedelta(seconds=1)

    fresh = keys.claim(KEY, BODY, "msg-2", later)
    keys.complete(fresh.record)

    assert (fresh.replay, fresh.record.message_id) == (False, "msg-2")
    assert len(list(status_table.list_entities())) == 2
    assert keys.claim(KEY, BODY, "msg-3", later + timedelta(seconds=1)).record.message_id == (
        "msg-2"
    )
