"""Rates as published (docs/design.md §3) with Wilson intervals, and the majority-label baseline of fine-tuning
accuracy. Whether one answer is correct, as published and strictly, is the task's rule: ``tvaccine.data.tasks``.
"""

from __future__ import annotations

from collections import Counter

from tvaccine.data.tasks import extract_number


def rate(values: list[bool]) -> dict:
    """A percentage with its 95% Wilson interval and the number of answers it is over.

    Wilson rather than a percentile bootstrap: the bootstrap interval of 0/40 or 40/40 is zero-width, as if a
    defence that stopped every answer on 40 prompts were known to stop all of them (Wilson: [0, 8.76])."""
    from tvaccine.evaluation.stats import wilson

    n, k = len(values), sum(bool(v) for v in values)
    ci = [round(b, 2) for b in wilson(k, n)] if n else [None, None]
    # None, not NaN, for an empty set: results.json stays valid JSON
    return {"value": round(100 * k / n, 2) if n else None, "ci95": ci, "n": n, "interval": "wilson"}


def mean_interval(values: list[float], resamples: int = 2000, rng_seed: int = 0) -> dict:
    """A mean with its 95% percentile-bootstrap interval over the values (seeded, so a rerun gives the same)."""
    import numpy as np

    if not values:
        return {"mean": None, "ci95": [None, None], "n": 0, "interval": "bootstrap"}
    x = np.asarray(values, dtype=float)
    means = x[np.random.default_rng(rng_seed).integers(0, len(x), (resamples, len(x)))].mean(axis=1)
    return {"mean": round(float(x.mean()), 2), "ci95": [round(float(np.percentile(means, q)), 2) for q in (2.5, 97.5)],
            "n": len(x), "interval": "bootstrap"}


def majority_baseline(task: str, labels: list[str]) -> dict:
    """FA of a constant predictor that always says the eval set's most common label (percent), and that label.

    GSM8K labels are whole worked solutions, so its "label" is the most common final number. Ties go to the label
    seen first."""
    if task == "gsm8k":
        labels = [f"{extract_number(y):g}" for y in labels]
    if not labels:
        return {"value": None, "label": None}
    label, count = Counter(labels).most_common(1)[0]
    return {"value": round(100 * count / len(labels), 2), "label": label}
