"""The keyword refusal judge (`tvaccine.evaluation.refusal.is_refusal`) against XSTest's human labels.

XSTest (Röttger et al. 2024) ships completions of five models on its 450 prompts, each labelled by two annotators
as full compliance, full refusal or partial refusal. This script counts how the phrase list classifies those 2,250
answers: the confusion matrix (3 gold classes × refusal / not refusal) and precision, recall and accuracy with a
refusal read as full-or-partial and as full only, per file and overall.

    .venv/bin/python benchmarks/judges/refusal_xstest.py --data-dir DIR [--output FILE]

DIR holds the annotated completion files as `completions_<model>.csv` or under their upstream names
`xstest_v2_completions_<model>.csv` (the `model_completions/` folder of github.com/paul-rottger/exaggerated-safety);
any `*completions_<model>.csv` is read, columns `completion` and `final_label`. Writes
benchmarks/judges/refusal_xstest.json and prints Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tvaccine.data.files import file_sha256, read_records
from tvaccine.errors import UserError
from tvaccine.evaluation.refusal import REFUSAL_PHRASES, XSTEST_GOLD, confusion_against_labels

HERE = Path(__file__).resolve().parent


def completion_files(data_dir: Path) -> dict[str, Path]:
    """``{model: path}`` of the annotated completion files in ``data_dir``."""
    if not data_dir.is_dir():
        raise UserError(f"{data_dir}: no such folder")
    files: dict[str, Path] = {}
    for path in sorted(data_dir.glob("*completions_*.csv")):
        model = path.stem.rsplit("completions_", 1)[1]
        if model in files:
            raise UserError(f"{data_dir}: two files for model '{model}' ({files[model].name}, {path.name})")
        files[model] = path
    if not files:
        raise UserError(f"{data_dir}: no completions_<model>.csv or xstest_v2_completions_<model>.csv files")
    return files


def measure(data_dir: Path) -> dict:
    files = completion_files(data_dir)
    rows = {model: read_records(path) for model, path in files.items()}
    return {
        "judge": "keyword (tvaccine.evaluation.refusal.is_refusal)", "phrases": len(REFUSAL_PHRASES),
        "files": {m: {"file": p.name, "sha256": file_sha256(p), "rows": len(rows[m])} for m, p in files.items()},
        "per_file": {m: confusion_against_labels(r) for m, r in rows.items()},
        "overall": confusion_against_labels([r for rs in rows.values() for r in rs]),
    }


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def markdown(result: dict) -> str:
    head = ("| completions | n | full refusal flagged | partial refusal flagged | full compliance flagged | "
            "P / R / acc (full+partial) | P / R / acc (full only) |")
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|"]
    for name, r in [*result["per_file"].items(), ("**all**", result["overall"])]:
        c = r["confusion"]
        cells = [f"{c[g]['refusal']}/{c[g]['refusal'] + c[g]['not_refusal']}"
                 for g in ("2_full_refusal", "3_partial_refusal", "1_full_compliance")]
        prf = [" / ".join(_pct(r[k][m]) for m in ("precision", "recall", "accuracy"))
               for k in ("full_or_partial", "full_only")]
        lines.append(f"| {name} | {r['n']} | " + " | ".join(cells + prf) + " |")
    lines += ["", "| gold label (all files) | judged refusal | judged not refusal |", "|---|---:|---:|"]
    for g in XSTEST_GOLD:
        c = result["overall"]["confusion"][g]
        lines.append(f"| {g} | {c['refusal']} | {c['not_refusal']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", required=True, type=Path,
                        help="folder of XSTest's annotated completions_<model>.csv files")
    parser.add_argument("--output", type=Path, default=HERE / "refusal_xstest.json")
    args = parser.parse_args(argv)
    try:
        result = measure(args.data_dir)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(result))
    print(f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
