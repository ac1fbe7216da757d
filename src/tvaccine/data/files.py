"""Read instruction rows (instruction/input/output) from a local JSON array or JSONL file.

Errors name the file, the line (JSONL) or row (JSON array), and the field.
"""

from __future__ import annotations

import json
from pathlib import Path

from tvaccine.errors import UserError


def read_records(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from err
    if not text.strip():
        raise UserError(f"{path}: the file is empty")
    if text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as err:
            raise UserError(f"{path}:{err.lineno}: invalid JSON ({err.msg})") from err
        where = [f"{path}: row {i}" for i in range(len(rows))]
    else:
        rows, where = [], []
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise UserError(f"{path}:{lineno}: invalid JSON ({err.msg})") from err
            where.append(f"{path}:{lineno}")
    for row, loc in zip(rows, where):
        if not isinstance(row, dict):
            raise UserError(f"{loc}: expected an object, got {type(row).__name__}")
    for row, loc in zip(rows, where):
        row["_where"] = loc
    return rows


def _text(row: dict, field: str, required: bool = True) -> str:
    value = row.get(field)
    if value is None:
        if required:
            raise UserError(f"{row['_where']}: missing field '{field}'")
        return ""
    if not isinstance(value, str):
        raise UserError(f"{row['_where']}: field '{field}' must be a string, got {type(value).__name__}")
    return value


def load_instruction_file(path: str | Path) -> list[dict]:
    """Alpaca-style rows ``{instruction, input?, output}`` normalised to ``{instruction, input, output}``."""
    rows = read_records(path)
    return [
        {"instruction": _text(r, "instruction"), "input": _text(r, "input", False), "output": _text(r, "output")}
        for r in rows
    ]
