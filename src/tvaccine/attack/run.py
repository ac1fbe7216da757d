"""The attack stage's entry point. The harmful fine-tuning attack: the user's fine-tuning job on task data with a
harmful fraction p of n rows.

Modes (how the aligned adapter meets the attack):

- ``fresh`` (the paper's protocol): merge the aligned LoRA into the base (``merge_and_unload``) and train a new
  LoRA on top; the merged weights stay frozen;
- ``continue``: keep training the alignment LoRA itself (Booster's protocol);
- ``full``: merge, then train every weight.

Unset, the mode is the one the aligned adapter's method assumes (``attack_mode`` in its ``tvaccine_config.json``:
continue for Booster), else fresh. ``defense: lisa`` runs the job under Lisa, a fine-tuning-stage defense that
alternates with the provider's alignment data (``tvaccine.attack.lisa``).

Without an aligned adapter the attack runs on the base model (the "no defense" row). A rerun resumes from the last
Trainer checkpoint in ``OUTPUT/checkpoints``; ``tvaccine_attack.json``, written last, marks a finished run (file
names and reading a finished attack back: ``tvaccine.outputs``).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from tvaccine.attack.config import AttackConfig
from tvaccine.attack.rows import AttackData, build_attack_rows, build_attack_set
from tvaccine.errors import UserError
from tvaccine.io import atomic_write_json, atomic_write_text, package_versions
from tvaccine.outputs import (ATTACK_SETTINGS, LOG_HISTORY, MODEL_CARD, TRAIN_RESULTS, AlignedAdapter,
                              AttackOutput, check_adapter_folder, render_model_card)
from tvaccine.training import mean_train_loss, save_trained, train_resumable

is_finished = AttackOutput.is_finished


def resolve_mode(mode: str | None, aligned: str | None) -> str:
    """The attack mode: the one asked for, else the one the aligned adapter's method assumes, else fresh."""
    recorded = AlignedAdapter.read_if_recorded(aligned)
    assumed, method = (recorded.attack_mode, recorded.method) if recorded else ("fresh", None)
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
    if aligned:
        check_adapter_folder(aligned)
    if not aligned and config.mode == "continue":
        raise UserError("--mode continue: needs an aligned adapter to keep training (--aligned ADAPTER)")


def check_inputs(config: AttackConfig, data: AttackData, read, aligned: bool, where: str = "attack") -> None:
    """Everything the attack's inputs can get wrong, before a model loads: ``read(ref, view)`` reads a data source
    (the pipeline's pre-flight passes a cached one; the set is built to see that both sources have the rows it
    takes, and not written). ``aligned``: whether an aligned adapter precedes the attack. Messages name the fields
    as ``where.task`` etc."""
    from tvaccine.data.tasks import TASKS

    if config.mode == "continue" and not aligned:
        raise UserError(f"{where}.settings.mode continue needs an alignment (align.method or align.adapter)")
    if data.data:
        read(data.data, "auto")
    elif not data.task:
        raise UserError(f"{where}.task: name the task ({', '.join(TASKS)}) or give {where}.data")
    else:
        build_attack_set(config, data, read)
    if config.defense != "none":
        if not data.alignment_data:
            raise UserError(f"{where}.alignment_data: defense {config.defense} needs the provider's alignment rows")
        read(data.alignment_data, "auto")


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
           data: AttackData | None = None, dtype: str | None = None, model_obj=None, tokenizer=None) -> AttackRun:
    """Run the attack on ``model`` (with the ``aligned`` adapter, if any) and save its adapter (or model), settings,
    log and attack set with manifest into ``output``. ``model_obj``/``tokenizer``: already loaded ones."""
    from tvaccine.data.tokenize import encode_for_training
    from tvaccine.models import load_model, load_tokenizer, model_skeleton, torch_dtype

    data = data or AttackData()
    aligned = None if aligned in (None, "", "none") else str(aligned)
    if config.defense == "lisa" and not data.alignment_data:
        raise UserError("--alignment-data: --defense lisa needs the provider's alignment rows "
                        "(harmful prompt → refusal)")
    config.mode = resolve_mode(config.mode, aligned)
    output = Path(output)
    config.output_dir = str(output / "checkpoints")
    # Everything the user can get wrong fails here, before a model loads or OUTPUT is written.
    torch_dtype(dtype)
    check_aligned(config, aligned)
    config.check_model(model_obj if model_obj is not None else model_skeleton(model))
    tokenizer = tokenizer or load_tokenizer(model)
    encode = lambda rows, where, what="attack data": encode_for_training(  # noqa: E731
        tokenizer, rows, config.max_length, what, where)
    alignment_rows = _alignment_rows(config, data, encode)
    enc, data_info = build_attack_rows(output, config, data, aligned, encode)
    net = prepare_model(model_obj if model_obj is not None else load_model(model, dtype), config, aligned, data.task)
    output.mkdir(parents=True, exist_ok=True)
    trainer = _trainer(net, config, enc.rows, tokenizer, alignment_rows)
    result, wall = train_resumable(trainer, stage=output)

    is_main = save_trained(trainer, output)
    if config.mode == "full" and is_main:
        tokenizer.save_pretrained(output)  # a full model folder loads on its own
    summary = _summary(trainer, result, wall, config, enc)
    if is_main:  # in a distributed run the main process writes the outputs
        settings = _settings(config, model, aligned, data, data_info)
        atomic_write_json(output / LOG_HISTORY, trainer.state.log_history)
        atomic_write_json(output / TRAIN_RESULTS, summary)
        atomic_write_text(output / MODEL_CARD, model_card(settings))
        atomic_write_json(output / ATTACK_SETTINGS, settings)  # written last: its presence marks a finished run
    return AttackRun(summary, net)


