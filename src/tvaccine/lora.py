"""LoRA as both stages train it: the settings alignment and the attack share, and attaching or loading an adapter."""

from __future__ import annotations

import math
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field, fields

from torch import nn
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
                    "is not a setting: pass --push-to-hub REPO to `tvaccine align` or `tvaccine attack`, which "
                    "uploads the finished folder with its model card")
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
        resolve_targets(model, self.lora_target_modules)

    @classmethod
    def card_settings(cls, recorded: dict) -> dict:
        """The settings a model card lists (the optimiser's and every field this project adds), taken from the
        config a stage recorded in its settings file (``config``), so that ``tvaccine push`` renders a finished
        folder's card again from the folder alone. A field the record lacks (an older version) is left out."""
        core = ("learning_rate", "num_train_epochs", "max_steps", "per_device_train_batch_size",
                "gradient_accumulation_steps", "weight_decay", "lr_scheduler_type", "warmup_steps", "seed")
        return {k: recorded[k] for k in (*core, *cls.own_fields()) if k in recorded}

    @classmethod
    def own_fields(cls) -> list[str]:
        """Fields this project adds to TrainingArguments (written to the model card)."""
        base = {f.name for f in fields(TrainingArguments)}
        return [f.name for f in fields(cls) if f.name not in base]


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
