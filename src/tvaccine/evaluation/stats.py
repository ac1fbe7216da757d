"""Intervals for rates measured on prompts, over one or several training seeds (pure numpy, in percent).

- ``wilson(k, n)``: the Wilson score interval of one rate. Unlike a percentile bootstrap it is not zero-width at
  0/n or n/n (0/40 gives [0, 8.76]), which is exactly where HS after a good defence lands.
- ``hierarchical_rate(outcomes)``: the mean over seeds of each seed's rate. Its interval comes from a hierarchical
  bootstrap (draw seeds with replacement, then, for each drawn seed, its prompts with replacement), so both the
  seed-to-seed and the prompt-to-prompt variation count; it is unioned with the Wilson interval of the pooled
  count so it is never zero-width at 0% or 100%. Resampling both levels with replacement is somewhat conservative
  (it counts prompt noise twice when seeds barely differ); with a handful of seeds, seed-only resampling would be
  far worse (three seeds give ten distinct resamples).
- ``paired_difference(a, b)``: Δ = rate(a) − rate(b) in points for two conditions measured on the same seeds and
  prompts. The bootstrap draws the same seeds and prompts for both, so shared prompt difficulty cancels; the
  interval is unioned with Newcombe's paired score interval (Newcombe 1998, method 10, as in Altman et al.,
  *Statistics with Confidence*, 2000) on the pooled pairs, so it is not zero-width when a and b agree everywhere.
- ``curve_auc(steps, values)`` and ``auc_interval(outcomes, steps)``: the trapezoid area under an HS-over-the-attack
  curve divided by the step range (the mean HS over the attack), with the same hierarchical bootstrap; a prompt
  is resampled with all its checkpoints, since the same prompts are asked at every step.

- ``confusion(a, b)`` and ``cohen_kappa(...)``: how two judges' verdicts on the same answers agree. Agreement is not
  validity: two judges that share a blind spot agree on it (benchmarks/judges/ checks one against human labels).

``outcomes`` maps seed -> prompt id -> bool (for the AUC: seed -> step -> prompt id -> bool). Bootstraps are seeded
(``rng_seed``), so a rerun gives the same interval.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np


def _z(level: float) -> float:
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1) (got {level!r})")
    return NormalDist().inv_cdf((1 + level) / 2)


def wilson(k: float, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of the rate k/n, in percent. ``k`` may be fractional (a weighted count)."""
    if n < 1:
        raise ValueError(f"wilson: n must be at least 1 (got {n})")
    if not 0 <= k <= n:
        raise ValueError(f"wilson: k must be between 0 and n={n} (got {k})")
    z = _z(level)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    # At k = 0 (k = n) the bound is 0 (100) exactly; rounding error must not put it a hair inside or outside.
    lo = 0.0 if k == 0 else max(0.0, centre - half)
    hi = 1.0 if k == n else min(1.0, centre + half)
    return 100 * lo, 100 * hi


def _blocks(outcomes: dict, what: str) -> list[np.ndarray]:
    if not outcomes:
        raise ValueError(f"{what}: no seeds")
    blocks = []
    for seed, by_prompt in outcomes.items():
        if not by_prompt:
            raise ValueError(f"{what}: seed {seed!r} has no prompts")
        blocks.append(np.array([bool(v) for v in by_prompt.values()], dtype=float)[:, None])
    return blocks


def _bootstrap(blocks: list[np.ndarray], resamples: int, rng_seed: int) -> np.ndarray:
    """Hierarchical bootstrap of the mean over seeds of each seed's column means: shape (resamples, columns).

    ``blocks[s]`` holds seed s's prompts as rows (columns: conditions or steps, resampled together). Each resample
    draws len(blocks) seeds with replacement, and every drawn seed gets its own draw of its prompts."""
    if not isinstance(resamples, int) or resamples < 1:
        raise ValueError(f"resamples must be a positive integer (got {resamples!r})")
    rng = np.random.default_rng(rng_seed)
    n_seeds, cols = len(blocks), blocks[0].shape[1]
    picks = rng.integers(0, n_seeds, size=(resamples, n_seeds))
    total = np.zeros((resamples, cols))
    for s, x in enumerate(blocks):
        draws = (picks == s).sum(axis=1)  # how often seed s was drawn in each resample
        n = x.shape[0]
        # How many times each prompt is drawn, per draw of the seed: a prompt resample with replacement.
        counts = rng.multinomial(n, np.full(n, 1 / n), size=int(draws.sum()))
        np.add.at(total, np.repeat(np.arange(resamples), draws), counts @ x / n)
    return total / n_seeds


def _percentiles(stat: np.ndarray, level: float) -> tuple[float, float]:
    _z(level)  # raises on a level outside (0, 1)
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(stat, [tail, 100 - tail])
    return float(lo), float(hi)


