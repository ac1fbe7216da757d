"""Read evaluation prompts from the formats they ship in, and task data with the label each answer is scored against.

Prompt files: JSON or JSONL rows with ``prompt``, or ``instruction`` (+ ``input``), or a chat list
(``conversations``/``messages``, first user turn); CSV with a ``forbidden_prompt`` (StrongREJECT), ``goal``
(AdvBench) or ``prompt`` column. ``PKU-Alignment/BeaverTails`` (hub id) gives the first 500 unsafe prompts of
``30k_test``, as the authors evaluate.
"""

from __future__ import annotations

import os
from pathlib import Path

from tvaccine.data.files import read_records, text_field
from tvaccine.errors import UserError
from tvaccine.evaluation.scores import LABEL_WORDS

BEAVERTAILS_HUB = "PKU-Alignment/BeaverTails"
GSM8K_QUESTION_SUFFIX = "\nFirst think step by step and then answer the final number.\n"
_CSV_COLUMNS = ("forbidden_prompt", "goal", "prompt")
_USER_ROLES = {"user", "human"}
_ASSISTANT_ROLES = {"assistant", "gpt", "bot"}


def read_prompts(ref: str, limit: int | None = None) -> list[dict]:
    """``[{id, instruction, input}]`` from a local file or the BeaverTails hub id; ids are row numbers."""
    if not os.path.exists(ref) and ref.rstrip("/") == BEAVERTAILS_HUB:
        rows = _beavertails_hub(limit or 500)
    elif Path(ref).suffix.lower() == ".csv":
        rows = _csv_rows(Path(ref))
    else:
        rows = [_instruction(r) for r in read_records(ref)]
    rows = rows[:limit] if limit else rows
    return [{"id": i, **r} for i, r in enumerate(rows)]


def read_task(task: str, ref: str, limit: int | None = None) -> list[dict]:
    """``[{id, instruction, input, label}]`` of a task file. SST-2/AG News: Alpaca rows or chat pairs whose answer
    is the label word; GSM8K: ``question/answer`` (with ``####``) or Alpaca rows ending ``The final answer is: N``."""
    out = []
    for raw in read_records(ref):
        if task == "gsm8k" and "question" in raw:
            row = {"instruction": text_field(raw, "question") + GSM8K_QUESTION_SUFFIX, "input": "",
                   "label": text_field(raw, "answer").replace("####", "The final answer is: ")}
        else:
            row = {**_instruction(raw), "label": _answer(raw)}
        if task != "gsm8k":
            row["label"] = row["label"].strip()
            allowed = LABEL_WORDS[task]
            if row["label"] not in allowed:
                raise UserError(f"{raw['_where']}: answer {row['label'][:60]!r} is not a {task} label "
                                f"({', '.join(allowed)})")
        out.append(row)
        if limit and len(out) == limit:
            break
    return [{"id": i, **r} for i, r in enumerate(out)]


def _beavertails_hub(n: int) -> list[dict]:
    from tvaccine.models import _hub_reachable

    if os.environ.get("HF_HUB_OFFLINE") != "1" and not _hub_reachable():
        raise UserError(f"{BEAVERTAILS_HUB}: the Hugging Face hub is unreachable from this machine; pass a local "
                        f"prompts file instead (e.g. ../shared/data/beavertails/eval.jsonl)")
    from datasets import load_dataset

    try:
        data = load_dataset(BEAVERTAILS_HUB, split="30k_test")
    except Exception as err:  # datasets raises many types for "not cached and offline"
        raise UserError(f"{BEAVERTAILS_HUB}: could not load split 30k_test ({type(err).__name__}: {err})") from err
    rows = [{"instruction": r["prompt"], "input": ""} for r in data if not r["is_safe"]]
    return rows[:n]


def _csv_rows(path: Path) -> list[dict]:
    records = read_records(path)  # encoding, header and row errors name the file and line
    columns = [c for c in records[0] if c != "_where"]
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


def _turns(raw: dict) -> list[dict] | None:
    for key in ("conversations", "messages"):
        if isinstance(raw.get(key), list):
            return raw[key]
    return None


def _turn(raw: dict, roles: set[str]) -> str:
    for turn in _turns(raw):
        if isinstance(turn, dict) and str(turn.get("role", turn.get("from", ""))).lower() in roles:
            text = turn.get("content", turn.get("value"))
            if isinstance(text, str):
                return text
    raise UserError(f"{raw['_where']}: no {'/'.join(sorted(roles))} turn with text in the conversation")


def _instruction(raw: dict) -> dict:
    if "prompt" in raw and not isinstance(raw["prompt"], dict):  # DecodingTrust's {text, scores} is no prompt here
        return {"instruction": text_field(raw, "prompt"), "input": ""}
    if "instruction" in raw:
        return {"instruction": text_field(raw, "instruction"), "input": text_field(raw, "input", required=False)}
    if _turns(raw) is not None:
        return {"instruction": _turn(raw, _USER_ROLES), "input": ""}
    raise UserError(f"{raw['_where']}: no prompt (expected a field 'prompt', 'instruction', "
                    f"'conversations' or 'messages')")


def _answer(raw: dict) -> str:
    if _turns(raw) is not None:
        return _turn(raw, _ASSISTANT_ROLES)
    return text_field(raw, "output")
