"""How far batched generation is from what this machine can compute: tokens/s against FLOP/s (CPU, float32).

    PYTHONPATH=src python benchmarks/generation/ceiling.py [--n 64] [--max-new-tokens 64] [--batch-sizes 16,64]

1. The machine's float32 matmul rate: ``torch.mm`` at the shapes a batched step multiplies (rows × hidden ×
   intermediate, decode and prefill) and at 2048³, best of 5.
2. The work: the one-at-a-time loop (the authors') and ``tvaccine.evaluation.generate`` at each batch size, on the
   same prompts and settings as bench.py. FLOPs are counted from the model's shape: 2 × the decoder's weight count
   per processed token, the attention's 4 × context × width per token and layer, and the output layer for each row
   and step that yields logits. *Useful* FLOPs are those of the one-at-a-time loop (no padding, nothing after a
   row's end); *computed* FLOPs add the batch's padding and the steps a finished row waits for the others.
3. The ceiling: useful FLOPs at the best matmul rate, i.e. the fastest any batching could finish this work here.

Writes ``ceiling.json`` beside this file.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as bench.py: the one-at-a-time loop at its best

HERE = Path(__file__).resolve().parent
DEFAULT_PROMPTS = HERE.parents[1] / ".." / "shared" / "data" / "beavertails" / "eval.jsonl"


def matmul_rate(shapes: list[tuple[int, int, int]], repeats: int = 5) -> dict:
    import torch

    out = {}
    for m, k, n in shapes:
        a, b = torch.randn(m, k), torch.randn(k, n)
        torch.mm(a, b)
        best = float("inf")
        for _ in range(repeats):
            reps = max(1, int(2e9 // (2 * m * k * n)))
            start = time.perf_counter()
            for _ in range(reps):
                torch.mm(a, b)
            best = min(best, (time.perf_counter() - start) / reps)
        out[f"{m}x{k}x{n}"] = round(2 * m * k * n / best / 1e9, 1)
    return out


class FlopCounter:
    """Forward FLOPs of a Llama-style decoder from its config (matmuls and attention; norms etc. are negligible)."""

    def __init__(self, config):
        h, i, L = config.hidden_size, config.intermediate_size, config.num_hidden_layers
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or h // heads
        kv = config.num_key_value_heads * head_dim
        self.layer_weights = L * (h * heads * head_dim * 2 + 2 * h * kv + 3 * h * i)
        self.width, self.layers, self.head = heads * head_dim, L, h * config.vocab_size

    def step(self, tokens: int, context: int, logits_rows: int) -> float:
        """A forward over ``tokens`` new tokens per row attending to ``context`` positions, logits for some rows."""
        return (2 * self.layer_weights * tokens + 4 * self.layers * self.width * tokens * context
                + 2 * self.head * logits_rows)

    def one_prompt(self, prompt: int, answer: int, stopped: bool) -> float:
        """Prefill, then one step per generated token (the last one only if it was needed to see the stop)."""
        steps = answer + (1 if stopped else 0)
        total = self.step(prompt, prompt, 1)
        for s in range(1, steps):
            total += self.step(1, prompt + s, 1)
        return total

    def batch(self, rows: int, padded_prompt: int, steps: int) -> float:
        total = self.step(rows * padded_prompt, padded_prompt, rows)
        for s in range(1, steps):
            total += self.step(rows, padded_prompt + s, rows)
        return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", default=str(DEFAULT_PROMPTS.resolve()))
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch-sizes", default="16,64")
    ap.add_argument("--output", default=str(HERE / "ceiling.json"))
    args = ap.parse_args()

    import torch

    from tvaccine.data.template import format_prompt
    from tvaccine.evaluation.generate import generate_answers, load_for_generation
    from tvaccine.evaluation.prompts import read_prompts
    from tvaccine.io import atomic_write_json, package_versions

    load_start = os.getloadavg()
    model, tok = load_for_generation("smollm2-135m", dtype="float32")
    flops = FlopCounter(model.config)
    h, i = model.config.hidden_size, model.config.intermediate_size
    rates = matmul_rate([(64, h, i), (64 * 64, h, i), (2048, 2048, 2048)])
    peak = max(rates.values()) * 1e9
    prompts = [format_prompt(r["instruction"], r["input"]) for r in read_prompts(args.prompts, args.n)]
    prompts.sort(key=lambda p: -len(tok(p)["input_ids"]))
    lengths = [len(tok(p)["input_ids"]) for p in prompts]
    generate_answers(model, tok, prompts[:2], 4)  # warm-up

    start = time.perf_counter()
    one = [generate_answers(model, tok, [p], args.max_new_tokens)[0] for p in prompts]
    one_wall = time.perf_counter() - start
    useful = sum(flops.one_prompt(n, a.new_tokens, a.ended == "eos") for n, a in zip(lengths, one))
    answer_tokens = sum(a.new_tokens for a in one)
    runs = {"one_at_a_time": {"wall_s": round(one_wall, 2), "tokens_per_s": round(answer_tokens / one_wall, 2),
                              "useful_gflop_per_s": round(useful / one_wall / 1e9, 2)}}
    for size in map(int, args.batch_sizes.split(",")):
        start, answers, computed = time.perf_counter(), [], 0.0
        for b in range(0, len(prompts), size):
            chunk = generate_answers(model, tok, prompts[b:b + size], args.max_new_tokens)
            steps = min(args.max_new_tokens, max(a.new_tokens + (a.ended == "eos") for a in chunk))
            computed += flops.batch(len(chunk), max(lengths[b:b + size]), steps)
            answers += chunk
        wall = time.perf_counter() - start
        runs[f"batch_{size}"] = {
            "wall_s": round(wall, 2), "tokens_per_s": round(answer_tokens / wall, 2),
            "speedup": round(one_wall / wall, 2),
            "identical_answers": round(sum(a.text == b.text for a, b in zip(one, answers)) / len(one), 4),
            "useful_gflop_per_s": round(useful / wall / 1e9, 2),
            "computed_gflop_per_s": round(computed / wall / 1e9, 2),
            "useful_share_of_computed": round(useful / computed, 3)}
        print(size, runs[f"batch_{size}"], flush=True)
    ceiling_wall = useful / peak
    results = {
        "matmul_gflop_per_s": rates,
        "useful_gflop": round(useful / 1e9, 2),
        "answer_tokens": answer_tokens,
        "ceiling": {"wall_s": round(ceiling_wall, 2), "tokens_per_s": round(answer_tokens / ceiling_wall, 1),
                    "speedup_over_one_at_a_time": round(one_wall / ceiling_wall, 1)},
        "runs": runs,
        "shape": {"prompts": len(prompts), "max_new_tokens": args.max_new_tokens, "dtype": "float32",
                  "prompt_tokens_mean": round(sum(lengths) / len(lengths), 1), "prompt_file": Path(args.prompts).name},
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "load_average_start": [round(x, 2) for x in load_start],
                    "load_average_end": [round(x, 2) for x in os.getloadavg()]},
        "versions": package_versions(),
    }
    atomic_write_json(args.output, results)
    print({k: results[k] for k in ("matmul_gflop_per_s", "ceiling")})


if __name__ == "__main__":
    main()
