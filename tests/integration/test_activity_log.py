"""The activity log in Azurite's table: per-minute partitions read newest first, status records
and idempotency rows never mistaken for activity, buffered outcomes written by a background
flusher as packed rows, and packed and single rows read together."""

from __future__ import annotations

import collections
import json
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from typing import Any, cast

import pytest
from azure.core.exceptions import ServiceRequestError
from azure.data.tables import TableClient

from shared.activity import PARTITION_PREFIX, ActivityEvent, ActivityLog, partition_of
from shared.idempotency import IdempotencyStore
from shared.status import MessageState, MessageStatus, StatusStore

NOW = datetime(2026, 3, 2, 9, 30, 40, 250000, tzinfo=timezone.utc)
HOUR_START = NOW.replace(second=0, microsecond=0) - timedelta(minutes=59)
SENT, RETRYING, FAILED = MessageState.SENT, MessageState.RETRYING, MessageState.FAILED


def at(minutes_ago: float) -> datetime:
    return NOW - timedelta(minutes=minutes_ago)


@pytest.fixture
def activity(statuses: StatusStore) -> ActivityLog:
    return ActivityLog(statuses.table)


def test_should_sort_later_minutes_first() -> None:
    keys = [partition_of(at(m)) for m in (0, 1, 59, 60 * 24 * 365)]

    assert keys == sorted(keys)
    assert all(k.startswith(PARTITION_PREFIX) for k in keys)
    assert partition_of(NOW) == partition_of(NOW.replace(second=0, microsecond=0))


def test_should_read_the_hour_newest_first_with_every_field(
    activity: ActivityLog, statuses: StatusStore, keys: IdempotencyStore
) -> None:
    events = [
        ActivityEvent("msg-1", SENT, 1, at(0.1)),
        ActivityEvent("msg-2", RETRYING, 3, at(30)),
        ActivityEvent("msg-3", FAILED, 8, at(59)),
        ActivityEvent(None, FAILED, 1, at(0.2)),
        ActivityEvent("msg-old", SENT, 1, at(61)),
    ]
    for event in events:
        activity.record(event)
    # A status record and an idempotency row share the table; neither is activity.
    statuses.put(MessageStatus("msg-1", SENT, NOW, NOW, attempts=1))
    keys.claim("order-42", b"{}", "msg-1", NOW)

    window = activity.between(HOUR_START, NOW, limit=100)

    assert window.complete is True
    assert window.covers_from == HOUR_START
    assert window.events == [events[0], events[3], events[1], events[2]]


def test_should_stop_at_the_limit_and_say_from_when_the_hour_is_whole(
    activity: ActivityLog,
) -> None:
    for n in range(6):
        activity.record(ActivityEvent(f"msg-{n}", SENT, 1, at(n)))

    window = activity.between(HOUR_START, NOW, limit=4)

    assert [e.message_id for e in window.events] == ["msg-0", "msg-1", "msg-2", "msg-3"]
    assert window.complete is False
    # The minute of msg-3 may hold rows not read: the whole minutes are the later ones.
    assert window.covers_from == at(2).replace(second=0, microsecond=0)


def test_should_write_one_row_per_message_attempt_and_outcome(
    activity: ActivityLog, status_table: TableClient
) -> None:
    activity.record(ActivityEvent("msg-1", RETRYING, 1, at(1)))
    activity.record(ActivityEvent("msg-1", RETRYING, 1, at(1)))  # a redelivered copy
    activity.record(ActivityEvent("msg-1", SENT, 2, at(1)))

    rows = list(status_table.query_entities(f"PartitionKey eq '{partition_of(at(1))}'"))

    assert sorted(r["RowKey"] for r in rows) == ["msg-1-0001-retrying", "msg-1-0002-sent"]


def test_should_read_packed_and_single_rows_together_counting_an_outcome_found_twice_once(
    activity: ActivityLog, status_table: TableClient, buffered_logs: Callable[..., ActivityLog]
) -> None:
    packed = buffered_logs(status_table, flush_seconds=60)
    packed.record(ActivityEvent("msg-1", RETRYING, 1, at(1)))
    packed.record(ActivityEvent("msg-2", SENT, 1, at(1)))
    packed.record(ActivityEvent(None, FAILED, 1, at(1)))
    packed.flush()
    # A redelivered copy's outcome, written again later as a row of its own: counted once, as
    # the later one.
    activity.record(ActivityEvent("msg-1", RETRYING, 1, at(0.5)))
    activity.record(ActivityEvent("msg-1", SENT, 2, at(0.5)))

    window = activity.between(HOUR_START, NOW, limit=100)

    assert sorted(window.events, key=repr) == sorted(
        [
            ActivityEvent("msg-1", RETRYING, 1, at(0.5)),
            ActivityEvent("msg-1", SENT, 2, at(0.5)),
            ActivityEvent("msg-2", SENT, 1, at(1)),
            ActivityEvent(None, FAILED, 1, at(1)),
        ],
        key=repr,
    )


