"""Booster (Huang, Hu, Ilhan, Tekin, Liu; "Booster: Tackling Harmful Fine-tuning for Large Language Models via
Attenuating Harmful Perturbation", ICLR 2025): alignment that also makes one simulated step of harmful
fine-tuning lower the harmful loss as little as possible.

    min_w  f(w) + λ·[h(w) − h(w − α·∇h(w)/‖∇h(w)‖)]

f is the alignment loss (harmful prompt → refusal), h the loss on a harmful batch (harmful prompt → harmful answer).
As in the authors' code (``BoosterAlignmentTrainer``), the gradient is the first-order one

    ∇f(w) + λ·(∇h(w) − ∇h(w')),   w' = w − α·∇h(w)/‖∇h(w)‖   (one norm over every trainable weight),

the terms through the Hessian of h dropped. Per step: one harmful batch from a seeded stream (the authors: a random
sampler, batch 10 = their alignment batch); ∇h(w); the weights moved to w', ∇h(w'), the weights restored exactly;
then the Trainer's own pass on the alignment batch with λ·(∇h(w) − ∇h(w')) folded into its loss as a term of value
zero, so loss scaling, gradient accumulation and the distributed all-reduce treat it like the rest of the gradient
(the authors add it to ``.grad`` after backward, which each rank would do on its own). Cost: three forward and three
backward passes per step, plus two copies of the trainable weights' size (the first harmful gradient and the saved
weights).

Booster's threat model has the attacker keep training the alignment LoRA (the authors' ``--alternating
single_lora``), so ``attack_mode`` is "continue": ``tvaccine attack`` on a Booster adapter defaults to it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import Trainer

from tvaccine.align.config import AlignmentConfig
from tvaccine.errors import UserError
from tvaccine.methods.auxiliary import (SeededBatches, SideTerm, StepMeans, gradient_term, load_state,
                                        refuse_sharded_weights, save_state)
from tvaccine.methods.loss import TargetPositionsLoss

STATE_FILE = "booster_state.json"


@dataclass
class BoosterConfig(AlignmentConfig):
    lamb: float = field(default=5.0, metadata={"help": "λ: weight of the harmful-perturbation term (paper: 5)"})
    alpha: float = field(default=0.1, metadata={"help": "α: step size of the simulated harmful step (paper: 0.1)"})
    num_harmful_samples: int = field(default=5000, metadata={"help": "harmful rows read (the authors: 5000)"})
    harmful_batch_size: int | None = field(
        default=None, metadata={"help": "harmful rows per step; unset: the alignment batch size (the authors: 10, "
                                        "their alignment batch)"})

    method = "booster"
    # The attacker continues the alignment LoRA (written to the adapter's settings; `tvaccine attack` reads it).
    attack_mode = "continue"

    def __post_init__(self):
        super().__post_init__()
        self._check(self.lamb >= 0, "lamb", "must be non-negative")
        self._check(self.alpha >= 0, "alpha", "must be non-negative")
        self._check(self.num_harmful_samples >= 1, "num_harmful_samples", "must be at least 1")
        self._check(self.harmful_batch_size is None or self.harmful_batch_size >= 1, "harmful_batch_size",
                    "must be at least 1")

    def needs_harmful_data(self) -> bool:
        return True

    def harmful_data_limit(self) -> int | None:
        return self.num_harmful_samples


def harmful_gradient_difference(harmful_loss, params: list[torch.Tensor], alpha: float):
    """∇h(w) − ∇h(w') with w' = w − α·∇h(w)/(‖∇h(w)‖ + 1e-7), and h(w), h(w').

    ``harmful_loss()`` computes h at the current weights; ``params`` are moved to w' for the second call and then
    restored bit for bit (copied back, not moved back: w − x + x need not equal w in floating point). A zero
    ∇h(w) gives w' = w and a zero difference.
    """
    loss = harmful_loss()
    grads = [torch.zeros_like(p) if g is None else g
             for p, g in zip(params, torch.autograd.grad(loss, params, allow_unused=True))]
    norm = torch.linalg.vector_norm(torch.stack([g.float().norm() for g in grads]))
    scale = alpha / (norm + 1e-7)  # the authors' epsilon
    saved = [p.detach().clone() for p in params]
    try:
        with torch.no_grad():
            for p, g in zip(params, grads):
                p.sub_((g * scale).to(p.dtype))
        loss_after = harmful_loss()
        after = torch.autograd.grad(loss_after, params, allow_unused=True)
    finally:
        with torch.no_grad():
            for p, s in zip(params, saved):
                p.copy_(s)
    diff = [g if a is None else g - a for g, a in zip(grads, after)]
    return diff, loss.detach(), loss_after.detach()


class BoosterTrainer(SideTerm, TargetPositionsLoss, Trainer):
    def __init__(self, *args, harmful_dataset=None, **kwargs):
        super().__init__(*args, **kwargs)
        refuse_sharded_weights(self, "booster")
        if not harmful_dataset:
            raise UserError("--harmful-data: Booster needs harmful prompt → harmful answer rows")
        a = self.args
        # stream: each rank draws its own harmful batches, as the authors' distributed sampler would
        self.harmful_batches = SeededBatches(harmful_dataset, a.harmful_batch_size or a.per_device_train_batch_size,
                                             a.seed, stream=a.process_index)
        self.metrics = StepMeans()

    def training_step(self, model, inputs, num_items_in_batch=None):
        model.train()
        harmful = self._prepare_inputs(self.data_collator(self.harmful_batches.next_rows()))
        params = [p for p in model.parameters() if p.requires_grad]
        # no_sync: the harmful gradients are taken with autograd.grad, never accumulated into .grad or all-reduced
        with self.accelerator.no_sync(model), self.compute_loss_context_manager():
            diff, h, h_after = harmful_gradient_difference(lambda: self.compute_loss(model, harmful), params,
                                                           self.args.alpha)
        # h(w) − h(w'): how much one normalised harmful step lowers the harmful loss; Booster drives it down
        self.metrics.add(**{"booster/harmful_loss": h, "booster/harmful_loss_drop": h - h_after})
        # the alignment pass: f(w), with gradient ∇f(w) + λ·(∇h(w) − ∇h(w'))
        with self.side_term(lambda loss, scale: loss + gradient_term(params, diff, self.args.lamb * scale)):
            return super().training_step(model, inputs, num_items_in_batch)

    def log(self, logs: dict, *args, **kwargs) -> None:
        if "loss" in logs:  # training logs: the means since the last one
            logs.update(self.metrics.pop())
        super().log(logs, *args, **kwargs)

    def _save_rng_state(self, output_dir: str) -> None:
        super()._save_rng_state(output_dir)
        save_state(self, output_dir, STATE_FILE, {"harmful_batches": self.harmful_batches.state_dict()})

    def _load_rng_state(self, checkpoint) -> None:
        super()._load_rng_state(checkpoint)
        state = load_state(checkpoint, STATE_FILE)
        if state:
            self.harmful_batches.load_state_dict(state["harmful_batches"])
