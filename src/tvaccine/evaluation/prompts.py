"""Read evaluation prompts from the formats they ship in, and task data with the label each answer is scored against.

Prompt files: JSON or JSONL rows with ``prompt``, or ``instruction`` (+ ``input``), or a chat list
(``conversations``/``messages``, first user turn); CSV with a ``forbidden_prompt`` (StrongREJECT), ``goal``
(AdvBench) or ``prompt`` column. An XSTest CSV (``xstest_prompts.csv``: columns ``prompt, type, label, focus``)
gives its 250 ``safe`` prompts only: they look harmful but are not, so answering them measures over-refusal, and
the 200 ``unsafe`` contrast prompts would count correct refusals as over-refusals.

Hub ids: ``PKU-Alignment/BeaverTails`` gives the first 500 unsafe prompts of ``30k_test``, as the authors
evaluate; ``walledai/XSTest`` gives the safe prompts of XSTest v2.
"""

from __future__ import annotations

import os
from pathlib import Path

from tvaccine.data.files import read_records, text_field
from tvaccine.data.formats import ASSISTANT_ROLES, USER_ROLES, chat_pair
from tvaccine.data.tasks import TASKS, gsm8k_pair
from tvaccine.errors import UserError

BEAVERTAILS_HUB = "PKU-Alignment/BeaverTails"
# XSTest v2 on the hub: one split 'test' of 450 rows with the columns of xstest_prompts.csv (prompt, type, label
# 'safe'/'unsafe', focus, note), per its card and the loaders of HELM and inspect_evals. It is gated: accept its
# terms on the hub and log in (HF_TOKEN) first.
XSTEST_HUB = "walledai/XSTest"
_XSTEST_COLUMNS = {"prompt", "type", "label", "focus"}  # the header that marks an XSTest CSV
_XSTEST_LABELS = ("safe", "unsafe")
_CSV_COLUMNS = ("forbidden_prompt", "goal", "prompt")


def read_prompts(ref: str, limit: int | None = None) -> list[dict]:
    """``[{id, instruction, input}]`` from a local file or the BeaverTails or XSTest hub id; ids are row numbers."""
    hub_id = None if os.path.exists(ref) else ref.rstrip("/")
    if hub_id == BEAVERTAILS_HUB:
        rows = _beavertails_hub(limit or 500)
    elif hub_id == XSTEST_HUB:
        rows = _xstest_hub()
    elif Path(ref).suffix.lower() == ".csv":
        rows = _csv_rows(Path(ref))
    else:
        rows = [_instruction(r) for r in read_records(ref)]
    rows = rows[:limit] if limit else rows
    return [{"id": i, **r} for i, r in enumerate(rows)]


def read_task(task: str, ref: str, limit: int | None = None) -> list[dict]:
    """``[{id, instruction, input, label}]`` of a task file. SST-2/AG News: Alpaca rows or chat pairs whose answer
    is the label word; GSM8K: ``question/answer`` (with ``####``) or Alpaca rows whose output ends in the answer
    phrase and the number (``tvaccine.data.tasks``)."""
    out = []
    for raw in read_records(ref):
        if task == "gsm8k" and "question" in raw:
            instruction, label = gsm8k_pair(text_field(raw, "question"), text_field(raw, "answer"))
            row = {"instruction": instruction, "input": "", "label": label}
        else:
            row = {**_instruction(raw), "label": _answer(raw)}
        if task != "gsm8k":
            row["label"] = row["label"].strip()
            allowed = TASKS[task].labels
            if row["label"] not in allowed:
                raise UserError(f"{raw['_where']}: answer {row['label'][:60]!r} is not a {task} label "
                                f"({', '.join(allowed)})")
        out.append(row)
        if limit and len(out) == limit:
            break
    return [{"id": i, **r} for i, r in enumerate(out)]