def test_should_skip_a_packed_row_it_cannot_read_and_read_the_rest(
    activity: ActivityLog, status_table: TableClient
) -> None:
    activity.record(ActivityEvent("msg-1", SENT, 1, at(1)))
    partition = partition_of(at(1))
    good = [["msg-2", "sent", 1, at(1).isoformat()]]
    for key, events in [
        ("~packed-a", "not json"),
        ("~packed-b", '{"a": 1}'),
        ("~packed-c", '[["msg-3", "exploded", 1, "2026-03-02T09:29:00+00:00"], [1, 2]]'),
        ("~packed-d", json.dumps(good)),
    ]:
        status_table.create_entity({"PartitionKey": partition, "RowKey": key, "events": events})

    window = activity.between(HOUR_START, NOW, limit=100)

    assert sorted(e.message_id or "" for e in window.events) == ["msg-1", "msg-2"]


def test_should_read_no_events_before_the_table_exists(status_table: TableClient) -> None:
    status_table.delete_table()

    window = ActivityLog(status_table).between(HOUR_START, NOW, limit=10)

    assert (window.events, window.complete) == ([], True)


class UnreachableTable:
    table_name = "mailstatus"

    def upsert_entity(self, *args: object, **kwargs: object) -> None:
        raise ServiceRequestError("connection refused")


