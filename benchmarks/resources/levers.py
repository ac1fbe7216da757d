"""What each lever on T-Vaccine's step time buys, at what activation memory, with the update unchanged (CPU).

    PYTHONPATH=src python benchmarks/resources/levers.py          # about 12 minutes on 2 idle cores

T-Vaccine's step costs Vaccine's two passes plus the recomputation of every checkpointed layer above the lowest
active one, in both passes. Each lever removes part of that recomputation; it counts only if the step's update is
the same and its activation peak is no higher than T-Vaccine's own (pass 2's). Variants, on the batch of
``bench.py`` (4 × 128 real rows, the default settings):

- ``tvaccine``: as shipped;
- ``pass1_budget``: pass 1 leaves the top n checkpointed layers un-checkpointed, n the largest whose pass-1 peak
  stays under pass 2's (measured here, not guessed);
- ``save_attention``: a selective checkpoint policy keeps each checkpointed layer's attention kernel output, so
  recomputation skips the attention kernel;
- ``no_checkpointing``: nothing checkpointed, the floor of what any recomputation lever can reach, and its memory.

The third lever the issue names, reusing pass 1's forward below the lowest active layer, is bounded without code:
the script draws 200 layer sets from the importance of 20 probe rows and reports how often layer 0 is drawn (then
nothing lies below the lowest active layer to reuse). Timing: ``benchmarks/timing.py`` (interleaved rounds).
Writes ``levers.json`` beside this file.
"""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/timing.py
from bench import DATA, MODEL, load_rows  # noqa: E402
from harness import SETTINGS, batch_of, full_length_rows, make_trainer, train_step  # noqa: E402
from timing import load_average, ratio_text, summarize  # noqa: E402
from tvaccine.importance import sample_layers  # noqa: E402
from tvaccine.io import atomic_write_json, package_versions  # noqa: E402
from tvaccine.layers import unwrap  # noqa: E402
from tvaccine.methods.tvaccine import TVaccineTrainer  # noqa: E402
from tvaccine.models import load_model  # noqa: E402
from tvaccine.profiling import measure_step  # noqa: E402

HERE = Path(__file__).resolve().parent


class Pass1Budget(TVaccineTrainer):
    """Pass 1 with the top ``pass1_free`` checkpointed layers run un-checkpointed (pass 2 unchanged)."""

    pass1_free = 0

    def perturbation(self, model, inputs, layers):
        checkpointed = [i for i, layer in enumerate(self.decoder.layers) if layer.gradient_checkpointing]
        free = set(checkpointed[len(checkpointed) - self.pass1_free:]) if self.pass1_free else set()
        self._set_checkpointed(set(checkpointed) - free)
        try:
            return super().perturbation(model, inputs, layers)
        finally:
            self._set_checkpointed(set(checkpointed))


def attention_ops() -> list:
    names = ["_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_flash_attention",
             "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention"]
    return [getattr(torch.ops.aten, n).default for n in names if hasattr(torch.ops.aten, n)]


def save_attention(trainer) -> None:
    """Re-enable the per-layer checkpointing with a policy that keeps the attention kernel's outputs."""
    from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

    keep = set(attention_ops())

    def policy(ctx, op, *args, **kwargs):
        return CheckpointPolicy.MUST_SAVE if op in keep else CheckpointPolicy.PREFER_RECOMPUTE

    base = unwrap(trainer.model)
    base.activation_checkpointing_enable(
        {"use_reentrant": False, "context_fn": partial(create_selective_checkpoint_contexts, policy)})
    base.disable_input_require_grads()
    trainer._set_checkpointed(set())  # the next step's _activate sets the inactive layers again


def build(variant: str, rows, probe, batch: int, free: int = 0):
    overrides = {"checkpoint_inactive": False} if variant == "no_checkpointing" else {}
    trainer = make_trainer("tvaccine", load_model(MODEL, "float32"), rows, probe, batch, **overrides)
    if variant == "pass1_budget":
        trainer.__class__ = Pass1Budget
        trainer.pass1_free = free
    if variant == "save_attention":
        save_attention(trainer)
    return trainer


