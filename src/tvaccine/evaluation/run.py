"""One evaluation run: generate answers for each prompt set, judge and score them, write ``results.json``.

Output folder: ``generations_harmful.jsonl``, ``generations_task.jsonl``, ``generations_benign.jsonl`` (one row
per prompt, written as generated, so a rerun resumes), ``judgements_harmful.jsonl`` (each harmful answer with
every judge's verdict) and ``results.json``. The generator is freed before any
judge loads, so a 7B judge does not share memory with the evaluated model.
"""

from __future__ import annotations

import gc
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tvaccine.data.template import format_prompt
from tvaccine.errors import UserError


@dataclass
class EvalSettings:
    model: str
    harmful_prompts: str | None = None
    adapters: list[str] = field(default_factory=list)
    task: str | None = None
    task_data: str | None = None
    benign_prompts: str | None = None
    judges: list[str] = field(default_factory=lambda: ["keyword"])
    classifier: str | None = None
    beaver_dam: str = "PKU-Alignment/beaver-dam-7b"
    limit: int | None = None
    max_new_tokens: int = 128
    batch_size: int = 16
    dtype: str | None = None
    seed: int = 0  # of the bootstrap intervals


def _sets(s: EvalSettings) -> dict[str, list[dict]]:
    from tvaccine.evaluation.prompts import read_prompts, read_task
    from tvaccine.evaluation.scores import TASKS

    sets = {}
    if s.harmful_prompts:
        sets["harmful"] = read_prompts(s.harmful_prompts, s.limit)
    if s.task or s.task_data:
        if s.task not in TASKS or not s.task_data:
            raise UserError(f"--task needs one of {', '.join(TASKS)} and --task-data FILE")
        sets["task"] = read_task(s.task, s.task_data, s.limit)
        _check_labels(s.task, s.task_data, sets["task"])
    if s.benign_prompts:
        sets["benign"] = read_prompts(s.benign_prompts, s.limit)
    if not sets:
        raise UserError("nothing to evaluate: give --harmful-prompts, --task with --task-data, or --benign-prompts")
    for name, rows in sets.items():
        if not rows:
            raise UserError(f"the {name} prompt set is empty")
    return sets


def _check_labels(task: str, path: str, rows: list[dict]) -> None:
    from tvaccine.evaluation.scores import LABEL_WORDS

    allowed = LABEL_WORDS.get(task)  # GSM8K's label is a worked answer; any text is fine
    for r in rows if allowed else []:
        if r["label"] not in allowed:
            raise UserError(f"{path}: row {r['id']}: answer '{r['label']}' is not a {task} label "
                            f"({', '.join(allowed)})")


def evaluate(s: EvalSettings, output: str | Path, progress: bool = True) -> dict:
    from tvaccine.evaluation.generate import generate_to_file, load_for_generation
    from tvaccine.io import atomic_write_json, package_versions, write_jsonl

    start = time.perf_counter()
    out = Path(output)
    sets = _sets(s)  # read (and validate) every input before the slow part
    model, tokenizer = load_for_generation(s.model, s.adapters, s.dtype)
    generations, gen_stats = {}, {}
    for name, rows in sets.items():
        items = [{"id": r["id"], "prompt": format_prompt(r["instruction"], r["input"])} for r in rows]
        done, stats = generate_to_file(model, tokenizer, items, out / f"generations_{name}.jsonl",
                                       s.max_new_tokens, s.batch_size, progress)
        generations[name] = done
        gen_stats[name] = {"n": len(done), "generated_now": stats.generated, "new_tokens": stats.new_tokens,
                           "seconds": round(stats.seconds, 2), "tokens_per_s": round(stats.tokens_per_s, 2)}
    del model
    gc.collect()

    scores, judge_notes = score_sets(s, sets, generations)
    if "harmful" in generations:
        write_jsonl(out / "judgements_harmful.jsonl", generations["harmful"])
    results = {
        "scores": scores,
        "judges": judge_notes,
        "settings": {**asdict(s), "decoding": "greedy", "template": "alpaca",
                     "n": {name: len(rows) for name, rows in sets.items()}},
        "generation": gen_stats,
        "wall_time_s": round(time.perf_counter() - start, 2),
        "versions": package_versions(),
    }
    atomic_write_json(out / "results.json", results)
    return results


def score_sets(s: EvalSettings, sets: dict, generations: dict) -> tuple[dict, dict]:
    """Scores with intervals: HS per judge, over-refusal, FA (published and strict)."""
    from tvaccine.evaluation.judges import make_judge
    from tvaccine.evaluation.refusal import is_refusal
    from tvaccine.evaluation.scores import is_correct, is_correct_strict, rate

    common = {"max_new_tokens": s.max_new_tokens}
    scores, notes = {}, {}
    if "harmful" in sets:
        prompts = [r["instruction"] for r in sets["harmful"]]  # the judge sees the raw instruction, as published
        answers = [g["response"] for g in generations["harmful"]]
        scores["harmful_score"] = {}
        for name in s.judges:
            judge = make_judge(name, s.classifier, s.beaver_dam)
            result = judge.judge(prompts, answers)
            scores["harmful_score"][name] = {**rate(result.flagged, s.seed), **common}
            notes[name] = judge.note
            for g, f, sc, cat in zip(generations["harmful"], result.flagged, result.score,
                                     result.categories or [None] * len(answers)):
                g.setdefault("judges", {})[name] = {"flagged": f, "score": round(sc, 4),
                                                    **({"categories": cat} if cat else {})}
            del judge
            gc.collect()
        scores["refusal_rate_harmful"] = {**rate([is_refusal(a) for a in answers], s.seed), **common}
    if "benign" in sets:
        answers = [g["response"] for g in generations["benign"]]
        scores["over_refusal"] = {**rate([is_refusal(a) for a in answers], s.seed), **common,
                                  "judge": "keyword refusal phrases"}
    if "task" in sets:
        labels = [r["label"] for r in sets["task"]]
        answers = [g["response"] for g in generations["task"]]
        scores["fine_tune_accuracy"] = {
            "task": s.task,
            "published": {**rate([is_correct(s.task, a, y) for a, y in zip(answers, labels)], s.seed), **common},
            "strict": {**rate([is_correct_strict(s.task, a, y) for a, y in zip(answers, labels)], s.seed),
                       **common},
        }
    return scores, notes
