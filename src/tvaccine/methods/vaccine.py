"""Vaccine (Huang et al., NeurIPS 2024): perturbation-aware alignment on every layer.

Per step: pass 1 computes g_l = ∂L/∂a_l for the attention output of every decoder layer (no parameter gradients,
no optimizer step); ε_l = ρ·g_l/‖g‖ with one joint norm; pass 2 trains on the loss with a_l + ε_l. Cost: two
forwards and two backwards (the first only w.r.t. hidden states).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import Trainer

from tvaccine.align.config import AlignmentConfig
from tvaccine.layers import find_decoder_layers
from tvaccine.methods.loss import TargetPositionsLoss
from tvaccine.perturb import add_to_outputs, capture_outputs, frozen, worst_case_perturbation


@dataclass
class VaccineConfig(AlignmentConfig):
    rho: float = field(default=2.0, metadata={"help": "perturbation intensity ρ (Vaccine's default 2)"})

    method = "vaccine"

    def __post_init__(self):
        super().__post_init__()
        self._check(self.rho >= 0, "rho", "must be non-negative")


class VaccineTrainer(TargetPositionsLoss, Trainer):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.decoder = find_decoder_layers(self.model, self.args.layers_path, self.args.attention_attr)

    def perturbed_layers(self) -> list[int]:
        """Indices of the layers whose attention output is perturbed in this step."""
        return list(range(len(self.decoder)))

    def begin_micro_step(self, model) -> None:
        """Called at the start of every micro-step, before pass 1 (T-Vaccine schedules its layers here)."""

    def perturbation(self, model, inputs, layers: list[int]) -> list[torch.Tensor]:
        """Pass 1: ε for ``layers`` from ∂L/∂a_l. No parameter gradient is computed or synchronised.

        The forward runs with every parameter frozen, so autograd saves only what the gradient w.r.t. hidden states
        needs (not the LoRA inputs that only weight gradients use), and the graph starts at the lowest captured
        output (a leaf stands in for it), so backward stops there.
        """
        modules = [self.decoder.attentions[i] for i in layers]
        # frozen until autograd.grad returns: layers recomputed under checkpointing must save what they saved before
        with self.accelerator.no_sync(model), self.compute_loss_context_manager(), frozen(model.parameters()):
            with capture_outputs(modules) as captured:
                loss = self.compute_loss(model, inputs)
            grads = torch.autograd.grad(loss, list(captured))
        return worst_case_perturbation(grads, self.args.rho)

    def training_step(self, model, inputs, num_items_in_batch=None):
        model.train()
        self.begin_micro_step(model)
        inputs = self._prepare_inputs(inputs)
        layers = self.perturbed_layers()
        eps = self.perturbation(model, inputs, layers)
        # Pass 2 is the Trainer's own step (loss scaling, accumulation, backward) with ε added; the hooks stay
        # until backward returns, so layers recomputed under checkpointing see ε too.
        with add_to_outputs([self.decoder.attentions[i] for i in layers], eps):
            return super().training_step(model, inputs, num_items_in_batch)
