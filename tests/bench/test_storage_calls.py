"""The storage-calls scenario: a small real run, and how its figures become rows."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bench.run import STORAGE_CALL, storage_rows
from bench.storage_calls import (
    CALLS,
    GATEWAY,
    REPLAY,
    REQUESTS,
    TRANSPORTS,
    WRITE_SHAPES,
    CallCost,
    StorageCallsResult,
    run_storage_calls,
)
from devstack.azurite import Azurite


@pytest.fixture(scope="module")
def azurite() -> Iterator[Azurite]:
    with Azurite(in_memory=True) as running:
        yield running


def test_should_time_every_call_kind_on_every_transport(azurite: Azurite) -> None:
    result = run_storage_calls(azurite, 20)

    assert {(c.call, c.transport) for c in result.costs} == {
        (call, transport) for call in CALLS for transport in TRANSPORTS
    }
    assert all(c.calls == 20 and c.seconds > 0 for c in result.costs)
    assert len(storage_rows(result)) == 2 * len(CALLS) + len(WRITE_SHAPES)


def test_should_compare_the_gateway_with_azure_cores_transport_and_show_the_floor() -> None:
    costs = []
    for call in CALLS:
        costs += [
            CallCost(call, REPLAY, 1000, 0.3, 0.3),
            CallCost(call, GATEWAY, 1000, 0.6, 1.0),
            CallCost(call, REQUESTS, 1000, 1.2, 1.5),
        ]

    first, floor, *_ = storage_rows(StorageCallsResult(costs))

    assert first.gateway == pytest.approx(600.0)
    assert first.baseline == pytest.approx(1200.0)
    assert first.ratio == pytest.approx(0.5)
    assert first.target == STORAGE_CALL
    assert first.met is True
    assert floor.gateway == pytest.approx(300.0)


def test_should_miss_the_target_when_the_gateway_costs_more_than_azure_cores_transport() -> None:
    costs = [
        CallCost(CALLS[0], t, 10, cpu, 1.0) for t, cpu in ((REPLAY, 1), (GATEWAY, 3), (REQUESTS, 2))
    ]

    [row, _] = storage_rows(StorageCallsResult(costs))

    assert row.met is False


def test_should_time_each_write_shape_against_the_one_it_replaced(azurite: Azurite) -> None:
    result = run_storage_calls(azurite, 200)

    for measured, replaced in WRITE_SHAPES:
        shape, before = result.shape(measured), result.shape(replaced)
        assert shape is not None
        assert before is not None
        assert shape.calls >= 200
        assert before.calls >= 200
    rows = [
        r for r in storage_rows(result) if "baseline: activity" in r.figure or "echoed" in r.figure
    ]
    assert len(rows) == len(WRITE_SHAPES)
    assert all(r.target == STORAGE_CALL for r in rows)
