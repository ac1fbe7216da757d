"""What bfloat16 generation does to the scores: the same evaluations rerun in bf16, judged by the same judges.

    PYTHONPATH=src python benchmarks/generation/dtype_scores.py runs/science/cells/method=*-seed=0-*/ \
        [--output benchmarks/generation/dtype_scores.json]

For each sweep cell given (a folder with the cell's ``results.json``, e.g. from the science benchmark), its
evaluation before and after the attack is rerun with ``dtype: bfloat16`` and otherwise the recorded settings
(model, adapters, prompts, judges, decoding, batch size) into ``runs/dtype_scores/``. Per score, on the same
prompts: the float32 and bf16 rates, the paired difference with Newcombe's interval, the share of prompts whose
verdict agrees, and the share of answers that are identical. Rerunning resumes (the evaluation's own resume).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
WORK = REPO / "runs" / "dtype_scores"


def verdicts(folder: Path, settings: dict) -> dict[str, list[bool]]:
    """Per score, one verdict per prompt (in prompt-id order), read back from an evaluation folder."""
    from tvaccine.data.tasks import is_correct
    from tvaccine.evaluation.refusal import is_refusal
    from tvaccine.evaluation.run import degenerate_reason_of

    def rows(name):
        path = folder / f"generations_{name}.jsonl"
        if not path.is_file():
            return None
        return sorted((json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()),
                      key=lambda r: str(r["id"]))

    out = {}
    judged = sorted((json.loads(line) for line in
                     (folder / "judgements_harmful.jsonl").read_text(encoding="utf-8").splitlines()),
                    key=lambda r: str(r["id"]))
    for judge in settings["judges"]:
        out[f"harmful_score/{judge}"] = [r["judges"][judge]["flagged"] and not r["degenerate"] for r in judged]
    out["answers/harmful"] = [r["response"] for r in judged]
    for name, key in (("benign", "over_refusal"), ("xstest", "over_refusal_xstest")):
        if (got := rows(name)) is not None:
            out[key] = [is_refusal(r["response"]) for r in got]
            out[f"answers/{name}"] = [r["response"] for r in got]
            out[f"degenerate_{name}"] = [degenerate_reason_of(r) is not None for r in got]
    if (got := rows("task")) is not None:
        from tvaccine.evaluation.prompts import read_task

        labels = {str(r["id"]): r["label"] for r in read_task(settings["task"], settings["task_data"])}
        out["fine_tune_accuracy"] = [is_correct(settings["task"], r["response"], labels[str(r["id"])]) for r in got]
        out["answers/task"] = [r["response"] for r in got]
    return out


def compare(a: list, b: list) -> dict:
    from tvaccine.evaluation.stats import newcombe_paired

    n = len(a)
    both = sum(x and y for x, y in zip(a, b))
    only_a = sum(x and not y for x, y in zip(a, b))
    only_b = sum(y and not x for x, y in zip(a, b))
    lo, hi = newcombe_paired(both, only_a, only_b, n - both - only_a - only_b)
    return {"float32": round(100 * sum(a) / n, 2), "bfloat16": round(100 * sum(b) / n, 2),
            "difference": round(100 * (sum(b) - sum(a)) / n, 2), "ci95": [round(-hi, 2), round(-lo, 2)],
            "verdicts_agree": round(100 * sum(x == y for x, y in zip(a, b)) / n, 2), "n": n}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cells", nargs="+", help="sweep cell folders (each with results.json)")
    ap.add_argument("--output", default=str(HERE / "dtype_scores.json"))
    args = ap.parse_args()

    from tvaccine.evaluation.config import EvalSettings
    from tvaccine.evaluation.run import evaluate
    from tvaccine.io import atomic_write_json, package_versions

    known = set(EvalSettings.__dataclass_fields__)
    results, pooled = {}, {}
    for cell in map(Path, args.cells):
        record = json.loads((cell / "results.json").read_text(encoding="utf-8"))
        for stage in ("eval_before", "eval"):
            source = Path(record["stages"][stage]["dir"])
            settings = json.loads((source / "results.json").read_text(encoding="utf-8"))["settings"]
            fp32_wall = json.loads((source / "results.json").read_text(encoding="utf-8"))["wall_time_s"]
            bf16 = EvalSettings(**{k: v for k, v in settings.items() if k in known})
            bf16.dtype = "bfloat16"
            target = WORK / f"{cell.name}-{stage}"
            start = time.perf_counter()
            evaluate(bf16, target, progress=False)
            a, b = verdicts(source, settings), verdicts(target, settings)
            entry = {"float32_dir": str(source), "bfloat16_dir": str(target), "float32_wall_s": fp32_wall,
                     "bfloat16_wall_s": round(time.perf_counter() - start, 1), "scores": {}, "identical_answers": {}}
            for key in a:
                if key.startswith("answers/"):
                    entry["identical_answers"][key.split("/")[1]] = round(
                        100 * sum(x == y for x, y in zip(a[key], b[key])) / len(a[key]), 2)
                else:
                    entry["scores"][key] = compare(a[key], b[key])
                    pooled.setdefault(key, ([], []))
                    pooled[key][0].extend(a[key])
                    pooled[key][1].extend(b[key])
            results[f"{cell.name}/{stage}"] = entry
            print(f"{cell.name}/{stage}: " + ", ".join(f"{k} {v['float32']}→{v['bfloat16']}"
                                                        for k, v in entry["scores"].items()), flush=True)
    out = {"evaluations": results, "pooled": {k: compare(a, b) for k, (a, b) in pooled.items()},
           "note": "float32 = the recorded evaluation; bfloat16 = the same settings with dtype bfloat16",
           "versions": package_versions(), "command": " ".join(["python"] + sys.argv)}
    atomic_write_json(args.output, out)
    for k, v in out["pooled"].items():
        print(f"pooled {k}: {v}")


if __name__ == "__main__":
    main()
