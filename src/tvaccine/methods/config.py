"""The settings every alignment method shares: the paper's LoRA and optimiser defaults on top of TrainingArguments."""

from __future__ import annotations

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
        self._check(self.lora_r >= 1, "lora_r", "must be at least 1")
        self._check(self.lora_alpha is None or self.lora_alpha > 0, "lora_alpha", "must be positive")
        self._check(0 <= self.lora_dropout < 1, "lora_dropout", "must be in [0, 1)")
        self._check(self.max_length >= 2, "max_length", "must be at least 2")
        self._check(self.learning_rate > 0, "learning_rate", "must be positive")
        self._check(bool(self.lora_target_modules), "lora_target_modules", "must name at least one module")

    def _check(self, ok: bool, name: str, rule: str) -> None:
        if not ok:
            raise UserError(f"{name}: {rule} (got {getattr(self, name)!r})")

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

    def needs_harmful_data(self) -> bool:
        """Whether the method trains or probes on harmful prompt → harmful answer rows (``--harmful-data``)."""
        return False

    def harmful_data_limit(self) -> int | None:
        """How many harmful rows to read (None: all)."""
        return None
