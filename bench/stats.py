"""Medians, ratios and the interleaved run order: the arithmetic of a noisy machine, kept small
and tested (tests/test_bench.py)."""
from __future__ import annotations

import statistics
from typing import Sequence


def interleaved(modes: Sequence[str], rounds: int) -> list[tuple[int, str]]:
    """(round, mode) in A B C A B C ... order, so that slow drifts (another job starting, thermal
    throttling) hit every mode alike instead of one block of runs."""
    return [(r, m) for r in range(rounds) for m in modes]


def median(values: Sequence[float]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def ratio(value: float | None, base: float | None) -> float | None:
    """value / base, None when either is unknown or the base is zero."""
    if value is None or not base:
        return None
    return value / base


def paired_ratios(values: Sequence[float | None], base: Sequence[float | None]) -> list[float]:
    """Per-round ratios (run i of a mode against run i of the baseline, which ran next to it)."""
    return [v / b for v, b in zip(values, base) if v is not None and b]


def spread(values: Sequence[float]) -> float | None:
    """(max - min) / median: how noisy a set of runs was."""
    vals = [v for v in values if v is not None]
    if len(vals) < 2:
        return None
    m = statistics.median(vals)
    return (max(vals) - min(vals)) / m if m else None
