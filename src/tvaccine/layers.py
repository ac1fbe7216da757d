"""Find the decoder layers of a causal LM and each layer's attention sub-module, structurally.

The decoder layers are the model's own repeated block list: the ``nn.ModuleList`` whose length is the config's
layer count and whose blocks each hold an attention sub-module. No class names are matched, so new architectures
that follow the Hugging Face layout work unchanged; others pass ``layers_path`` / ``attention_attr`` explicitly.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from tvaccine.errors import UserError

# Attribute names under which Hugging Face decoder blocks keep their attention: Llama, Qwen2, Mistral, Gemma,
# Gemma2 and OPT use ``self_attn``; GPT-2 ``attn``; GPT-NeoX ``attention``.
ATTENTION_ATTRS = ("self_attn", "attn", "attention", "self_attention")


@dataclass(frozen=True)
class DecoderLayers:
    path: str  # dotted path of the layer list inside the unwrapped model
    layers: tuple[nn.Module, ...]
    attentions: tuple[nn.Module, ...]

    def __len__(self) -> int:
        return len(self.layers)


def unwrap(model: nn.Module) -> nn.Module:
    """The transformers model inside DDP/accelerate and PEFT wrappers."""
    while hasattr(model, "module") and isinstance(model.module, nn.Module):  # DDP, DeepSpeed engine
        model = model.module
    if hasattr(model, "get_base_model"):  # peft.PeftModel
        model = model.get_base_model()
    return model


def _attention_of(block: nn.Module, attention_attr: str | None) -> nn.Module | None:
    names = (attention_attr,) if attention_attr else ATTENTION_ATTRS
    for name in names:
        try:
            child = block.get_submodule(name)
        except AttributeError:
            continue
        if isinstance(child, nn.Module):
            return child
    return None


def _layer_count(model: nn.Module) -> int | None:
    config = getattr(model, "config", None)
    if config is None:
        return None
    if hasattr(config, "get_text_config"):
        config = config.get_text_config()
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        if isinstance(getattr(config, key, None), int):
            return getattr(config, key)
    return None


def find_decoder_layers(
    model: nn.Module, layers_path: str | None = None, attention_attr: str | None = None
) -> DecoderLayers:
    base = unwrap(model)
    cls = type(base).__name__
    if layers_path:
        try:
            found = base.get_submodule(layers_path)
        except AttributeError as err:
            raise UserError(f"layers_path: {cls} has no sub-module '{layers_path}'") from err
        candidates = [(layers_path, found)]
    else:
        candidates = [
            (name, m)
            for name, m in base.named_modules()
            if isinstance(m, nn.ModuleList) and len(m) > 0 and all(_attention_of(b, attention_attr) for b in m)
        ]
        n = _layer_count(base)
        if n is not None and any(len(m) == n for _, m in candidates):
            candidates = [(name, m) for name, m in candidates if len(m) == n]
        if len(candidates) > 1:  # e.g. a vision tower beside the text decoder: prefer the longest, then the shallowest
            candidates.sort(key=lambda c: (-len(c[1]), c[0].count(".")))
            candidates = candidates[:1]
    if not candidates:
        raise UserError(
            f"could not find the decoder layers of {cls}: no block list whose blocks hold an attention module "
            f"({', '.join(attention_attr and [attention_attr] or ATTENTION_ATTRS)}); "
            "set layers_path (e.g. model.layers) and attention_attr (e.g. self_attn)"
        )
    path, layer_list = candidates[0]
    layers = tuple(layer_list)
    attentions = tuple(_attention_of(b, attention_attr) for b in layers)
    if any(a is None for a in attentions):
        raise UserError(f"{cls}.{path}: some blocks have no attention sub-module '{attention_attr}'")
    return DecoderLayers(path=path, layers=layers, attentions=attentions)
