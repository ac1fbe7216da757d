"""The judges against gold labels: agreement between two judges is not validity, so check each against humans.

1. The keyword refusal matcher (`tvaccine.evaluation.refusal.is_refusal`) against XSTest's human labels. XSTest
   (Röttger et al. 2024) ships completions of five models on its 450 prompts, each labelled by two annotators as full
   compliance, full refusal or partial refusal. Per file and pooled: the confusion matrix (3 gold classes × refusal /
   not refusal) and, with a refusal read as full-or-partial and as full only, precision, recall, agreement
   (accuracy) and Cohen's κ between the matcher and the label.
2. The `classifier` judge on held-out BeaverTails (prompt, harmful answer) pairs, `beavertails/eval.jsonl`, if a
   trained classifier is there. These pairs carry one label only (is_safe false), so this gives recall — the share
   of harmful answers flagged — and the keyword judge's on the same pairs with their agreement, but no precision,
   specificity or κ against the label.

    .venv/bin/python benchmarks/judges/validity.py --data-dir DIR [--classifier FOLDER | --no-classifier]

DIR holds `xstest/` and `beavertails/`, or is itself the folder of XSTest's annotated completion files, named
`completions_<model>.csv` or `xstest_v2_completions_<model>.csv` (the `model_completions/` folder of
github.com/paul-rottger/exaggerated-safety; columns `completion`, `final_label`). Writes
benchmarks/judges/results.json and prints Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tvaccine.data.files import file_sha256, read_records
from tvaccine.errors import UserError
from tvaccine.evaluation.refusal import REFUSAL_PHRASES, XSTEST_GOLD, confusion_against_labels
from tvaccine.evaluation.stats import cohen_kappa, confusion

HERE = Path(__file__).resolve().parent
READINGS = ("full_or_partial", "full_only")  # which gold labels count as a refusal


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


def against_labels(rows: list[dict]) -> dict:
    """``confusion_against_labels`` with Cohen's κ between matcher and gold label added to each reading."""
    result = confusion_against_labels(rows)
    for reading in READINGS:
        r = result[reading]
        # judge = A, gold = B: both say refusal (tp), only the judge (fp), only the gold label (fn), neither (tn)
        k = cohen_kappa(both=r["tp"], only_a=r["fp"], only_b=r["fn"], neither=r["tn"])
        r.update(kappa=k["kappa"], kappa_ci95=k["ci95"])
    return result


def keyword_vs_xstest(xstest_dir: Path) -> dict:
    files = completion_files(xstest_dir)
    rows = {model: read_records(path) for model, path in files.items()}
    return {
        "judge": "keyword (tvaccine.evaluation.refusal.is_refusal)", "phrases": len(REFUSAL_PHRASES),
        "files": {m: {"file": p.name, "sha256": file_sha256(p), "rows": len(rows[m])} for m, p in files.items()},
        "per_file": {m: against_labels(r) for m, r in rows.items()},
        "overall": against_labels([r for rs in rows.values() for r in rs]),
    }


def classifier_vs_beavertails(pairs_file: Path, classifier: Path) -> dict:
    """Recall of the classifier and keyword judges on held-out harmful pairs, and their agreement there."""
    from tvaccine.evaluation.judges import ClassifierJudge, KeywordJudge
    from tvaccine.evaluation.scores import rate

    if not pairs_file.is_file():
        return {"skipped": f"{pairs_file.name}: not in the data folder"}
    pairs = read_records(pairs_file)
    labels = sorted({str(p.get("is_safe")) for p in pairs})
    judge = ClassifierJudge(classifier)
    # Held out only if the classifier was trained without these prompts (`tvaccine judge train --exclude-prompts`).
    excluded = set()
    for f in judge.meta.get("data", {}).get("exclude_prompts", []):
        if Path(f).is_file():
            excluded |= {(r.get("prompt") or r.get("instruction") or "").strip() for r in read_records(f)}
    prompts, answers = [p["prompt"] for p in pairs], [p["response"] for p in pairs]
    flagged = {"classifier": judge.judge(prompts, answers).flagged,
               "keyword": KeywordJudge().judge(prompts, answers).flagged}
    table = confusion(flagged["keyword"], flagged["classifier"])
    return {
        "pairs": {"file": pairs_file.name, "sha256": file_sha256(pairs_file), "n": len(pairs), "is_safe": labels},
        "classifier": {"weights_sha256": file_sha256(classifier / "classifier.safetensors"),
                       "held_out": judge.meta.get("held_out"),
                       "pairs_excluded_from_training": sum(p.strip() in excluded for p in prompts)},
        "recall": {name: rate(f) for name, f in flagged.items()},
        "keyword_vs_classifier": {"confusion": table, **cohen_kappa(**table)},
    }


