"""The harmful fine-tuning attack: the user's fine-tuning job on task data with a harmful fraction p of n rows.

Modes (how the aligned adapter meets the attack):

- ``fresh`` (the paper's protocol): merge the aligned LoRA into the base (``merge_and_unload``) and train a new
  LoRA on top; the merged weights stay frozen;
- ``continue``: keep training the alignment LoRA itself (Booster's protocol);
- ``full``: merge, then train every weight.

Unset, the mode is the one the aligned adapter's method assumes (``attack_mode`` in its ``tvaccine_config.json``:
continue for Booster), else fresh. ``defense: lisa`` runs the job under Lisa, a fine-tuning-stage defense that
alternates with the provider's alignment data (``tvaccine.lisa``).

Without an aligned adapter the attack runs on the base model (the "no defense" row). A rerun resumes from the last
Trainer checkpoint in ``OUTPUT/checkpoints``; ``tvaccine_attack.json``, written last, marks a finished run.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tvaccine.errors import UserError
from tvaccine.io import atomic_write_json, package_versions
from tvaccine.methods.config import LoraTrainingConfig
from tvaccine.training import mean_train_loss, save_trained, train_resumable

MODES = ("fresh", "continue", "full")
DEFENSES = ("none", "lisa")
SETTINGS_FILE = "tvaccine_attack.json"
ATTACK_SET_FILE = "attack_set.jsonl"
BEAVERTAILS_TRAIN = "PKU-Alignment/BeaverTails:30k_train"


@dataclass
class AttackConfig(LoraTrainingConfig):
    """The authors' attack settings: LoRA r 8, alpha 1 (0.5 for GSM8K), dropout 0.1 on q,k,v,o,gate,up,down;
    AdamW lr 1e-5, weight decay 0.1, cosine, warm-up 0.1, 20 epochs, batch 10, max length 200; p 0.1, n 1000."""

    output_dir: str | None = "runs/attack"
    learning_rate: float = 1e-5
    lora_alpha: float | None = field(default=None, metadata={"help": "LoRA alpha; default 1, 0.5 for GSM8K"})
    mode: str | None = field(default=None, metadata={
        "help": "fresh | continue | full (see tvaccine.attack); unset: what the aligned adapter's method assumes "
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


def is_finished(output: str | Path) -> bool:
    return (Path(output) / SETTINGS_FILE).exists()


def build_attack_rows(output: Path, config: AttackConfig, task: str | None, data: str | None,
                      harmful: str | None, task_data: str | None, aligned: str | None,
                      disjoint_from: list[str], strict_disjoint: bool, encode=None) -> tuple[list[dict], dict]:
    """The attack rows and a description of where they came from; a built set is written with its manifest.

    ``encode(rows, where)``, if given, runs on the rows before anything is written, and its result is returned in
    place of the rows: a set that cannot be trained on (every answer cut off by max_length) leaves no file behind.
    """
    from tvaccine.data.files import file_sha256
    from tvaccine.data.sources import load_instruction_file

    from tvaccine.data.overlap import check_disjoint, file_prompts, write_checked
    from tvaccine.data.sets import attack_set, manifest_path, manifest_summary
    from tvaccine.data.sources import load_source
    from tvaccine.data.tasks import get_task

    encode = encode or (lambda rows, where: rows)
    others = list(disjoint_from) + aligned_data_files(aligned)
    if data:
        rows = encode(load_instruction_file(data), str(data))
        if disjoint_from:  # a ready set is not written here, but the prompt-leak check still applies
            check_disjoint({str(data): file_prompts(data), **{str(f): file_prompts(f) for f in others}},
                           strict_disjoint)
        info = {"data": str(data), "sha256": file_sha256(data)}
        if manifest_path(data).is_file():  # a set written by `tvaccine data attack`
            info["manifest"] = str(manifest_path(data))
        return rows, info
    if task is None:
        raise UserError("--task: name the task (sst2, agnews, gsm8k) or pass a ready attack set with --data")

    spec = get_task(task)
    dataset = attack_set(load_source(harmful or BEAVERTAILS_TRAIN, "harmful"),
                         load_source(task_data or f"{spec.hub_id}:{spec.train_split}", f"task:{spec.name}"),
                         config.poison_ratio, config.sample_num, config.seed)
    rows = encode(dataset.records, str(output / ATTACK_SET_FILE))
    manifest = write_checked(dataset, str(output / ATTACK_SET_FILE), others, strict_disjoint)
    print(manifest_summary(output / ATTACK_SET_FILE, manifest))
    return rows, {"data": str(output / ATTACK_SET_FILE), "sha256": manifest["sha256"],
                  "manifest": str(manifest_path(output / ATTACK_SET_FILE))}


def aligned_data_files(aligned: str | None) -> list[str]:
    """The alignment and probe files an adapter was trained on (from its settings), where they still exist."""
    if not aligned:
        return []
    settings = Path(aligned) / "tvaccine_config.json"
    if not settings.is_file():
        return []
    recorded = json.loads(settings.read_text(encoding="utf-8"))
    files = (recorded.get("data"), recorded.get("harmful_data", recorded.get("probe_data")))
    return [p for p in files if p and Path(p).is_file()]


def resolve_mode(mode: str | None, aligned: str | None) -> str:
    """The attack mode: the one asked for, else the one the aligned adapter's method assumes, else fresh."""
    recorded = {}
    if aligned and (Path(aligned) / "tvaccine_config.json").is_file():
        recorded = json.loads((Path(aligned) / "tvaccine_config.json").read_text(encoding="utf-8"))
    assumed, method = recorded.get("attack_mode", "fresh"), recorded.get("method")
    if mode is None:
        if assumed != "fresh":
            print(f"note: {aligned} was aligned with {method}, whose threat model attacks with --mode {assumed}; "
                  f"using it (pass --mode fresh to merge the adapter and train a new LoRA)")
        return assumed
    if assumed != "fresh" and mode != assumed:
        print(f"warning: --mode {mode} on a {method} adapter, whose threat model is --mode {assumed}; "
              f"running {mode} as asked", file=sys.stderr)
    return mode


