"""What the trainers that draw a second data set, add a term to the Trainer's loss or draw their own randomness
share (T-Vaccine, TAR, Booster, Lisa, RandomVaccine).

- ``SeededBatches``: batches of a side data set (Booster's harmful rows, Lisa's alignment rows, T-Vaccine's probe
  rows, TAR's adversary and x_tr rows) in a seeded order, reshuffled every pass; its whole state is (pass,
  position), saved with each checkpoint so a resumed run draws exactly the batches an uninterrupted one would have
  drawn, or (TAR) derived from the micro-step with nothing saved.
- ``StepMeans``: per-step values of a trainer's own metrics (TAR, RepNoise, Booster), logged as their means.
- ``SideTerm``: a term added to the loss of the Trainer's own pass (Booster's and TAR's extra gradients, Lisa's
  proximal term).
- ``gradient_term``: an extra gradient as a loss term of value zero.
- ``accumulation_scale``: the factor an added loss term needs so that, summed over the micro-steps of one optimizer
  step, it counts once, whichever way the Trainer normalises its own loss.
- ``MicroSteps``: which micro-step of which optimizer step is running, for randomness that must be a function of
  (seed, step, micro-step) so that a resumed run draws what an uninterrupted one drew, with no state saved.
- ``save_state`` / ``load_state``: a trainer's own JSON state in each checkpoint folder.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from contextlib import contextmanager
from functools import lru_cache

import numpy as np
import torch


@lru_cache(maxsize=16)
def numpy_order(n: int, seed: int, stream: int, epoch: int) -> tuple[int, ...]:
    """Pass ``epoch`` as NumPy's generator seeded with (seed, stream, epoch) orders it: Booster's and Lisa's rows."""
    return tuple(np.random.default_rng([seed, stream, epoch]).permutation(n).tolist())


@lru_cache(maxsize=16)
def torch_order(n: int, seed: int, stream: int, epoch: int) -> tuple[int, ...]:
    """Pass ``epoch`` as ``torch.randperm`` seeded with seed + epoch orders it: T-Vaccine's probe and TAR's rows.

    Two orders, not one: moving either group of trainers to the other's would change which rows their runs draw.
    One stream per seed.
    """
    if stream:
        raise ValueError("torch_order has no streams")
    return tuple(torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch)).tolist())


class SeededBatches:
    """Fixed-size batches of ``rows`` cut from an endless sequence of passes over them, each pass in the random
    order ``order(len(rows), seed, stream, pass)``; a batch that runs past the end of a pass is filled from the next
    one. ``stream`` separates the ranks of a distributed run.

    ``next_rows`` walks the sequence from the state (pass, position); ``batch(i)`` is batch i of it from i alone.
    """

    def __init__(self, rows, batch_size: int, seed: int, stream: int = 0, order=numpy_order):
        if not len(rows):
            raise ValueError("SeededBatches needs at least one row")
        self.rows, self.batch_size, self.seed, self.stream, self.order = rows, batch_size, seed, stream, order
        self.epoch, self.pos = 0, 0

    def rows_from(self, epoch: int, pos: int) -> tuple[list, int, int]:
        """The batch that starts at position ``pos`` of pass ``epoch``, and the (pass, position) after it."""
        n = len(self.rows)
        start = epoch * n + pos
        out = [self.rows[self.order(n, self.seed, self.stream, k // n)[k % n]]
               for k in range(start, start + self.batch_size)]
        # A pass that ends with the batch stays current at position n (the state checkpoints have always held).
        epoch, last = divmod(start + self.batch_size - 1, n)
        return out, epoch, last + 1

    def next_rows(self) -> list:
        out, self.epoch, self.pos = self.rows_from(self.epoch, self.pos)
        return out

    def batch(self, index: int) -> list:
        """What the (index + 1)-th ``next_rows`` from the start returns."""
        return self.rows_from(0, index * self.batch_size)[0]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])


