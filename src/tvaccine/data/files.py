"""Read raw records from a local JSON array, JSONL, CSV or Parquet file.

Every record gets ``_where`` (``file:line`` for JSONL and CSV, ``file: row i`` for a JSON array or Parquet) so
that later errors name the file, the line or row, and the field.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
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
    # utf-8-sig: a byte-order mark (Windows editors, Excel's CSV export) is dropped, not read as part of a field name
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise UserError(f"{path}:{line}: not UTF-8 text ({err.reason} at byte {err.start})") from err
    if not text.strip():
        raise UserError(f"{path}: the file is empty")
    nul = text.find("\0")
    if nul >= 0:  # invalid in JSON text; in a CSV cell it means a binary or damaged file
        raise UserError(f"{path}:{text.count(NEWLINE, 0, nul) + 1}: NUL byte (a binary file?)")
    return text


NEWLINE = "\n"
# A JSON escape of a UTF-16 surrogate: valid JSON, but a lone one cannot be written back as UTF-8.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def _loads(text: str, path: Path, lineno: int | None = None):
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise UserError(f"{path}:{lineno or err.lineno}: invalid JSON ({err.msg})") from err
    except RecursionError as err:
        raise UserError(f"{path}:{lineno or 1}: invalid JSON (nested too deeply)") from err
    except ValueError as err:  # an integer of more than 4300 digits
        raise UserError(f"{path}:{lineno or 1}: invalid JSON ({str(err).split(':')[0]})") from err


def _json_rows(path: Path, text: str) -> tuple[list, list[str]]:
    if text.lstrip().startswith("["):
        rows = _loads(text, path)
        return rows, [f"{path}: row {i}" for i in range(len(rows))]
    if text.lstrip().startswith("{") and NEWLINE in text.strip() and _is_one_object(text):
        raise UserError(f"{path}: one JSON object over several lines; expected a JSON array of objects or JSONL "
                        f"(one object per line)")
    rows, where = [], []
    # Split on "\n" only: str.splitlines() also splits on U+2028, U+0085 and others, which JSON strings may hold.
    for lineno, line in enumerate(text.split(NEWLINE), 1):
        if line.strip():
            rows.append(_loads(line, path, lineno))
            where.append(f"{path}:{lineno}")
    return rows, where


def _is_one_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except (ValueError, RecursionError):
        return False


def _check_unicode(rows: list, where: list[str], text: str) -> None:
    """Refuse lone surrogates (``"\\ud800"``) here rather than fail later when a set is written as UTF-8."""
    if not _SURROGATE_ESCAPE.search(text):
        return
    for row, loc in zip(rows, where):
        try:
            json.dumps(row, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as err:
            raise UserError(f"{loc}: invalid Unicode escape (a lone surrogate)") from err


def _csv_rows(path: Path, text: str) -> tuple[list, list[str]]:
    # strict: a quote left open (a truncated file) is an error, not a cell that swallows the rest of the file
    reader = csv.DictReader(io.StringIO(text, newline=""), strict=True)
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
    except csv.Error as err:  # reader.line_num lags behind a record that fails; the record's first line does not
        raise UserError(f"{path}:{start}: invalid CSV ({err})") from err
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
    if path.is_dir():
        raise UserError(f"{path}: is a folder, not a data file")
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        rows, where = _parquet_rows(path)
    elif suffix == ".csv":
        rows, where = _csv_rows(path, _read_text(path))
    else:  # .json, .jsonl and anything else are read as JSON or JSONL, told apart by the first character
        text = _read_text(path)
        rows, where = _json_rows(path, text)
        _check_unicode(rows, where, text)
    if not rows:
        raise UserError(f"{path}: no rows")
    for row, loc in zip(rows, where):
        if not isinstance(row, dict):
            raise UserError(f"{loc}: expected an object, got {type(row).__name__}")
        row["_where"] = loc
    return rows


def text_field(raw: dict, name: str, required: bool = True) -> str:
    value = raw.get(name)
    if value is None:
        if required:
            raise UserError(f"{raw['_where']}: missing field '{name}'")
        return ""
    if not isinstance(value, str):
        raise UserError(f"{raw['_where']}: field '{name}' must be a string, got {type(value).__name__}")
    return value
