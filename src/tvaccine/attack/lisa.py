"""Lisa (Huang, Hu, Ilhan, Tekin, Liu; "Lazy Safety Alignment for Large Language Models against Harmful
Fine-tuning", NeurIPS 2024): a defense the fine-tuning service applies while it runs the user's job.

Bi-state optimisation: the job alternates between ``lisa_alignment_steps`` optimizer steps on the provider's
alignment data (harmful prompt → refusal) and ``lisa_finetune_steps`` steps on the user's data (paper: 100 and 900).
At each switch of state the trainable weights are recorded as the anchor w̃, and every step adds the proximal term
ρ/2·‖w − w̃‖² (``lisa_rho``, paper: 1) so that neither state drifts far from where the other left the model. The
authors' code (``ADMMTrainer``) keeps one copy of the weights per state and pulls each state towards the weights the
other state ended with — which are the weights at the start of the current state, so one anchor suffices here.

Also as in their code: during an alignment step the user's batch is set aside (the Trainer's epochs still count it);
the proximal term is left out for the first ``lisa_proximal_warmup`` share of the steps (0.1; their comment: it hurts
convergence early on); the alignment batches have the fine-tuning batch size. Here the states follow optimizer steps
(they count micro-steps, the same without gradient accumulation), and the alignment batches come from a seeded
stream that, like the anchor (safetensors) and the state, is saved with every checkpoint, so a resumed run continues
the same sequence. Cost: the plain fine-tuning step, plus one copy of the trainable weights.
"""

from __future__ import annotations

import os

import torch
from transformers import Trainer

from tvaccine.errors import UserError
from tvaccine.methods.auxiliary import SeededBatches, SideTerm, load_state, save_state
from tvaccine.training import report_scalars

STATE_FILE = "lisa_state.json"
ANCHOR_FILE = "lisa_anchor.safetensors"
ALIGNMENT, FINETUNE = "alignment", "finetune"


def lisa_phase(step: int, alignment_steps: int, finetune_steps: int) -> str:
    """The state of optimizer step ``step``: each cycle starts with the alignment steps."""
    return ALIGNMENT if step % (alignment_steps + finetune_steps) < alignment_steps else FINETUNE


def proximal_term(params: list[torch.Tensor], anchor: list[torch.Tensor], rho: float) -> torch.Tensor:
    """ρ/2 · Σ‖w − w̃‖² over the trainable weights."""
    return rho / 2 * sum((p - a).pow(2).sum() for p, a in zip(params, anchor))


class LisaTrainer(SideTerm, Trainer):
    """The attack's Trainer with Lisa's alternating states and proximal term; reads the ``lisa_*`` settings of
    ``tvaccine.attack.config.AttackConfig``."""

    def __init__(self, *args, alignment_dataset=None, **kwargs):
        super().__init__(*args, **kwargs)
        if not alignment_dataset:
            raise UserError("--alignment-data: Lisa needs the provider's alignment rows (harmful prompt → refusal)")
        a = self.args
        self.alignment_batches = SeededBatches(alignment_dataset, a.per_device_train_batch_size, a.seed,
                                               stream=a.process_index)
        self._trainable = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        self.anchor: list[torch.Tensor] | None = None
        self.anchor_step = -1  # optimizer step at which the anchor was recorded

    def phase(self, step: int) -> str:
        return lisa_phase(step, self.args.lisa_alignment_steps, self.args.lisa_finetune_steps)

    def _starts_phase(self, step: int) -> bool:
        return step == 0 or self.phase(step) != self.phase(step - 1)

    def training_step(self, model, inputs, num_items_in_batch=None):
        step = self.state.global_step
        phase = self.phase(step)
        if self.anchor is None or (self._starts_phase(step) and self.anchor_step != step):
            self.anchor = [p.detach().clone() for _, p in self._trainable]
            self.anchor_step = step
            self.state.log_history.append({"step": step, "lisa/phase": phase})
            report_scalars(self, {"lisa/alignment_phase": float(phase == ALIGNMENT)})  # a scalar for the integrations
        if phase == ALIGNMENT:
            inputs = self.data_collator(self.alignment_batches.next_rows())
            # the Trainer counted the user's tokens; this batch is another, so its loss is a plain mean
            num_items_in_batch = None
        proximal = self.args.lisa_rho > 0 and step >= self.args.lisa_proximal_warmup * self.state.max_steps
        with self.side_term(self._add_proximal_term if proximal else None):
            return super().training_step(model, inputs, num_items_in_batch)

    def _add_proximal_term(self, loss, scale):
        return loss + scale * proximal_term([p for _, p in self._trainable], self.anchor, self.args.lisa_rho)

    def _save_rng_state(self, output_dir: str) -> None:
        super()._save_rng_state(output_dir)
        if self.anchor is not None and self.args.should_save:
            from safetensors.torch import save_file

            save_file({n: a.contiguous() for (n, _), a in zip(self._trainable, self.anchor)},
                      os.path.join(output_dir, ANCHOR_FILE))
        save_state(self, output_dir, STATE_FILE, {"anchor_step": self.anchor_step,
                                                   "alignment_batches": self.alignment_batches.state_dict()})

    def _load_rng_state(self, checkpoint) -> None:
        super()._load_rng_state(checkpoint)
        state = load_state(checkpoint, STATE_FILE)
        if not state:
            return
        self.alignment_batches.load_state_dict(state["alignment_batches"])
        path = os.path.join(checkpoint, ANCHOR_FILE)
        if os.path.exists(path):
            from safetensors.torch import load_file

            saved = load_file(path)
            missing = [n for n, _ in self._trainable if n not in saved]
            if missing:
                raise UserError(f"{path}: no anchor for {missing[0]} (the checkpoint is of another model)")
            self.anchor = [saved[n].to(p.device, p.dtype) for n, p in self._trainable]
            self.anchor_step = state["anchor_step"]
