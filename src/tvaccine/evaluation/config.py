"""The evaluation stage's settings (what ``tvaccine eval`` and a run config's ``eval`` section set), checked before
any prompt is read or a model loads."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tvaccine.errors import UserError


@dataclass
class EvalSettings:
    model: str
    harmful_prompts: str | None = None
    adapters: list[str] = field(default_factory=list)
    task: str | None = None
    task_data: str | None = None
    benign_prompts: str | None = None
    xstest_prompts: str | None = None  # XSTest's safe prompts: a second over-refusal set (read_prompts)
    knowledge_data: str | None = None  # multiple-choice questions (MMLU-style) for general capability
    judges: list[str] = field(default_factory=lambda: ["keyword"])
    classifier: str | None = None
    beaver_dam: str = "PKU-Alignment/beaver-dam-7b"
    # harmbench/strongreject/llama-guard/strongreject-rubric (required for it): hub id or folder
    judge_models: dict[str, str] = field(default_factory=dict)
    limit: int | None = None
    max_new_tokens: int = 128
    batch_size: int = 16
    dtype: str | None = None
    seed: int = 0  # kept so older configs stay valid; single-rate intervals are Wilson now and need no seed
    stop_at_template: bool = True  # end an answer where it starts the template's next "\n### " block
    # judge name -> the answer length it reads, in new tokens (default: its source's, else max_new_tokens)
    judge_max_new_tokens: dict[str, int] = field(default_factory=dict)


def check_settings(s: EvalSettings) -> None:
    """Types and ranges of the settings and the judges' files, before any prompt is read or a model loads (a
    pipeline's eval section arrives here unchecked)."""
    from tvaccine.evaluation.judges import JUDGES, default_classifier_dir
    from tvaccine.models import resolve_model_path, torch_dtype

    for name in ("limit", "max_new_tokens", "batch_size", "seed"):
        value = getattr(s, name)
        if value is None and name == "limit":
            continue
        if not isinstance(value, int) or isinstance(value, bool) or (name != "seed" and value < 1):
            rule = "an integer" if name == "seed" else "an integer of at least 1"
            raise UserError(f"eval {name}: must be {rule} (got {value!r})")
    for name in ("model", "harmful_prompts", "task", "task_data", "benign_prompts", "xstest_prompts",
                 "knowledge_data", "classifier",
                 "beaver_dam"):
        if getattr(s, name) is not None and not isinstance(getattr(s, name), str):
            raise UserError(f"eval {name}: must be a string (got {getattr(s, name)!r})")
    if not isinstance(s.stop_at_template, bool):
        raise UserError(f"eval stop_at_template: must be true or false (got {s.stop_at_template!r})")
    if not isinstance(s.judges, list) or not s.judges or not all(isinstance(j, str) for j in s.judges):
        raise UserError(f"eval judges: must be a list of judge names (got {s.judges!r})")
    if not isinstance(s.adapters, list) or not all(isinstance(a, str) for a in s.adapters):
        raise UserError(f"eval adapters: must be a list of adapter folders (got {s.adapters!r})")
    for name in s.judges:
        if name not in JUDGES:
            raise UserError(f"eval judges: unknown judge '{name}' (use {', '.join(JUDGES)})")
    if not isinstance(s.judge_max_new_tokens, dict) or not all(
            k in JUDGES and isinstance(v, int) and not isinstance(v, bool) and v >= 1
            for k, v in s.judge_max_new_tokens.items()):
        raise UserError(f"eval judge_max_new_tokens: must map judge names ({', '.join(JUDGES)}) to integers of at "
                        f"least 1 (got {s.judge_max_new_tokens!r})")
    torch_dtype(s.dtype)
    if "classifier" in s.judges:  # a missing judge must not surface after the whole generation
        from tvaccine.evaluation.classifier import CONFIG, WEIGHTS

        folder = Path(s.classifier or default_classifier_dir())
        if not (folder / WEIGHTS).is_file() or not (folder / CONFIG).is_file():
            raise UserError(f"{folder}: no trained classifier ({WEIGHTS} and {CONFIG}); train one with "
                            f"`tvaccine judge train --data FILE --output {folder}`")
    if "beaver-dam" in s.judges:
        resolve_model_path(s.beaver_dam)
    from tvaccine.evaluation.model_judges import MODEL_JUDGES, check_judge_model

    if not isinstance(s.judge_models, dict) or not all(
            k in MODEL_JUDGES and isinstance(v, str) for k, v in s.judge_models.items()):
        raise UserError(f"eval judge_models: must map {', '.join(MODEL_JUDGES)} to a hub id or model folder "
                        f"(got {s.judge_models!r})")
    for name in s.judges:
        if name in MODEL_JUDGES:
            check_judge_model(name, s.judge_models.get(name))


def judge_lengths(s: EvalSettings) -> dict[str, int]:
    """How many new tokens of each harmful answer each judge reads: ``judge_max_new_tokens``, else the length its
    source generated (``answer_tokens``: HarmBench's 512), else ``max_new_tokens``."""
    from tvaccine.evaluation.judges import answer_tokens

    return {name: s.judge_max_new_tokens.get(name) or answer_tokens(name) or s.max_new_tokens for name in s.judges}
