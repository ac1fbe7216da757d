"""Capture attention outputs, compute the worst-case perturbation, and inject it, with scoped forward hooks.

Every hook returns a new output instead of writing through ``.data``, and every context manager removes its hooks
on exit, also when the body raises. The injection must stay active until backward has finished: layers run under
activation checkpointing are recomputed in backward and their hooks fire again.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable, Iterator, Sequence

import torch
from torch import nn


def _first(output):
    return output[0] if isinstance(output, tuple) else output


def _with_first(output, first):
    return (first, *output[1:]) if isinstance(output, tuple) else first


@contextmanager
def _hooks(modules: Sequence[nn.Module], make_hook) -> Iterator[None]:
    handles = []
    try:
        for i, module in enumerate(modules):
            handles.append(module.register_forward_hook(make_hook(i)))
        yield
    finally:
        for h in handles:
            h.remove()


@contextmanager
def capture_outputs(modules: Sequence[nn.Module]) -> Iterator[list]:
    """Yield a list that holds, after a forward, each module's (first) output.

    An output that is not part of a graph (its layer and everything below are frozen) is replaced by a leaf that
    requires grad, so ∂L/∂a is defined for it too; downstream values, and so the loss, are unchanged.
    A module run again in scope (a checkpointed layer recomputed in backward) gets the same leaf treatment, but the
    list keeps the first output: holding the recomputed one would keep its recomputed graph, and what that graph
    saved, alive until the scope ends.
    """
    store: list = [None] * len(modules)

    def make_hook(i):
        def hook(module, args, output):
            a = _first(output)
            if not a.requires_grad and torch.is_grad_enabled():
                a = a.detach().requires_grad_(True)
                output = _with_first(output, a)
            if store[i] is None:
                store[i] = a
            return output

        return hook

    with _hooks(modules, make_hook):
        yield store


@contextmanager
def add_to_outputs(modules: Sequence[nn.Module], deltas: Sequence[torch.Tensor]) -> Iterator[None]:
    """Add a constant ``deltas[i]`` to the (first) output of ``modules[i]`` on every forward in scope."""
    if len(modules) != len(deltas):
        raise ValueError(f"{len(modules)} modules but {len(deltas)} perturbations")

    def make_hook(i):
        def hook(module, args, output):
            a = _first(output)
            return _with_first(output, a + deltas[i].to(a.dtype))

        return hook

    with _hooks(modules, make_hook):
        yield


@contextmanager
def frozen(params: Iterable[nn.Parameter]) -> Iterator[None]:
    """Switch ``requires_grad`` off for the parameters that have it, and back on at exit (also on an exception)."""
    params = [p for p in params if p.requires_grad]
    try:
        for p in params:
            p.requires_grad_(False)
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def worst_case_perturbation(grads: Sequence[torch.Tensor], rho: float, eps: float = 1e-7) -> list[torch.Tensor]:
    """ε_l = ρ · g_l / (‖(g_l)_l‖₂ + 1e-7): one joint norm over all perturbed layers (Vaccine, Eq. 4)."""
    grads = [g.detach() for g in grads]
    joint = torch.linalg.vector_norm(torch.stack([g.float().norm(2) for g in grads]), 2)
    scale = rho / (joint + eps)
    return [(g.float() * scale).to(g.dtype) for g in grads]


@contextmanager
def add_gaussian_to_outputs(modules: Sequence[nn.Module], std: float, generator: torch.Generator) -> Iterator[None]:
    """Add N(0, std²) noise to the (first) output of every module on every forward in scope.

    Each module's noise is drawn once, at its first forward, and reused when the module runs again in scope (a
    layer recomputed under activation checkpointing must see the same noise it saw the first time).
    """
    drawn: dict[int, torch.Tensor] = {}

    def make_hook(i):
        def hook(module, args, output):
            a = _first(output)
            if i not in drawn:
                noise = torch.randn(a.shape, generator=generator, dtype=torch.float32) * std
                drawn[i] = noise.to(device=a.device, dtype=a.dtype)
            return _with_first(output, a + drawn[i])

        return hook

    with _hooks(modules, make_hook):
        yield
