"""Exact activation memory of a training step: the bytes of tensors autograd keeps for backward, live and peak.

``SavedTensorMeter`` counts every storage that autograd saves for backward once (by its data pointer), from the
moment it is saved until autograd lets go of it, and keeps the running peak. Parameters and buffers are not
activations and are left out. Two things that plain ``saved_tensors_hooks`` miss under non-reentrant activation
checkpointing are added by wrapping each layer's ``_gradient_checkpointing_func``:

- the keyword inputs of a checkpointed layer (rotary cos/sin, masks) that the checkpoint keeps alive by reference
  to recompute the layer (its positional inputs it saves through autograd, so the hooks see those);
- the activations recomputed in backward, which the checkpoint holds under its own (innermost) hooks until the
  layer's backward has used them: that transient is part of the step's peak.

``measure_step`` runs one ``training_step`` of any of our trainers under a meter and splits the peak by pass.
"""

from __future__ import annotations

import functools
import weakref
from contextlib import contextmanager

import torch
from torch.autograd.graph import saved_tensors_hooks

from tvaccine.layers import unwrap


class _Held:
    """What the pack hook returns: autograd owns it exactly as long as it keeps the saved tensor."""

    __slots__ = ("tensor", "__weakref__")

    def __init__(self, tensor: torch.Tensor):
        self.tensor = tensor


def storage_bytes(tensors) -> int:
    """Bytes of the distinct storages behind ``tensors``."""
    seen = {}
    for t in tensors:
        s = t.untyped_storage()
        seen[s.data_ptr()] = s.nbytes()
    return sum(seen.values())


class SavedTensorMeter:
    def __init__(self, model: torch.nn.Module):
        self.model = model
        tensors = list(model.parameters()) + list(model.buffers())
        self._exclude = {t.untyped_storage().data_ptr() for t in tensors}
        self._live: dict[int, list[int]] = {}  # data_ptr -> [bytes, holders]
        self.current = 0
        self.peak = 0

    def reset_peak(self) -> None:
        self.peak = self.current

    def _track(self, t, owner) -> None:
        if not isinstance(t, torch.Tensor) or t.device.type == "meta":
            return
        storage = t.untyped_storage()
        ptr, nbytes = storage.data_ptr(), storage.nbytes()
        if ptr in self._exclude or nbytes == 0:
            return
        entry = self._live.get(ptr)
        if entry is None:
            self._live[ptr] = [nbytes, 1]
            self.current += nbytes
            self.peak = max(self.peak, self.current)
        else:
            entry[1] += 1
        weakref.finalize(owner, self._release, ptr)

    def _release(self, ptr: int) -> None:
        entry = self._live[ptr]
        entry[1] -= 1
        if entry[1] == 0:
            del self._live[ptr]
            self.current -= entry[0]

    def _pack(self, t):
        held = _Held(t)
        self._track(t, held)
        return held

    def _checkpoint_wrapper(self, checkpoint):
        meter = self

        def wrapped(fn, *args):
            calls = 0

            def run(*a):
                nonlocal calls
                calls += 1
                if calls == 1:  # the forward: the checkpoint keeps nothing of it but the inputs
                    return fn(*a)
                # recomputation in backward: chain onto the checkpoint's own hooks to see what they keep
                pack, unpack = torch._C._autograd._top_saved_tensors_default_hooks(False)

                def pack_and_track(x):
                    kept = pack(x)
                    meter._track(kept, kept)
                    return kept

                with saved_tensors_hooks(pack_and_track, unpack):
                    return fn(*a)

            if isinstance(fn, functools.partial):  # keyword inputs live as long as the checkpoint's recompute_fn
                for value in fn.keywords.values():
                    for t in value if isinstance(value, (tuple, list)) else (value,):
                        meter._track(t, run)
            return checkpoint(run, *args)

        return wrapped

    @contextmanager
    def __call__(self):
        """Count while in scope; the peak and current values stay readable afterwards."""
        patched = [m for m in unwrap(self.model).modules() if "_gradient_checkpointing_func" in vars(m)]
        originals = [m._gradient_checkpointing_func for m in patched]
        try:
            for m, f in zip(patched, originals):
                m._gradient_checkpointing_func = self._checkpoint_wrapper(f)
            with saved_tensors_hooks(self._pack, lambda held: held.tensor):
                yield self
        finally:
            for m, f in zip(patched, originals):
                m._gradient_checkpointing_func = f


def measure_step(trainer, inputs) -> dict:
    """Activation bytes of one ``trainer.training_step`` on ``inputs``, split by pass.

    ``pass1``/``pass2``: peak saved bytes in the perturbation pass and in the training pass, each plus the
    perturbation stash it holds (the captured outputs in pass 1, ε in pass 2; both the size of ε). A one-pass
    method reports everything as ``pass2``. ``importance``: peak of T-Vaccine's layer-importance pass if it ran.
    ``peak``: the larger of the two passes (importance runs once every K steps and is reported apart).
    Gradients of the parameters are not activations and are not counted.
    """
    meter = SavedTensorMeter(trainer.model)
    marks: dict[str, int] = {}
    patched = {}

    def phase(name, method):
        def run(*args, **kwargs):
            meter.reset_peak()
            out = method(*args, **kwargs)
            marks[name] = meter.peak
            if name == "pass1":
                marks["stash"] = storage_bytes(out)
            meter.reset_peak()
            return out

        return run

    for name, attr in (("pass1", "perturbation"), ("importance", "layer_importance")):
        if hasattr(trainer, attr):
            patched[attr] = getattr(trainer, attr)
            setattr(trainer, attr, phase(name, patched[attr]))
    try:
        with meter():
            trainer.training_step(trainer.model, inputs)
    finally:
        for attr in patched:
            delattr(trainer, attr)  # the instance attribute shadowed the method
    stash = marks.get("stash", 0)
    result = {"pass2": meter.peak + stash, "stash": stash}
    if "pass1" in marks:
        result["pass1"] = marks["pass1"] + stash
    if "importance" in marks:
        result["importance"] = marks["importance"]
    result["peak"] = max(result["pass2"], result.get("pass1", 0))
    return result