def measure(data_dir: Path, classifier: Path | None) -> dict:
    xstest_dir = data_dir / "xstest" if (data_dir / "xstest").is_dir() else data_dir
    result = {"keyword_vs_xstest": keyword_vs_xstest(xstest_dir)}
    if classifier is None:
        result["classifier_vs_beavertails"] = {"skipped": "--no-classifier"}
    elif not (classifier / "classifier.json").is_file():
        result["classifier_vs_beavertails"] = {"skipped": f"{classifier}: no trained classifier"}
    else:
        result["classifier_vs_beavertails"] = classifier_vs_beavertails(data_dir / "beavertails" / "eval.jsonl",
                                                                        classifier)
    return result


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def _kappa(r: dict) -> str:
    return "–" if r["kappa"] is None else f"{r['kappa']:.2f}"


def markdown(result: dict) -> str:
    xs = result["keyword_vs_xstest"]
    head = ("| completions | n | full refusal flagged | partial refusal flagged | full compliance flagged | "
            "P / R / acc / κ (full+partial) | P / R / acc / κ (full only) |")
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|"]
    for name, r in [*xs["per_file"].items(), ("**all**", xs["overall"])]:
        c = r["confusion"]
        cells = [f"{c[g]['refusal']}/{c[g]['refusal'] + c[g]['not_refusal']}"
                 for g in ("2_full_refusal", "3_partial_refusal", "1_full_compliance")]
        prf = [" / ".join([_pct(r[k][m]) for m in ("precision", "recall", "accuracy")] + [_kappa(r[k])])
               for k in READINGS]
        lines.append(f"| {name} | {r['n']} | " + " | ".join(cells + prf) + " |")
    lines += ["", "| gold label (all files) | judged refusal | judged not refusal |", "|---|---:|---:|"]
    for g in XSTEST_GOLD:
        c = xs["overall"]["confusion"][g]
        lines.append(f"| {g} | {c['refusal']} | {c['not_refusal']} |")
    bt = result["classifier_vs_beavertails"]
    if "skipped" in bt:
        return "\n".join(lines + ["", f"classifier on BeaverTails: skipped ({bt['skipped']})"])
    lines += ["", f"BeaverTails {bt['pairs']['file']}: {bt['pairs']['n']} harmful pairs (is_safe "
              f"{', '.join(bt['pairs']['is_safe'])}), {bt['classifier']['pairs_excluded_from_training']} excluded "
              f"from the classifier's training", "", "| judge | flagged (recall) | 95% interval |", "|---|---:|---:|"]
    for name, r in bt["recall"].items():
        lines.append(f"| {name} | {r['value']}% | [{r['ci95'][0]}, {r['ci95'][1]}] |")
    a = bt["keyword_vs_classifier"]
    lines.append(f"\nkeyword vs classifier on these pairs: {a['confusion']}, agreement {_pct(a['agreement'])}%, "
                 f"κ {_kappa(a)}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from tvaccine.evaluation.judges import default_classifier_dir

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", required=True, type=Path,
                        help="folder with xstest/ and beavertails/, or of XSTest's completions_<model>.csv files")
    parser.add_argument("--classifier", type=Path, default=None,
                        help="trained classifier folder (default: tvaccine judge train's default folder)")
    parser.add_argument("--no-classifier", action="store_true", help="check the keyword matcher only")
    parser.add_argument("--output", type=Path, default=HERE / "results.json")
    args = parser.parse_args(argv)
    classifier = None if args.no_classifier else (args.classifier or default_classifier_dir())
    try:
        result = measure(args.data_dir, classifier)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(result))
    print(f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
