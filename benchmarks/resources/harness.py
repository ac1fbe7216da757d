"""What the resource benchmarks share: the batch, a method's trainer as `tvaccine align` builds it, a timed step."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from tvaccine.data.tokenize import IGNORE_INDEX, CausalCollator, encode_row
from tvaccine.layers import unwrap
from tvaccine.lora import add_lora
from tvaccine.methods import METHODS

# What is measured: a method and the settings that make the variant. ``_gc``: the Trainer's activation checkpointing
# on every layer (what a user short of memory turns on); T-Vaccine in both freeze scopes and with the authors'
# checkpointing rule (configs/tvaccine-original.yaml: layer i-1 kept beside each active i, the reentrant gap).
VARIANTS = {
    "sft": ("sft", {}),
    "sft_gc": ("sft", {"activation_checkpointing": True}),
    "vaccine": ("vaccine", {}),
    "vaccine_gc": ("vaccine", {"activation_checkpointing": True}),
    "tvaccine": ("tvaccine", {}),
    "tvaccine_layer": ("tvaccine", {"freeze_scope": "layer"}),
    "tvaccine_original": ("tvaccine", {"neighbor_uncheckpointed": True, "reentrant_gradient_gap": True}),
}
METHOD_ORDER = tuple(VARIANTS)
SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
# T-Vaccine's paper settings; Vaccine keeps its own ρ 2. Importance and resampling follow K and J.
SETTINGS = dict(lora_r=8, lora_alpha=4, lora_dropout=0.1, num_active_layers=8, layer_resample_steps=20,
                importance_update_steps=200, probe_batch_size=1)


def full_length_rows(tokenizer, path: Path, seq: int, count: int, skip: int = 0) -> list[dict]:
    """``count`` rows (harmful prompt → answer, Alpaca template, prompt masked) that fill exactly ``seq`` tokens,
    so every batch has the nominal shape B × seq with no padding."""
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines()[skip:]:
        record = json.loads(line)
        enc = encode_row(tokenizer, {"instruction": record["prompt"], "output": record["response"]}, seq)
        if enc is not None and len(enc["input_ids"]) == seq:
            rows.append(enc)
        if len(rows) == count:
            return rows
    raise SystemExit(f"{path}: fewer than {count} rows reach {seq} tokens")


def target_fraction(rows: list[dict]) -> float:
    """Share of positions whose next token is a target (what the loss and the logits are computed on)."""
    labels = torch.tensor([r["labels"] for r in rows])[:, 1:]
    return (labels != IGNORE_INDEX).float().mean().item()


def make_trainer(variant: str, base_model, rows: list[dict], probe_rows: list[dict], batch: int, seed: int = 0,
                 use_cpu: bool = True, **overrides):
    """The trainer ``tvaccine align`` builds for a method or a ``VARIANTS`` key, ready for ``train_step``."""
    method, variant_settings = VARIANTS.get(variant, (variant, {}))
    config_cls, trainer_cls = METHODS[method]
    fields = config_cls.__dataclass_fields__
    settings = {k: v for k, v in SETTINGS.items() if k in fields}
    settings.update(variant_settings)
    settings.update(overrides)
    args = config_cls(output_dir="/tmp/tvaccine-bench", use_cpu=use_cpu, save_strategy="no", disable_tqdm=True,
                      per_device_train_batch_size=batch, max_steps=1000, seed=seed, **settings)
    torch.manual_seed(seed)
    model = add_lora(base_model, args.lora_r, args.lora_alpha, args.lora_dropout, args.lora_target_modules)
    if args.activation_checkpointing:  # Trainer.train() does this; the benchmarks drive training_step themselves
        unwrap(model).activation_checkpointing_enable()
    kwargs = {"harmful_dataset": probe_rows} if method == "tvaccine" else {}
    trainer = trainer_cls(model=model, args=args, train_dataset=rows, data_collator=CausalCollator(0), **kwargs)
    trainer.current_gradient_accumulation_steps = 1  # train() sets it; the benchmarks drive training_step
    trainer.create_optimizer_and_scheduler(num_training_steps=args.max_steps)
    return trainer


def batch_of(trainer, rows: list[dict]) -> dict:
    return trainer._prepare_inputs(trainer.data_collator(rows))


def train_step(trainer, inputs, sync=lambda: None) -> float:
    """One optimizer step (the method's training_step, AdamW, zero_grad) in seconds; advances global_step."""
    sync()
    start = time.perf_counter()
    trainer.training_step(trainer.model, inputs)
    trainer.optimizer.step()
    trainer.lr_scheduler.step()
    trainer.model.zero_grad(set_to_none=True)
    sync()
    trainer.state.global_step += 1
    return time.perf_counter() - start


def spread(times: list[float]) -> dict:
    t = torch.tensor(times)
    q1, med, q3 = torch.quantile(t, torch.tensor([0.25, 0.5, 0.75], dtype=t.dtype)).tolist()
    return {"median": med, "q1": q1, "q3": q3, "min": min(times), "max": max(times), "n": len(times)}
