"""Activation memory, peak RSS and step time of SFT, Vaccine and T-Vaccine, each also as a user short of memory
would run it, on the same model and batch (CPU).

    PYTHONPATH=src python benchmarks/resources/bench.py            # about 35 minutes on 2 idle cores

Variants (``harness.VARIANTS``): ``sft``, ``sft_gc``, ``vaccine``, ``vaccine_gc`` (``_gc``: the Trainer's activation
checkpointing on every layer), ``tvaccine`` (freeze scope attention, the default), ``tvaccine_layer`` (freeze scope
layer) and ``tvaccine_original`` (the authors' checkpointing rule).

- activation bytes: one step under ``tvaccine.profiling.measure_step`` (exact saved-tensor bytes, each storage once,
  checkpoint inputs and recomputation included, peak per pass, plus ε), at the default shape and the paper's;
- peak RSS: ``ru_maxrss`` of a fresh process per variant (load, warm-up step with importance, measured step);
- step time: ``benchmarks/timing.py``'s interleaved rounds (ratios per round, bootstrap intervals). T-Vaccine
  draws new layers every round (J = steps per round) so the rounds cover several draws; its importance pass
  (every K steps) is timed apart and reported amortised over K;
- ``pareto.png``: the memory/time plane with the Pareto front. Resources only: what each method buys in safety is
  the science benchmark's question (benchmarks/science/).

Writes ``results.json`` and ``pareto.png`` beside this file (the README's table is made from them).
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/timing.py
from harness import (METHOD_ORDER, SETTINGS, SHARED_DATA, VARIANTS, batch_of, full_length_rows,  # noqa: E402
                     make_trainer, spread, target_fraction, train_step)
from timing import load_average, ratio_text, summarize  # noqa: E402
from tvaccine.io import atomic_write_json, package_versions  # noqa: E402
from tvaccine.models import load_model, load_tokenizer  # noqa: E402
from tvaccine.plan import plan_named  # noqa: E402

HERE = Path(__file__).resolve().parent
MODEL = "smollm2-135m"
DATA = SHARED_DATA / "beavertails"
SAMPLED = tuple(v for v, (m, _) in VARIANTS.items() if m == "tvaccine")
PLANNED = ("sft", "sft_gc", "vaccine", "vaccine_gc", "tvaccine")  # the variants tvaccine plan models


def load_rows(batch: int, seq: int):
    tokenizer = load_tokenizer(MODEL)
    rows = full_length_rows(tokenizer, DATA / "alignment.jsonl", seq, batch)
    probe = full_length_rows(tokenizer, DATA / "probe.jsonl", seq, SETTINGS["probe_batch_size"])
    return rows, probe


def worker(variant: str, batch: int, seq: int) -> dict:
    """Run in a fresh process: activation bytes of one step after a warm-up step, and the process's peak RSS."""
    from tvaccine.profiling import measure_step

    rows, probe = load_rows(batch, seq)
    trainer = make_trainer(variant, load_model(MODEL, "float32"), rows, probe, batch)
    inputs = batch_of(trainer, rows)
    train_step(trainer, inputs)  # warm-up; T-Vaccine's importance pass runs here
    if variant in SAMPLED:  # measure a step that also holds the importance pass (as every K-th step does)
        trainer.state.global_step = 0
        trainer.schedule.probs, trainer.schedule.step = None, -1
    result = {"bytes": measure_step(trainer, inputs)}
    if variant in SAMPLED:
        result["active_layers"] = list(trainer.schedule.active)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    return result


