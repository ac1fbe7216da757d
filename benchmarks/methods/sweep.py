"""Every alignment method, and Lisa, through `tvaccine sweep` on the embedded model: align → attack → evaluate.

A smoke-scale run that shows each method works end to end in the same harness, with the same data and the same
evaluation (not a defense result: a few steps per stage, 10 prompts per score):
- alignment: 64 BeaverTails alignment-split prompts → refusals; harmful data: the same prompts' harmful answers
  (RepNoise pairs by prompt; T-Vaccine's probe, TAR's and Booster's harmful batches use them too);
- attack: SST-2 rows with p = 0.2 BeaverTails attack-split pairs, n 40, continuing Booster's LoRA (its threat
  model), a fresh LoRA on the merged adapter otherwise; a second sweep runs Lisa inside the attack on SFT;
- evaluation: 10 BeaverTails eval-split prompts (keyword judge), SST-2 validation accuracy.

    .venv/bin/python benchmarks/methods/sweep.py [--output runs/methods-sweep]

Writes the sweeps under --output and benchmarks/methods/sweep_summary.csv.
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
SHARED = REPO.parent / "shared" / "data"
STEPS = {"align": 4, "attack": 4}


def tv(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "tvaccine", *args], check=True, cwd=REPO)


def build_sets(work: Path) -> dict[str, str]:
    work.mkdir(parents=True, exist_ok=True)
    files = {"alignment": work / "alignment.jsonl", "task": work / "sst2_train.jsonl",
             "task_eval": work / "sst2_eval.jsonl"}
    if not files["alignment"].is_file():
        tv("data", "alignment", "--source", str(SHARED / "beavertails" / "alignment.jsonl"), "--n-align", "64",
           "--output", str(files["alignment"]))
    if not files["task"].is_file():
        tv("data", "build", "--task", "sst2", "--source", str(SHARED / "sst2" / "train_merged_n1000_p0.json"),
           "--eval-source", str(SHARED / "sst2" / "val.json"), "--output", str(files["task"]),
           "--eval-output", str(files["task_eval"]))
    return {k: str(v) for k, v in files.items()}


def base_config(files: dict, output: Path) -> dict:
    common = {"per_device_train_batch_size": 4, "max_length": 128, "save_steps": 2, "logging_steps": 1}
    tvaccine_schedule = {"num_active_layers": 8, "importance_update_steps": 2, "layer_resample_steps": 2}
    return {
        "model": "smollm2-135m", "output": str(output), "seed": 0,
        "align": {"method": "sft", "data": files["alignment"],
                  "harmful_data": str(SHARED / "beavertails" / "alignment.jsonl"),
                  "settings": {**common, "max_steps": STEPS["align"], "learning_rate": 1e-3},
                  "by_method": {m: tvaccine_schedule for m in ("tvaccine", "tvaccine-uniform", "tvaccine-topk",
                                                               "tvaccine-no-perturbation")}
                  | {"tar": {"inner_steps": 2}}},
        "attack": {"harmful": str(SHARED / "beavertails" / "attack.jsonl"), "task": "sst2",
                   "task_data": files["task"], "alignment_data": files["alignment"],
                   "settings": {**common, "poison_ratio": 0.2, "sample_num": 40, "max_steps": STEPS["attack"],
                                "learning_rate": 2e-4, "lora_alpha": 16,
                                "lisa_alignment_steps": 1, "lisa_finetune_steps": 1}},
        "eval": {"harmful_prompts": str(SHARED / "beavertails" / "eval.jsonl"), "task": "sst2",
                 "task_data": files["task_eval"], "judges": ["keyword"], "limit": 10, "max_new_tokens": 24,
                 "batch_size": 10},
    }


def main() -> int:
    from tvaccine.methods import METHODS

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", default=str(REPO / "runs" / "methods-sweep"))
    args = parser.parse_args()
    output = Path(args.output)
    files = build_sets(output / "sets")
    sweeps = {"methods": {"base": base_config(files, output / "methods"),
                          "grid": {"method": ["none", *METHODS]}},
              "lisa": {"base": base_config(files, output / "lisa"),
                       "grid": {"method": ["none", "sft"], "defense": ["lisa"]}}}
    rows = []
    for name, sweep in sweeps.items():
        path = output / f"{name}.yaml"
        path.write_text(yaml.safe_dump(sweep, sort_keys=False), encoding="utf-8")
        tv("sweep", "--config", str(path))
        with open(output / name / "summary.csv", newline="", encoding="utf-8") as f:
            rows += list(csv.DictReader(f))
    columns = ["method", "defense", "hs_keyword", "fa", "align_s", "attack_s", "eval_s", "align_peak_rss_mb",
               "attack_peak_rss_mb"]
    with open(HERE / "sweep_summary.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {HERE / 'sweep_summary.csv'} ({len(rows)} cells)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
