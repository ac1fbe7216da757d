"""``tar-tvaccine``: the cheap "TAR" baseline of the T-Vaccine authors (Liu et al., arXiv 2410.09760), with its
tamper-resistance gradient actually applied. Not TAR itself (``--method tar``); a one-step, first-order variant.

What their code does (Lslland/T-Vaccine, ``trainer.py``, class ``TarTrainer``, ``training_step`` → inner ``step``),
on an alignment batch x and a harmful batch x_h of 10 rows (``get_dataloader``, ``RandomSampler``):

1. ``loss`` = CE(x_h) at θ, backward; ``stored_grads`` = g_h.
2. ``param.data -= 0.01 * stored_grads``: one SGD step of a simulated attack, θ' = θ − 0.01·g_h.
3. ``loss2`` = CE(x) at θ', backward *without zeroing* the gradients first: ``stored_grads_tr`` = g_h + ∇CE(x; θ').
4. ``model.zero_grad()``; ``param.data += 0.01 * stored_grads`` (undoes the attack up to floating-point rounding).
5. ``loss3`` = CE(x) at θ, backward: ``param.grad`` = ∇CE(x; θ).
6. ``param.data.grad = param.grad.data + 2 * stored_grads_tr[name]``. ``param.data`` is a new tensor object on every
   access, so this sets ``.grad`` on a temporary that is thrown away; ``param.grad`` still holds ∇CE(x; θ).

The optimizer therefore steps on ∇CE(x; θ) alone: plain SFT at three forward/backward passes per step (and
``specific_data_init`` keeps a deep copy of the whole model, ``retain_model``, that nothing uses). Had step 6
worked, the missing zero-grad of step 3 would have added 2·g_h, a descent step on the *harmful* loss.

What this method does, with their constants as defaults (``adversary_lr`` 0.01, ``tr_weight`` 2):

    θ' = θ − adversary_lr · ∇CE(x_h; θ)                   (one SGD attack step on a harmful batch)
    update on  retain_weight · ∇CE(x; θ) + tr_weight · ∇CE(x; θ')

that is, the refusal loss after the attack enters the update (through the Trainer's backward, see
``tar.MetaStepTrainer``), θ is restored exactly from a copy, and no harmful gradient leaks into the update.
Cost per step: three forward/backward passes, as theirs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from tvaccine.methods.tar import MetaStepConfig, MetaStepTrainer


@dataclass
class TARTvaccineConfig(MetaStepConfig):
    """The T-Vaccine authors' TAR variant (their constants), with the tamper-resistance gradient applied."""

    adversary_lr: float = field(default=0.01, metadata={"help": "SGD step size of the one simulated attack step"})
    tr_weight: float = field(default=2.0, metadata={"help": "weight of ∇CE(alignment batch) after the attack "
                                                            "(their 2)"})

    method = "tar-tvaccine"

    def __post_init__(self):
        super().__post_init__()
        self._check(self.adversary_lr > 0, "adversary_lr", "must be positive")


class TARTvaccineTrainer(MetaStepTrainer):
    """One SGD attack step on a harmful batch, then the alignment loss's gradient at the attacked weights."""

    def tamper_resistance_gradient(self, model, inputs, params):
        harmful = self.harmful_batch(self.micro_key())
        with self.simulated_attack(model, params):
            with self.compute_loss_context_manager():
                loss = self.compute_loss(model, harmful)
            grads = torch.autograd.grad(loss, params, materialize_grads=True)
            with torch.no_grad():
                for p, g in zip(params, grads):
                    p.sub_(g, alpha=self.args.adversary_lr)
            with self.compute_loss_context_manager():
                attacked = self.compute_loss(model, inputs)  # the refusal loss after the attack
            self.metrics.add(**{"tar/adversary_loss": loss.item(), "tar/tr_loss": attacked.item()})
            return list(torch.autograd.grad(attacked, params, materialize_grads=True))
