"""The closed-loop load generator and the CPU meter."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import pytest

from bench.load import Call, CpuMeter, LoadResult, process_cpu_seconds, run_closed_loop


def _sleeper(seconds: float, ok: bool = True) -> Callable[[], tuple[Call, Callable[[], None]]]:
    closed: list[bool] = []

    def factory() -> tuple[Call, Callable[[], None]]:
        def call() -> bool:
            time.sleep(seconds)
            return ok

        return call, lambda: closed.append(True)

    return factory


def test_should_count_requests_completed_inside_the_window() -> None:
    result = run_closed_loop(_sleeper(0.01), concurrency=2, seconds=0.4, warmup=0.05)
    # Two threads at ~10 ms a request: about 80 in 0.4 s, fewer on a busy machine.
    assert 20 <= result.completed <= 82
    assert result.errors == 0
    assert result.throughput == result.completed / 0.4
    assert result.summary.p50 >= 0.009


def test_should_count_failures_apart_from_throughput() -> None:
    result = run_closed_loop(_sleeper(0.005, ok=False), concurrency=1, seconds=0.2, warmup=0.0)
    assert result.completed == 0
    assert result.errors > 0
    assert result.throughput == 0


def test_should_fail_rather_than_hang_when_a_thread_cannot_start() -> None:
    def broken() -> tuple[Call, Callable[[], None]]:
        raise RuntimeError("no client")

    with pytest.raises(RuntimeError, match="no client"):
        run_closed_loop(broken, concurrency=2, seconds=0.1, warmup=0.0)


def test_should_meter_the_cpu_of_the_bench_process_itself() -> None:
    meter = CpuMeter({})
    meter.start()
    deadline = time.process_time() + 0.1
    while time.process_time() < deadline:
        pass
    used = meter.stop()
    # psutil reads clock ticks (10 ms): allow for the rounding.
    assert used["bench"] >= 0.07
    assert process_cpu_seconds(os.getpid()) > 0


def test_should_give_cpu_per_request_only_when_measured() -> None:
    result = LoadResult(concurrency=1, seconds=1.0, latencies=[0.1, 0.1], cpu={"host": 0.5})
    assert result.cpu_per_request("host") == 0.25
    assert result.cpu_per_request("azurite") is None
    assert LoadResult(1, 1.0, cpu={"host": 1.0}).cpu_per_request("host") is None
