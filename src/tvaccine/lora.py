"""Attach a LoRA adapter to a causal LM with the alignment settings."""

from __future__ import annotations

from torch import nn

from tvaccine.errors import UserError


def present_targets(model: nn.Module, targets: list[str]) -> list[str]:
    """The requested target module names that exist in ``model`` (GPT-2 has no q_proj, Llama no c_attn)."""
    leaf_names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    found = [t for t in targets if t in leaf_names]
    if not found:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)})
        raise UserError(
            f"lora_target_modules: none of {targets} exists in {type(model).__name__}; "
            f"its linear modules are {linear}"
        )
    return found


def add_lora(model: nn.Module, r: int, alpha: float, dropout: float, targets: list[str]):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=present_targets(model, targets),
        bias="none", task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)
