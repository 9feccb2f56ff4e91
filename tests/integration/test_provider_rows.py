"""The breaker and brake rows in a real Azurite table, shared by two stores as two hosts would
share them (each with its own table client), under concurrent conflicting writes."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable

from azure.data.tables import TableClient

from shared.brake import SendRateBrake, Window
from shared.breaker import (
    BREAKER_ROW,
    PARTITION_PREFIX,
    BreakerPolicy,
    BreakerState,
    ProviderBreakers,
    Verdict,
)
from shared.settings import Settings
from shared.status import StatusStore, table_client

THREADS_PER_HOST = 6


def host_table(settings: Settings) -> TableClient:
    """The status table as one host reaches it: a client of its own."""
    store = StatusStore(table_client(settings, settings.status_table_name))
    store.ensure_exists()
    return store.table


def all_at_once(*work: Callable[[], object]) -> list[object]:
    """Run every callable on its own thread, released together; their results in order."""
    start = threading.Barrier(len(work))
    results: list[object] = [None] * len(work)

    def run(index: int) -> None:
        start.wait()
        results[index] = work[index]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(work))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results


def test_should_count_every_failure_of_two_hosts_writing_at_once(
    storage_settings: Settings,
) -> None:
    failures = 2 * THREADS_PER_HOST
    # Opens only once every failure is counted: one lost update would leave it closed.
    policy = BreakerPolicy(failures=failures, cooldown_seconds=60)
    hosts = [ProviderBreakers(host_table(storage_settings), policy) for _ in range(2)]
    reader = ProviderBreakers(host_table(storage_settings), policy, refresh_seconds=0)

    all_at_once(*(lambda h=h: h.failed("sendgrid") for h in hosts for _ in range(THREADS_PER_HOST)))

    row = host_table(storage_settings).get_entity(PARTITION_PREFIX + "sendgrid", BREAKER_ROW)
    assert (row["state"], row["failures"], row["opened"]) == ("open", failures, 1)
    assert reader.verdict("sendgrid", 60) is Verdict.SKIP


def test_should_give_one_trial_to_one_host_when_many_ask_at_once(
    storage_settings: Settings,
) -> None:
    policy = BreakerPolicy(failures=1, cooldown_seconds=1)
    hosts = [ProviderBreakers(host_table(storage_settings), policy) for _ in range(2)]
    hosts[0].failed("smtp")
    hosts[1].verdict("smtp", 60)
    time.sleep(1.1)

    verdicts = all_at_once(
        *(lambda h=h: h.verdict("smtp", 60) for h in hosts for _ in range(THREADS_PER_HOST))
    )

    assert Counter(verdicts) == {Verdict.TRIAL: 1, Verdict.SKIP: 2 * THREADS_PER_HOST - 1}
    hosts[0].succeeded("smtp")
    reader = ProviderBreakers(host_table(storage_settings), policy, refresh_seconds=0)
    assert reader.state("smtp").state is BreakerState.CLOSED


class RecordingBrake(SendRateBrake):
    """The real brake, noting the second each token it hands out was leased in."""

    def __init__(self, table: TableClient, rate: int, taken: list[int]) -> None:
        super().__init__(table, {"sendgrid": rate})
        self.taken = taken

    def _take(self, provider: str, plan: Window) -> float | None:
        wait = super()._take(provider, plan)
        if wait is None:  # under the provider's lock still
            self.taken.append(self._leases[provider].window)
        return wait


def test_should_hold_the_rate_of_two_hosts_taking_at_once(storage_settings: Settings) -> None:
    rate = 7
    taken: list[int] = []
    hosts = [RecordingBrake(host_table(storage_settings), rate, taken) for _ in range(2)]

    def send_for(host: SendRateBrake, seconds: float) -> None:
        deadline = time.time() + seconds
        while time.time() < deadline:
            host.take("sendgrid")

    all_at_once(
        *(lambda h=h: send_for(h, 2.5) for h in hosts for _ in range(THREADS_PER_HOST // 2))
    )

    per_second = Counter(taken)
    assert len(per_second) >= 2
    assert max(per_second.values()) <= rate
    # Both hosts' grants went to the one row: the seconds they shared were full, or nearly
    # (a lease's leftovers are lost when its second ends).
    assert sum(per_second.values()) > rate


def test_should_keep_counting_past_2038(storage_settings: Settings) -> None:
    # Seconds since the epoch pass 2**31 on 2038-01-19: a plain int column would be refused.
    later = SendRateBrake(host_table(storage_settings), {"smtp": 2}, clock=lambda: 2**31 + 0.5)

    assert later.take("smtp")
    assert later.take("smtp")
    row = host_table(storage_settings).get_entity(PARTITION_PREFIX + "smtp", "brake")
    assert (row["window"], row["count"]) == (2**31, 2)
