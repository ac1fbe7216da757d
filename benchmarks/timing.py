"""The one way the benchmarks compare step times on a noisy machine (resources/bench.py, methods/run.py).

Methods run in R interleaved rounds (A B C, A B C, ...), each timing some steps of every method after a warm-up
that is not counted. A round's ratio of method m to a reference is median(m's steps in that round) / median(the
reference's steps in that round): a change of the machine's load between rounds hits both and cancels. Reported per
method: the median step time over all its steps, and for each reference the median of the R round ratios with a
95% percentile bootstrap interval over rounds (10,000 resamples, seed 0). One median per method cannot tell 1.0×
from 1.2× on a shared 2-core machine; an interval that excludes a value can.
"""

from __future__ import annotations

import os
import random
import statistics


def load_average() -> list[float]:
    """1-, 5- and 15-minute load averages: recorded before and after every timed run."""
    return [round(x, 2) for x in os.getloadavg()]


def round_ratios(times: dict[str, list[list[float]]], method: str, ref: str) -> list[float]:
    """Per round: median step time of ``method`` over that of ``ref`` (``times[m][r]``: m's steps in round r)."""
    return [statistics.median(t) / statistics.median(r) for t, r in zip(times[method], times[ref])]


def bootstrap_median_interval(values: list[float], level: float = 0.95, resamples: int = 10_000,
                              seed: int = 0) -> list[float]:
    """Percentile bootstrap interval of the median of ``values`` (the rounds are the resampled unit)."""
    rng = random.Random(seed)
    medians = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(resamples))
    tail = (1 - level) / 2
    return [medians[int(tail * resamples)], medians[min(resamples - 1, int((1 - tail) * resamples))]]


def summarize(times: dict[str, list[list[float]]], refs: tuple[str, ...]) -> dict[str, dict]:
    """Per method: median step time (s), rounds, and ``ratio_to_<ref>`` = {median, ci95, rounds} for each ref."""
    out = {}
    for m, rounds in times.items():
        steps = [t for r in rounds for t in r]
        row = {"median_s": round(statistics.median(steps), 4), "steps": len(steps), "rounds": len(rounds)}
        for ref in refs:
            if ref in times and ref != m:
                ratios = round_ratios(times, m, ref)
                row[f"ratio_to_{ref}"] = {"median": round(statistics.median(ratios), 4),
                                          "ci95": [round(x, 4) for x in bootstrap_median_interval(ratios)],
                                          "rounds": [round(x, 4) for x in ratios]}
        out[m] = row
    return out


def ratio_text(row: dict, ref: str) -> str:
    r = row.get(f"ratio_to_{ref}")
    return f"{r['median']:.2f} [{r['ci95'][0]:.2f}, {r['ci95'][1]:.2f}]" if r else "1"
