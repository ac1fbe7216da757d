"""Attach a LoRA adapter to a causal LM with the alignment settings."""

from __future__ import annotations

import warnings
from contextlib import contextmanager

from torch import nn

from tvaccine.errors import UserError
from tvaccine.methods.config import LORA_TARGETS


def resolve_targets(model: nn.Module, targets: list[str]) -> list[str] | str:
    """The requested target modules that exist in ``model``.

    The default (Llama's q,k,v,o,gate,up,down) means "every linear layer of the blocks"; families that name them
    differently (GPT-2's c_attn, GPT-NeoX's query_key_value) get PEFT's ``all-linear``, which is the same set.
    """
    leaf_names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    found = [t for t in targets if t in leaf_names]
    if found:
        return found
    if list(targets) == LORA_TARGETS:
        return "all-linear"
    linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)})
    raise UserError(
        f"lora_target_modules: none of {targets} exists in {type(model).__name__}; its linear modules are {linear}"
    )


@contextmanager
def peft_wrapping():
    """Scope for wrapping a model with PEFT. PEFT 0.21 reads ``model.is_gradient_checkpointing``, which
    transformers 5 deprecates: a FutureWarning on every wrap that says nothing to a user and that they cannot act
    on. Only that warning is silenced, only here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


def load_adapter(model: nn.Module, folder: str, **kwargs):
    """``PeftModel.from_pretrained`` inside ``peft_wrapping``."""
    from peft import PeftModel

    with peft_wrapping():
        return PeftModel.from_pretrained(model, folder, **kwargs)


def add_lora(model: nn.Module, r: int, alpha: float, dropout: float, targets: list[str]):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=resolve_targets(model, targets),
        bias="none", task_type="CAUSAL_LM",
    )
    with peft_wrapping():
        return get_peft_model(model, config)
