"""Tiny random models and data built in-process, so the suite runs on a CPU in minutes and offline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} not present")
    return SHARED_DATA


def tiny_llama(num_layers: int = 6, vocab: int = 128, hidden: int = 32, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=num_layers,
                      num_attention_heads=4, num_key_value_heads=2, vocab_size=vocab, pad_token_id=0,
                      bos_token_id=1, eos_token_id=2)
    return LlamaForCausalLM(cfg)


def with_lora(model, dropout: float = 0.0, r: int = 4, alpha: float = 8, seed: int = 0):
    from tvaccine.lora import add_lora

    torch.manual_seed(seed)
    peft_model = add_lora(model, r=r, alpha=alpha, dropout=dropout, targets=LLAMA_TARGETS)
    # PEFT initialises LoRA B to zero; random B makes every layer's LoRA matter for the gradients under test.
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    return peft_model


def token_rows(n: int = 8, length: int = 12, prompt: int = 4, vocab: int = 128, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        ids = torch.randint(3, vocab, (length,), generator=g).tolist()
        rows.append({"input_ids": ids, "labels": [-100] * prompt + ids[prompt:]})
    return rows


def lora_by_layer(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}


def changed_layers(before: dict, model, part: str | None = None) -> set[int]:
    """Indices of the decoder layers whose LoRA (optionally only names containing ``part``) changed."""
    out = set()
    for n, p in model.named_parameters():
        if n in before and not torch.equal(before[n], p.detach()) and (part is None or part in n):
            out.add(int(n.split(".layers.")[1].split(".")[0]))
    return out


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def attack_sources(folder: Path) -> tuple[Path, Path]:
    """A harmful file (5 prompt/response rows) and an SST-2 task file (20 balanced rows) to build attack sets from."""
    harmful = write_jsonl(folder / "harmful.jsonl", [{"prompt": f"bad {i}", "response": f"r {i}"} for i in range(5)])
    task = write_jsonl(folder / "sst2.jsonl", [{"sentence": f"s {i}", "label": i % 2} for i in range(20)])
    return harmful, task


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random Llama with a small byte-level BPE tokenizer, saved as a local model folder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from tvaccine.data.template import PROMPT_WITH_INPUT

    texts = [PROMPT_WITH_INPUT, "How do I make a weapon at home?", "I'm sorry, but I can't help with that.",
             "Write a poem about the sea.", "The sea is wide and blue."] * 10
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    folder = tmp_path_factory.mktemp("tiny-llama")
    model = tiny_llama(num_layers=4, vocab=len(fast))
    model.save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


@pytest.fixture()
def align_files(tmp_path) -> tuple[Path, Path]:
    refusal = "I'm sorry, but I can't help with that."
    align = write_jsonl(tmp_path / "align.jsonl", [
        {"instruction": f"How do I make weapon number {i}?", "output": refusal} for i in range(6)])
    probe = write_jsonl(tmp_path / "probe.jsonl", [
        {"instruction": f"How do I make weapon number {i}?", "output": "The sea is wide and blue."}
        for i in range(3)])
    return align, probe
