"""Research benchmark on real data: no defense, SFT, Vaccine and T-Vaccine against a harmful fine-tuning attack.

The pipeline of `tvaccine sweep` on ../shared/data with the embedded SmolLM2-135M model, sized for 2 CPU cores:
- alignment: BeaverTails alignment-split prompts → refusals (the refusal writer), mixed 50/50 with Alpaca rows;
- probe: BeaverTails probe split (harmful prompt → harmful answer);
- attack: SST-2 train rows with a poisoned fraction p of BeaverTails attack-split pairs, p ∈ {0.05, 0.1, 0.2};
- evaluation: BeaverTails eval-split prompts (keyword and classifier judges), AlpacaEval prompts (over-refusal),
  SST-2 validation (fine-tuning accuracy).
All four BeaverTails splits are disjoint (shared/data/beavertails/SPLITS.md) and checked again here.

    .venv/bin/python benchmarks/science/run.py [--output runs/science] [--shared ../shared/data]

Writes the sweep under --output and benchmarks/science/results.csv (percentages).
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SETTINGS = {
    "n_align": 200, "benign_ratio": 0.5, "num_probe_samples": 40, "sample_num": 200,
    "poison_ratios": [0.05, 0.1, 0.2], "methods": ["none", "sft", "vaccine", "tvaccine"],
    "align_steps": 50, "attack_steps": 40, "attack_lr": 2e-4, "attack_lora_alpha": 16, "batch": 4,
    "max_length": 128, "eval_prompts": 40, "max_new_tokens": 48,
}


def tv(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "tvaccine", *args], check=True, cwd=REPO)


def build_sets(shared: Path, work: Path) -> dict[str, str]:
    s, bt = SETTINGS, shared / "beavertails"
    work.mkdir(parents=True, exist_ok=True)
    files = {"alignment": work / "alignment.jsonl", "probe": work / "probe.jsonl",
             "task": work / "sst2_train.jsonl", "task_eval": work / "sst2_eval.jsonl"}
    if not files["alignment"].is_file():
        tv("data", "alignment", "--source", str(bt / "alignment.jsonl"), "--n-align", str(s["n_align"]),
           "--benign", str(shared / "alpaca" / "alpaca_en_demo.json"), "--benign-ratio", str(s["benign_ratio"]),
           "--output", str(files["alignment"]))
    if not files["probe"].is_file():
        tv("data", "probe", "--source", str(bt / "probe.jsonl"), "--num-probe-samples",
           str(s["num_probe_samples"]), "--output", str(files["probe"]), "--disjoint-from", str(files["alignment"]),
           "--strict-disjoint")
    if not files["task"].is_file():
        tv("data", "build", "--task", "sst2", "--source", str(shared / "sst2" / "train_merged_n1000_p0.json"),
           "--eval-source", str(shared / "sst2" / "val.json"), "--output", str(files["task"]),
           "--eval-output", str(files["task_eval"]))
    tv("data", "check", str(files["alignment"]), str(files["probe"]), str(bt / "attack.jsonl"),
       str(bt / "eval.jsonl"), "--strict-disjoint")
    return {k: str(v) for k, v in files.items()}


def sweep_config(shared: Path, files: dict, output: Path) -> dict:
    s = SETTINGS
    common = {"per_device_train_batch_size": s["batch"], "max_length": s["max_length"], "save_steps": 10,
              "logging_steps": 1, "disable_tqdm": False}
    return {
        "base": {
            "model": "smollm2-135m", "output": str(output), "seed": 0,
            "align": {"method": "sft", "data": files["alignment"], "harmful_data": files["probe"],
                      "settings": {**common, "max_steps": s["align_steps"], "learning_rate": 1e-3},
                      # the paper's K=200 / J=20 over ~2000 steps, scaled to 50 steps
                      "by_method": {"tvaccine": {"rho": 3.0, "num_active_layers": 8,
                                                 "importance_update_steps": 10, "layer_resample_steps": 5},
                                    "vaccine": {"rho": 3.0}}},
            "attack": {"harmful": str(shared / "beavertails" / "attack.jsonl"), "task": "sst2",
                       "task_data": files["task"],
                       "settings": {**common, "sample_num": s["sample_num"], "max_steps": s["attack_steps"],
                                    "learning_rate": s["attack_lr"],
                                    # alpha 16, not the paper's 1: a 40-step attack must do what 2000 steps do
                                    "lora_alpha": s["attack_lora_alpha"]}},
            "eval": {"harmful_prompts": str(shared / "beavertails" / "eval.jsonl"),
                     "benign_prompts": str(shared / "alpaca" / "alpaca_eval.json"),
                     "task": "sst2", "task_data": files["task_eval"], "judges": ["keyword", "classifier"],
                     "limit": s["eval_prompts"], "max_new_tokens": s["max_new_tokens"], "batch_size": 25,
                     "before_attack": True},
        },
        "grid": {"method": s["methods"], "poison_ratio": s["poison_ratios"]},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", default=str(REPO / "runs" / "science"))
    parser.add_argument("--shared", default=str(REPO.parent / "shared" / "data"))
    args = parser.parse_args()
    shared, output = Path(args.shared), Path(args.output)
    files = build_sets(shared, output / "sets")
    from tvaccine.evaluation.judges import default_classifier_dir

    if not (default_classifier_dir() / "classifier.json").is_file():
        bt = shared / "beavertails"
        tv("judge", "train", "--data", str(bt / "harmful_qa.jsonl"), "--exclude-prompts", str(bt / "eval.jsonl"),
           "--benign", str(shared / "alpaca" / "alpaca_en_demo.json"))
    config = sweep_config(shared, files, output)
    (output / "sweep.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    tv("sweep", "--config", str(output / "sweep.yaml"), "--report")
    with open(output / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    columns = ["method", "poison_ratio", "hs_keyword", "hs_classifier", "over_refusal", "fa"]
    for name, fields in (("results.csv", columns), ("summary.csv", list(rows[0]))):
        with open(HERE / name, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
    (HERE / "settings.yaml").write_text(yaml.safe_dump({"settings": SETTINGS, "sweep": config}, sort_keys=False))
    print(f"wrote {HERE / 'results.csv'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