def first_step(trainer, inputs) -> dict:
    """One step from the same start: its gradients (to compare) and activation bytes (importance pass excluded)."""
    torch.manual_seed(0)
    trainer.training_step(trainer.model, inputs)  # step 0: importance and the draw
    grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    trainer.model.zero_grad(set_to_none=True)
    torch.manual_seed(0)
    measured = measure_step(trainer, inputs)  # same step again: no importance pass, the same layers
    trainer.model.zero_grad(set_to_none=True)
    return {"grads": grads, "bytes": measured}


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def layer0_frequency(rows, probe_rows: int, draws: int) -> dict:
    """Importance on ``probe_rows`` real probe rows (K steps each), ``draws`` draws from each: how often is 0 in?"""
    from tvaccine.models import load_tokenizer

    probe = full_length_rows(load_tokenizer(MODEL), DATA / "probe.jsonl", 128, probe_rows)
    trainer = make_trainer("tvaccine", load_model(MODEL, "float32"), rows, probe, len(rows))
    g = torch.Generator().manual_seed(0)
    hits, lowest = 0, []
    for _ in range(probe_rows):
        probs = trainer.layer_importance(trainer.model)
        for _ in range(draws // probe_rows):
            layers = sample_layers(probs, SETTINGS["num_active_layers"], g)
            hits += 0 in layers
            lowest.append(min(layers))
    total = len(lowest)
    return {"probe_rows": probe_rows, "draws": total, "layer0_drawn_fraction": hits / total,
            "mean_layers_below_lowest_active": sum(lowest) / total}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--output", default=str(HERE / "levers.json"))
    args = p.parse_args()
    load_before = load_average()
    rows, probe = load_rows(args.batch, args.seq)

    base = build("tvaccine", rows, probe, args.batch)
    inputs = batch_of(base, rows)
    reference = first_step(base, inputs)
    pass2_peak = reference["bytes"]["pass2"]
    budget = None
    for free in range(1, 31):  # the largest n whose pass 1 stays under pass 2's peak
        trial = first_step(build("pass1_budget", rows, probe, args.batch, free), inputs)
        if trial["bytes"]["pass1"] > pass2_peak:
            break
        budget = (free, trial)
    free = budget[0] if budget else 0
    print(f"pass 1 can leave {free} layers un-checkpointed under pass 2's {pass2_peak / 1e6:.1f} MB", flush=True)

    variants = ["tvaccine", "pass1_budget", "save_attention", "no_checkpointing"]
    trainers = {"tvaccine": base, **{v: build(v, rows, probe, args.batch, free) for v in variants[1:]}}
    checks = {"tvaccine": reference}
    for v in variants[1:]:
        checks[v] = first_step(trainers[v], inputs)
    for v in variants:  # the timed steps continue from here, each variant from the same state
        trainers[v].state.global_step = 1
    times = {v: [] for v in variants}
    for r in range(args.rounds):
        for v in variants:
            times[v].append([train_step(trainers[v], inputs) for _ in range(args.steps)])
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{v} {sum(times[v][-1]) / args.steps:.2f}"
                                                          for v in variants), flush=True)
    load_after = load_average()
    summary = summarize(times, refs=("tvaccine",))
    results = {
        "shape": {"model": MODEL, "batch": args.batch, "seq": args.seq, **SETTINGS},
        "active_layers": list(base.schedule.active),
        "pass1_free_layers": free,
        "variants": {v: {"activation_bytes": checks[v]["bytes"],
                         "max_abs_grad_difference_vs_tvaccine": max_difference(checks[v]["grads"],
                                                                               reference["grads"]),
                         "step_time": summary[v]} for v in variants},
        "reuse_below_lowest_active": layer0_frequency(rows, probe_rows=20, draws=200),
        "raw_step_times_s": times,
        "machine": {"torch_threads": torch.get_num_threads(), "load_average_start": load_before,
                    "load_average_end": load_after},
        "versions": package_versions(),
        "command": "PYTHONPATH=src python benchmarks/resources/levers.py " + " ".join(sys.argv[1:]),
    }
    atomic_write_json(args.output, results)
    for v in variants:
        b = checks[v]["bytes"]
        print(f"{v:18s} pass1 {b['pass1'] / 1e6:7.1f} MB  pass2 {b['pass2'] / 1e6:7.1f} MB  "
              f"step {summary[v]['median_s']:6.2f} s  / tvaccine {ratio_text(summary[v], 'tvaccine')}  "
              f"max |Δgrad| {results['variants'][v]['max_abs_grad_difference_vs_tvaccine']:.1e}")
    print(results["reuse_below_lowest_active"])


if __name__ == "__main__":
    main()
