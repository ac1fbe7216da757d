"""Scores as published (DESIGN.md §3), with a stricter variant beside each lenient check and bootstrap intervals.

Published checks, kept exactly:
- SST-2: correct if the label word ("positive"/"Positive", "negative"/"Negative") is a *substring* of the answer,
  so "not positive, negative" counts as correct for both labels.
- AG News: correct if "World"/"world", "Sports"/"sports", "Business"/"business" or "Sci/Tech"/"sci" is a
  substring ("sci" also matches "science", "scientists", "conscious").
- GSM8K: the first number after ``The final answer is: ``, else the LAST number in the answer, compared as floats
  with the reference extracted the same way; an answer without a number is wrong.
Strict variant (ours): the answer names exactly one label word (case-insensitive, whole word), and it is the right
one; for GSM8K, the answer must contain the phrase ``The final answer is:`` followed by the right number.
"""

from __future__ import annotations

import math
import re

ANSWER_PHRASE = "The final answer is: "
_NUMBER = re.compile(r"-?\d+\.?\d*")  # the authors' pattern, applied after removing commas

# Per task: label -> the words the published check accepts (as substrings) and the word the strict check counts.
LABEL_WORDS = {
    "sst2": {"positive": ("positive", "Positive"), "negative": ("negative", "Negative")},
    "agnews": {
        "World": ("World", "world"), "Sports": ("Sports", "sports"), "Business": ("Business", "business"),
        "Sci/Tech": ("Sci/Tech", "sci"),
    },
}
_STRICT_PATTERNS = {
    "sst2": {"positive": r"\bpositive\b", "negative": r"\bnegative\b"},
    "agnews": {"World": r"\bworld\b", "Sports": r"\bsports\b", "Business": r"\bbusiness\b",
               "Sci/Tech": r"\bsci\s*/\s*tech\b"},
}
TASKS = ("sst2", "agnews", "gsm8k")


def extract_number(text: str) -> float:
    """The authors' GSM8K extraction: number after the answer phrase, else the last number; inf when none."""
    text = text.replace(",", "")
    numbers = _NUMBER.findall(text)
    if not numbers:
        return math.inf
    parts = text.split(ANSWER_PHRASE)
    if len(parts) > 1:
        after = _NUMBER.findall(parts[1])
        if after:
            return _to_float(after[0])
    return _to_float(numbers[-1])


def _to_float(s: str) -> float:
    try:
        return float(s)
    except ValueError:
        return math.inf


def is_correct(task: str, answer: str, label: str) -> bool:
    """The published check for one answer."""
    if task == "gsm8k":
        return extract_number(answer) == extract_number(label)
    return any(word in answer for word in _words(task, label))


def is_correct_strict(task: str, answer: str, label: str) -> bool:
    """Exactly one label word in the answer, and it is the right one (GSM8K: the phrase must be there)."""
    if task == "gsm8k":
        after = answer.replace(",", "").split(ANSWER_PHRASE.strip(), 1)
        numbers = _NUMBER.findall(after[1]) if len(after) == 2 else []
        return bool(numbers) and _to_float(numbers[0]) == extract_number(label)
    _words(task, label)  # validates task and label
    named = [lab for lab, pat in _STRICT_PATTERNS[task].items() if re.search(pat, answer, re.IGNORECASE)]
    return named == [label]


def _words(task: str, label: str) -> tuple[str, ...]:
    if task not in LABEL_WORDS:
        raise ValueError(f"unknown task '{task}' (use one of {', '.join(TASKS)})")
    if label not in LABEL_WORDS[task]:
        raise ValueError(f"{task}: unknown label '{label}' (use one of {', '.join(LABEL_WORDS[task])})")
    return LABEL_WORDS[task][label]


def bootstrap_interval(values: list[bool] | list[float], seed: int = 0, resamples: int = 2000,
                       level: float = 0.95) -> tuple[float | None, float | None]:
    """Percentile bootstrap interval of the mean, in percent (seeded, so a rerun gives the same interval)."""
    import numpy as np

    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return (None, None)
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(resamples, x.size))].mean(axis=1) * 100
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return (round(float(lo), 2), round(float(hi), 2))


def rate(values: list[bool], seed: int = 0) -> dict:
    """A percentage with its 95% bootstrap interval and the number of answers it is over."""
    n = len(values)
    return {
        "value": round(100 * sum(values) / n, 2) if n else None,  # None, not NaN: results.json stays valid JSON
        "ci95": list(bootstrap_interval(values, seed=seed)),
        "n": n,
    }
