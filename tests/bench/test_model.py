"""The execution-model scenario: the in-flight cap, its rows and verdict, and a small real run."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from azure.data.tables import TableClient

from bench.model import (
    ASYNC,
    GATEWAY,
    SDK,
    VARIANTS,
    ModelComparison,
    ModelRun,
    gather_capped,
    run_capped,
    run_model,
    table_name,
)
from bench.run import model_note, model_rows, parse_args
from devstack.azurite import Azurite
from devstack.sendgrid_standin import SendGridStandIn
from shared.status import STATUS_ROW


class InFlight:
    """Counts calls running at once and remembers the most."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.now = 0
        self.most = 0
        self.started: list[int] = []

    def enter(self, item: int) -> None:
        with self._lock:
            self.now += 1
            self.most = max(self.most, self.now)
            self.started.append(item)

    def leave(self) -> None:
        with self._lock:
            self.now -= 1


def test_should_keep_at_most_the_limit_in_flight_on_a_larger_pool() -> None:
    calls = InFlight()

    def work(item: int) -> None:
        calls.enter(item)
        time.sleep(0.005)
        calls.leave()

    with ThreadPoolExecutor(8) as pool:
        ran = run_capped(pool, work, range(30), 3)

    assert ran == 30
    assert sorted(calls.started) == list(range(30))
    assert calls.most <= 3


def test_should_start_nothing_more_after_a_failure_and_raise_it() -> None:
    calls = InFlight()

    def work(item: int) -> None:
        calls.enter(item)
        calls.leave()
        if item == 2:
            raise RuntimeError("refused")

    with ThreadPoolExecutor(4) as pool, pytest.raises(RuntimeError, match="refused"):
        run_capped(pool, work, range(100), 1)

    assert calls.started == [0, 1, 2]


def test_should_refuse_a_limit_below_one() -> None:
    with ThreadPoolExecutor(1) as pool, pytest.raises(ValueError, match="at least 1"):
        run_capped(pool, lambda item: None, range(3), 0)
    with pytest.raises(ValueError, match="at least 1"):
        asyncio.run(gather_capped(_noop, range(3), 0))


async def _noop(item: int) -> None:
    await asyncio.sleep(0)


def test_should_keep_at_most_the_limit_of_tasks_unfinished() -> None:
    calls = InFlight()

    async def work(item: int) -> None:
        calls.enter(item)
        await asyncio.sleep(0.002)
        calls.leave()

    assert asyncio.run(gather_capped(work, range(30), 4)) == 30
    assert sorted(calls.started) == list(range(30))
    assert calls.most <= 4


def test_should_start_no_more_tasks_after_a_failure_and_raise_it() -> None:
    calls = InFlight()

    async def work(item: int) -> None:
        calls.enter(item)
        calls.leave()
        await asyncio.sleep(0)
        if item == 2:
            raise RuntimeError("refused")

    with pytest.raises(RuntimeError, match="refused"):
        asyncio.run(gather_capped(work, range(100), 1))

    assert calls.started == [0, 1, 2]


def test_should_name_each_variants_table_validly_and_afresh() -> None:
    names = [table_name(variant) for variant in VARIANTS * 2]
    assert all(re.fullmatch(r"[A-Za-z][A-Za-z0-9]{2,62}", name) for name in names)
    assert len(set(names)) == len(names)


def _comparison(async_seconds: float, async_cpu: float) -> ModelComparison:
    return ModelComparison(
        latency_ms=100,
        in_flight=24,
        async_transport="AsyncioRequestsTransport",
        runs=(
            ModelRun(GATEWAY, "a", 1000, 5.0, 1.6),
            ModelRun(SDK, "b", 1000, 8.0, 4.0),
            ModelRun(ASYNC, "c", 1000, async_seconds, async_cpu),
        ),
    )


def test_should_rate_each_variant_against_the_ceiling_and_its_cpu_against_the_gateways() -> None:
    rows = model_rows(_comparison(async_seconds=10.0, async_cpu=8.0))

    rates, cpus = rows[:3], rows[3:]
    assert [row.scenario for row in rows] == ["6 model"] * 6
    assert [row.gateway for row in rates] == pytest.approx([200.0, 125.0, 100.0])
    assert [row.baseline for row in rates] == pytest.approx([240.0] * 3)
    assert [row.ratio for row in rates] == pytest.approx([200 / 240, 125 / 240, 100 / 240])
    assert [row.gateway for row in cpus] == pytest.approx([1600.0, 4000.0, 8000.0])
    assert [row.baseline for row in cpus] == pytest.approx([1600.0] * 3)
    assert [row.ratio for row in cpus] == pytest.approx([1.0, 2.5, 5.0])
    assert all(row.target is None for row in rows)
    assert "async def" in cpus[2].figure


def test_should_favour_def_when_async_costs_more_cpu() -> None:
    note = model_note(_comparison(async_seconds=10.0, async_cpu=8.0))
    assert "favour `def` on the thread pool" in note
    assert "5.00 times its CPU" in note
    assert "2.00 times that of `def` on the same Azure SDK" in note
    assert "AsyncioRequestsTransport" in note


def test_should_favour_async_only_when_it_costs_less_and_keeps_up() -> None:
    assert "favour `async def`" in model_note(_comparison(async_seconds=5.0, async_cpu=1.2))
    # Cheaper but slower: not a win.
    assert "favour `def`" in model_note(_comparison(async_seconds=6.0, async_cpu=1.2))


def test_should_give_no_verdict_without_both_models() -> None:
    comparison = ModelComparison(100, 24, "AioHttpTransport", (ModelRun(GATEWAY, "a", 10, 1, 1),))
    assert "no verdict" in model_note(comparison)


def test_should_run_the_model_scenario_by_default() -> None:
    args = parse_args([])
    assert "model" in args.scenarios
    assert args.model_messages == 1000


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Azurite, SendGridStandIn]]:
    outbox: Path = tmp_path_factory.mktemp("outbox")
    with (
        Azurite(in_memory=True) as azurite,
        SendGridStandIn(outbox=outbox, write_eml=False) as standin,
    ):
        yield azurite, standin


def test_should_send_every_message_and_mark_it_sent_in_every_variant(
    stack: tuple[Azurite, SendGridStandIn],
) -> None:
    azurite, standin = stack

    comparison = run_model(
        azurite=azurite, standin=standin, messages=30, latency_ms=10, warmup=5, in_flight=8
    )

    assert [run.variant for run in comparison.runs] == list(VARIANTS)
    assert [run.messages for run in comparison.runs] == [30, 30, 30]
    accepted = [r for r in standin.requests() if r.get("status") == 202]
    assert len(accepted) == 3 * (30 + 5)
    for run in comparison.runs:
        with TableClient.from_connection_string(azurite.connection_string, run.table) as table:
            records = list(table.list_entities())
        assert len(records) == 30 + 5
        assert {record["RowKey"] for record in records} == {STATUS_ROW}
        assert {record["state"] for record in records} == {"sent"}
        assert all(record["provider_message_id"] for record in records)
