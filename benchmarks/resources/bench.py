"""Activation memory, peak RSS and step time of SFT, Vaccine and T-Vaccine on the same model and batch (CPU).

    PYTHONPATH=src python benchmarks/resources/bench.py            # about 15 minutes on 2 cores

- activation bytes: one step under ``tvaccine.profiling.measure_step`` (exact saved-tensor bytes, each storage once,
  checkpoint inputs and recomputation included, peak per pass, plus ε), at the default shape and the paper's;
- peak RSS: ``ru_maxrss`` of a fresh process per method (load, warm-up step with importance, measured step);
- step time: the three methods interleaved in one process, one warm-up round, then ``--steps`` rounds; T-Vaccine's
  importance pass (every K steps) is timed apart and reported amortised over K.

Writes ``results.json`` beside this file (the README's table is made from it).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from harness import (METHOD_ORDER, SETTINGS, SHARED_DATA, batch_of, full_length_rows, make_trainer, spread,
                     target_fraction, train_step)
from tvaccine.io import atomic_write_json, package_versions
from tvaccine.models import load_model, load_tokenizer
from tvaccine.plan import plan_named

HERE = Path(__file__).resolve().parent
MODEL = "smollm2-135m"
DATA = SHARED_DATA / "beavertails"


def load_rows(batch: int, seq: int):
    tokenizer = load_tokenizer(MODEL)
    rows = full_length_rows(tokenizer, DATA / "alignment.jsonl", seq, batch)
    probe = full_length_rows(tokenizer, DATA / "probe.jsonl", seq, SETTINGS["probe_batch_size"])
    return rows, probe


def worker(method: str, batch: int, seq: int) -> dict:
    """Run in a fresh process: activation bytes of one step after a warm-up step, and the process's peak RSS."""
    from tvaccine.profiling import measure_step

    rows, probe = load_rows(batch, seq)
    trainer = make_trainer(method, load_model(MODEL, "float32"), rows, probe, batch)
    inputs = batch_of(trainer, rows)
    train_step(trainer, inputs)  # warm-up; T-Vaccine's importance pass runs here
    if method == "tvaccine":  # measure a step that also holds the importance pass (as every K-th step does)
        trainer.state.global_step = 0
        trainer.schedule.probs, trainer.schedule.step = None, -1
    result = {"bytes": measure_step(trainer, inputs)}
    if method == "tvaccine":
        result["active_layers"] = list(trainer.schedule.active)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    return result


def run_worker(method: str, batch: int, seq: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", method, "--batch", str(batch), "--seq", str(seq)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def step_times(batch: int, seq: int, steps: int, importance_repeats: int = 3) -> dict:
    rows, probe = load_rows(batch, seq)
    trainers = {m: make_trainer(m, load_model(MODEL, "float32"), rows, probe, batch) for m in METHOD_ORDER}
    inputs = {m: batch_of(t, rows) for m, t in trainers.items()}
    times = {m: [] for m in METHOD_ORDER}
    for round_ in range(steps + 1):  # round 0 is the warm-up (and T-Vaccine's first importance pass)
        for m in METHOD_ORDER:
            t = train_step(trainers[m], inputs[m])
            if round_:
                times[m].append(t)
    tv = trainers["tvaccine"]
    importance = []
    for _ in range(importance_repeats):
        start = time.perf_counter()
        tv.layer_importance(tv.model)
        importance.append(time.perf_counter() - start)
    return {"steps": {m: spread(v) for m, v in times.items()}, "importance": spread(importance)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=6, help="timed rounds after one warm-up round")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--paper-batch", type=int, default=10)
    p.add_argument("--paper-seq", type=int, default=200)
    p.add_argument("--output", default=str(HERE / "results.json"))
    p.add_argument("--worker", choices=METHOD_ORDER, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.batch, args.seq)))
        return

    shape = {"model": MODEL, "layers": 30, "batch": args.batch, "seq": args.seq,
             "num_active_layers": SETTINGS["num_active_layers"], "dtype": "float32",
             "lora": {k: SETTINGS[k] for k in ("lora_r", "lora_alpha", "lora_dropout")}}
    rows, _ = load_rows(args.batch, args.seq)
    shape["target_fraction"] = round(target_fraction(rows), 4)
    default = {m: run_worker(m, args.batch, args.seq) for m in METHOD_ORDER}
    print("default shape:", json.dumps(default), flush=True)
    paper = {m: run_worker(m, args.paper_batch, args.paper_seq) for m in METHOD_ORDER}
    print("paper shape:", json.dumps(paper), flush=True)
    timing = step_times(args.batch, args.seq, args.steps)
    print("timing:", json.dumps(timing), flush=True)

    act = {m: default[m]["bytes"]["peak"] for m in METHOD_ORDER}
    act_paper = {m: paper[m]["bytes"]["peak"] for m in METHOD_ORDER}
    med = {m: timing["steps"][m]["median"] for m in METHOD_ORDER}
    k = SETTINGS["importance_update_steps"]
    results = {
        "shape": shape,
        "activation_bytes": act,
        "step_time_median_s": med,
        "peak_rss_mb": {m: round(default[m]["peak_rss_mb"], 1) for m in METHOD_ORDER},
        "ratios": {"activation_tvaccine_over_vaccine": act["tvaccine"] / act["vaccine"],
                   "activation_tvaccine_over_vaccine_paper_shape": act_paper["tvaccine"] / act_paper["vaccine"],
                   "time_tvaccine_over_vaccine": med["tvaccine"] / med["vaccine"]},
        "targets_met": {"activation_at_most_0.35x_vaccine": act["tvaccine"] <= 0.35 * act["vaccine"],
                        "time_at_most_vaccine": med["tvaccine"] <= med["vaccine"]},
        "activation_bytes_by_pass": {m: default[m]["bytes"] for m in METHOD_ORDER},
        "tvaccine_active_layers": default["tvaccine"]["active_layers"],
        "paper_shape": {"batch": args.paper_batch, "seq": args.paper_seq, "activation_bytes": act_paper,
                        "activation_bytes_by_pass": {m: paper[m]["bytes"] for m in METHOD_ORDER},
                        "tvaccine_active_layers": paper["tvaccine"]["active_layers"]},
        "step_time_spread_s": timing["steps"],
        "importance_pass_s": timing["importance"],
        "importance_amortised_s_per_step": timing["importance"]["median"] / k,
        "plan_llama_2_7b_bf16": {m: plan_named("llama-2-7b", m, batch=10, seq=200, dtype="bfloat16").summary()
                                 for m in METHOD_ORDER},
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "torch_threads": torch.get_num_threads()},
        "versions": package_versions(),
        "command": "PYTHONPATH=src python benchmarks/resources/bench.py",
    }
    atomic_write_json(args.output, results)
    print(json.dumps({k: results[k] for k in ("activation_bytes", "step_time_median_s", "peak_rss_mb", "ratios")},
                     indent=1))


if __name__ == "__main__":
    main()
