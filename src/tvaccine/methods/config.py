"""The settings every alignment method shares: the paper's LoRA and optimiser defaults on top of TrainingArguments."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

from transformers import TrainingArguments

from tvaccine.errors import UserError

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class LoraTrainingConfig(TrainingArguments):
    """What alignment and the attack share: LoRA settings, row length, and the paper's optimiser defaults
    (AdamW, weight decay 0.1, cosine schedule, warm-up 0.1, 20 epochs, batch 10, max length 200), validated."""

    output_dir: str | None = "runs/train"
    learning_rate: float = 1e-3
    weight_decay: float = 0.1
    lr_scheduler_type: str = "cosine"
    warmup_steps: float = 0.1  # a float below 1 is a ratio of the total steps
    num_train_epochs: float = 20
    per_device_train_batch_size: int = 10
    logging_steps: float = 1
    save_strategy: str = "steps"
    save_steps: float = 500
    remove_unused_columns: bool = False
    report_to: str | list[str] | None = "none"

    lora_r: int = field(default=8, metadata={"help": "LoRA rank"})
    # The authors' alignment LoRA ends up with alpha 1 through a default-argument accident; the paper writes 4.
    lora_alpha: float = field(default=4, metadata={"help": "LoRA alpha (the paper's 4; the original code ran 1)"})
    lora_dropout: float = field(default=0.1, metadata={"help": "LoRA dropout"})
    lora_target_modules: list[str] = field(default_factory=lambda: list(LORA_TARGETS))
    max_length: int = field(default=200, metadata={"help": "tokens per row (prompt + answer), longer rows truncated"})

    def __post_init__(self):
        super().__post_init__()
        import torch

        # Pinned memory only helps copies to a GPU; without one the Trainer's default warns on every run.
        if self.dataloader_pin_memory and (self.use_cpu or not torch.cuda.is_available()):
            self.dataloader_pin_memory = False
        self._check(self.lora_r >= 1, "lora_r", "must be at least 1")
        self._check(self.lora_alpha is None or 0 < self.lora_alpha < math.inf, "lora_alpha", "must be positive")
        self._check(0 <= self.lora_dropout < 1, "lora_dropout", "must be in [0, 1)")
        self._check(self.max_length >= 2, "max_length", "must be at least 2")
        self._check(0 < self.learning_rate < math.inf, "learning_rate", "must be a positive number")
        self._check(0 <= self.weight_decay < math.inf, "weight_decay", "must be a non-negative number")
        self._check(bool(self.lora_target_modules), "lora_target_modules", "must name at least one module")
        # The Trainer accepts these and then divides by zero, trains for ever or silently trains epochs instead.
        self._check(self.per_device_train_batch_size >= 1, "per_device_train_batch_size", "must be at least 1")
        self._check(self.gradient_accumulation_steps >= 1, "gradient_accumulation_steps", "must be at least 1")
        self._check(self.max_steps == -1 or self.max_steps >= 1, "max_steps",
                    "must be at least 1, or -1 to train num_train_epochs")
        self._check(0 < self.num_train_epochs < math.inf, "num_train_epochs", "must be a positive number")
        self._check(0 <= self.warmup_steps < math.inf, "warmup_steps", "must be a non-negative number")
        # A token given as a setting would be pickled into every checkpoint's training_args.bin (docs/security.md).
        self._check(self.hub_token is None, "hub_token",
                    "is not a setting; log in with `hf auth login` or set HF_TOKEN")
        self._check(not self.push_to_hub, "push_to_hub",
                    "is not supported; the adapter is written to --output (upload it with `hf upload`)")
        from transformers.integrations.integration_utils import (INTEGRATION_TO_CALLBACK,
                                                                 get_available_reporting_integrations)

        for name in self.report_to:  # the Trainer would raise on an unknown or missing one after the model loads
            self._check(name in INTEGRATION_TO_CALLBACK, "report_to",
                        f"'{name}' is not one of none, all, {', '.join(INTEGRATION_TO_CALLBACK)}")
            self._check(name in get_available_reporting_integrations(), "report_to", f"'{name}' is not installed")

    def _check(self, ok: bool, name: str, rule: str) -> None:
        if not ok:
            err = UserError(f"{name}: {rule} (got {getattr(self, name)!r})")
            err.field = name  # build_config prefixes the file or flag the value came from
            raise err

    def check_model(self, model):
        """Check the settings against the model's structure (a meta-device skeleton will do), before a slow load."""
        from tvaccine.lora import resolve_targets

        resolve_targets(model, self.lora_target_modules)

    @classmethod
    def own_fields(cls) -> list[str]:
        """Fields this project adds to TrainingArguments (written to the model card)."""
        base = {f.name for f in fields(TrainingArguments)}
        return [f.name for f in fields(cls) if f.name not in base]


@dataclass
class AlignmentConfig(LoraTrainingConfig):
    """Alignment defaults from T-Vaccine §5.1 (LoRA r 8 on q,k,v,o,gate,up,down; AdamW lr 1e-3, weight decay 0.1,
    cosine schedule, warm-up 0.1, 20 epochs, batch 10, max length 200)."""

    output_dir: str | None = "runs/align"
    layers_path: str | None = field(default=None, metadata={"help": "dotted path of the decoder layer list"})
    attention_attr: str | None = field(default=None, metadata={"help": "attribute of each layer's attention"})

    method = "sft"

    def check_model(self, model):
        """Also finds the decoder layers, which the perturbation methods need; returns them."""
        from tvaccine.layers import find_decoder_layers

        super().check_model(model)
        return find_decoder_layers(model, self.layers_path, self.attention_attr)

    def needs_harmful_data(self) -> bool:
        """Whether the method trains or probes on harmful prompt → harmful answer rows (``--harmful-data``)."""
        return False

    def harmful_data_limit(self) -> int | None:
        """How many harmful rows to read (None: all)."""
        return None
