"""Layer importance from gradient norms, and weighted sampling of the layers to perturb.

P_l = ‖∂L/∂a_l‖₂ / Σ_j ‖∂L/∂a_j‖₂ over the attention outputs a_l of a harmful probe batch (T-Vaccine, §4).
"""

from __future__ import annotations

from typing import Sequence

import torch


def grad_norms(grads: Sequence[torch.Tensor]) -> torch.Tensor:
    """‖g_l‖₂ per layer, in float32."""
    return torch.stack([g.detach().float().norm(2) for g in grads]).cpu()


def importance_probs(norms: torch.Tensor) -> torch.Tensor:
    """Normalise gradient norms into sampling probabilities; uniform if every norm is zero."""
    norms = norms.detach().float().clamp_min(0)
    total = norms.sum()
    if not torch.isfinite(total):
        raise FloatingPointError("layer importance: a gradient norm is not finite (NaN or inf loss on the probe batch)")
    if total <= 0:
        return torch.full_like(norms, 1.0 / len(norms))
    return norms / total


def sample_layers(probs: torch.Tensor, k: int, generator: torch.Generator) -> list[int]:
    """Draw k distinct layer indices with probability proportional to ``probs``, sorted ascending."""
    if not 1 <= k <= len(probs):
        raise ValueError(f"cannot draw {k} of {len(probs)} layers")
    # multinomial without replacement needs k non-zero entries; a floor keeps zero-importance layers drawable
    p = probs.float().clamp_min(1e-12)
    return sorted(torch.multinomial(p, k, replacement=False, generator=generator).tolist())


def top_layers(probs: torch.Tensor, k: int) -> list[int]:
    """The k most important layers (the top-S ablation)."""
    return sorted(torch.topk(probs.float(), k).indices.tolist())
