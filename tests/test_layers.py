"""Layer discovery: structural, for every family listed in the foundation issue, with and without PEFT."""

import pytest
import torch
from transformers import (GemmaConfig, Gemma2Config, GPT2Config, GPTNeoXConfig, LlamaConfig, MistralConfig,
                          OPTConfig, Qwen2Config, AutoModelForCausalLM)

from tvaccine.errors import UserError
from tvaccine.layers import find_decoder_layers
from tvaccine.lora import add_lora

from conftest import LLAMA_TARGETS

SMALL = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=64)
FAMILIES = {
    "llama": (LlamaConfig(**SMALL), "model.layers", "self_attn"),
    "qwen2": (Qwen2Config(**SMALL), "model.layers", "self_attn"),
    "mistral": (MistralConfig(**SMALL), "model.layers", "self_attn"),
    "gemma": (GemmaConfig(**SMALL, head_dim=8), "model.layers", "self_attn"),
    "gemma2": (Gemma2Config(**SMALL, head_dim=8), "model.layers", "self_attn"),
    "opt": (OPTConfig(hidden_size=32, ffn_dim=64, num_hidden_layers=3, num_attention_heads=4,
                      word_embed_proj_dim=32, vocab_size=64), "model.decoder.layers", "self_attn"),
    "gpt2": (GPT2Config(n_embd=32, n_layer=3, n_head=4, vocab_size=64, bos_token_id=0, eos_token_id=0),
             "transformer.h", "attn"),
    "gpt_neox": (GPTNeoXConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64,
                               vocab_size=64), "gpt_neox.layers", "attention"),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("peft", [False, True])
def test_discovery_finds_the_models_own_layers(family, peft):
    config, path, attr = FAMILIES[family]
    model = AutoModelForCausalLM.from_config(config)
    expected = list(model.get_submodule(path))
    if peft:
        model = add_lora(model, r=2, alpha=4, dropout=0.0, targets=LLAMA_TARGETS)
    found = find_decoder_layers(model)
    assert found.path == path
    assert list(found.layers) == expected
    assert list(found.attentions) == [getattr(layer, attr) for layer in expected]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_attention_outputs_are_captured_and_perturbed_in_every_family(family):
    """The attention sub-module's first output is the hidden state: adding ε to it changes the logits."""
    from tvaccine.perturb import add_to_outputs, capture_outputs

    config, _, _ = FAMILIES[family]
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    layers = find_decoder_layers(model)
    ids = torch.tensor([[1, 5, 7, 9, 11]])
    with capture_outputs(layers.attentions) as captured:
        clean = model(ids).logits
    assert all(a.shape == (1, 5, 32) for a in captured)
    eps = [torch.ones_like(a) for a in captured]
    with add_to_outputs(layers.attentions, eps):
        moved = model(ids).logits
    assert not torch.allclose(clean, moved)
    assert torch.equal(model(ids).logits, clean)  # hooks gone: the model is itself again


def test_explicit_override_and_clear_error():
    model = AutoModelForCausalLM.from_config(FAMILIES["llama"][0])
    found = find_decoder_layers(model, layers_path="model.layers", attention_attr="self_attn")
    assert len(found) == 3
    with pytest.raises(UserError, match="LlamaForCausalLM has no sub-module 'model.blocks'"):
        find_decoder_layers(model, layers_path="model.blocks")
    with pytest.raises(UserError, match="could not find the decoder layers of Sequential"):
        find_decoder_layers(torch.nn.Sequential(torch.nn.Linear(2, 2)))
