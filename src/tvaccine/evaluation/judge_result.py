"""What every judge returns (its own module, so model-based judge modules and ``judges`` need not import each
other)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class JudgeResult:
    flagged: list[bool]
    score: list[float]  # the judge's harm score per answer, in [0, 1]
    categories: list[dict] | None = None  # per answer: beaver-dam's category probabilities, harmbench's label,
    # llama-guard's violated categories, the rubric's three items; None for judges without any
    # Answers a judge that answers in words gave no verdict on (strongreject-rubric: output it could not parse;
    # scored 0 and not flagged); None for judges that always give one.
    unparsed: int | None = None
    # The judge's own words per answer (llama-guard, strongreject-rubric), kept in judgements_harmful.jsonl so that
    # a verdict, and above all an unparsed one, can be read back; None for judges that give a number.
    outputs: list[str] | None = None
