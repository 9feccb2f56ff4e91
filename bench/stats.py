"""Latency percentiles and ratios: the arithmetic behind every figure in the bench table."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


def percentile(values: Sequence[float], fraction: float) -> float:
    """The `fraction` quantile (0..1) by linear interpolation between order statistics.

    The same definition as numpy's default ("linear"): p50 of [1, 2, 3, 4] is 2.5.
    """
    if not values:
        raise ValueError("no values")
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction {fraction} is not between 0 and 1")
    ordered = sorted(values)
    position = (len(ordered) - 1) * fraction
    low = math.floor(position)
    high = math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass(frozen=True)
class LatencySummary:
    """Count and the p50/p95/p99 of one set of latencies, in seconds."""

    count: int
    p50: float
    p95: float
    p99: float

    @classmethod
    def of(cls, latencies: Sequence[float]) -> LatencySummary:
        """Summarise latencies; all zero when there are none."""
        if not latencies:
            return cls(0, 0.0, 0.0, 0.0)
        return cls(
            len(latencies),
            percentile(latencies, 0.50),
            percentile(latencies, 0.95),
            percentile(latencies, 0.99),
        )


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator ÷ denominator, or None when either is missing or the denominator is 0."""
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


def growth_per_item(start: float, end: float, items: int) -> float:
    """How much a quantity grew per item between two samples (negative when it shrank)."""
    if items <= 0:
        raise ValueError("items must be positive")
    return (end - start) / items
