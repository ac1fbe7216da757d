"""Scores as published (docs/design.md §3), with a stricter variant beside each lenient check, Wilson intervals and the
majority-label baseline of fine-tuning accuracy.

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
from collections import Counter

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


def rate(values: list[bool]) -> dict:
    """A percentage with its 95% Wilson interval and the number of answers it is over.

    Wilson rather than a percentile bootstrap: the bootstrap interval of 0/40 or 40/40 is zero-width, as if a
    defence that stopped every answer on 40 prompts were known to stop all of them (Wilson: [0, 8.76])."""
    from tvaccine.evaluation.stats import wilson

    n, k = len(values), sum(bool(v) for v in values)
    ci = [round(b, 2) for b in wilson(k, n)] if n else [None, None]
    # None, not NaN, for an empty set: results.json stays valid JSON
    return {"value": round(100 * k / n, 2) if n else None, "ci95": ci, "n": n, "interval": "wilson"}


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
