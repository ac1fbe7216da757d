"""Ablations of T-Vaccine (Liu et al., arXiv 2410.09760, §5.4), each a method of its own so a sweep can list them.

- ``random-vaccine``: Gaussian noise of variance ρ on every layer's attention output instead of the worst-case
  perturbation (the authors' RandomVaccineTrainer). One forward and one backward per step, like SFT.
- ``tvaccine-uniform``: layers drawn uniformly instead of by gradient-norm importance (no probe pass).
- ``tvaccine-topk``: the S most important layers instead of a draw from P.
- ``tvaccine-no-perturbation``: T-Vaccine's layer sampling, freezing and checkpointing with ρ = 0: layer-sampled
  SFT. Pass 1 is skipped (ε would be zero), so a step costs one forward and one backward on the active layers.

The three T-Vaccine ablations are T-Vaccine with one setting fixed; their configs refuse a contradicting value.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import Trainer

from tvaccine.align.config import AlignmentConfig
from tvaccine.layers import find_decoder_layers
from tvaccine.methods.auxiliary import MicroSteps
from tvaccine.methods.loss import TargetPositionsLoss
from tvaccine.methods.tvaccine import TVaccineConfig, TVaccineTrainer
from tvaccine.perturb import add_gaussian_to_outputs


@dataclass
class RandomVaccineConfig(AlignmentConfig):
    rho: float = field(default=3.0, metadata={"help": "variance of the Gaussian noise (the authors' `rho`)"})

    method = "random-vaccine"

    def __post_init__(self):
        super().__post_init__()
        self._check(self.rho >= 0, "rho", "must be non-negative")


class RandomVaccineTrainer(TargetPositionsLoss, Trainer):
    """The loss under ε_l ~ N(0, ρ·I) added to every layer's attention output, fresh noise each micro-step.

    The noise comes from a generator seeded by (seed, optimizer step, micro-step), so a resumed run draws what the
    uninterrupted run drew.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.decoder = find_decoder_layers(self.model, self.args.layers_path, self.args.attention_attr)
        self.micro_steps = MicroSteps()

    def training_step(self, model, inputs, num_items_in_batch=None):
        self.micro_steps.advance(self.state.global_step)
        key = self.micro_steps.key(self.args.gradient_accumulation_steps)
        generator = torch.Generator().manual_seed((self.args.seed * 1_000_003 + key) % 2**63)
        with add_gaussian_to_outputs(self.decoder.attentions, self.args.rho ** 0.5, generator):
            return super().training_step(model, inputs, num_items_in_batch)


def _fixed(config, name: str, value) -> None:
    config._check(getattr(config, name) == value, name, f"is fixed to {value!r} by method '{config.method}'")


@dataclass
class TVaccineUniformConfig(TVaccineConfig):
    layer_sampling: str = "uniform"
    method = "tvaccine-uniform"

    def __post_init__(self):
        super().__post_init__()
        _fixed(self, "layer_sampling", "uniform")


@dataclass
class TVaccineTopKConfig(TVaccineConfig):
    layer_sampling: str = "topk"
    method = "tvaccine-topk"

    def __post_init__(self):
        super().__post_init__()
        _fixed(self, "layer_sampling", "topk")


@dataclass
class TVaccineNoPerturbationConfig(TVaccineConfig):
    rho: float = 0.0
    method = "tvaccine-no-perturbation"

    def __post_init__(self):
        super().__post_init__()
        _fixed(self, "rho", 0.0)


class TVaccineNoPerturbationTrainer(TVaccineTrainer):
    """T-Vaccine's schedule with ρ = 0; pass 1 is skipped since ε would be exactly zero."""

    def perturbation(self, model, inputs, layers):
        return [torch.zeros((), device=self.args.device) for _ in layers]
