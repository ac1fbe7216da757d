"""What each stage leaves in its folder, and how a later stage reads it back.

The one place that knows the stages' file names. The alignment writes an adapter and ``tvaccine_config.json``; the
attack an adapter (or, in mode ``full``, a whole model) and ``tvaccine_attack.json``; an evaluation
``results.json``. Each settings file is written last, so its presence marks a finished stage. The attack,
evaluation, pipeline and report read a finished stage through ``AlignedAdapter.read`` and ``AttackOutput.read``
instead of opening its files by name.

Folders written by earlier versions load: the alignment's harmful file was once recorded as ``probe_data``. A
settings file that lacks what a reader needs is refused with a message that says how to rerun the stage.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tvaccine.errors import UserError

ADAPTER_CONFIG = "adapter_config.json"  # PEFT's: present in every LoRA adapter folder
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ALIGN_SETTINGS = "tvaccine_config.json"
ATTACK_SETTINGS = "tvaccine_attack.json"
ATTACK_SET = "attack_set.jsonl"
EVAL_RESULTS = "results.json"
TRAIN_RESULTS = "train_results.json"
LOG_HISTORY = "log_history.json"
MODEL_CARD = "README.md"  # the hub shows it as the repository's model card
TENSORBOARD_DIR = "runs"  # a training stage's TensorBoard event files (report_to: tensorboard), per run name


def is_adapter_folder(folder: str | Path) -> bool:
    return (Path(folder) / ADAPTER_CONFIG).is_file()


def check_adapter_folder(folder: str | Path, what: str = "") -> None:
    """Refuse a folder that is not a LoRA adapter, naming it (and ``what`` asked for it, e.g. ``--aligned``)."""
    if not is_adapter_folder(folder):
        prefix = f"{what}: " if what else ""
        raise UserError(f"{prefix}{folder}: not a LoRA adapter folder (no {ADAPTER_CONFIG})")


def read_log_history(folder: str | Path) -> list[dict]:
    """A training stage's Trainer log (every logged step), or [] where there is none (an adapter from elsewhere)."""
    path = Path(folder) / LOG_HISTORY
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else []


def read_train_results(folder: str | Path) -> dict | None:
    """A training stage's summary (steps, loss, time), or None where there is none."""
    path = Path(folder) / TRAIN_RESULTS
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def render_model_card(base_model: str, tags: list[str], title: str, text: str, settings: dict,
                      library: str = "peft", evaluation: str = "") -> str:
    """A stage folder's README.md: the hub's front matter, what the folder is, its settings, the ``evaluation``
    section (Markdown, ``tvaccine push --results``) where there is one, the citation."""
    from tvaccine import CITATION

    lines = "\n".join(f"| `{k}` | `{v}` |" for k, v in settings.items())
    evaluation = f"\n{evaluation.strip()}\n" if evaluation else ""
    return f"""---
library_name: {library}
base_model: {base_model}
tags: [{", ".join(tags)}]
---
# {title}

{text}

## Settings

| setting | value |
|---|---|
{lines}
{evaluation}
## Citation

```bibtex
{CITATION}
```
"""


def _read_settings(folder: Path, name: str, needed: tuple[str, ...], rerun: str) -> dict:
    path = folder / name
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: unreadable ({err}); {rerun}") from err
    missing = [key for key in needed if key not in settings] if isinstance(settings, dict) else list(needed)
    if missing:
        raise UserError(f"{path}: no {', '.join(missing)} (written by another version of tvaccine?); {rerun}")
    return settings


@dataclass(frozen=True)
class AlignedAdapter:
    """A finished alignment: the adapter folder and what it was trained with."""

    dir: Path
    method: str
    model: str
    data: str | None
    harmful_data: str | None
    attack_mode: str  # how the method's threat model has the attacker meet the adapter (Booster: continue)
    settings: dict  # the whole settings file

    @staticmethod
    def is_finished(folder: str | Path) -> bool:
        folder = Path(folder)
        return (folder / ADAPTER_WEIGHTS).exists() and (folder / ALIGN_SETTINGS).exists()

    @classmethod
    def read(cls, folder: str | Path) -> AlignedAdapter:
        folder = Path(folder)
        rerun = f"rerun the alignment into a new folder (`tvaccine align --output ...`) or delete {folder}"
        settings = _read_settings(folder, ALIGN_SETTINGS, ("method", "model"), rerun)
        return cls(folder, settings["method"], settings["model"], settings.get("data"),
                   settings.get("harmful_data", settings.get("probe_data")),  # probe_data: the older name
                   settings.get("attack_mode", "fresh"), settings)

    @classmethod
    def read_if_recorded(cls, folder: str | Path | None) -> AlignedAdapter | None:
        """The alignment behind an adapter folder when tvaccine wrote it, None for any other adapter (one trained
        elsewhere carries no settings file, and is attacked as an adapter without a recorded method)."""
        if not folder or not (Path(folder) / ALIGN_SETTINGS).is_file():
            return None
        return cls.read(folder)

    def data_files(self) -> list[str]:
        """The alignment and harmful files it was trained on, where they still exist."""
        return [p for p in (self.data, self.harmful_data) if p and Path(p).is_file()]


@dataclass(frozen=True)
class AttackOutput:
    """A finished attack: its folder, mode and what it started from."""

    dir: Path
    mode: str  # fresh | continue | full (tvaccine.attack.config)
    model: str  # the base model the attack loaded
    aligned: str | None  # the aligned adapter it started from, if any
    settings: dict

    @staticmethod
    def is_finished(folder: str | Path) -> bool:
        return (Path(folder) / ATTACK_SETTINGS).exists()

    @classmethod
    def read(cls, folder: str | Path) -> AttackOutput:
        folder = Path(folder)
        if not cls.is_finished(folder):
            raise UserError(f"{folder}: no finished attack ({ATTACK_SETTINGS} missing)")
        rerun = f"rerun the attack into a new folder (`tvaccine attack --output ...`) or delete {folder}"
        settings = _read_settings(folder, ATTACK_SETTINGS, ("mode", "model", "aligned"), rerun)
        return cls(folder, settings["mode"], settings["model"], settings["aligned"], settings)

    def model_parts(self, step: int | None = None) -> tuple[str | None, list[str]]:
        """(a model folder, or None for the base model; the adapters to merge, in order) that make up the attacked
        model: the finished attack, or its checkpoint at ``step``."""
        trained = self.dir
        if step is not None:
            trained = self.dir / "checkpoints" / f"checkpoint-{step}"
            if not is_adapter_folder(trained):
                raise UserError(f"eval.attack_steps: {self.dir} has no checkpoint at step {step} (its settings must "
                                f"save one there; a stage trained before the curve was asked for has none)")
        if self.mode == "full":
            return str(trained), []
        if self.mode == "continue" or not self.aligned:
            return None, [str(trained)]
        return None, [self.aligned, str(trained)]