def hierarchical_rate(outcomes: dict, resamples: int = 2000, rng_seed: int = 0, level: float = 0.95) -> dict:
    """Mean over seeds of each seed's rate (percent), with a hierarchical-bootstrap ∪ Wilson interval.

    Returns ``{"value", "ci95": [lo, hi], "n_seeds", "n"}``; ``n`` counts every (seed, prompt) outcome."""
    blocks = _blocks(outcomes, "hierarchical_rate")
    value = 100 * float(np.mean([x.mean() for x in blocks]))
    boot = _percentiles(100 * _bootstrap(blocks, resamples, rng_seed)[:, 0], level)
    n = sum(x.shape[0] for x in blocks)
    wil = wilson(sum(float(x.sum()) for x in blocks), n, level)
    return {"value": value, "ci95": [min(boot[0], wil[0]), max(boot[1], wil[1])], "n_seeds": len(blocks), "n": n}


def _paired_blocks(a: dict, b: dict, what: str) -> list[np.ndarray]:
    """Per seed, a (prompts × 2) array of a's and b's outcomes in the same prompt order; mismatches are errors."""
    if set(a) != set(b):
        raise ValueError(f"{what}: the seeds differ: only in a: {sorted(map(str, set(a) - set(b)))}, "
                         f"only in b: {sorted(map(str, set(b) - set(a)))}")
    blocks = []
    for seed in a:
        if set(a[seed]) != set(b[seed]):
            only_a, only_b = set(a[seed]) - set(b[seed]), set(b[seed]) - set(a[seed])
            raise ValueError(f"{what}: seed {seed!r}: prompt ids differ: {len(only_a)} only in a "
                             f"{sorted(map(str, only_a))[:5]}, {len(only_b)} only in b "
                             f"{sorted(map(str, only_b))[:5]}")
        if not a[seed]:
            raise ValueError(f"{what}: seed {seed!r} has no prompts")
        blocks.append(np.array([[bool(a[seed][p]), bool(b[seed][p])] for p in a[seed]], dtype=float))
    if not blocks:
        raise ValueError(f"{what}: no seeds")
    return blocks


def newcombe_paired(both: int, only_a: int, only_b: int, neither: int, level: float = 0.95) -> tuple[float, float]:
    """Newcombe's (1998) method-10 interval for p_a − p_b from paired binary outcomes, in points.

    Built from the Wilson intervals of the two marginal rates, combined with the phi correlation of the pairs
    (corrected towards 0 when positive, as Newcombe and Altman et al. do)."""
    n = both + only_a + only_b + neither
    if n < 1:
        raise ValueError("newcombe_paired: no pairs")
    p1, p2 = (both + only_a) / n, (both + only_b) / n
    l1, u1 = (v / 100 for v in wilson(both + only_a, n, level))
    l2, u2 = (v / 100 for v in wilson(both + only_b, n, level))
    margins = (both + only_a) * (only_b + neither) * (both + only_b) * (only_a + neither)
    cross = both * neither - only_a * only_b
    corrected = max(cross - n / 2, 0) if cross > 0 else cross
    phi = corrected / math.sqrt(margins) if margins else 0.0
    d = p1 - p2
    lo = d - math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    hi = d + math.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))
    return 100 * max(-1.0, lo), 100 * min(1.0, hi)


def paired_difference(a: dict, b: dict, resamples: int = 2000, rng_seed: int = 0, level: float = 0.95) -> dict:
    """Δ = rate(a) − rate(b) in points, each rate the mean over seeds; a and b need the same seeds and prompt ids.

    Returns ``{"value", "ci_low", "ci_high", "n_pairs", "n_seeds"}``: a paired hierarchical bootstrap (the same
    resampled seeds and prompts for a and b) ∪ Newcombe's paired interval on the pooled pairs."""
    blocks = _paired_blocks(a, b, "paired_difference")
    value = 100 * float(np.mean([x[:, 0].mean() - x[:, 1].mean() for x in blocks]))
    stat = 100 * _bootstrap(blocks, resamples, rng_seed) @ np.array([1.0, -1.0])
    boot = _percentiles(stat, level)
    pairs = np.concatenate(blocks)
    x, y = pairs[:, 0].astype(bool), pairs[:, 1].astype(bool)
    new = newcombe_paired(int((x & y).sum()), int((x & ~y).sum()), int((~x & y).sum()), int((~x & ~y).sum()), level)
    return {"value": value, "ci_low": min(boot[0], new[0]), "ci_high": max(boot[1], new[1]),
            "n_pairs": len(pairs), "n_seeds": len(blocks)}


def _trapezoid_weights(steps) -> np.ndarray:
    """Weights w with Σ w·values = the trapezoid area under the curve / the step range (Σ w = 1)."""
    s = np.asarray(steps, dtype=float)
    if s.ndim != 1 or s.size < 1:
        raise ValueError("curve_auc: need at least one step")
    if s.size == 1:
        return np.ones(1)  # a single checkpoint: the "mean over the attack" is its value
    gaps = np.diff(s)
    if not (gaps > 0).all():
        raise ValueError(f"curve_auc: steps must be strictly increasing (got {list(steps)})")
    w = np.zeros(s.size)
    w[:-1] += gaps / 2
    w[1:] += gaps / 2
    return w / (s[-1] - s[0])


