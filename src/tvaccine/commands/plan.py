"""``tvaccine plan``: predicted peak GPU memory of an alignment step, from the model's config alone."""

from __future__ import annotations

import argparse
import json


def register(sub) -> None:
    from tvaccine.plan import DTYPE_BYTES, METHODS, NAMED

    p = sub.add_parser(
        "plan", help="predict the peak GPU memory of an alignment step (no weights are loaded)",
        description="Predict peak memory with a breakdown: weights, LoRA parameters, gradients and AdamW state, "
                    "activations, perturbation stash and logits. MODEL is a built-in name "
                    f"({', '.join(NAMED)}), a local folder with config.json, or a hub id.",
    )
    p.add_argument("--model", required=True)
    p.add_argument("--method", required=True, choices=METHODS)
    p.add_argument("--batch", type=int, default=10)
    p.add_argument("--seq", type=int, default=200, help="tokens per row")
    p.add_argument("--dtype", default="bf16", choices=sorted(DTYPE_BYTES), help="model weights dtype")
    p.add_argument("--num-active-layers", type=int, default=8, help="T-Vaccine's S")
    p.add_argument("--lora-r", type=int, default=8)
    p.add_argument("--lora-dropout", type=float, default=0.1)
    p.add_argument("--target-fraction", type=float, default=1.0,
                   help="share of positions that carry a target token (1.0: an upper bound)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.set_defaults(run=run)


def run(args: argparse.Namespace, extra: list[str]) -> int:
    from tvaccine.plan import plan_named

    result = plan_named(args.model, args.method, batch=args.batch, seq=args.seq, dtype=args.dtype,
                        lora_r=args.lora_r, lora_dropout=args.lora_dropout,
                        num_active_layers=args.num_active_layers, target_fraction=args.target_fraction)
    print(json.dumps(result.summary(), indent=2) if args.json else result.table())
    return 0