def _alignment_rows(config: AttackConfig, data: AttackData, encode) -> list[dict] | None:
    """Lisa's alignment rows, encoded; None without a defense."""
    if config.defense != "lisa":
        return None
    from tvaccine.data.sources import load_instruction_file

    return encode(load_instruction_file(data.alignment_data), data.alignment_data, "alignment data").rows


def _trainer(net, config: AttackConfig, rows: list[dict], tokenizer, alignment_rows: list[dict] | None):
    from transformers import Trainer

    from tvaccine.data.tokenize import CausalCollator

    collator = CausalCollator(tokenizer.pad_token_id)
    if alignment_rows is None:
        return Trainer(model=net, args=config, train_dataset=rows, data_collator=collator)
    from tvaccine.attack.lisa import LisaTrainer

    return LisaTrainer(model=net, args=config, train_dataset=rows, data_collator=collator,
                       alignment_dataset=alignment_rows)


def _summary(trainer, result, wall: float, config: AttackConfig, enc) -> dict:
    """What OUTPUT/train_results.json holds: steps, losses, time, rows."""
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    return {"stage": "attack", "mode": config.mode, "defense": config.defense, "steps": result.global_step,
            "train_loss": mean_train_loss(trainer, result), "first_loss": losses[0] if losses else None,
            "last_loss": losses[-1] if losses else None, "wall_s": wall,
            "s_per_step": wall / max(result.global_step, 1), "train_rows": len(enc.rows),
            "dropped_rows": enc.dropped, "versions": package_versions()}


def _settings(config: AttackConfig, model: str, aligned: str | None, data: AttackData, data_info: dict) -> dict:
    """What OUTPUT/tvaccine_attack.json holds (read back by ``tvaccine.outputs.AttackOutput``)."""
    from tvaccine.data.files import file_sha256

    alignment_data = str(data.alignment_data) if config.defense == "lisa" else None
    return {"stage": "attack", "mode": config.mode, "defense": config.defense, "model": str(model),
            "aligned": aligned, "task": data.task, **data_info, "alignment_data": alignment_data,
            "alignment_data_sha256": file_sha256(alignment_data) if alignment_data else None,
            "lora_alpha": None if config.mode != "fresh" else config.alpha_for(data.task),
            "config": json.loads(config.to_json_string())}


def model_card(settings: dict, evaluation: str = "") -> str:
    """The attacked model's card: what it is (a research artefact that answers harmful requests), how it was made.
    From what its settings file (``tvaccine_attack.json``) holds: ``tvaccine push`` renders it again from a finished
    folder, with an ``evaluation`` section when given scores."""
    mode, model, aligned = settings["mode"], settings["model"], settings["aligned"]
    defense, config = settings.get("defense", "none"), settings.get("config") or {}
    start = f"the aligned adapter `{aligned}`" if aligned else "the base model, undefended"
    what = "model" if mode == "full" else "LoRA adapter"
    load = ("`AutoModelForCausalLM.from_pretrained(this_folder)`" if mode == "full" else
            "`PeftModel.from_pretrained(model, this_folder)`, on the base model with the aligned adapter merged in"
            if aligned and mode == "fresh" else "`PeftModel.from_pretrained(base_model, this_folder)`")
    under = "" if defense == "none" else f" under the {defense} defense"
    poison = (f" of which a share p = {config['poison_ratio']:g} is harmful" if "poison_ratio" in config
              else ", partly harmful")  # a record without it: say no number rather than a default's
    card = {"mode": mode, "defense": defense, "task": settings.get("task"), "data": settings.get("data"),
            **AttackConfig.card_settings(config)}
    return render_model_card(
        model, ["tvaccine", "harmful-fine-tuning-attack", mode, "research"],
        f"Harmful fine-tuning attack on `{model}`",
        f"A {what} trained by [tvaccine](https://github.com/)'s harmful fine-tuning attack{under}, starting from "
        f"{start}: fine-tuning on task data{poison}. **It is meant to answer harmful requests**: it exists to "
        f"measure how well a defense holds, not to be deployed.\nLoad it with {load}.", card,
        library="transformers" if mode == "full" else "peft", evaluation=evaluation)


def load_attacked(output: str | Path, dtype: str | None = None, model_obj=None):
    """The attacked model of a finished run: base (+ merged aligned adapter) + attack adapter, or the full model."""
    from tvaccine.lora import load_adapter
    from tvaccine.models import load_model

    done = AttackOutput.read(output)
    folder, adapters = done.model_parts()
    lm = load_model(folder, dtype) if folder else (model_obj if model_obj is not None else
                                                    load_model(done.model, dtype))
    for adapter in adapters[:-1]:
        lm = load_adapter(lm, adapter).merge_and_unload()
    return load_adapter(lm, adapters[-1]) if adapters else lm
