"""SFT: plain supervised alignment on (harmful prompt → refusal) data, one forward and one backward per step."""

from __future__ import annotations

from dataclasses import dataclass

from transformers import Trainer

from tvaccine.align.config import AlignmentConfig
from tvaccine.methods.loss import TargetPositionsLoss


@dataclass
class SFTConfig(AlignmentConfig):
    method = "sft"


class SFTTrainer(TargetPositionsLoss, Trainer):
    """The Hugging Face Trainer with the loss computed on target positions only (same loss, less memory)."""
