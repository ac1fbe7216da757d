"""CPU step time of every alignment method relative to SFT, side by side in one process on the embedded model.

Each method runs `tvaccine.align.align` (the code path of `tvaccine align`) for a few optimizer steps on the same
data: BeaverTails alignment-split prompts → refusals (the refusal writer), batch 4, max length 128, LoRA r 8 on
q,k,v,o,gate,up,down; harmful data: the same prompts' harmful answers (RepNoise pairs rows by prompt) or the probe
split. A callback times every optimizer step; the first two (warm-up, T-Vaccine's importance pass) are dropped; an
untimed SFT run first takes the process's one-off costs. Timing follows ``benchmarks/timing.py`` (the resource
benchmark's too): ``--rounds`` interleaved rounds, per-round ratios to SFT and to Vaccine, their median with a
95% bootstrap interval over rounds.

    .venv/bin/python benchmarks/methods/run.py [--steps 6] [--rounds 5] [--methods sft,vaccine,...]

Writes benchmarks/methods/results.json and results.csv (``--output`` changes the stem).
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE.parent))  # benchmarks/timing.py
from timing import load_average, ratio_text, summarize  # noqa: E402
SHARED = REPO.parent / "shared" / "data"
COMMON = {"per_device_train_batch_size": 4, "max_length": 128, "learning_rate": 1e-3, "warmup_steps": 0,
          "save_strategy": "no", "logging_steps": 1, "disable_tqdm": True, "use_cpu": True, "seed": 0}
# T-Vaccine's K and J scaled to a short run; every other setting is the method's paper default.
BY_METHOD = {"tvaccine": {"importance_update_steps": 200, "layer_resample_steps": 4}}


def step_timer():
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times, self._start = [], None

        def on_step_begin(self, args, state, control, **kw):
            self._start = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self.times.append(time.perf_counter() - self._start)

    return StepTimer()


def build_data(work: Path) -> dict[str, str]:
    align = work / "alignment.jsonl"
    if not align.is_file():
        subprocess.run([sys.executable, "-m", "tvaccine", "data", "alignment", "--source",
                        str(SHARED / "beavertails" / "alignment.jsonl"), "--n-align", "64", "--benign-ratio", "0",
                        "--output", str(align)], check=True, cwd=REPO)
    return {"data": str(align), "paired": str(SHARED / "beavertails" / "alignment.jsonl"),
            "probe": str(SHARED / "beavertails" / "probe.jsonl")}


def time_method(method: str, files: dict, steps: int, work: Path) -> list[float]:
    from tvaccine.align import align
    from tvaccine.methods import METHODS
    from tvaccine.settings import build_config

    config_cls = METHODS[method][0]
    settings = {**COMMON, "max_steps": steps, **{k: v for m, s in BY_METHOD.items() if method.startswith(m)
                                                 for k, v in s.items()}}
    names = set(config_cls.__dataclass_fields__)
    config = build_config(config_cls, {k: v for k, v in settings.items() if k in names})
    harmful = files["paired"] if method == "repnoise" else files["probe"]
    timer = step_timer()
    align(method, "smollm2-135m", files["data"], str(work / method / str(time.time_ns())), config,
          harmful_data=harmful, callbacks=[timer])
    return timer.times


def main() -> None:
    from tvaccine.methods import METHODS

    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--output", default="results", help="file name stem of the .json and .csv written here")
    ap.add_argument("--methods", default=",".join(["sft"] + sorted(m for m in METHODS if m != "sft")))
    args = ap.parse_args()
    methods = args.methods.split(",")
    work = Path(tempfile.mkdtemp(prefix="tvaccine-methods-"))
    files = build_data(work)
    load_before = load_average()
    # The process's first training pays one-off costs (allocator growth, kernel selection): 6 s/step instead of
    # 1.1 s for SFT here. An untimed warm-up run takes them before any method is timed.
    time_method("sft", files, 3, work)
    times: dict[str, list[list[float]]] = {m: [] for m in methods}
    for r in range(args.rounds):
        for m in methods:
            t = time_method(m, files, args.steps, work)[2:]  # first two: warm-up, T-Vaccine's importance pass
            times[m].append(t)
            print(f"round {r + 1}: {m:26s} median {statistics.median(t):.2f} s/step over {len(t)} steps", flush=True)
    summary = summarize(times, refs=("sft", "vaccine"))
    rows = [{"method": m, "s_per_step": round(summary[m]["median_s"], 3),
             "relative_to_sft": summary[m].get("ratio_to_sft", {}).get("median", 1.0),
             "relative_to_sft_ci95": summary[m].get("ratio_to_sft", {}).get("ci95"),
             "relative_to_vaccine": summary[m].get("ratio_to_vaccine", {}).get("median", 1.0),
             "relative_to_vaccine_ci95": summary[m].get("ratio_to_vaccine", {}).get("ci95")} for m in methods]
    from tvaccine.io import package_versions

    result = {"settings": {**COMMON, "steps": args.steps, "rounds": args.rounds, "by_method": BY_METHOD,
                           "model": "smollm2-135m", "dropped_first_steps": 2}, "methods": rows, "timing": summary,
              "raw_step_times": times, "load_average_start": load_before, "load_average_end": load_average(),
              "versions": package_versions()}
    (HERE / f"{args.output}.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    with open(HERE / f"{args.output}.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["method", "s_per_step", "relative_to_sft", "relative_to_vaccine"],
                           extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    for m in methods:
        print(f"{m:26s} {summary[m]['median_s']:6.2f} s/step  × SFT {ratio_text(summary[m], 'sft')}  "
              f"× Vaccine {ratio_text(summary[m], 'vaccine')}")


if __name__ == "__main__":
    main()
