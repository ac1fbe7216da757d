"""Small file helpers: atomic writes so an interrupted run never leaves a half-written file that a rerun trusts."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, flush it to disk, then rename it over ``path``: a reader
    (a rerun) sees the old file or the new one, never a torn one."""
    path = Path(path)
    if path.is_dir():
        from tvaccine.errors import UserError

        raise UserError(f"{path}: is a folder; give a file path")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def atomic_write_csv(path: str | os.PathLike, columns: list[str], rows: Iterable[dict]) -> Path:
    """A CSV of ``columns`` (other keys of a row ignored), written atomically."""
    import csv
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())
    return Path(path)


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def package_versions() -> dict[str, str]:
    """Versions of the packages a result depends on, recorded beside every result."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    from tvaccine import __version__

    # this source's own version: installed metadata can be stale (an editable install, or PYTHONPATH=src)
    out = {"python": platform.python_version(), "tvaccine": __version__}
    for name in ("torch", "transformers", "peft", "accelerate", "datasets"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out
