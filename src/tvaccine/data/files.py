"""Read raw records from a local JSON array, JSONL, CSV or Parquet file.

Every record gets ``_where`` (``file:line`` for JSONL and CSV, ``file: row i`` for a JSON array or Parquet) so
that later errors name the file, the line or row, and the field.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from pathlib import Path

from tvaccine.errors import UserError

SUFFIXES = (".json", ".jsonl", ".csv", ".parquet")


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _read_text(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from err
    if not text.strip():
        raise UserError(f"{path}: the file is empty")
    return text


def _json_rows(path: Path, text: str) -> tuple[list, list[str]]:
    if text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as err:
            raise UserError(f"{path}:{err.lineno}: invalid JSON ({err.msg})") from err
        return rows, [f"{path}: row {i}" for i in range(len(rows))]
    rows, where = [], []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise UserError(f"{path}:{lineno}: invalid JSON ({err.msg})") from err
        where.append(f"{path}:{lineno}")
    return rows, where


def _csv_rows(path: Path, text: str) -> tuple[list, list[str]]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    if not reader.fieldnames:
        raise UserError(f"{path}: no CSV header")
    rows, where = [], []
    start = 2  # line of the first data row (the header is line 1)
    try:
        for row in reader:
            if None in row:  # more cells than header fields
                raise UserError(f"{path}:{start}: {len(reader.fieldnames) + len(row[None])} cells for "
                                f"{len(reader.fieldnames)} header fields")
            rows.append(row)
            where.append(f"{path}:{start}")
            start = reader.line_num + 1  # a quoted cell may span lines
    except csv.Error as err:
        raise UserError(f"{path}:{reader.line_num}: invalid CSV ({err})") from err
    return rows, where


def _parquet_rows(path: Path) -> tuple[list, list[str]]:
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as err:  # pyarrow raises several types for a damaged file
        raise UserError(f"{path}: not a readable Parquet file ({err})") from err
    return rows, [f"{path}: row {i}" for i in range(len(rows))]


def read_records(path: str | Path) -> list[dict]:
    """Records of a local data file, each a dict with ``_where``; the format follows the suffix."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        rows, where = _parquet_rows(path)
    elif suffix == ".csv":
        rows, where = _csv_rows(path, _read_text(path))
    else:  # .json, .jsonl and anything else are read as JSON or JSONL, told apart by the first character
        rows, where = _json_rows(path, _read_text(path))
    if not rows:
        raise UserError(f"{path}: no rows")
    for row, loc in zip(rows, where):
        if not isinstance(row, dict):
            raise UserError(f"{loc}: expected an object, got {type(row).__name__}")
        row["_where"] = loc
    return rows


def load_instruction_file(path: str | Path) -> list[dict]:
    """Any supported local file as ``{instruction, input, output}`` rows (see ``tvaccine.data.formats``).

    Rows with a refusal (the BeaverTails and DecodingTrust refusal formats) give harmful prompt → refusal.
    """
    from tvaccine.data.sources import load_source

    return [{k: r[k] for k in ("instruction", "input", "output")} for r in load_source(str(path)).rows]

def text_field(raw: dict, name: str, required: bool = True) -> str:
    value = raw.get(name)
    if value is None:
        if required:
            raise UserError(f"{raw['_where']}: missing field '{name}'")
        return ""
    if not isinstance(value, str):
        raise UserError(f"{raw['_where']}: field '{name}' must be a string, got {type(value).__name__}")
    return value