def test_should_log_but_not_raise_when_an_outcome_cannot_be_written(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = ActivityLog(UnreachableTable())  # type: ignore[arg-type]

    log.record(ActivityEvent("msg-1", SENT, 1, NOW))

    assert "msg-1: its sent outcome was not added to the activity log" in caplog.text


class CountingTable:
    """The real table client, counting the calls that write and the rows in each transaction."""

    def __init__(self, table: TableClient) -> None:
        self._table = table
        self.table_name = table.table_name
        self.calls: collections.Counter[str] = collections.Counter()
        self.transaction_sizes: list[int] = []
        self.packed_sizes: list[int] = []

    def upsert_entity(self, *args: Any, **kwargs: Any) -> Any:
        self.calls["upsert_entity"] += 1
        return self._table.upsert_entity(*args, **kwargs)

    def create_entity(self, entity: Any, **kwargs: Any) -> Any:
        self.calls["create_entity"] += 1
        self.packed_sizes.append(len(json.loads(entity["events"])))
        return self._table.create_entity(entity, **kwargs)

    def submit_transaction(self, operations: Any, **kwargs: Any) -> Any:
        operations = list(operations)
        self.calls["submit_transaction"] += 1
        self.transaction_sizes.append(len(operations))
        return self._table.submit_transaction(operations, **kwargs)

    def query_entities(self, *args: Any, **kwargs: Any) -> Any:
        return self._table.query_entities(*args, **kwargs)

    @property
    def writes(self) -> int:
        return sum(self.calls[c] for c in ("upsert_entity", "create_entity", "submit_transaction"))


class DroppingTable(CountingTable):
    """The real table client, but every write fails as if the network were down while `down`."""

    down = False

    def upsert_entity(self, *args: Any, **kwargs: Any) -> Any:
        if self.down:
            self.calls["refused"] += 1
            raise ServiceRequestError("connection refused")
        return super().upsert_entity(*args, **kwargs)

    def create_entity(self, entity: Any, **kwargs: Any) -> Any:
        if self.down:
            self.calls["refused"] += 1
            raise ServiceRequestError("connection refused")
        return super().create_entity(entity, **kwargs)


@pytest.fixture
def counting(status_table: TableClient) -> CountingTable:
    return CountingTable(status_table)


@pytest.fixture
def buffered_logs() -> Iterator[Callable[..., ActivityLog]]:
    """Builds buffered activity logs, each closed (its flusher stopped) after the test."""
    built: list[ActivityLog] = []

    def build(table: object, flush_seconds: float) -> ActivityLog:
        log = ActivityLog(cast(TableClient, table), flush_seconds=flush_seconds)
        built.append(log)
        return log

    yield build
    for log in built:
        log.close()


def poll(probe: Callable[[], bool], timeout: float) -> float:
    """Seconds until `probe` held; fails the test if it did not within `timeout`."""
    start = time.monotonic()
    while not probe():
        if time.monotonic() - start > timeout:
            pytest.fail(f"not true within {timeout}s")
        time.sleep(0.01)
    return time.monotonic() - start


def test_should_write_a_buffer_of_600_outcomes_in_one_packed_row_per_250_per_minute(
    counting: CountingTable, buffered_logs: Callable[..., ActivityLog]
) -> None:
    # Far longer than the test: only flush() writes.
    log = buffered_logs(counting, flush_seconds=60)
    events = [ActivityEvent(f"msg-{n:03d}", SENT, 1, at(1)) for n in range(520)]
    events += [ActivityEvent(f"msg-{n:03d}", RETRYING, 2, at(2)) for n in range(80)]
    for event in events:
        log.record(event)
    # Redelivered copies: the same outcomes again, each buffered once, the later one.
    later = [ActivityEvent(f"msg-{n:03d}", SENT, 1, at(1) + timedelta(seconds=1)) for n in range(5)]
    for event in later:
        log.record(event)

    assert counting.writes == 0
    log.flush()

    window = ActivityLog(counting._table).between(HOUR_START, NOW, limit=1000)
    assert window.complete is True
    assert sorted(window.events, key=repr) == sorted(later + events[5:], key=repr)
    # 520 outcomes of one minute in three rows (at most 250 each), 80 of the other in one.
    assert counting.calls == {"create_entity": 4}
    assert sorted(counting.packed_sizes) == [20, 80, 250, 250]


def test_should_write_a_single_buffered_outcome_in_one_row(
    counting: CountingTable, buffered_logs: Callable[..., ActivityLog]
) -> None:
    log = buffered_logs(counting, flush_seconds=60)
    log.record(ActivityEvent("msg-1", SENT, 1, at(1)))

    log.flush()
    log.flush()  # nothing left to write

    assert counting.calls == {"create_entity": 1}
    assert [e.message_id for e in log.between(HOUR_START, NOW, limit=10).events] == ["msg-1"]


def test_should_write_buffered_outcomes_in_the_background_within_the_flush_delay(
    counting: CountingTable, buffered_logs: Callable[..., ActivityLog]
) -> None:
    log = buffered_logs(counting, flush_seconds=0.5)

    def written(count: int) -> Callable[[], bool]:
        return lambda: len(log.between(HOUR_START, NOW, limit=100).events) == count

    for n in range(3):
        log.record(ActivityEvent(f"msg-{n}", SENT, 1, at(0.1)))
    assert counting.writes == 0  # recording did not write

    poll(written(3), timeout=3.0)
    assert counting.calls == {"create_entity": 1}
    # The flusher goes on: a later outcome is written too, with no flush() from anyone.
    log.record(ActivityEvent("msg-3", RETRYING, 1, at(0.2)))
    poll(written(4), timeout=3.0)
    assert counting.calls == {"create_entity": 2}


def test_should_lose_no_outcome_recorded_from_many_threads_while_the_flusher_writes(
    counting: CountingTable, buffered_logs: Callable[..., ActivityLog]
) -> None:
    log = buffered_logs(counting, flush_seconds=0.02)
    start = threading.Barrier(8)

    def deliver(worker: int) -> None:
        start.wait()
        for n in range(100):
            log.record(ActivityEvent(f"w{worker}-{n:03d}", SENT, 1, at(n % 2)))
            if n % 10 == 0:
                time.sleep(0.005)  # let flushes happen while the others record

    threads = [threading.Thread(target=deliver, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    log.flush()

    window = log.between(HOUR_START, NOW, limit=1000)
    assert len({e.message_id for e in window.events}) == len(window.events) == 800
    assert counting.writes < 800 / 4


def test_should_still_write_each_outcome_at_once_without_a_flush_delay(
    counting: CountingTable,
) -> None:
    log = ActivityLog(cast(TableClient, counting))

    for n in range(5):
        log.record(ActivityEvent(f"msg-{n}", SENT, 1, at(n)))
        # Readable as soon as record() returns: nothing waits for a flush.
        assert len(log.between(HOUR_START, NOW, limit=10).events) == n + 1

    assert counting.calls == {"upsert_entity": 5}


def test_should_log_a_failed_batch_without_raising_and_write_later_outcomes_once_storage_is_back(
    status_table: TableClient,
    buffered_logs: Callable[..., ActivityLog],
    caplog: pytest.LogCaptureFixture,
) -> None:
    table = DroppingTable(status_table)
    log = buffered_logs(table, flush_seconds=0.05)
    table.down = True

    log.record(ActivityEvent("msg-1", SENT, 1, at(1)))
    log.record(ActivityEvent("msg-2", SENT, 1, at(1)))
    log.record(ActivityEvent("msg-3", FAILED, 1, at(2)))
    # The background flusher meets the outage: two rows (one per minute) refused.
    poll(lambda: table.calls["refused"] == 2, timeout=3.0)
    log.flush()

    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 2
    assert any("2 outcome(s) were not written" in w for w in warnings)
    assert any("1 outcome(s) were not written" in w for w in warnings)
    assert all("ServiceRequestError" in w and "msg-" not in w for w in warnings)

    table.down = False
    log.record(ActivityEvent("msg-4", SENT, 2, at(0.5)))

    # The later outcome is written by the flusher; the refused ones are given up on, not
    # retried forever.
    poll(lambda: bool(log.between(HOUR_START, NOW, limit=10).events), timeout=3.0)
    log.flush()
    assert [e.message_id for e in log.between(HOUR_START, NOW, limit=10).events] == ["msg-4"]
    assert (table.calls["refused"], table.writes) == (2, 1)
