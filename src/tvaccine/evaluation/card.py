"""A model card's Evaluation section (``tvaccine push --results``), rendered from the scores a ``results.json`` holds.

Every number is the file's, as the file has it (``repr`` of the value, no rounding); a score the file lacks, or one
over no answers (value None), is left out, never shown as 0. A score the file holds in another shape is refused,
naming the file and the score, rather than shown wrong.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tvaccine.errors import UserError

# The scores a card shows (tvaccine.evaluation.run.score_sets): a results file with none of them is not an evaluation.
KNOWN_SCORES = ("harmful_score", "over_refusal", "over_refusal_xstest", "degenerate", "fine_tune_accuracy",
                "knowledge")
# The evaluation settings a card lists, in this order, where the file records them (EvalSettings, plus what
# evaluate() adds: n per prompt set, decoding, template).
CARD_SETTINGS = ("harmful_prompts", "benign_prompts", "xstest_prompts", "task", "task_data", "knowledge_data",
                 "limit", "n", "max_new_tokens", "decoding", "template", "stop_at_template", "judges")
DEGENERATE = (("degenerate", "harmful"), ("degenerate_benign", "benign"), ("degenerate_xstest", "XSTest safe"),
              ("degenerate_task", "task"))


@dataclass
class Evaluated:
    """One evaluated model's scores, as a block of the section."""

    title: str  # what the scores are of (a heading; "" for the only block)
    about: str  # which model and adapters, in words ("" where the file does not say)
    scores: dict
    notes: dict = field(default_factory=dict)  # judge → what it is
    settings: dict = field(default_factory=dict)  # the evaluation's settings


def has_scores(scores) -> bool:
    return isinstance(scores, dict) and any(key in scores for key in KNOWN_SCORES)


def evaluation_section(blocks: list[Evaluated], source: str, where: str) -> str:
    """``## Evaluation``: where the scores come from (``source``, in words), then each block. ``where`` (the
    results file) names the file in the message when a score has an unexpected shape."""
    parts = ["## Evaluation", "", f"{source} Rates are percentages of the n answers scored, with 95% intervals."]
    for block in blocks:
        if block.title:
            parts += ["", f"### {block.title}"]
        if block.about:
            parts += ["", f"Evaluated: {block.about}."]
        parts += ["", "| score | judged by | value | 95% interval | n |", "|---|---|---:|---|---:|"]
        parts += [f"| {' | '.join(row)} |" for row in score_rows(block.scores, where)]
        notes = {k: v for k, v in (block.notes or {}).items() if isinstance(v, str) and v}
        if notes:
            parts += ["", "Judges:", ""] + [f"- `{name}`: {note}" for name, note in notes.items()]
        settings = settings_rows(block.settings or {})
        if settings:
            parts += ["", "| evaluation setting | value |", "|---|---|"] + settings
    return "\n".join(parts) + "\n"


def score_rows(scores: dict, where: str) -> list[list[str]]:
    """[score, judged by, value, interval, n] for every known score in ``scores`` that has a value."""
    rows = []

    def add(label: str, judge: str, key: str, entry) -> None:
        shown = _rate(entry, f"{where}: scores.{key}")
        if shown is not None:
            rows.append([label, judge, *shown])

    harmful = scores.get("harmful_score") or {}
    if not isinstance(harmful, dict):
        raise UserError(f"{where}: scores.harmful_score: expected a score per judge, got {harmful!r}")
    for judge, entry in harmful.items():
        # judges can read answers of different lengths (HarmBench's 512 beside the protocol's 128): say which
        tokens = entry.get("max_new_tokens") if isinstance(entry, dict) else None
        add("harmful score" + (f" ({tokens}-token answers)" if _number(tokens) else ""), f"`{judge}`",
            f"harmful_score.{judge}", entry)
    for key, label in (("over_refusal", "benign prompts"), ("over_refusal_xstest", "XSTest safe prompts")):
        if key in scores:
            add(f"over-refusal ({label})", _judged(scores[key], "judge"), key, scores[key])
    for key, label in DEGENERATE:
        if key in scores:
            add(f"degenerate answers ({label} prompts)", "", key, scores[key])
    fa = scores.get("fine_tune_accuracy")
    if fa is not None:
        if not isinstance(fa, dict):
            raise UserError(f"{where}: scores.fine_tune_accuracy: expected published, strict and majority, got {fa!r}")
        task = f"{fa['task']}, " if isinstance(fa.get("task"), str) else ""
        for kind in ("published", "strict"):
            if kind in fa:
                add(f"fine-tuning accuracy ({task}{kind})", "", f"fine_tune_accuracy.{kind}", fa[kind])
        majority = fa.get("majority")
        if isinstance(majority, dict) and _number(majority.get("value")):
            label = f" '{majority['label']}'" if majority.get("label") is not None else ""
            rows.append([f"fine-tuning accuracy of always answering{label} (majority-label baseline)", "",
                         f"{majority['value']!r}%", "–", "–"])
    knowledge = scores.get("knowledge")
    if knowledge is not None:
        chance = knowledge.get("chance") if isinstance(knowledge, dict) else None
        label = "knowledge (multiple choice" + (f"; chance {chance!r}%)" if _number(chance) else ")")
        add(label, _judged(knowledge, "scoring"), "knowledge", knowledge)
    return rows


def settings_rows(settings: dict) -> list[str]:
    rows = []
    for key in CARD_SETTINGS:
        value = settings.get(key)
        if value is None or value in ([], {}, ""):
            continue
        if isinstance(value, dict):  # n: answers per prompt set
            value = ", ".join(f"{name} {count}" for name, count in value.items())
        elif isinstance(value, list):
            value = ", ".join(map(str, value))
        rows.append(f"| `{key}` | `{value}` |")
    return rows


def _rate(entry, where: str) -> list[str] | None:
    """[value, interval, n] of a rate ``{value, ci95, n}`` as the file holds it; None for one over no answers."""
    if not isinstance(entry, dict) or "value" not in entry or not (entry["value"] is None or _number(entry["value"])):
        raise UserError(f"{where}: expected a rate {{value, ci95, n}}, got {entry!r}")
    if entry["value"] is None:
        return None
    ci = entry.get("ci95")
    interval = f"[{ci[0]!r}, {ci[1]!r}]" if isinstance(ci, list) and len(ci) == 2 and all(map(_number, ci)) else "–"
    n = entry.get("n")
    return [f"{entry['value']!r}%", interval, repr(n) if _number(n) else "–"]


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _judged(entry, key: str) -> str:
    value = entry.get(key) if isinstance(entry, dict) else None
    return value if isinstance(value, str) else ""
