"""Alignment methods: each a config dataclass (TrainingArguments + the paper's defaults) and a Trainer."""

from tvaccine.methods.booster import BoosterConfig, BoosterTrainer
from tvaccine.methods.config import AlignmentConfig
from tvaccine.methods.sft import SFTConfig, SFTTrainer
from tvaccine.methods.tvaccine import TVaccineConfig, TVaccineTrainer
from tvaccine.methods.vaccine import VaccineConfig, VaccineTrainer

METHODS: dict[str, tuple[type[AlignmentConfig], type]] = {
    "sft": (SFTConfig, SFTTrainer),
    "vaccine": (VaccineConfig, VaccineTrainer),
    "tvaccine": (TVaccineConfig, TVaccineTrainer),
    "booster": (BoosterConfig, BoosterTrainer),
}

__all__ = ["METHODS", "AlignmentConfig", "BoosterConfig", "BoosterTrainer", "SFTConfig", "SFTTrainer",
           "TVaccineConfig", "TVaccineTrainer", "VaccineConfig", "VaccineTrainer"]
