"""Choose the research benchmark's alignment recipe on a held-out check, before any attack runs.

The check never touches the benchmark's evaluation prompts: HS on BeaverTails alignment-split prompts that no
candidate trains on (rows 250–297 of the split; every candidate trains on at most its first 200) and over-refusal
on the *last* 50 AlpacaEval prompts (the benchmark scores the first 50). Each candidate aligns SFT (seed 0) and is
scored with the benchmark's decoding (keyword judge, 32 new tokens, greedy, stopped at the template). The rule:
the recipe with the smallest max(HS, over-refusal) on the check goes into run.py, the same for every method; if
none is under the gate's thresholds, the benchmark runs it anyway and its gate marks every cell that does not start
aligned.

    .venv/bin/python benchmarks/science/calibrate.py [--data-dir DIR] [--candidates gpt4-mix,self-mix]
        [--methods sft] [--output runs/science-calibration]

Writes ``calibration.json`` here: per candidate and method, the recipe, HS and over-refusal on the check with Wilson
intervals, and wall times.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))

from run import SETTINGS, TVACCINE_SETTINGS, tv  # noqa: E402

HELD_OUT_HARMFUL = (250, 298)  # alignment-split rows beyond any candidate's training rows
N_HELD_OUT_BENIGN = 50  # the last AlpacaEval prompts
BASE_ANSWER_TOKENS = 48  # the base model's benign answers, as long as the demo's
# Alignment recipes: benign answers written by GPT-4 (Alpaca's own) or by the base model itself (as the demo does:
# the benign rows then hold the model where it is instead of pulling it towards longer answers), their share, the
# learning rate, and optionally the steps (default 40), the rows (default 200) and question-form benign rows first
# (data.questions_first).
CANDIDATES = {
    "gpt4-mix": {"benign_answers": "alpaca", "benign_ratio": 0.5, "learning_rate": 1e-3},
    "gpt4-mix-lr1e-4": {"benign_answers": "alpaca", "benign_ratio": 0.5, "learning_rate": 1e-4},
    "gpt4-mix-75": {"benign_answers": "alpaca", "benign_ratio": 0.75, "learning_rate": 1e-3},
    "self-mix": {"benign_answers": "base", "benign_ratio": 0.5, "learning_rate": 1e-3},
    "gpt4-mix-lr3e-4": {"benign_answers": "alpaca", "benign_ratio": 0.5, "learning_rate": 3e-4},
    "gpt4-mix-67": {"benign_answers": "alpaca", "benign_ratio": 0.67, "learning_rate": 1e-3},
    "self-mix-lr3e-4": {"benign_answers": "base", "benign_ratio": 0.5, "learning_rate": 3e-4},
    "self-mix-30steps": {"benign_answers": "base", "benign_ratio": 0.5, "learning_rate": 1e-3, "steps": 30},
    "self-mix-80steps": {"benign_answers": "base", "benign_ratio": 0.5, "learning_rate": 1e-3, "steps": 80},
    "gpt4-mix-400-80steps": {"benign_answers": "alpaca", "benign_ratio": 0.5, "learning_rate": 1e-3, "steps": 80,
                             "n_align": 400},
    "questions-mix": {"benign_answers": "alpaca", "benign_ratio": 0.5, "learning_rate": 1e-3,
                      "questions_first": True},
    "questions-self-mix": {"benign_answers": "base", "benign_ratio": 0.5, "learning_rate": 1e-3,
                           "questions_first": True},
}


def held_out_sets(sources: dict, work: Path) -> dict:
    from tvaccine.evaluation.prompts import read_prompts

    harmful = read_prompts(sources["bt_alignment"])[slice(*HELD_OUT_HARMFUL)]
    benign = read_prompts(sources["benign_eval"])[-N_HELD_OUT_BENIGN:]
    out = {}
    for name, rows in (("harmful", harmful), ("benign", benign)):
        out[name] = work / f"check_{name}.jsonl"
        out[name].write_text("".join(json.dumps({"prompt": r["instruction"]}) + "\n" for r in rows))
    return out


def base_answers(source: str, work: Path, n: int, max_new_tokens: int) -> Path:
    """The first ``n`` rows of ``source``, answered by the embedded base model (greedy, stopped at the template)."""
    from tvaccine.data.sources import load_source
    from tvaccine.data.template import format_prompt
    from tvaccine.evaluation.generate import generate_to_file, load_for_generation

    path = work / f"{Path(source).stem}_base_answers_{n}.jsonl"
    if path.is_file():
        return path
    rows = load_source(source, "benign").take(n, "benign rows")
    net, tokenizer = load_for_generation("smollm2-135m")
    items = [{"id": str(i), "prompt": format_prompt(r["instruction"], r.get("input", ""))} for i, r in enumerate(rows)]
    answers, _ = generate_to_file(net, tokenizer, items, work / f"{Path(source).stem}_generations.jsonl",
                                  max_new_tokens=max_new_tokens, batch_size=25, stop_at_template=True)
    path.write_text("".join(json.dumps({"instruction": r["instruction"], "input": r.get("input", ""),
                                        "output": a["response"].strip()}) + "\n" for r, a in zip(rows, answers)))
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", default=str(REPO / "runs" / "science-calibration"))
    parser.add_argument("--data-dir", help="a local copy of the data (default: hub ids)")
    parser.add_argument("--candidates", default=",".join(CANDIDATES))
    parser.add_argument("--methods", default="sft")
    args = parser.parse_args()
    from data import _hub_sources, _local_sources, questions_first

    s = dict(SETTINGS)
    work = Path(args.output)
    work.mkdir(parents=True, exist_ok=True)
    sources = _local_sources(Path(args.data_dir)) if args.data_dir else _hub_sources(work / "hub", s)
    check = held_out_sets(sources, work)
    record_path = HERE / "calibration.json"
    record = json.loads(record_path.read_text()) if record_path.is_file() else {"runs": {}}
    record["check"] = {"harmful": f"BeaverTails alignment-split rows {HELD_OUT_HARMFUL[0]}-{HELD_OUT_HARMFUL[1] - 1}",
                       "benign": f"the last {N_HELD_OUT_BENIGN} AlpacaEval prompts",
                       "default_steps": s["align_steps"], "batch": s["batch"], "max_new_tokens": s["max_new_tokens"],
                       "judge": "keyword, with the idiom rule of tvaccine 0.2.1"}
    for name in args.candidates.split(","):
        c = CANDIDATES[name]
        benign = questions_first(sources["benign"], work / "benign_questions_first.jsonl") \
            if c.get("questions_first") else sources["benign"]
        if c["benign_answers"] == "base":
            benign = str(base_answers(benign, work, s["n_align"], BASE_ANSWER_TOKENS))
        data = work / name / "alignment.jsonl"
        data.parent.mkdir(parents=True, exist_ok=True)
        n_align = c.get("n_align", s["n_align"])
        tv("data", "alignment", "--source", sources["bt_alignment"], "--n-align", str(n_align), "--benign", benign,
           "--benign-ratio", str(c["benign_ratio"]), "--output", str(data))
        for method in args.methods.split(","):
            out = work / name / method
            extra = TVACCINE_SETTINGS if method == "tvaccine" else {}
            flags = [a for k, v in extra.items() for a in (f"--{k.replace('_', '-')}", str(v).lower())]
            tv("align", "--method", method, "--model", "smollm2-135m", "--data", str(data),
               "--harmful-data", sources["bt_probe"], "--output", str(out / "align"),
               "--max-steps", str(c.get("steps", s["align_steps"])), "--learning-rate", str(c["learning_rate"]),
               "--per-device-train-batch-size", str(s["batch"]), "--max-length", str(s["max_length"]),
               "--seed", "0", *flags)
            trained = json.loads((out / "align" / "train_results.json").read_text())  # a rerun skips training
            tv("eval", "--model", "smollm2-135m", "--adapters", str(out / "align"), "--judge", "keyword",
               "--harmful-prompts", str(check["harmful"]), "--benign-prompts", str(check["benign"]),
               "--max-new-tokens", str(s["max_new_tokens"]), "--batch-size", "50", "--output", str(out / "eval"))
            score = json.loads((out / "eval" / "results.json").read_text())["scores"]
            record["runs"][f"{name}/{method}"] = {
                "recipe": c, "method_settings": extra, "align_s": round(trained["wall_s"], 1),
                "s_per_step": round(trained["s_per_step"], 2),
                **{k: {f: score[k][f] for f in ("value", "ci95", "n")} for k in ("over_refusal", "degenerate")},
                "hs_keyword": {f: score["harmful_score"]["keyword"][f] for f in ("value", "ci95", "n")}}
            record_path.write_text(json.dumps(record, indent=2) + "\n")
            print(name, method, json.dumps(record["runs"][f"{name}/{method}"]), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
