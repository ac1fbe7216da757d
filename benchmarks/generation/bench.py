"""Generation speed: the authors' loop (one prompt per ``generate`` call) against ours (length-sorted batches).

Both use the same greedy decoding on the embedded default model (SmolLM2-135M-Instruct) and the same stop rule,
so their answers should match; the fraction that match exactly is recorded beside the speed. The two are measured
interleaved, chunk by chunk (one batch, then the same prompts one at a time), so a machine whose load changes
during the run slows both alike. Tokens are answer tokens up to EOS; padding and post-EOS steps do not count.

    PYTHONPATH=src python benchmarks/generation/bench.py [--prompts FILE] [--n 64] [--max-new-tokens 64]
                                                         [--batch-size 64] [--dtype float32]
                                                         [--output benchmarks/generation/results.json]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

# On a shared machine, OpenMP's default busy-waiting made one-prompt-at-a-time decoding 8x slower (2.2 vs 17.5
# tokens/s on 2 loaded cores) while barely touching batched decoding; that would inflate the speed-up. Sleeping
# waits are set before torch loads, so the baseline is measured at its best. Override by exporting the variable.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

HERE = Path(__file__).resolve().parent
DEFAULT_PROMPTS = HERE.parents[1] / ".." / "shared" / "data" / "beavertails" / "eval.jsonl"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", default=str(DEFAULT_PROMPTS.resolve()))
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--dtype", default="float32", help="float32 (default) or bfloat16 (fast with AMX, not exact)")
    ap.add_argument("--output", default=str(HERE / "results.json"))
    args = ap.parse_args()

    import torch

    from tvaccine.data.template import format_prompt
    from tvaccine.evaluation.generate import generate_batch, load_for_generation
    from tvaccine.evaluation.prompts import read_prompts
    from tvaccine.io import atomic_write_json, package_versions

    model, tok = load_for_generation("smollm2-135m", dtype=args.dtype)
    prompts = [format_prompt(r["instruction"], r["input"]) for r in read_prompts(args.prompts, args.n)]
    prompts.sort(key=lambda p: -len(tok(p)["input_ids"]))  # as generate_to_file does
    generate_batch(model, tok, prompts[:2], 4)  # warm-up: first-call allocations and kernel selection

    seq_texts, bat_texts = [], []
    seq = {"tokens": 0, "wall": 0.0, "cpu": 0.0}
    bat = {"tokens": 0, "wall": 0.0, "cpu": 0.0}
    load_start = os.getloadavg()[0]
    for b in range(0, len(prompts), args.batch_size):
        chunk = prompts[b:b + args.batch_size]
        w, c = time.perf_counter(), time.process_time()
        texts, counts = generate_batch(model, tok, chunk, args.max_new_tokens)
        bat["wall"] += time.perf_counter() - w
        bat["cpu"] += time.process_time() - c
        bat["tokens"] += sum(counts)
        bat_texts += texts
        for p in chunk:  # the authors' way: one prompt per generate call
            w, c = time.perf_counter(), time.process_time()
            texts, counts = generate_batch(model, tok, [p], args.max_new_tokens)
            seq["wall"] += time.perf_counter() - w
            seq["cpu"] += time.process_time() - c
            seq["tokens"] += counts[0]
            seq_texts += texts
        print(f"{len(seq_texts)}/{len(prompts)} prompts: sequential {seq['tokens'] / seq['wall']:.1f} tok/s, "
              f"batched {bat['tokens'] / bat['wall']:.1f} tok/s", flush=True)

    identical = sum(a == b for a, b in zip(seq_texts, bat_texts)) / len(prompts)
    results = {
        "sequential_tokens_per_s": round(seq["tokens"] / seq["wall"], 2),
        "batched_tokens_per_s": round(bat["tokens"] / bat["wall"], 2),
        "speedup": round((bat["tokens"] / bat["wall"]) / (seq["tokens"] / seq["wall"]), 2),
        "identical_fraction": round(identical, 4),
        "cpu_time_speedup": round((bat["tokens"] / bat["cpu"]) / (seq["tokens"] / seq["cpu"]), 2),
        "shape": {"prompts": len(prompts), "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size,
                  "prompt_file": Path(args.prompts).name, "dtype": str(model.dtype), "decoding": "greedy"},
        "sequential": {"answer_tokens": seq["tokens"], "wall_s": round(seq["wall"], 2), "cpu_s": round(seq["cpu"], 2)},
        "batched": {"answer_tokens": bat["tokens"], "wall_s": round(bat["wall"], 2), "cpu_s": round(bat["cpu"], 2)},
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "cpu": platform.processor(),
                    "load_average_1m_at_start": round(load_start, 2),
                    "load_average_1m_at_end": round(os.getloadavg()[0], 2),
                    "OMP_WAIT_POLICY": os.environ["OMP_WAIT_POLICY"]},
        "versions": package_versions(),
    }
    atomic_write_json(args.output, results)
    print({k: results[k] for k in ("sequential_tokens_per_s", "batched_tokens_per_s", "speedup",
                                   "identical_fraction")})


if __name__ == "__main__":
    main()