class MicroSteps:
    """Call ``advance(global_step)`` at the start of every micro-step; ``key()`` then numbers it uniquely."""

    def __init__(self):
        self.step, self.micro = -1, 0

    def advance(self, global_step: int) -> None:
        self.micro = self.micro + 1 if self.step == global_step else 0
        self.step = global_step

    def key(self, accumulation_steps: int) -> int:
        return self.step * max(accumulation_steps, 1) + self.micro


class StepMeans:
    """Named values recorded each step; ``pop()`` returns their means since the last pop (for ``Trainer.log``).

    A number is averaged in Python (float64). A tensor is kept, detached, on its device and averaged there at the
    pop (float32), so recording it costs no device synchronisation per step; callers pass ``.item()`` where the
    float64 mean is wanted.
    """

    def __init__(self):
        self.values: dict[str, list] = defaultdict(list)

    def add(self, **values) -> None:
        for name, v in values.items():
            self.values[name].append(v.detach() if isinstance(v, torch.Tensor) else float(v))

    def pop(self) -> dict[str, float]:
        means = {name: torch.stack(v).float().mean().item() if isinstance(v[0], torch.Tensor) else sum(v) / len(v)
                 for name, v in self.values.items()}
        self.values.clear()
        return means


def gradient_term(params, grads, weight: float) -> torch.Tensor:
    """A scalar whose value is 0 and whose gradient w.r.t. each p in ``params`` is ``weight · g``: how Booster's and
    TAR's extra gradients enter the Trainer's own backward (loss scaling, accumulation, DDP averaging included)."""
    s = sum((p * g).sum() for p, g in zip(params, grads))
    return weight * (s - s.detach())


def accumulation_scale(trainer, num_items_in_batch) -> float:
    """1 when ``Trainer.training_step`` will divide the loss by the accumulation steps itself, else 1/steps.

    The Trainer divides unless the loss was already normalised by the token count of the whole accumulated batch
    (``num_items_in_batch``); this mirrors its rule (transformers 5, ``Trainer.loss_is_scaled_for_ga``).
    """
    scaled = trainer.loss_is_scaled_for_ga
    if scaled is None:
        scaled = (trainer.model_accepts_loss_kwargs and num_items_in_batch is not None) \
            or trainer.compute_loss_func is not None
    return 1.0 / trainer.current_gradient_accumulation_steps if scaled else 1.0


class SideTerm:
    """Mixin for a ``transformers.Trainer`` subclass (list it before the Trainer): inside ``with
    self.side_term(term)`` the loss of the Trainer's own pass becomes ``term(loss, accumulation_scale(...))``.

    The term thus goes through the Trainer's backward (loss scaling, gradient accumulation, DDP averaging); the
    method's own passes outside the block and evaluation (``return_outputs``) get the plain loss.
    """

    _side_term = None

    @contextmanager
    def side_term(self, term):
        """``term``: (loss, scale) → the loss to train on; None adds nothing."""
        self._side_term = term
        try:
            yield
        finally:
            self._side_term = None

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if self._side_term is None or return_outputs:
            return loss
        return self._side_term(loss, accumulation_scale(self, num_items_in_batch))


def save_state(trainer, output_dir: str, name: str, state: dict) -> None:
    """Write ``state`` as JSON into a checkpoint folder (main process only)."""
    from tvaccine.io import atomic_write_json

    if trainer.args.should_save:
        atomic_write_json(os.path.join(output_dir, name), state)


def load_state(checkpoint: str | None, name: str) -> dict | None:
    path = os.path.join(checkpoint, name) if checkpoint else None
    if not path or not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def refuse_sharded_weights(trainer, method: str) -> None:
    """RepNoise's logit lens and the in-place weight moves of TAR and Booster need whole weights on every rank: plain
    DDP (and ZeRO-1/2, which shard only optimizer state and gradients) have them; FSDP and ZeRO-3 do not."""
    from tvaccine.errors import UserError

    plugin = getattr(trainer.accelerator.state, "deepspeed_plugin", None)
    if getattr(trainer, "is_fsdp_enabled", False) or (plugin is not None and plugin.zero_stage == 3):
        raise UserError(f"--method {method}: not supported with sharded weights (FSDP, DeepSpeed ZeRO-3); use the "
                        f"ddp or zero2 accelerate config")
