"""TAR (Tamirisa et al., "Tamper-Resistant Safeguards for Open-Weight LLMs", ICLR 2025): a first-order
tamper-resistance meta step, sized for LoRA on one GPU.

One outer step on an alignment batch x (harmful prompt → refusal):

    save θ (the trainable LoRA parameters) and their .grad
    η ← one of ``adversary_lrs`` (seeded draw); a fresh adversary optimizer (AdamW as in TAR, or SGD) over θ
    x_tr ← a held-out tamper-resistance batch (harmful prompts; with ``tr_loss: dpo`` refusal/harmful pairs)
    for i in 1..k (``inner_steps``):                       the simulated fine-tuning attack
        θ ← adversary step on CE(harmful batch_i)
        g_TR += w_i · ∇θ L_TR(x_tr; θ)                   every ``tr_every``-th step, Σ w_i = 1
    restore θ and .grad exactly
    update on  retain_weight · ∇θ CE(x; θ) + tr_weight · g_TR      (one step of the Trainer's optimizer)

L_TR is TAR's own choice for each setting (authors' code, rishub-tamirisa/tamper-resistance, modules/objectives.py):
``dpo`` for harmful-request refusal (run_tar_dpo.sh: sigmoid DPO, β 0.1, chosen = refusal, rejected = harmful
answer, reference log-probabilities from the model before training; here the base model with the adapter off), or
``entropy`` (TAR's weaponization setting: minus the entropy of the next-token distribution, here on the harmful
answers' tokens). The TR gradient enters the Trainer's own backward as a term with value 0 and gradient
tr_weight·g_TR, so loss scaling, gradient accumulation, mixed precision and DDP averaging treat it like the retain
loss. The attack runs on its own seeded RNG stream, never touches the outer optimizer or the main data order, and
leaves no parameter or gradient changed.

Cost per step: 1 + k + ⌈k / tr_every⌉ forward/backward passes (9 at the defaults k = 4, tr_every = 1; 1 + k + 1
with tr_every = k); with DPO each TR pass runs on 2·B rows (refusal and harmful answer), plus one forward without
backward for the reference. Departures from TAR: one adversary per outer step (TAR samples 2–3), LoRA instead of
all weights, the retain loss is CE on the alignment batch (TAR's refusal run retains benign chat data), one harmful
set split into adversary rows and held-out x_tr rows, adversary and x_tr batches of the training batch size, the
weights w_i ∝ exp(λ(i − k)) normalised to sum 1 (TAR leaves them unnormalised), no entropy lower bound (their
refusal run is ``--unbounded``).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from transformers import Trainer

from tvaccine.align.config import AlignmentConfig
from tvaccine.errors import UserError
from tvaccine.layers import unwrap
from tvaccine.methods.auxiliary import (MicroSteps, SeededBatches, SideTerm, StepMeans, gradient_term,
                                        refuse_sharded_weights, torch_order)
from tvaccine.methods.loss import TargetPositionsLoss, target_positions

TR_LOSSES = ("dpo", "entropy")
ADVERSARY_OPTIMIZERS = {"adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}


@dataclass
class MetaStepConfig(AlignmentConfig):
    """What TAR and the T-Vaccine authors' variant share: an update on retain + λ_TR · tamper-resistance gradient."""

    tr_weight: float = field(default=0.1, metadata={"help": "λ_TR: weight of the tamper-resistance gradient (TAR's "
                                                            "tar_tamper_resistance_grad_scale)"})
    retain_weight: float = field(default=1.0, metadata={"help": "weight of the retain (alignment CE) gradient"})

    def __post_init__(self):
        super().__post_init__()
        self._check(self.tr_weight >= 0, "tr_weight", "must be non-negative")
        self._check(self.retain_weight >= 0, "retain_weight", "must be non-negative")

    def needs_harmful_data(self) -> bool:
        return True  # the simulated attack trains on harmful prompt → harmful answer rows


