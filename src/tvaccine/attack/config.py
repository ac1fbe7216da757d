"""The attack stage's settings: the authors' attack (LoRA, optimiser, the harmful fraction) and Lisa's."""

from __future__ import annotations

from dataclasses import dataclass, field

from tvaccine.lora import LoraTrainingConfig

MODES = ("fresh", "continue", "full")
DEFENSES = ("none", "lisa")


@dataclass
class AttackConfig(LoraTrainingConfig):
    """The authors' attack settings: LoRA r 8, alpha 1 (0.5 for GSM8K), dropout 0.1 on q,k,v,o,gate,up,down;
    AdamW lr 1e-5, weight decay 0.1, cosine, warm-up 0.1, 20 epochs, batch 10, max length 200; p 0.1, n 1000."""

    output_dir: str | None = "runs/attack"
    learning_rate: float = 1e-5
    lora_alpha: float | None = field(default=None, metadata={"help": "LoRA alpha; default 1, 0.5 for GSM8K"})
    mode: str | None = field(default=None, metadata={
        "help": "fresh | continue | full (see tvaccine.attack.run); unset: what the aligned adapter's method assumes "
                "(continue for Booster), else fresh"})
    poison_ratio: float = field(default=0.1, metadata={"help": "p: share of harmful rows in the attack set"})
    sample_num: int = field(default=1000, metadata={"help": "n: rows in the attack set"})
    # Lisa (Huang et al., NeurIPS 2024): the authors' defaults (rho 1, 100 alignment / 900 fine-tuning steps)
    defense: str = field(default="none", metadata={"help": "none | lisa (fine-tuning-stage defense, needs "
                                                           "--alignment-data)"})
    lisa_rho: float = field(default=1.0, metadata={"help": "Lisa: weight ρ of the proximal term ρ/2·‖w − w̃‖²"})
    lisa_alignment_steps: int = field(default=100, metadata={"help": "Lisa: optimizer steps per alignment state"})
    lisa_finetune_steps: int = field(default=900, metadata={"help": "Lisa: optimizer steps per fine-tuning state"})
    lisa_proximal_warmup: float = field(default=0.1, metadata={
        "help": "Lisa: share of the steps before the proximal term starts (the authors' code: 0.1)"})

    def __post_init__(self):
        super().__post_init__()
        self._check(self.mode is None or self.mode in MODES, "mode", f"must be one of {', '.join(MODES)}")
        self._check(0 <= self.poison_ratio <= 1, "poison_ratio", "must be in [0, 1]")
        self._check(self.sample_num >= 1, "sample_num", "must be at least 1")
        self._check(self.defense in DEFENSES, "defense", f"must be one of {', '.join(DEFENSES)}")
        self._check(self.lisa_rho >= 0, "lisa_rho", "must be non-negative")
        self._check(self.lisa_alignment_steps >= 1, "lisa_alignment_steps", "must be at least 1")
        self._check(self.lisa_finetune_steps >= 1, "lisa_finetune_steps", "must be at least 1")
        self._check(0 <= self.lisa_proximal_warmup <= 1, "lisa_proximal_warmup", "must be in [0, 1]")

    def alpha_for(self, task: str | None) -> float:
        """The authors use alpha 0.5 when the benign data is GSM8K and 1 otherwise."""
        if self.lora_alpha is not None:
            return self.lora_alpha
        return 0.5 if task == "gsm8k" else 1.0