def curve_auc(steps, values) -> float:
    """Trapezoid area under (steps, values) divided by the step range: the mean of the curve over the attack."""
    w = _trapezoid_weights(steps)
    v = np.asarray(values, dtype=float)
    if v.shape != w.shape:
        raise ValueError(f"curve_auc: {len(w)} steps but {v.size} values")
    return float(w @ v)


def auc_interval(outcomes: dict, steps, resamples: int = 2000, rng_seed: int = 0, level: float = 0.95) -> dict:
    """Mean over seeds of each seed's normalised AUC (percent) of the rate over ``steps``, with an interval.

    ``outcomes[seed][step][prompt_id]``: every seed needs every step, each step the same prompt ids. The interval is
    the hierarchical bootstrap (a drawn prompt brings all its steps) ∪ the Wilson interval of the pooled
    trapezoid-weighted count (each (seed, prompt) contributes its weighted mean over steps), so a curve at 0% or
    100% throughout still gets a non-zero-width interval. Returns ``{"value", "ci95", "n_seeds", "n", "steps"}``."""
    steps = list(steps)
    w = _trapezoid_weights(steps)
    if not outcomes:
        raise ValueError("auc_interval: no seeds")
    blocks = []
    for seed, by_step in outcomes.items():
        missing = [s for s in steps if s not in by_step]
        if missing:
            raise ValueError(f"auc_interval: seed {seed!r} has no outcomes for step(s) {missing}")
        ids = list(by_step[steps[0]])
        if not ids:
            raise ValueError(f"auc_interval: seed {seed!r} has no prompts")
        for s in steps[1:]:
            if set(by_step[s]) != set(ids):
                raise ValueError(f"auc_interval: seed {seed!r}: step {s} has other prompt ids than step {steps[0]}")
        blocks.append(np.array([[bool(by_step[s][p]) for s in steps] for p in ids], dtype=float))
    value = 100 * float(np.mean([x.mean(axis=0) @ w for x in blocks]))
    boot = _percentiles(100 * _bootstrap(blocks, resamples, rng_seed) @ w, level)
    n = sum(x.shape[0] for x in blocks)
    wil = wilson(min(float(sum((x @ w).sum() for x in blocks)), n), n, level)
    return {"value": value, "ci95": [min(boot[0], wil[0]), max(boot[1], wil[1])], "n_seeds": len(blocks), "n": n,
            "steps": steps}


def confusion(a: list[bool], b: list[bool]) -> dict:
    """The 2×2 table of two judges' verdicts on the same answers: ``{both, only_a, only_b, neither}``."""
    if len(a) != len(b):
        raise ValueError(f"confusion: {len(a)} verdicts against {len(b)}")
    a, b = [bool(x) for x in a], [bool(y) for y in b]
    return {"both": sum(x and y for x, y in zip(a, b)), "only_a": sum(x and not y for x, y in zip(a, b)),
            "only_b": sum(y and not x for x, y in zip(a, b)), "neither": sum(not (x or y) for x, y in zip(a, b))}


def _kappa_of(both, only_a, only_b, neither):
    """Cohen's κ of 2×2 tables (arrays allowed); NaN where chance agreement is 1 (0/0)."""
    n = both + only_a + only_b + neither
    observed = (both + neither) / n
    pa, pb = (both + only_a) / n, (both + only_b) / n
    chance = pa * pb + (1 - pa) * (1 - pb)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(chance < 1, (observed - chance) / np.where(chance < 1, 1 - chance, 1), np.nan)


def cohen_kappa(both: int, only_a: int, only_b: int, neither: int, resamples: int = 2000, rng_seed: int = 0,
                level: float = 0.95) -> dict:
    """Cohen's κ = (observed − chance agreement) / (1 − chance) of a 2×2 table, with raw agreement.

    Returns ``{"n", "agreement", "kappa", "ci95", "note"}``. ``ci95`` is a percentile bootstrap over answers (the
    table's four cells redrawn from their shares, seeded); like any percentile bootstrap it is zero-width when the
    judges never disagree. κ is None when each judge gave one verdict on every answer (nothing to agree on beyond
    chance); it is 0 whenever exactly one judge is constant, however often the other agrees, which ``note`` says.
    """
    cells = np.array([both, only_a, only_b, neither], dtype=float)
    n = int(cells.sum())
    if n == 0:
        return {"n": 0, "agreement": None, "kappa": None, "ci95": [None, None], "note": "no answers"}
    agreement = (both + neither) / n
    a_constant, b_constant = both + only_a in (0, n), both + only_b in (0, n)
    if a_constant and b_constant:
        return {"n": n, "agreement": agreement, "kappa": None, "ci95": [None, None],
                "note": "undefined: each judge gave the same verdict on every answer"}
    kappa = float(_kappa_of(*cells))
    draws = np.random.default_rng(rng_seed).multinomial(n, cells / n, size=resamples).T.astype(float)
    boot = _kappa_of(*draws)
    boot = boot[~np.isnan(boot)]  # resampled tables in which both judges came out constant
    lo, hi = _percentiles(boot, level) if boot.size else (None, None)
    note = "one judge gave the same verdict on every answer, so kappa is 0" if a_constant or b_constant else ""
    return {"n": n, "agreement": agreement, "kappa": kappa, "ci95": [lo, hi], "note": note}
