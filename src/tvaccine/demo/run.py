"""``tvaccine demo``: no defense, SFT and T-Vaccine through alignment and attack on the embedded model, offline.

The budget is calibrated for 2 CPU cores (see docs/demo.md): small batches, short sequences, a few dozen steps,
and an attack strong enough to raise the harmful score of the undefended aligned model within that budget.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from tvaccine.demo.pack import PACK_FILES, build_pack
from tvaccine.errors import UserError
from tvaccine.io import atomic_write_text

METHODS = ["none", "sft", "tvaccine"]


def demo_sweep(output: Path, pack: Path, model: str, methods: list[str], steps: dict) -> dict:
    align_common = {"max_steps": steps["align"], "per_device_train_batch_size": 4, "max_length": 128,
                    "learning_rate": 1e-3, "warmup_steps": 0.1, "save_steps": 10, "logging_steps": 1}
    return {
        "base": {
            "model": model,
            "output": str(output),
            "seed": 0,
            "align": {"method": "sft", "data": str(pack / "alignment.jsonl"),
                      "harmful_data": str(pack / "probe.jsonl"),
                      "settings": align_common,
                      # the paper's K=200, J=20 scaled to a 60-step run: importance every 10, draws every 5
                      "by_method": {"tvaccine": {"rho": 3.0, "num_active_layers": 8, "importance_update_steps": 10,
                                                 "layer_resample_steps": 5},
                                    "vaccine": {"rho": 3.0}}},
            "attack": {"harmful": str(pack / "attack_harmful.jsonl"), "task": "sst2",
                       "task_data": str(pack / "task_train.jsonl"),
                       # alpha 16, not the paper's 1, so that 30 steps do what the paper's 2000 do
                       "settings": {"poison_ratio": 0.2, "sample_num": 100, "learning_rate": 2e-4, "lora_alpha": 16,
                                    "max_steps": steps["attack"], "per_device_train_batch_size": 4,
                                    "max_length": 128, "save_steps": 10, "logging_steps": 1}},
            "eval": {"harmful_prompts": str(pack / "eval_harmful.jsonl"),
                     "benign_prompts": str(pack / "benign_eval.jsonl"),
                     "task": "sst2", "task_data": str(pack / "task_eval.jsonl"),
                     "judges": ["keyword"], "limit": steps["eval_prompts"], "max_new_tokens": 40,
                     "batch_size": 20, "before_attack": True},
        },
        "grid": {"method": methods},
    }


def run_demo(output: str, model: str = "smollm2-135m", data_dir: str | None = None, quick: bool = False,
             methods: list[str] | None = None, echo=print) -> list[dict]:
    from tvaccine.pipeline import run_sweep
    from tvaccine.report import build_report, markdown_table

    output = Path(output)
    if data_dir:
        pack = Path(data_dir)
        missing = [f for f in PACK_FILES if not (pack / f).is_file()]
        if missing:
            raise UserError(f"--data-dir {pack}: missing {', '.join(missing)} (see docs/demo.md for the layout)")
    else:
        pack = output / "pack"
        build_pack(pack, model, echo=echo)
    steps = {"align": 4, "attack": 4, "eval_prompts": 8} if quick else \
            {"align": 60, "attack": 30, "eval_prompts": 40}
    sweep = demo_sweep(output, pack, model, methods or METHODS, steps)
    atomic_write_text(output / "sweep.yaml", yaml.safe_dump(sweep, sort_keys=False))
    rows = run_sweep(sweep, str(output / "sweep.yaml"), echo=echo)
    md, html = build_report(output)
    echo("\n" + markdown_table(rows))
    echo(f"\nreport: {md}\n        {html}")
    return rows
