"""What T-Vaccine's variants cost per step: attention scope (configs/tvaccine.yaml), layer scope
(configs/tvaccine-layer.yaml) and the authors' code (configs/tvaccine-original.yaml: attention scope, neighbour rule,
reentrant gradient gap).

On the embedded SmolLM2-135M (30 layers, float32), batch 4 × 128 tokens of real rows that fill the sequence
(`benchmarks/resources/harness.py`), LoRA r 8 / dropout 0.1 on q,k,v,o,gate,up,down, S 8, ρ 3. All variants train
the same S layers: the first variant draws them from importance on one probe row, the others are given that draw.
Per variant:

- activation bytes: one step under ``tvaccine.profiling.measure_step`` (exact saved-tensor bytes, peak per pass);
- trainable LoRA parameters in a step (those with requires_grad after the layers are activated);
- step time (training_step + AdamW step): one untimed warm-up step each, then ``--rounds`` interleaved rounds;
- the bytes and trainable count again with the active layers forced to 10, 12, ..., 24 (lowest active layer 10).

    .venv/bin/python benchmarks/methods/scopes.py        # about 2.5 minutes on 2 shared cores

Writes benchmarks/methods/scopes.json; ``uptime`` before and after, since the machine may be shared.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "resources"))

from harness import SHARED_DATA, batch_of, full_length_rows, make_trainer, target_fraction, train_step  # noqa: E402

from tvaccine.io import atomic_write_json, package_versions  # noqa: E402
from tvaccine.models import load_model, load_tokenizer  # noqa: E402
from tvaccine.profiling import measure_step  # noqa: E402

MODEL = "smollm2-135m"
# Importance puts layer 0 in almost every draw; this set shows what changes when the lowest active layer is higher.
HIGH_ACTIVE = [10, 12, 14, 16, 18, 20, 22, 24]
# recipe -> what it sets on top of the paper's settings (lora_alpha does not change the cost and is left at 4)
VARIANTS = {
    "tvaccine (attention)": {"freeze_scope": "attention"},
    "tvaccine-layer (layer)": {"freeze_scope": "layer"},
    "tvaccine-original": {"freeze_scope": "attention", "neighbor_uncheckpointed": True,
                          "reentrant_gradient_gap": True},
}


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def log(*what) -> None:
    print(f"[{time.strftime('%H:%M:%S')}]", *what, flush=True)


def trainable_lora(trainer) -> int:
    return sum(p.numel() for n, p in trainer.model.named_parameters() if "lora_" in n and p.requires_grad)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3, help="timed interleaved rounds after one warm-up round")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--output", default=str(HERE / "scopes.json"))
    args = p.parse_args()
    load_before, start = uptime(), time.perf_counter()

    tokenizer = load_tokenizer(MODEL)
    rows = full_length_rows(tokenizer, SHARED_DATA / "beavertails" / "alignment.jsonl", args.seq, args.batch)
    probe = full_length_rows(tokenizer, SHARED_DATA / "beavertails" / "probe.jsonl", args.seq, 1)
    trainers = {v: make_trainer("tvaccine", load_model(MODEL, "float32"), rows, probe, args.batch, **s)
                for v, s in VARIANTS.items()}
    inputs = {v: batch_of(t, rows) for v, t in trainers.items()}

    # Warm-up: the first variant runs the importance pass and draws S layers at step 0; the others get its draw.
    (name, first), *others = trainers.items()
    log("warm-up", name, round(train_step(first, inputs[name]), 2), "s")
    for _, t in others:
        t.schedule.probs, t.schedule.active = list(first.schedule.probs), list(first.schedule.active)
        t.state.global_step = t.schedule.step = first.state.global_step  # no importance or draw before step 20
    for v, t in others:
        log("warm-up", v, round(train_step(t, inputs[v]), 2), "s")

    result = {}
    for v, t in trainers.items():
        activation = measure_step(t, inputs[v])
        log("measured", v, activation["peak"])
        t.model.zero_grad(set_to_none=True)
        uncheckpointed = [i for i, layer in enumerate(t.decoder.layers) if not layer.gradient_checkpointing]
        result[v] = {"activation_bytes": activation, "trainable_lora_params": trainable_lora(t),
                     "uncheckpointed_layers": uncheckpointed, "step_times_s": []}
    for _ in range(args.rounds):
        for v, t in trainers.items():
            result[v]["step_times_s"].append(train_step(t, inputs[v]))
            log("step", v, round(result[v]["step_times_s"][-1], 2), "s")
    assert all(t.schedule.active == first.schedule.active for t in trainers.values())
    drawn = list(first.schedule.active)
    for v, t in trainers.items():  # the same step's bytes and trainable set with HIGH_ACTIVE forced (no timing)
        t.schedule.active = list(HIGH_ACTIVE)
        activation = measure_step(t, inputs[v])
        t.model.zero_grad(set_to_none=True)
        result[v]["lowest_active_10"] = {"activation_bytes": activation, "trainable_lora_params": trainable_lora(t)}
        log("measured", v, HIGH_ACTIVE, activation["peak"])
    for r in result.values():
        r["step_time_median_s"] = statistics.median(r["step_times_s"])

    total_lora = sum(p.numel() for n, p in first.model.named_parameters() if "lora_" in n)
    out = {
        "shape": {"model": MODEL, "layers": len(first.decoder), "batch": args.batch, "seq": args.seq,
                  "dtype": "float32", "target_fraction": round(target_fraction(rows), 4),
                  "num_active_layers": first.args.num_active_layers, "lora_r": first.args.lora_r,
                  "lora_dropout": first.args.lora_dropout, "lora_params_total": total_lora},
        "active_layers": drawn,
        "lowest_active_10": {"active_layers": HIGH_ACTIVE,
                             "what": "bytes and trainable LoRA of one step with these layers forced; no timing"},
        "variants": {v: dict(settings=VARIANTS[v], **r) for v, r in result.items()},
        "load_before": load_before,
        "load_after": uptime(),
        "runtime_s": round(time.perf_counter() - start, 1),
        "note": "shared 2-core machine: other jobs ran alongside, step times are noisy; bytes and counts are exact",
        "machine": {"platform": platform.platform(), "torch_threads": torch.get_num_threads()},
        "versions": package_versions(),
        "command": ".venv/bin/python benchmarks/methods/scopes.py",
    }
    atomic_write_json(args.output, out)
    for v, r in result.items():
        b = r["activation_bytes"]
        print(f"{v:24s} peak {b['peak'] / 1e6:7.1f} MB (pass1 {b['pass1'] / 1e6:.1f}, pass2 {b['pass2'] / 1e6:.1f})"
              f"  trainable LoRA {r['trainable_lora_params']:>8,}  median {r['step_time_median_s']:.2f} s"
              f"  un-checkpointed {r['uncheckpointed_layers']}")
    for v, r in result.items():
        print(f"{v:24s} with {HIGH_ACTIVE}: peak {r['lowest_active_10']['activation_bytes']['peak'] / 1e6:.1f} MB"
              f"  trainable LoRA {r['lowest_active_10']['trainable_lora_params']:,}")
    print(out["load_before"], "|", out["load_after"], "|", out["runtime_s"], "s")


if __name__ == "__main__":
    main()
