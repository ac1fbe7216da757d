"""Alignment methods: each a config dataclass (TrainingArguments + the paper's defaults) and a Trainer."""

from tvaccine.align.config import AlignmentConfig
from tvaccine.methods.ablations import (RandomVaccineConfig, RandomVaccineTrainer, TVaccineNoPerturbationConfig,
                                        TVaccineNoPerturbationTrainer, TVaccineTopKConfig, TVaccineUniformConfig)
from tvaccine.methods.booster import BoosterConfig, BoosterTrainer
from tvaccine.methods.repnoise import RepNoiseConfig, RepNoiseTrainer
from tvaccine.methods.sft import SFTConfig, SFTTrainer
from tvaccine.methods.tar import TARConfig, TARTrainer
from tvaccine.methods.tar_tvaccine import TARTvaccineConfig, TARTvaccineTrainer
from tvaccine.methods.tvaccine import TVaccineConfig, TVaccineTrainer
from tvaccine.methods.vaccine import VaccineConfig, VaccineTrainer

METHODS: dict[str, tuple[type[AlignmentConfig], type]] = {
    "sft": (SFTConfig, SFTTrainer),
    "vaccine": (VaccineConfig, VaccineTrainer),
    "tvaccine": (TVaccineConfig, TVaccineTrainer),
    # baselines the paper compares against
    "repnoise": (RepNoiseConfig, RepNoiseTrainer),
    "tar": (TARConfig, TARTrainer),
    "tar-tvaccine": (TARTvaccineConfig, TARTvaccineTrainer),
    "booster": (BoosterConfig, BoosterTrainer),
    # ablations of T-Vaccine (methods/ablations.py)
    "random-vaccine": (RandomVaccineConfig, RandomVaccineTrainer),
    "tvaccine-uniform": (TVaccineUniformConfig, TVaccineTrainer),
    "tvaccine-topk": (TVaccineTopKConfig, TVaccineTrainer),
    "tvaccine-no-perturbation": (TVaccineNoPerturbationConfig, TVaccineNoPerturbationTrainer),
}

__all__ = ["METHODS", "AlignmentConfig", "BoosterConfig", "BoosterTrainer", "RandomVaccineConfig",
           "RandomVaccineTrainer", "RepNoiseConfig", "RepNoiseTrainer", "SFTConfig", "SFTTrainer", "TARConfig",
           "TARTrainer", "TARTvaccineConfig", "TARTvaccineTrainer", "TVaccineConfig", "TVaccineTrainer",
           "VaccineConfig", "VaccineTrainer"]