def _hub_split(hub_id: str, split: str, local_example: str):
    """One split of a hub data set, or a one-line error when the hub is unreachable or the load fails."""
    from tvaccine.models import hub_reachable

    if os.environ.get("HF_HUB_OFFLINE") != "1" and not hub_reachable():
        raise UserError(f"{hub_id}: the Hugging Face hub is unreachable from this machine; pass a local prompts "
                        f"file instead (e.g. {local_example})")
    from datasets import load_dataset

    try:
        return load_dataset(hub_id, split=split)
    except Exception as err:  # datasets raises many types for "not cached and offline", gated or missing
        first = str(err).splitlines()[0] if str(err) else ""
        raise UserError(f"{hub_id}: could not load split {split} ({type(err).__name__}: {first})") from err


def _beavertails_hub(n: int) -> list[dict]:
    data = _hub_split(BEAVERTAILS_HUB, "30k_test", "data/beavertails_eval.jsonl")
    rows = [{"instruction": r["prompt"], "input": ""} for r in data if not r["is_safe"]]
    return rows[:n]


def _xstest_hub() -> list[dict]:
    data = _hub_split(XSTEST_HUB, "test", "xstest_prompts.csv of github.com/paul-rottger/exaggerated-safety")
    return _xstest_safe([{**r, "_where": f"{XSTEST_HUB}[test] row {i}"} for i, r in enumerate(data)])


def _xstest_safe(records: list[dict]) -> list[dict]:
    """The prompts labelled safe; any other label than safe/unsafe means the file is not what we think it is."""
    rows = []
    for r in records:
        label = r.get("label")
        if not isinstance(label, str) or label.strip().lower() not in _XSTEST_LABELS:
            raise UserError(f"{r['_where']}: field 'label' must be safe or unsafe (XSTest), got {label!r}")
        if label.strip().lower() == "safe":
            if not text_field(r, "prompt").strip():
                raise UserError(f"{r['_where']}: empty field 'prompt'")
            rows.append({"instruction": r["prompt"], "input": ""})
    return rows


def _csv_rows(path: Path) -> list[dict]:
    records = read_records(path)  # encoding, header and row errors name the file and line
    columns = [c for c in records[0] if c != "_where"]
    if _XSTEST_COLUMNS <= set(columns):
        return _xstest_safe(records)
    column = next((c for c in _CSV_COLUMNS if c in columns), None)
    if column is None:
        raise UserError(f"{path}: no prompt column (expected one of {', '.join(_CSV_COLUMNS)}; "
                        f"found {', '.join(columns)})")
    rows = []
    for r in records:
        if not (r[column] or "").strip():
            raise UserError(f"{r['_where']}: empty field '{column}'")
        rows.append({"instruction": r[column], "input": ""})
    return rows


def _chat_key(raw: dict) -> str | None:
    return next((key for key in ("conversations", "messages") if isinstance(raw.get(key), list)), None)


def _turn(raw: dict, assistant: bool) -> str:
    """The user turn of a chat row, or the assistant turn that answers it."""
    user, answer = chat_pair(raw, _chat_key(raw), strict=False)
    if user is None:
        raise UserError(f"{raw['_where']}: no {'/'.join(sorted(USER_ROLES))} turn with text in the conversation")
    if assistant and answer is None:
        raise UserError(f"{raw['_where']}: no {'/'.join(sorted(ASSISTANT_ROLES))} turn with text after the user turn")
    return answer if assistant else user


def _instruction(raw: dict) -> dict:
    if "prompt" in raw and not isinstance(raw["prompt"], dict):  # DecodingTrust's {text, scores} is no prompt here
        return {"instruction": text_field(raw, "prompt"), "input": ""}
    if "instruction" in raw:
        return {"instruction": text_field(raw, "instruction"), "input": text_field(raw, "input", required=False)}
    if _chat_key(raw) is not None:
        return {"instruction": _turn(raw, assistant=False), "input": ""}
    raise UserError(f"{raw['_where']}: no prompt (expected a field 'prompt', 'instruction', "
                    f"'conversations' or 'messages')")


def _answer(raw: dict) -> str:
    if _chat_key(raw) is not None:
        return _turn(raw, assistant=True)
    return text_field(raw, "output")