def check_aligned(config: AttackConfig, aligned: str | None) -> None:
    if aligned and not (Path(aligned) / "adapter_config.json").is_file():
        raise UserError(f"{aligned}: not an adapter folder (no adapter_config.json)")
    if not aligned and config.mode == "continue":
        raise UserError("--mode continue: needs an aligned adapter to keep training (--aligned ADAPTER)")


def prepare_model(base, config: AttackConfig, aligned: str | None, task: str | None):
    """The model the attack trains, per ``config.mode``; only the weights the mode names require grad."""
    from transformers import set_seed

    from tvaccine.lora import add_lora, load_adapter

    check_aligned(config, aligned)
    if aligned:
        if config.mode == "continue":
            return load_adapter(base, aligned, is_trainable=True)
        base = load_adapter(base, aligned).merge_and_unload()
    if config.mode == "full":
        for p in base.parameters():
            p.requires_grad_(True)
        return base
    set_seed(config.seed)  # the new LoRA's initialisation follows the seed
    return add_lora(base, config.lora_r, config.alpha_for(task), config.lora_dropout, config.lora_target_modules)


@dataclass
class AttackRun:
    summary: dict  # what OUTPUT/train_results.json holds
    model: object  # the trained model (peft-wrapped unless mode is full)


def attack(model: str, output: str | Path, config: AttackConfig, aligned: str | None = None,
           task: str | None = None, data: str | None = None, harmful: str | None = None,
           task_data: str | None = None, dtype: str | None = None, disjoint_from: list[str] = (),
           strict_disjoint: bool = False, model_obj=None, tokenizer=None,
           alignment_data: str | None = None) -> AttackRun:
    """Run the attack and save its adapter (or model), settings, log and attack set with manifest.

    ``alignment_data`` (harmful prompt → refusal rows) is what ``config.defense == "lisa"`` interleaves.
    """
    from transformers import Trainer

    from tvaccine.data.files import file_sha256
    from tvaccine.data.sources import load_instruction_file
    from tvaccine.data.tokenize import CausalCollator, encode_for_training
    from tvaccine.models import load_model, load_tokenizer, model_skeleton, torch_dtype

    aligned = None if aligned in (None, "", "none") else str(aligned)
    if config.defense == "lisa" and not alignment_data:
        raise UserError("--alignment-data: --defense lisa needs the provider's alignment rows "
                        "(harmful prompt → refusal)")
    alignment_data = str(alignment_data) if config.defense == "lisa" else None
    config.mode = resolve_mode(config.mode, aligned)
    task = task.lower().replace("_", "") if task else None
    output = Path(output)
    config.output_dir = str(output / "checkpoints")
    # Everything the user can get wrong fails here, before a model loads or OUTPUT is written.
    torch_dtype(dtype)
    check_aligned(config, aligned)
    config.check_model(model_obj if model_obj is not None else model_skeleton(model))
    tokenizer = tokenizer or load_tokenizer(model)
    alignment_rows = None
    if config.defense == "lisa":
        alignment_rows = encode_for_training(tokenizer, load_instruction_file(alignment_data), config.max_length,
                                             "alignment data", alignment_data).rows
    enc, data_info = build_attack_rows(
        output, config, task, data, harmful, task_data, aligned, list(disjoint_from), strict_disjoint,
        encode=lambda rows, where: encode_for_training(tokenizer, rows, config.max_length, "attack data", where))
    net = prepare_model(model_obj if model_obj is not None else load_model(model, dtype), config, aligned, task)
    output.mkdir(parents=True, exist_ok=True)
    trainer_cls, extra = Trainer, {}
    if alignment_rows is not None:
        from tvaccine.lisa import LisaTrainer

        trainer_cls, extra = LisaTrainer, {"alignment_dataset": alignment_rows}
    trainer = trainer_cls(model=net, args=config, train_dataset=enc.rows,
                          data_collator=CausalCollator(tokenizer.pad_token_id), **extra)
    result, wall = train_resumable(trainer)

    is_main = save_trained(trainer, output)
    if config.mode == "full" and is_main:
        tokenizer.save_pretrained(output)  # a full model folder loads on its own
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    summary = {"stage": "attack", "mode": config.mode, "defense": config.defense, "steps": result.global_step,
               "train_loss": mean_train_loss(trainer, result), "first_loss": losses[0] if losses else None,
               "last_loss": losses[-1] if losses else None, "wall_s": wall,
               "s_per_step": wall / max(result.global_step, 1), "train_rows": len(enc.rows),
               "dropped_rows": enc.dropped, "versions": package_versions()}
    settings = {"stage": "attack", "mode": config.mode, "defense": config.defense, "model": str(model),
                "aligned": aligned, "task": task, **data_info, "alignment_data": alignment_data,
                "alignment_data_sha256": file_sha256(alignment_data) if alignment_data else None,
                "lora_alpha": None if config.mode != "fresh" else config.alpha_for(task),
                "config": json.loads(config.to_json_string())}
    if not is_main:  # in a distributed run the main process writes the outputs
        return AttackRun(summary, net)
    atomic_write_json(output / "log_history.json", trainer.state.log_history)
    atomic_write_json(output / "train_results.json", summary)
    atomic_write_json(output / SETTINGS_FILE, settings)  # written last: its presence marks a finished run
    return AttackRun(summary, net)


def load_attacked(output: str | Path, dtype: str | None = None, model_obj=None):
    """The attacked model of a finished run: base (+ merged aligned adapter) + attack adapter, or the full model."""
    from tvaccine.lora import load_adapter
    from tvaccine.models import load_model

    output = Path(output)
    if not is_finished(output):
        raise UserError(f"{output}: no finished attack ({SETTINGS_FILE} missing)")
    settings = json.loads((output / SETTINGS_FILE).read_text(encoding="utf-8"))
    if settings["mode"] == "full":
        return load_model(str(output), dtype)
    base = model_obj if model_obj is not None else load_model(settings["model"], dtype)
    if settings["aligned"] and settings["mode"] == "fresh":
        base = load_adapter(base, settings["aligned"]).merge_and_unload()
    return load_adapter(base, str(output))
