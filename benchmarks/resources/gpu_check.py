"""GPU check: peak CUDA memory and step time of every resource variant (harness.VARIANTS) on a Llama-2-7B shape.

    PYTHONPATH=src python benchmarks/resources/gpu_check.py            # one CUDA GPU, a few minutes
    PYTHONPATH=src python benchmarks/resources/gpu_check.py --tiny     # dry run of the same logic, CPU is fine

The model is randomly initialised in bf16 from the 7B config (no download), LoRA r 8 on q,k,v,o,gate,up,down,
batch 10 × 200 tokens. Per method: a fresh model, one warm-up step (T-Vaccine's importance pass runs in it), then
``--steps`` timed steps; ``torch.cuda.max_memory_allocated`` is recorded over the timed steps and, apart, over the
warm-up. Results and the planner's predictions for the same setting go to ``gpu_results.json`` beside this file.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
from pathlib import Path

import torch

from harness import METHOD_ORDER, SETTINGS, make_trainer, spread, target_fraction, train_step
from tvaccine.io import atomic_write_json, package_versions
from tvaccine.plan import NAMED, ModelShape, plan

HERE = Path(__file__).resolve().parent
PLANNED = ("sft", "sft_gc", "vaccine", "vaccine_gc", "tvaccine")
TINY = dict(hidden_size=64, intermediate_size=160, num_hidden_layers=10, num_attention_heads=4, vocab_size=1000)


def random_rows(count: int, seq: int, prompt: int, vocab: int, seed: int) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(count):
        ids = torch.randint(3, vocab, (seq,), generator=g).tolist()
        rows.append({"input_ids": ids, "labels": [-100] * prompt + ids[prompt:]})
    return rows


def check_method(method: str, config_dict: dict, device: torch.device, batch: int, seq: int, prompt: int,
                 steps: int) -> dict:
    from transformers import AutoModelForCausalLM, LlamaConfig

    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    config = LlamaConfig(**config_dict, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    with device:  # built in place on the device, in bf16: no float32 copy of 7B weights
        base = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    rows = random_rows(batch, seq, prompt, config.vocab_size, seed=0)
    probe = random_rows(SETTINGS["probe_batch_size"], seq, prompt, config.vocab_size, seed=1)
    trainer = make_trainer(method, base, rows, probe, batch, use_cpu=not cuda)
    inputs = trainer._prepare_inputs(trainer.data_collator(rows))
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    warmup_s = train_step(trainer, inputs, sync)
    warmup_peak = torch.cuda.max_memory_allocated() if cuda else None
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times = [train_step(trainer, inputs, sync) for _ in range(steps)]
    out = {"max_memory_allocated": torch.cuda.max_memory_allocated() if cuda else None,
           "warmup_max_memory_allocated": warmup_peak, "warmup_s": warmup_s, "step_time_s": spread(times)}
    if hasattr(trainer, "schedule"):
        out["active_layers"] = list(trainer.schedule.active)
    del trainer, base, inputs
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="tiny config: check the logic (on CPU if no GPU)")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--batch", type=int, default=10)
    p.add_argument("--seq", type=int, default=200)
    p.add_argument("--prompt", type=int, default=60, help="masked prompt tokens per row")
    p.add_argument("--output", default=None, help="default: gpu_results.json here (tiny: gpu_results_tiny.json)")
    args = p.parse_args()
    if not torch.cuda.is_available() and not args.tiny:
        print("gpu_check: no CUDA device here; run it on a GPU machine (or --tiny for a CPU dry run)",
              file=sys.stderr)
        return 2
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = "tiny" if args.tiny else "llama-2-7b"
    config = TINY if args.tiny else NAMED["llama-2-7b"]
    shape = ModelShape.from_config(config)
    fraction = target_fraction(random_rows(args.batch, args.seq, args.prompt, shape.vocab, seed=0))
    results = {"model": name, "config": config, "device": torch.cuda.get_device_name() if device.type == "cuda"
               else "cpu", "batch": args.batch, "seq": args.seq, "dtype": "bfloat16", "target_fraction": fraction,
               "settings": SETTINGS, "methods": {}, "versions": package_versions()}
    for method in METHOD_ORDER:
        measured = check_method(method, config, device, args.batch, args.seq, args.prompt, args.steps)
        if method not in PLANNED:  # the planner models the default T-Vaccine only
            results["methods"][method] = {"measured": measured, "planned": None}
            print(method, json.dumps({"max_memory_allocated_gib": (measured["max_memory_allocated"] or 0) / 2**30,
                                      "step_median_s": measured["step_time_s"]["median"]}), flush=True)
            continue
        predicted = plan(shape, method, batch=args.batch, seq=args.seq, dtype="bfloat16",
                         lora_r=SETTINGS["lora_r"], lora_dropout=SETTINGS["lora_dropout"],
                         num_active_layers=SETTINGS["num_active_layers"], target_fraction=fraction,
                         active_layers=measured.get("active_layers"), model=name)
        results["methods"][method] = {"measured": measured, "planned": predicted.summary()}
        print(method, json.dumps({"max_memory_allocated_gib": (measured["max_memory_allocated"] or 0) / 2**30,
                                  "planned_total_gib": predicted.total / 2**30,
                                  "step_median_s": measured["step_time_s"]["median"]}), flush=True)
    out = Path(args.output) if args.output else HERE / ("gpu_results_tiny.json" if args.tiny else "gpu_results.json")
    atomic_write_json(out, results)
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
