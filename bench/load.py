"""A closed-loop load generator (threads) and CPU meters on the processes under test.

Each of `concurrency` threads sends its next request as soon as the previous one answered.
Only requests that complete inside the measured window count (after a warm-up); the CPU of
every watched process is read at the window's edges, so throughput and CPU cover the same
interval.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import psutil

from bench.stats import LatencySummary

logger = logging.getLogger(__name__)

# One request: True when the answer was the expected one.
Call = Callable[[], bool]
# Builds one thread's request function (with its own client) and the function closing it.
CallFactory = Callable[[], tuple[Call, Callable[[], None]]]

ERROR_PAUSE_SECONDS = 0.01
JOIN_GRACE_SECONDS = 60.0
BARRIER_TIMEOUT_SECONDS = 60.0


def process_cpu_seconds(pid: int, *, descendants: bool = True) -> float:
    """User + system CPU seconds of a process, and of its live descendants if asked."""
    try:
        process = psutil.Process(pid)
        times = process.cpu_times()
        total = times.user + times.system
        if descendants:
            total += times.children_user + times.children_system
            for child in process.children(recursive=True):
                try:
                    child_times = child.cpu_times()
                except psutil.NoSuchProcess:
                    continue
                total += child_times.user + child_times.system
    except psutil.NoSuchProcess:
        return 0.0
    return total


class WindowHooks(Protocol):
    """Something to run at the edges of the measured window (a profiler, say)."""

    def start(self) -> None: ...

    def stop(self) -> None: ...


class CpuMeter:
    """CPU seconds used by named processes between `start()` and `stop()`."""

    def __init__(self, pids: Mapping[str, int], *, own_name: str = "bench") -> None:
        # The bench process itself is read without its children: they are the stack.
        self._pids = dict(pids)
        self._own_name = own_name
        self._started: dict[str, float] = {}

    def _read(self) -> dict[str, float]:
        readings = {name: process_cpu_seconds(pid) for name, pid in self._pids.items()}
        readings[self._own_name] = process_cpu_seconds(psutil.Process().pid, descendants=False)
        return readings

    def start(self) -> None:
        """Take the first reading."""
        self._started = self._read()

    def stop(self) -> dict[str, float]:
        """CPU seconds per process since `start()`."""
        ended = self._read()
        return {name: ended[name] - self._started.get(name, ended[name]) for name in ended}


@dataclass
class LoadResult:
    """What one closed-loop run measured inside its window."""

    concurrency: int
    seconds: float
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    cpu: dict[str, float] = field(default_factory=dict)
    # The slowest storage ping during the window (see bench.storage.StallWatch).
    storage_stall: float = 0.0

    @property
    def completed(self) -> int:
        """Successful requests that completed inside the window."""
        return len(self.latencies)

    @property
    def throughput(self) -> float:
        """Successful requests per second."""
        return self.completed / self.seconds

    @property
    def summary(self) -> LatencySummary:
        """Latency percentiles of the successful requests."""
        return LatencySummary.of(self.latencies)

    def cpu_per_request(self, name: str) -> float | None:
        """CPU seconds of one process per successful request, if it was measured."""
        if name not in self.cpu or not self.completed:
            return None
        return self.cpu[name] / self.completed


class _Window:
    """The measured interval, fixed when every thread is ready."""

    def __init__(self, warmup: float, seconds: float) -> None:
        self.warmup = warmup
        self.seconds = seconds
        self.start = 0.0
        self.end = 0.0

    def open(self) -> None:
        now = time.perf_counter()
        self.start = now + self.warmup
        self.end = self.start + self.seconds


def run_closed_loop(
    factory: CallFactory,
    *,
    concurrency: int,
    seconds: float,
    warmup: float,
    meter: CpuMeter | None = None,
    window_hooks: Sequence[WindowHooks] = (),
) -> LoadResult:
    """Run `concurrency` threads for warm-up + `seconds`; measure the window after warm-up."""
    window = _Window(warmup, seconds)
    ready = threading.Barrier(concurrency + 1, action=window.open)
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    errors = [0] * concurrency
    failures: list[Exception] = []

    def worker(index: int) -> None:
        try:
            call, close = factory()
        except Exception as error:
            # Kept for the caller to raise: the other threads and the caller stop waiting.
            failures.append(error)
            ready.abort()
            return
        try:
            try:
                ready.wait(BARRIER_TIMEOUT_SECONDS)
            except threading.BrokenBarrierError:
                return
            mine = latencies[index]
            while time.perf_counter() < window.end:
                started = time.perf_counter()
                try:
                    ok = call()
                except Exception:  # a bench counts failures, it does not stop at one
                    logger.debug("request failed", exc_info=True)
                    ok = False
                finished = time.perf_counter()
                if window.start <= finished <= window.end:
                    if ok:
                        mine.append(finished - started)
                    else:
                        errors[index] += 1
                if not ok:
                    time.sleep(ERROR_PAUSE_SECONDS)
        finally:
            close()

    threads = [
        threading.Thread(target=worker, args=(i,), name=f"load-{i}", daemon=True)
        for i in range(concurrency)
    ]
    for thread in threads:
        thread.start()
    try:
        ready.wait(BARRIER_TIMEOUT_SECONDS)
    except threading.BrokenBarrierError:
        for thread in threads:
            thread.join(JOIN_GRACE_SECONDS)
        if failures:
            raise failures[0] from None
        raise
    time.sleep(max(0.0, window.start - time.perf_counter()))
    for hook in window_hooks:
        hook.start()
    if meter is not None:
        meter.start()
    time.sleep(max(0.0, window.end - time.perf_counter()))
    cpu = meter.stop() if meter is not None else {}
    for hook in window_hooks:
        hook.stop()
    for thread in threads:
        thread.join(JOIN_GRACE_SECONDS)
    return LoadResult(
        concurrency=concurrency,
        seconds=seconds,
        latencies=[x for per_thread in latencies for x in per_thread],
        errors=sum(errors),
        cpu=cpu,
    )
