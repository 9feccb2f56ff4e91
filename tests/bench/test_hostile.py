"""The hostile-body scenario: its bodies, its measurement on the real stack, and its rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.hostile import (
    BODIES,
    V1,
    HostileBody,
    HostileResult,
    HostileRun,
    send_once,
    v1_empty_arrays,
)
from bench.run import HOSTILE_ADDED_MIB, hostile_rows
from bench.stack import gateway_settings
from devstack.azurite import Azurite
from devstack.sendgrid_standin import SendGridStandIn
from shared.errors import InvalidMessage
from tests.security.hostile_requests import InMemoryGateway

SIZE = 3_000_000
MIB = 2**20


@pytest.mark.parametrize("body", BODIES, ids=[f"{b.route} {b.name}" for b in BODIES])
def test_should_build_a_json_body_of_the_size_asked_that_the_route_refuses(
    body: HostileBody,
) -> None:
    content = body.build(SIZE)

    assert 0.99 * SIZE <= len(content) <= SIZE
    json.loads(content)
    with pytest.raises(InvalidMessage):
        InMemoryGateway().accept("v1" if body.route == V1 else "v3", content)


def test_should_measure_one_request_on_a_fresh_host(tmp_path: Path) -> None:
    with (
        Azurite(in_memory=True) as azurite,
        SendGridStandIn(outbox=tmp_path / "outbox", write_eml=False) as standin,
    ):
        settings = gateway_settings(azurite, standin, queue="bench-hostile", table="benchhostile")

        # Enough values for the one pass to take a tenth of a second or so: CPU time is counted
        # in clock ticks.
        run = send_once(settings, tmp_path, V1, "empty arrays", v1_empty_arrays(3_000_000))

    assert (run.status, run.refused, run.size) == (400, True, 3_000_000)
    assert 0 < run.answer_bytes < 1000
    assert run.cpu_seconds > 0
    assert run.added_rss >= 0


def _run(name: str, cpu: float, mib: float, status: int | None = 400) -> HostileRun:
    return HostileRun(V1, name, 30_000_000, status, 200, cpu, int(mib * MIB), cpu)


def test_should_hold_each_body_to_one_second_and_200_mib() -> None:
    floor = _run("unread", 0.1, 50, status=415)
    result = HostileResult(floor, (_run("fits", 0.4, 80), _run("too slow", 1.5, 250)))

    received, cpu, memory, slow_cpu, slow_memory = hostile_rows(result)

    assert received.target is None
    assert (cpu.gateway, cpu.met, memory.gateway, memory.met) == (0.4, True, 80, True)
    assert memory.baseline == HOSTILE_ADDED_MIB
    assert (slow_cpu.met, slow_memory.met) == (False, False)
    assert "v1 too slow" in slow_cpu.figure
