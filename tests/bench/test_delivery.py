"""The delivery scenario's helpers: the ceiling, progress in the outbox, memory, the rate."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bench.delivery import DrainResult, count_outbox, in_flight_ceiling, peak_rss, rss


def _app(tmp_path: Path, queues: dict[str, object]) -> Path:
    (tmp_path / "host.json").write_text(
        json.dumps({"version": "2.0", "extensions": {"queues": queues}})
    )
    return tmp_path


def test_should_add_batch_size_and_new_batch_threshold(tmp_path: Path) -> None:
    assert in_flight_ceiling(_app(tmp_path, {"batchSize": 8, "newBatchThreshold": 16})) == 24


def test_should_use_the_hosts_default_threshold_per_core(tmp_path: Path) -> None:
    cores = os.cpu_count() or 1
    assert in_flight_ceiling(_app(tmp_path, {"batchSize": 32})) == 32 + 16 * cores


def test_should_read_the_repositorys_host_json() -> None:
    assert in_flight_ceiling() > 0


def test_should_count_only_finished_outbox_records(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text("{}")
    (tmp_path / "a.eml").write_text("")
    (tmp_path / "b.eml").write_text("")
    assert count_outbox(tmp_path) == 1
    assert count_outbox(tmp_path / "missing") == 0


def test_should_read_the_resident_set_of_a_process() -> None:
    assert rss(os.getpid()) > 0
    peak = peak_rss(os.getpid())
    assert peak is None or peak >= rss(os.getpid()) // 2


def test_should_rate_the_drain_between_the_first_and_the_last_send() -> None:
    result = DrainResult(messages=2000, latency_ms=100, in_flight=24, sent=2000)
    result.first_to_last_seconds = 19.99
    assert result.ceiling == pytest.approx(240.0)
    assert result.rate == pytest.approx(100.0)
    result.cpu = {"host": 10.0}
    assert result.cpu_per_message("host") == pytest.approx(0.005)
    assert DrainResult(messages=1, latency_ms=100, in_flight=24, sent=1).rate == 0.0
