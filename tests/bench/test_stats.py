"""Percentiles, summaries and ratios."""

from __future__ import annotations

import pytest

from bench.stats import LatencySummary, growth_per_item, percentile, ratio


def test_should_interpolate_between_order_statistics_like_numpy() -> None:
    assert percentile([1, 2, 3, 4], 0.5) == 2.5
    assert percentile([4, 1, 3, 2], 0.25) == pytest.approx(1.75)
    assert percentile(list(range(1, 101)), 0.99) == pytest.approx(99.01)


def test_should_return_the_extremes_at_zero_and_one() -> None:
    assert percentile([5, 3, 9], 0.0) == 3
    assert percentile([5, 3, 9], 1.0) == 9


def test_should_return_the_single_value_for_any_fraction() -> None:
    assert percentile([7.5], 0.99) == 7.5


@pytest.mark.parametrize("fraction", [-0.1, 1.5])
def test_should_refuse_a_fraction_outside_zero_to_one(fraction: float) -> None:
    with pytest.raises(ValueError, match="between 0 and 1"):
        percentile([1, 2], fraction)


def test_should_refuse_an_empty_sample() -> None:
    with pytest.raises(ValueError, match="no values"):
        percentile([], 0.5)


def test_should_summarise_p50_p95_p99() -> None:
    summary = LatencySummary.of([i / 1000 for i in range(1, 1001)])
    assert summary.count == 1000
    assert summary.p50 == pytest.approx(0.5005)
    assert summary.p95 == pytest.approx(0.95005)
    assert summary.p99 == pytest.approx(0.99001)


def test_should_summarise_no_latencies_as_zeros() -> None:
    assert LatencySummary.of([]) == LatencySummary(0, 0.0, 0.0, 0.0)


def test_should_divide_or_give_none_when_a_side_is_missing() -> None:
    assert ratio(3.0, 4.0) == 0.75
    assert ratio(None, 4.0) is None
    assert ratio(3.0, None) is None
    assert ratio(3.0, 0.0) is None


def test_should_give_growth_per_item() -> None:
    assert growth_per_item(100.0, 130.0, 1500) == pytest.approx(0.02)
    with pytest.raises(ValueError, match="positive"):
        growth_per_item(1.0, 2.0, 0)
