"""Tokenization for causal-LM training: prompt tokens masked to -100, target = answer + EOS.

Truncation to ``max_length`` can cut away every target token of a long prompt; such a row would give a NaN loss
(0/0) and is dropped and counted instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import torch

from tvaccine.data.template import format_prompt
from tvaccine.errors import UserError

IGNORE_INDEX = -100


def encode_row(tokenizer, row: dict, max_length: int) -> dict | None:
    """Token ids and labels for one instruction row, or None if no target token survives truncation."""
    prompt = format_prompt(row["instruction"], row.get("input") or "")
    prompt_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    target_ids = tokenizer(row["output"] + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
    input_ids = (prompt_ids + target_ids)[:max_length]
    labels = ([IGNORE_INDEX] * len(prompt_ids) + target_ids)[:max_length]
    if all(x == IGNORE_INDEX for x in labels):
        return None
    return {"input_ids": input_ids, "labels": labels}


@dataclass
class Encoded:
    rows: list[dict]
    dropped: int  # rows with no target token left after truncation


def encode_rows(tokenizer, rows: Iterable[dict], max_length: int) -> Encoded:
    out, dropped = [], 0
    for row in rows:
        enc = encode_row(tokenizer, row, max_length)
        if enc is None:
            dropped += 1
        else:
            out.append(enc)
    return Encoded(out, dropped)


def encode_for_training(tokenizer, rows: list[dict], max_length: int, what: str, where: str) -> Encoded:
    """``encode_rows`` that reports the dropped rows and refuses a set with none left."""
    enc = encode_rows(tokenizer, rows, max_length)
    if enc.dropped:
        print(f"{what}: dropped {enc.dropped} of {len(rows)} rows with no answer token left within "
              f"max_length {max_length}")
    if not enc.rows:
        raise UserError(f"{where}: no usable rows (every answer is cut off by max_length {max_length})")
    return enc


@dataclass
class CausalCollator:
    """Right-pads ``input_ids`` with the pad id and ``labels`` with -100; builds the attention mask."""

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, features: Sequence[dict]) -> dict[str, torch.Tensor]:
        longest = max(len(f["input_ids"]) for f in features)
        if self.pad_to_multiple_of:
            m = self.pad_to_multiple_of
            longest = (longest + m - 1) // m * m
        ids, labels, mask = [], [], []
        for f in features:
            pad = longest - len(f["input_ids"])
            ids.append(list(f["input_ids"]) + [self.pad_token_id] * pad)
            labels.append(list(f["labels"]) + [IGNORE_INDEX] * pad)
            mask.append([1] * len(f["input_ids"]) + [0] * pad)
        return {
            "input_ids": torch.tensor(ids, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
            "attention_mask": torch.tensor(mask, dtype=torch.long),
        }
