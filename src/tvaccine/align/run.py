"""The alignment stage's entry point: model + LoRA, data, the method's Trainer; save adapter, settings, log and
model card (file names in ``tvaccine.outputs``)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tvaccine.errors import UserError
from tvaccine.io import atomic_write_json, atomic_write_text, package_versions
from tvaccine.outputs import (ALIGN_SETTINGS, LOG_HISTORY, MODEL_CARD, TRAIN_RESULTS, AlignedAdapter,
                              render_model_card)
from tvaccine.training import mean_train_loss, save_trained, train_resumable

is_finished = AlignedAdapter.is_finished


@dataclass
class AlignmentData:
    """What a method trains on: the alignment file (harmful prompt → refusal, maybe benign rows) and, for the
    methods that need one, the harmful file (harmful prompt → harmful answer) with its row limit applied."""

    tokenizer: object
    data: str
    harmful_data: str | None
    max_length: int
    harmful_limit: int | None = None

    def records(self) -> list[dict]:
        from tvaccine.data.sources import load_instruction_file

        return load_instruction_file(self.data)

    def harmful_records(self) -> list[dict]:
        from tvaccine.data.sources import load_instruction_file

        return load_instruction_file(self.harmful_data)[: self.harmful_limit]

    def encode(self, records: list[dict], what: str, where: str) -> list[dict]:
        """Token rows (prompt masked) of ``records``; rows cut to no answer are dropped and counted."""
        from tvaccine.data.tokenize import encode_for_training

        return encode_for_training(self.tokenizer, records, self.max_length, what, where).rows

    def train_rows(self) -> list[dict]:
        return self.encode(self.records(), "alignment data", str(self.data))


def check_inputs(config, method: str, data: str | None, harmful_data: str | None, read,
                 where: str = "align") -> None:
    """The alignment's inputs, before a model loads: ``read(ref, view)`` reads a data source (the pipeline's
    pre-flight passes a cached one). Messages name the fields as ``where.data`` and ``where.harmful_data``."""
    if not data:
        raise UserError(f"{where}.data: {method} needs an alignment file")
    read(data, "auto")
    if config.needs_harmful_data():
        if not harmful_data:
            raise UserError(f"{where}.harmful_data: {method} needs a harmful file")
        read(harmful_data, "auto")


def trainer_inputs(trainer_cls, config, d: AlignmentData) -> dict:
    """The Trainer keyword arguments for the data: ``train_dataset``, ``data_collator`` and, where the method
    needs it, ``harmful_dataset``. A trainer class can build its own (RepNoise pairs rows) with a
    ``trainer_inputs(config, data)`` classmethod."""
    from tvaccine.data.tokenize import CausalCollator

    custom = getattr(trainer_cls, "trainer_inputs", None)
    if custom is not None:
        return custom(config, d)
    out = {"train_dataset": d.train_rows(), "data_collator": CausalCollator(d.tokenizer.pad_token_id)}
    if d.harmful_data:
        out["harmful_dataset"] = d.encode(d.harmful_records(), "harmful data", str(d.harmful_data))
    return out


def align(method: str, model: str, data: str, output: str, config, harmful_data: str | None = None,
          dtype: str | None = None, model_obj=None, tokenizer=None, callbacks: list | None = None) -> dict:
    """Align ``model`` with ``method`` on ``data``; returns the summary written to ``output/train_results.json``.

    ``harmful_data`` (harmful prompt → harmful answer) is what T-Vaccine probes for layer importance and what
    RepNoise, TAR and Booster train against; ``callbacks`` are extra ``TrainerCallback``s. A rerun of an
    interrupted alignment resumes from the last complete Trainer checkpoint in ``output/checkpoints``. In a
    distributed run every process calls this and the main process writes the outputs.
    """

    from transformers import set_seed

    from tvaccine.lora import add_lora
    from tvaccine.methods import METHODS
    from tvaccine.models import load_model, load_tokenizer, model_skeleton, torch_dtype

    _, trainer_cls = METHODS[method]
    output = Path(output)
    config.output_dir = str(output / "checkpoints")
    if config.needs_harmful_data() and not harmful_data:
        raise UserError(f"--harmful-data: {method} needs a harmful file (harmful prompt → harmful answer rows)")
    torch_dtype(dtype)
    tokenizer = tokenizer or load_tokenizer(model)
    data_spec = AlignmentData(tokenizer, data, harmful_data if config.needs_harmful_data() else None,
                              config.max_length, config.harmful_data_limit())
    inputs = trainer_inputs(trainer_cls, config, data_spec)
    # Settings that depend on the model (layer count, LoRA targets) fail here, before its weights load.
    config.check_model(model_obj if model_obj is not None else model_skeleton(model))
    base = model_obj if model_obj is not None else load_model(model, dtype)
    set_seed(config.seed)  # the LoRA initialisation follows the seed (and is the same on every rank)
    peft_model = add_lora(base, config.lora_r, config.lora_alpha, config.lora_dropout, config.lora_target_modules)
    trainer = trainer_cls(model=peft_model, args=config, callbacks=callbacks, **inputs)
    train_rows = inputs["train_dataset"]
    result, wall = train_resumable(trainer, stage=output)

    is_main = save_trained(trainer, output)
    # attack_mode: how the method's threat model has the attacker meet the adapter (`tvaccine attack` defaults to it)
    settings = {"method": method, "model": str(model), "data": str(data), "harmful_data": harmful_data,
                "attack_mode": getattr(config, "attack_mode", "fresh"), "config": json.loads(config.to_json_string())}
    summary = {"method": method, "steps": result.global_step, "train_loss": mean_train_loss(trainer, result),
               "wall_s": wall, "s_per_step": wall / max(result.global_step, 1),
               "train_rows": len(train_rows), "versions": package_versions()}
    if not is_main:  # in a distributed run the main process writes the outputs
        return summary
    atomic_write_json(output / LOG_HISTORY, trainer.state.log_history)
    atomic_write_json(output / TRAIN_RESULTS, summary)
    atomic_write_text(output / MODEL_CARD, model_card(settings))
    atomic_write_json(output / ALIGN_SETTINGS, settings)  # written last: its presence marks a finished run
    return summary


def model_card(settings: dict, evaluation: str = "") -> str:
    """The adapter's model card, from what its settings file (``tvaccine_config.json``) holds: ``tvaccine push``
    renders it again from a finished folder, with an ``evaluation`` section when given scores."""
    from tvaccine.align.config import AlignmentConfig
    from tvaccine.methods import METHODS

    method, model = settings["method"], settings["model"]
    config_cls = METHODS[method][0] if method in METHODS else AlignmentConfig  # a method since removed
    return render_model_card(
        model, ["tvaccine", method, "safety-alignment", "lora"], f"{method} alignment adapter for `{model}`",
        f"A LoRA adapter trained by [tvaccine](https://github.com/) with the **{method}** method: safety alignment on\n"
        "harmful prompt → refusal data, meant to keep a model safe when a user later fine-tunes it on partly harmful "
        "data.\nLoad it with `PeftModel.from_pretrained(base_model, this_folder)`.",
        config_cls.card_settings(settings.get("config") or {}), evaluation=evaluation)