@dataclass
class TARConfig(MetaStepConfig):
    """TAR's settings for harmful-request refusal (the authors' run_tar_dpo.sh) where they carry over to LoRA."""

    inner_steps: int = field(default=4, metadata={"help": "k: adversary steps per outer step (TAR: 4 default, "
                                                          "8 refusal, 64 weaponization)"})
    adversary_optimizer: str = field(default="adamw", metadata={"help": "adamw (TAR) | sgd"})
    adversary_lrs: list[float] = field(default_factory=lambda: [2e-6, 2e-5, 4e-5],
                                       metadata={"help": "adversary learning rates, one drawn per outer step"})
    tr_loss: str = field(default="dpo", metadata={"help": "dpo (TAR's refusal setting) | entropy (TAR's "
                                                          "weaponization setting)"})
    tr_every: int = field(default=1, metadata={"help": "TR gradient at every n-th inner step (TAR's "
                                                       "tar_inner_loop_subsample)"})
    tr_schedule_lambda: float = field(default=0.0625, metadata={"help": "λ of the TR weights w_i ∝ exp(λ(i−k)); "
                                                                        "0: uniform"})
    dpo_beta: float = field(default=0.1, metadata={"help": "β of the DPO tamper-resistance loss"})
    tr_fraction: float = field(default=0.2, metadata={"help": "share of the harmful rows held out as x_tr"})

    method = "tar"

    def __post_init__(self):
        super().__post_init__()
        self.adversary_lrs = _as_floats(self, "adversary_lrs")
        self._check(self.inner_steps >= 1, "inner_steps", "must be at least 1")
        self._check(self.adversary_optimizer in ADVERSARY_OPTIMIZERS, "adversary_optimizer", "must be adamw or sgd")
        self._check(bool(self.adversary_lrs) and all(lr > 0 for lr in self.adversary_lrs), "adversary_lrs",
                    "must be a non-empty list of positive learning rates")
        self._check(self.tr_loss in TR_LOSSES, "tr_loss", "must be dpo or entropy")
        self._check(1 <= self.tr_every <= self.inner_steps, "tr_every", "must be between 1 and inner_steps")
        self._check(self.dpo_beta > 0, "dpo_beta", "must be positive")
        self._check(0 < self.tr_fraction < 1, "tr_fraction", "must be in (0, 1)")


def _as_floats(config, name: str) -> list[float]:
    """A single number or a list; YAML 1.1 reads ``2e-6`` (no dot) as a string, so strings are converted too."""
    value = getattr(config, name)
    try:
        return [float(v) for v in (value if isinstance(value, (list, tuple)) else [value])]
    except (TypeError, ValueError):
        config._check(False, name, "must be a number or a list of numbers")


# -- the tamper-resistance losses (pure functions of a model and a batch) --------------------------------------------

