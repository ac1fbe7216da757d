"""Tiny random models for the evaluation tests, with the embedded model's tokenizer (cached, loads offline)."""

from __future__ import annotations

import torch


def tokenizer():
    from tvaccine.models import load_tokenizer

    return load_tokenizer("smollm2-135m")


def tiny_llama(vocab_size: int, seed: int = 0, **overrides):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=1, vocab_size=vocab_size, max_position_embeddings=512, **overrides)
    return LlamaForCausalLM(config).eval()


def save_tiny(path):
    """A tiny random Llama and the embedded tokenizer, saved as a local model folder."""
    tok = tokenizer()
    tiny_llama(len(tok)).save_pretrained(path)
    tok.save_pretrained(path)
    return path