def run_worker(variant: str, batch: int, seq: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", variant, "--batch", str(batch), "--seq", str(seq)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def step_times(variants, batch: int, seq: int, rounds: int, steps: int, importance_repeats: int = 3) -> dict:
    """Interleaved rounds (benchmarks/timing.py). T-Vaccine redraws its layers every round (J = ``steps``)."""
    rows, probe = load_rows(batch, seq)
    trainers = {v: make_trainer(v, load_model(MODEL, "float32"), rows, probe, batch,
                                **({"layer_resample_steps": steps} if v in SAMPLED else {})) for v in variants}
    inputs = {v: batch_of(t, rows) for v, t in trainers.items()}
    for v in variants:  # warm-up step (T-Vaccine's importance pass at step 0), not counted
        train_step(trainers[v], inputs[v])
    # After the warm-up, steps 1.. : the draw of step 0 covers steps 1..J-1, so round r uses draw r (from step rJ).
    for v in variants:
        trainers[v].state.global_step = steps
    times = {v: [] for v in variants}
    draws = {v: [] for v in variants if v in SAMPLED}
    for r in range(rounds):
        for v in variants:
            times[v].append([train_step(trainers[v], inputs[v]) for _ in range(steps)])
            if v in draws:
                draws[v].append(list(trainers[v].schedule.active))
        print(f"round {r + 1}/{rounds}: " + ", ".join(f"{v} {sum(times[v][-1]) / steps:.2f}" for v in variants),
              flush=True)
    tv = trainers["tvaccine"]
    importance = []
    for _ in range(importance_repeats):
        start = time.perf_counter()
        tv.layer_importance(tv.model)
        importance.append(time.perf_counter() - start)
    return {"raw": times, "draws": draws, "importance": spread(importance)}


def pareto_front(points: dict[str, tuple[float, float]]) -> list[str]:
    """Among the perturbation-aware variants (SFT does not do the same job), the names no other one beats on both
    axes (lower is better on each)."""
    rivals = {v: xy for v, xy in points.items() if not v.startswith("sft")}
    return [a for a, (x, y) in rivals.items()
            if not any(x2 <= x and y2 <= y and (x2, y2) != (x, y) for b, (x2, y2) in rivals.items() if b != a)]


def draw_pareto(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    act, timing = results["activation_bytes"], results["step_time"]
    points = {v: (timing[v]["ratio_to_vaccine"]["median"] if v != "vaccine" else 1.0, act[v] / 1e6) for v in act}
    front = pareto_front(points)
    fig, ax = plt.subplots(figsize=(7, 4.8))
    for v, (x, y) in points.items():
        ci = timing[v].get("ratio_to_vaccine", {}).get("ci95", [x, x])
        ax.errorbar(x, y, xerr=[[x - ci[0]], [ci[1] - x]], fmt="o", capsize=3,
                    color="C3" if v.startswith("tvaccine") else "C0" if v.startswith("vaccine") else "C7")
        below = v.endswith("_layer")  # it sits on tvaccine's memory: label it underneath
        ax.annotate(v, (x, y), textcoords="offset points", xytext=(6, -12 if below else 4), fontsize=8)
    fx, fy = zip(*sorted(points[v] for v in front))
    ax.step(fx, fy, where="post", color="k", lw=0.8, ls="--", label="Pareto front of Vaccine and T-Vaccine variants")
    shape = results["shape"]
    ax.set_xlabel("step time / Vaccine's (median of per-round ratios, 95% bootstrap interval)")
    ax.set_ylabel(f"activation MB, one step at {shape['batch']} × {shape['seq']}")
    ax.set_title(f"Resources only ({shape['model']}, CPU): safety is in benchmarks/science", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=6, help="interleaved timing rounds after one warm-up step")
    p.add_argument("--steps", type=int, default=3, help="timed steps per variant and round")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--paper-batch", type=int, default=10)
    p.add_argument("--paper-seq", type=int, default=200)
    p.add_argument("--variants", default=",".join(METHOD_ORDER), help="comma-separated keys of harness.VARIANTS")
    p.add_argument("--output", default=str(HERE / "results.json"))
    p.add_argument("--worker", choices=METHOD_ORDER, help=argparse.SUPPRESS)
    p.add_argument("--plot-only", action="store_true", help="redraw pareto.png from an existing --output")
    args = p.parse_args()
    if args.plot_only:
        out = Path(args.output)
        draw_pareto(json.loads(out.read_text(encoding="utf-8")), out.with_name("pareto.png"))
        return
    if args.worker:
        print(json.dumps(worker(args.worker, args.batch, args.seq)))
        return
    variants = args.variants.split(",")
    unknown = sorted(set(variants) - set(METHOD_ORDER))
    if unknown or "vaccine" not in variants or "tvaccine" not in variants:
        raise SystemExit(f"--variants: needs vaccine and tvaccine, and only {', '.join(METHOD_ORDER)}; "
                         f"unknown: {unknown}")

    load_before = load_average()
    shape = {"model": MODEL, "layers": 30, "batch": args.batch, "seq": args.seq,
             "num_active_layers": SETTINGS["num_active_layers"], "dtype": "float32",
             "lora": {k: SETTINGS[k] for k in ("lora_r", "lora_alpha", "lora_dropout")}}
    rows, _ = load_rows(args.batch, args.seq)
    shape["target_fraction"] = round(target_fraction(rows), 4)
    default = {v: run_worker(v, args.batch, args.seq) for v in variants}
    print("default shape:", json.dumps({v: default[v]["bytes"]["peak"] for v in variants}), flush=True)
    paper = {v: run_worker(v, args.paper_batch, args.paper_seq) for v in variants}
    print("paper shape:", json.dumps({v: paper[v]["bytes"]["peak"] for v in variants}), flush=True)
    load_mid = load_average()
    timing = step_times(variants, args.batch, args.seq, args.rounds, args.steps)
    load_after = load_average()
    summary = summarize(timing["raw"], refs=("vaccine", "vaccine_gc", "sft"))

    act = {v: default[v]["bytes"]["peak"] for v in variants}
    act_paper = {v: paper[v]["bytes"]["peak"] for v in variants}
    k = SETTINGS["importance_update_steps"]
    results = {
        "shape": shape,
        "variants": {v: {"method": VARIANTS[v][0], "settings": VARIANTS[v][1]} for v in variants},
        "activation_bytes": act,
        "step_time_median_s": {v: summary[v]["median_s"] for v in variants},
        "step_time": summary,
        "peak_rss_mb": {v: round(default[v]["peak_rss_mb"], 1) for v in variants},
        "ratios": {"activation_tvaccine_over_vaccine": act["tvaccine"] / act["vaccine"],
                   "activation_tvaccine_over_vaccine_paper_shape": act_paper["tvaccine"] / act_paper["vaccine"]},
        "pareto_front": pareto_front({v: (summary[v].get("ratio_to_vaccine", {}).get("median", 1.0), act[v])
                                      for v in variants}),
        "activation_bytes_by_pass": {v: default[v]["bytes"] for v in variants},
        "tvaccine_active_layers": {v: default[v]["active_layers"] for v in variants if v in SAMPLED},
        "tvaccine_draws_timed": timing["draws"],
        "paper_shape": {"batch": args.paper_batch, "seq": args.paper_seq, "activation_bytes": act_paper,
                        "activation_bytes_by_pass": {v: paper[v]["bytes"] for v in variants},
                        "tvaccine_active_layers": {v: paper[v]["active_layers"] for v in variants if v in SAMPLED}},
        "raw_step_times_s": timing["raw"],
        "importance_pass_s": timing["importance"],
        "importance_amortised_s_per_step": timing["importance"]["median"] / k,
        "plan_llama_2_7b_bf16": {v: plan_named("llama-2-7b", v, batch=10, seq=200, dtype="bfloat16").summary()
                                 for v in variants if v in PLANNED},
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "torch_threads": torch.get_num_threads(), "load_average_start": load_before,
                    "load_average_before_timing": load_mid, "load_average_end": load_after},
        "versions": package_versions(),
        "command": "PYTHONPATH=src python benchmarks/resources/bench.py " + " ".join(sys.argv[1:]),
    }
    atomic_write_json(args.output, results)
    draw_pareto(results, Path(args.output).with_name("pareto.png"))
    for v in variants:
        print(f"{v:18s} act {act[v] / 1e6:8.1f} MB  rss {results['peak_rss_mb'][v]:7.0f} MB  "
              f"step {summary[v]['median_s']:6.2f} s  / vaccine {ratio_text(summary[v], 'vaccine')}  "
              f"/ vaccine_gc {ratio_text(summary[v], 'vaccine_gc')}")


if __name__ == "__main__":
    main()