def target_logits(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logits, targets, row) of the positions that predict an answer token, in float32.

    Only those positions reach the output head (``target_positions``), so no B×T×V tensor is built.
    """
    with target_positions(unwrap(model).get_output_embeddings(), batch["labels"]) as (keep, targets):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return logits.float(), targets, keep.nonzero()[:, 0]


def neg_entropy_loss(model, batch: dict) -> torch.Tensor:
    """Minus the mean entropy of the next-token distributions over the answer tokens (TAR's ``max_entropy``)."""
    logits, _, _ = target_logits(model, batch)
    logp = logits.log_softmax(-1)
    return (logp.exp() * logp).sum(-1).mean()


def sequence_logps(model, batch: dict) -> torch.Tensor:
    """Σ log p(answer token) per row."""
    logits, targets, rows = target_logits(model, batch)
    token_logps = logits.log_softmax(-1).gather(-1, targets[:, None])[:, 0]
    return torch.zeros(batch["input_ids"].shape[0], device=logits.device).index_add(0, rows, token_logps)


def dpo_loss(chosen: torch.Tensor, rejected: torch.Tensor, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor,
             beta: float) -> torch.Tensor:
    """Sigmoid DPO (Rafailov et al.), as TAR's DPOLoss: −log σ(β((π_c − π_r) − (ref_c − ref_r))), batch mean."""
    return -F.logsigmoid(beta * ((chosen - rejected) - (ref_chosen - ref_rejected))).mean()


def tr_weights(inner_steps: int, every: int, schedule_lambda: float) -> list[float]:
    """w_i for inner steps 0..k−1: zero where no TR gradient is taken, ∝ exp(λ(i − (k − 1))) elsewhere, Σ w = 1."""
    raw = [math.exp(schedule_lambda * (i - (inner_steps - 1))) if (i + 1) % every == 0 else 0.0
           for i in range(inner_steps)]
    return [w / sum(raw) for w in raw]


def batch_rows(rows, size: int, index: int, seed: int) -> list:
    """Batch number ``index`` of an endless stream over ``rows``, reshuffled (seeded) at every pass.

    A pure function of the batch number: a resumed run draws what the uninterrupted one drew, with no state saved.
    """
    return SeededBatches(rows, size, seed * 1_000_003, order=torch_order).batch(index)


# -- the trainers ----------------------------------------------------------------------------------------------------

class MetaStepTrainer(SideTerm, TargetPositionsLoss, Trainer):
    """A simulated attack from a saved point, then one outer step on retain_weight·∇CE + tr_weight·g_TR.

    Subclasses define ``tamper_resistance_gradient(model, inputs, params)``, which runs inside
    ``simulated_attack`` and returns g_TR.
    """

    def __init__(self, *args, harmful_dataset=None, **kwargs):
        super().__init__(*args, **kwargs)
        refuse_sharded_weights(self, self.args.method)
        if not harmful_dataset:
            raise UserError(f"{self.args.method}: the simulated attack needs harmful rows (harmful_dataset / "
                            "--harmful-data)")
        self.harmful_dataset = harmful_dataset
        self.micro_steps = MicroSteps()
        self.metrics = StepMeans()

    def tamper_resistance_gradient(self, model, inputs, params) -> list[torch.Tensor]:
        raise NotImplementedError

    def training_step(self, model, inputs, num_items_in_batch=None):
        self.micro_steps.advance(self.state.global_step)
        model.train()
        inputs = self._prepare_inputs(inputs)
        params = [p for p in model.parameters() if p.requires_grad]
        grads, a = self.tamper_resistance_gradient(model, inputs, params), self.args

        def outer_loss(loss, scale):  # value: retain_weight·CE; gradient: retain_weight·∇CE + tr_weight·g_TR
            return a.retain_weight * loss + gradient_term(params, grads, a.tr_weight * scale)

        with self.side_term(outer_loss):
            return super().training_step(model, inputs, num_items_in_batch)

    def micro_key(self) -> int:
        """A number unique to this micro-step (optimizer step, micro-step within it) for seeds and batch indices."""
        return self.micro_steps.key(self.args.gradient_accumulation_steps)

    def harmful_batch(self, index: int) -> dict:
        rows = batch_rows(self.harmful_dataset, self.args.per_device_train_batch_size, index, self.args.seed + 1)
        return self._prepare_inputs(self.data_collator(rows))

    @contextmanager
    def simulated_attack(self, model, params):
        """Parameters and their .grad are restored bit for bit at exit (also on an exception); the global RNG
        streams too, the attack drawing its dropout from a seed of (seed, micro-step); nothing is synchronised
        across processes."""
        saved = [p.detach().clone() for p in params]
        outer_grads = [p.grad for p in params]
        device = self.args.device
        forked = [] if device.type == "cpu" else [device.index if device.index is not None else 0]
        try:
            for p in params:
                p.grad = None
            with torch.random.fork_rng(devices=forked, device_type=None if device.type == "cpu" else device.type), \
                    self.accelerator.no_sync(model):
                torch.manual_seed((self.args.seed * 1_000_003 + self.micro_key()) % 2**63)
                yield
        finally:
            with torch.no_grad():
                for p, s in zip(params, saved):
                    p.copy_(s)
            for p, g in zip(params, outer_grads):
                p.grad = g

    def log(self, logs: dict, *args, **kwargs) -> None:
        logs.update(self.metrics.pop())  # every log, the final summary too
        super().log(logs, *args, **kwargs)


class TARTrainer(MetaStepTrainer):
    """TAR's outer step (module docstring). ``tr_dataset``: the held-out x_tr rows; for ``tr_loss: dpo`` pairs
    ``{"chosen": row, "rejected": row}`` (refusal, harmful answer to the same prompt). Without it the entropy
    loss is taken on ``harmful_dataset`` rows."""

    def __init__(self, *args, harmful_dataset=None, tr_dataset=None, **kwargs):
        super().__init__(*args, harmful_dataset=harmful_dataset, **kwargs)
        a = self.args
        if a.tr_loss == "dpo":
            if not tr_dataset or not all("chosen" in r and "rejected" in r for r in tr_dataset):
                raise UserError("tr_loss dpo: needs tr_dataset rows of {chosen: refusal, rejected: harmful answer}")
            if not hasattr(self.accelerator.unwrap_model(self.model), "disable_adapter"):
                raise UserError("tr_loss dpo: the reference is the base model with the LoRA adapter disabled, "
                                "so the model must be a PEFT model")
        self.tr_dataset = tr_dataset or harmful_dataset

    def tamper_resistance_gradient(self, model, inputs, params):
        a, key = self.args, self.micro_key()
        draw = torch.Generator().manual_seed(a.seed * 1_000_003 + key)
        lr = a.adversary_lrs[int(torch.randint(len(a.adversary_lrs), (1,), generator=draw))]
        x_tr = self.tr_batch(model, key)
        weights = tr_weights(a.inner_steps, a.tr_every, a.tr_schedule_lambda)
        total = [torch.zeros_like(p) for p in params]
        with self.simulated_attack(model, params):
            adversary = ADVERSARY_OPTIMIZERS[a.adversary_optimizer](params, lr=lr)  # fresh each step, as in TAR
            for i, w in enumerate(weights):
                with self.compute_loss_context_manager():
                    loss = self.compute_loss(model, self.harmful_batch(key * a.inner_steps + i))
                for p, g in zip(params, torch.autograd.grad(loss, params, materialize_grads=True)):
                    p.grad = g
                adversary.step()
                for p in params:
                    p.grad = None
                self.metrics.add(**{"tar/adversary_loss": loss.item(), "tar/adversary_lr": lr})
                if w:
                    with self.compute_loss_context_manager():
                        tr = self.tamper_resistance_loss(model, x_tr)
                    for t, g in zip(total, torch.autograd.grad(tr, params, materialize_grads=True)):
                        t.add_(g, alpha=w)
                    self.metrics.add(**{"tar/tr_loss": tr.item()})
        return total

    def tr_batch(self, model, index: int) -> dict:
        """The held-out batch x_tr of this step; for DPO with the reference log-probabilities (adapter off)."""
        rows = batch_rows(self.tr_dataset, self.args.per_device_train_batch_size, index, self.args.seed + 2)
        if self.args.tr_loss != "dpo":
            return self._prepare_inputs(self.data_collator(rows))
        batch = self._prepare_inputs(self.data_collator([r["chosen"] for r in rows] + [r["rejected"] for r in rows]))
        peft_model = self.accelerator.unwrap_model(model)
        with torch.no_grad(), peft_model.disable_adapter(), self.compute_loss_context_manager():
            batch["reference_logps"] = sequence_logps(peft_model, batch)
        return batch

    def tamper_resistance_loss(self, model, batch: dict) -> torch.Tensor:
        """L_TR at the current (attacked) parameters."""
        if self.args.tr_loss == "entropy":
            return neg_entropy_loss(model, batch)
        logps, ref = sequence_logps(model, batch), batch["reference_logps"]
        n = logps.shape[0] // 2
        return dpo_loss(logps[:n], logps[n:], ref[:n], ref[n:], self.args.dpo_beta)

    @classmethod
    def trainer_inputs(cls, config, data) -> dict:
        """Alignment rows, adversary rows, and the held-out x_tr rows (refusal/harmful pairs for DPO).

        The refusal of a pair comes from ``tvaccine.data.refusals.write_refusal`` for the harmful row's prompt.
        """
        from tvaccine.data.refusals import write_refusal
        from tvaccine.data.tokenize import CausalCollator, encode_row

        tok, where = data.tokenizer, str(data.harmful_data)
        records = data.harmful_records()
        if len(records) < 2:
            raise UserError(f"{where}: TAR needs at least 2 harmful rows (adversary rows and held-out x_tr rows)")
        order = torch.randperm(len(records), generator=torch.Generator().manual_seed(config.seed)).tolist()
        n_tr = min(max(1, round(config.tr_fraction * len(records))), len(records) - 1)
        held_out, adversary = [records[i] for i in order[:n_tr]], [records[i] for i in order[n_tr:]]
        out = {"train_dataset": data.train_rows(), "data_collator": CausalCollator(tok.pad_token_id),
               "harmful_dataset": data.encode(adversary, "harmful data", where)}
        if config.tr_loss != "dpo":
            out["tr_dataset"] = data.encode(held_out, "held-out TR data", where)
            return out
        pairs = []
        for r in held_out:
            refusal = {**r, "output": write_refusal(r["instruction"] + (r.get("input") or ""), config.seed)}
            chosen, rejected = encode_row(tok, refusal, config.max_length), encode_row(tok, r, config.max_length)
            if chosen is not None and rejected is not None:
                pairs.append({"chosen": chosen, "rejected": rejected})
        if not pairs:
            raise UserError(f"{where}: no held-out pair keeps an answer token within max_length {config.max_length}")
        out["tr_dataset"] = pairs
        return out
