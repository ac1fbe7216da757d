"""SFT: plain supervised alignment on (harmful prompt → refusal) data, one forward and one backward per step."""

from __future__ import annotations

from dataclasses import dataclass

from transformers import Trainer

from tvaccine.methods.config import AlignmentConfig


@dataclass
class SFTConfig(AlignmentConfig):
    method = "sft"


class SFTTrainer(Trainer):
    """The Hugging Face Trainer as it is; named for symmetry with the other methods."""
