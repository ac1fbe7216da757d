"""Shared by the fuzz suite (tests/test_fuzz_*.py): the clean-failure check and the count of inputs tried.

Every fuzz case is a ``pytest.param(kind, ...)`` whose first value is one of ``KINDS``; each test module lists its
case lists in ``FUZZ`` as ``(cases, runs)``, ``runs`` being how many commands (or loader calls) each case goes
through, or a function of the case. The table
in tests/README.md is computed from these lists (``python tests/fuzz_helpers.py`` prints it) and
``test_fuzz_readme_counts`` checks that the two agree.
"""

from __future__ import annotations

import importlib
import re
import sys
import warnings
from collections import Counter
from pathlib import Path

from tvaccine.cli import main

from conftest import write_jsonl as _write_jsonl

MODULES = ["test_fuzz_data", "test_fuzz_settings", "test_fuzz_cli"]
KINDS = {
    "truncated": "a valid JSON / JSONL / CSV file cut at a byte offset (generated)",
    "syntax": "invalid JSON, JSONL, CSV, YAML or Parquet",
    "wrong type": "numbers, lists, null or booleans where strings are expected (rows, run configs)",
    "missing or extra": "missing fields, unknown fields, unknown row formats, unknown keys",
    "empty": "empty files, whitespace only, a header without rows, an empty array",
    "huge": "5 MB single lines, 100 000-deep nesting, 5 000-digit numbers",
    "encoding": "non-UTF-8, UTF-16, NUL bytes, lone surrogates, a byte-order mark (accepted)",
    "path": "folders where files are expected, files where folders are, nonexistent paths",
    "yaml shape": "YAML that is a list or scalar, unknown keys, the wrong method's recipe",
    "impossible setting": "values outside their range: p outside [0, 1], S > layers, ρ < 0, steps ≤ 0, r 0, ...",
    "non-finite": "NaN and ±inf where numbers are expected",
    "wrong-type setting": "strings, lists, null or booleans where a setting expects a number, and the reverse",
    "model folder": "damaged model folders: bad config.json, truncated or pickled weights, no tokenizer",
    "usage": "command-line usage errors (argparse: exit 2 with the usage line)",
    "accepted": "odd but valid input that must load correctly (BOM, CRLF, U+2028, extra fields, 5 MB line)",
}


def fails_cleanly(argv: list[str], capsys, out: Path, *needles: str) -> str:
    """Run ``tvaccine argv`` in-process: exit code 2, one line on stderr that contains every needle (a needle
    starting with ``re:`` is a regular expression), no traceback, and ``out`` not created. Returns the line."""
    with warnings.catch_warnings(record=True):  # libraries' deprecation notices are not the error line
        warnings.simplefilter("always")
        code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2, f"exit code {code}; stderr: {captured.err[-2000:]}"
    assert len(lines) == 1 and lines[0].startswith("tvaccine: error: "), captured.err[-2000:]
    assert "Traceback" not in captured.err + captured.out
    for needle in needles:
        if needle.startswith("re:"):
            assert re.search(needle[3:], lines[0]), (needle, lines[0])
        else:
            assert needle in lines[0], (needle, lines[0])
    assert not Path(out).exists(), f"{out} was written: {sorted(p.name for p in Path(out).rglob('*'))}"
    return lines[0]


def counts() -> dict[str, tuple[int, int]]:
    """kind → (distinct inputs, CLI or loader runs) over every module's ``FUZZ`` lists."""
    sys.path.insert(0, str(Path(__file__).parent))
    inputs, runs = Counter(), Counter()
    for name in MODULES:
        for cases, paths in importlib.import_module(name).FUZZ:
            for case in cases:
                kind = case.values[0]
                assert kind in KINDS, kind
                inputs[kind] += 1
                runs[kind] += paths(case) if callable(paths) else paths
    return {k: (inputs[k], runs[k]) for k in KINDS if inputs[k]}


def table() -> str:
    rows = counts()
    lines = ["| kind | what | inputs | runs |", "|---|---|---:|---:|"]
    lines += [f"| {k} | {KINDS[k]} | {n} | {r} |" for k, (n, r) in rows.items()]
    total_n, total_r = sum(n for n, _ in rows.values()), sum(r for _, r in rows.values())
    lines.append(f"| **total** | | **{total_n}** | **{total_r}** |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table())


def refuse_hub(monkeypatch) -> None:
    """A hub id must fail at once, as it does without a network."""
    import tvaccine.models

    monkeypatch.setattr(tvaccine.models, "hub_reachable", lambda timeout=3.0: False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


def refuse_model_loads(monkeypatch) -> None:
    """Bad input must fail before any model loads."""
    import pytest

    import tvaccine.models

    def refuse(*args, **kwargs):
        pytest.fail(f"a model was loaded for bad input: {args}")

    monkeypatch.setattr(tvaccine.models, "load_model", refuse)


def write_jsonl(path, rows) -> str:
    return str(_write_jsonl(path, rows))
