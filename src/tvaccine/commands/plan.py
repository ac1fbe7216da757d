"""``tvaccine plan``: predicted peak GPU memory of an alignment step, from the model's config alone."""

from __future__ import annotations

import argparse
import json


def register(sub) -> None:
    from tvaccine.plan import DTYPE_BYTES, FIT_SEQS, METHODS, NAMED

    p = sub.add_parser(
        "plan", help="predict the peak GPU memory of an alignment step (no weights are loaded)",
        description="Predict peak memory with a breakdown: weights, LoRA parameters, gradients and AdamW state, "
                    "activations, perturbation stash, tensors held outside autograd and logits. MODEL is a built-in "
                    f"name ({', '.join(NAMED)}), a local folder with config.json, or a hub id. sft_gc and vaccine_gc "
                    "are sft and vaccine with the Trainer's activation checkpointing of every layer. With --fit, "
                    "print the largest batch that fits in a memory size instead.",
    )
    p.add_argument("--model", required=True)
    p.add_argument("--method", required=True, choices=METHODS + ("all",), metavar="METHOD",
                   help=f"{', '.join(METHODS)}, or all")
    p.add_argument("--batch", type=int, default=10)
    p.add_argument("--seq", type=int, default=None,
                   help=f"tokens per row (default 200; with --fit: {', '.join(map(str, FIT_SEQS))})")
    p.add_argument("--fit", metavar="SIZE", default=None,
                   help="memory to fit in, e.g. 24GiB, 24GB, 81920MiB: print the largest batch at each sequence "
                        "length whose predicted peak fits")
    p.add_argument("--dtype", default="bf16", choices=sorted(DTYPE_BYTES), help="model weights dtype")
    p.add_argument("--num-active-layers", type=int, default=8, help="T-Vaccine's S")
    p.add_argument("--lora-r", type=int, default=8)
    p.add_argument("--lora-dropout", type=float, default=0.1)
    p.add_argument("--target-fraction", type=float, default=1.0,
                   help="share of positions that carry a target token (1.0: an upper bound)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.set_defaults(run=run)


def run(args: argparse.Namespace, extra: list[str]) -> int:
    from tvaccine.plan import FIT_SEQS, METHODS, fit, parse_size, plan, plans_table, resolve_shape

    budget = parse_size(args.fit, "--fit") if args.fit is not None else None  # before a hub look-up
    shape = resolve_shape(args.model)
    methods = METHODS if args.method == "all" else (args.method,)
    settings = dict(dtype=args.dtype, lora_r=args.lora_r, lora_dropout=args.lora_dropout,
                    num_active_layers=args.num_active_layers, target_fraction=args.target_fraction)
    if budget is not None:
        seqs = FIT_SEQS if args.seq is None else (args.seq,)
        result = fit(shape, methods, budget, seqs, model=args.model, **settings)
        print(json.dumps(result.summary(), indent=2) if args.json else result.table())
        return 0
    seq = 200 if args.seq is None else args.seq  # the paper's max length
    plans = [plan(shape, m, batch=args.batch, seq=seq, model=args.model, **settings) for m in methods]
    if args.json:
        summaries = [p.summary() for p in plans]
        print(json.dumps(summaries if args.method == "all" else summaries[0], indent=2))
    else:
        print(plans_table(plans) if args.method == "all" else plans[0].table())
    return 0
