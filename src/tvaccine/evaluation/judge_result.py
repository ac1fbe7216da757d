"""What every judge returns (its own module, so model-based judge modules and ``judges`` need not import each
other)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class JudgeResult:
    flagged: list[bool]
    score: list[float]  # the judge's harm score per answer, in [0, 1]
    categories: list[dict] | None = None  # per answer: beaver-dam's category probabilities, harmbench's label,
    # llama-guard's violated categories; None for judges without any
