"""Run a Trainer so that a rerun of an interrupted job resumes from its last complete checkpoint, and save what it
trained from the main process only (gathered first where ZeRO-3 or FSDP shard it)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tvaccine.outputs import TENSORBOARD_DIR

# The Trainer writes a checkpoint's files one after another and trainer_state.json last: a checkpoint folder
# without a readable one was cut off while saving (a kill, a full disk) and cannot be resumed from.
TRAINER_STATE = "trainer_state.json"
TRAINING_ARGS = "training_args.bin"


def is_complete_checkpoint(folder: str | Path) -> bool:
    try:
        json.loads((Path(folder) / TRAINER_STATE).read_text(encoding="utf-8"))
        return True
    except (OSError, ValueError):
        return False


def last_complete_checkpoint(folder: str | Path) -> str | None:
    """The newest ``checkpoint-N`` in ``folder`` that was saved completely; torn ones are reported and skipped.

    A torn folder is left in place (in a distributed run every rank looks here at once); the Trainer writes the
    same step's checkpoint into it again when it gets there.
    """
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    folder = Path(folder)
    if not folder.is_dir():
        return None
    steps = []
    for path in folder.glob(f"{PREFIX_CHECKPOINT_DIR}-*"):
        suffix = path.name[len(PREFIX_CHECKPOINT_DIR) + 1:]
        if path.is_dir() and suffix.isdigit():
            steps.append((int(suffix), path))
    for _, path in sorted(steps, reverse=True):
        if is_complete_checkpoint(path):
            return str(path)
        print(f"ignoring {path}: interrupted while it was being saved")
    return None


def train_resumable(trainer, stage: str | Path | None = None):
    """Train from the last complete checkpoint in ``trainer.args.output_dir`` if there is one; returns
    (result, wall s). With ``report_to: tensorboard`` the event files go into ``stage/runs/<run_name>`` (``stage``:
    the stage's output folder; ``stage/runs`` without a run name). transformers 5 has no ``logging_dir`` setting;
    ``TENSORBOARD_LOGGING_DIR`` still wins."""
    if stage is not None:
        _set_tensorboard_dir(trainer, Path(stage) / TENSORBOARD_DIR)
    last = last_complete_checkpoint(trainer.args.output_dir)
    if last and trainer.is_world_process_zero():
        print(f"resuming from {last}")
    start = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=last)
    return result, time.perf_counter() - start


def _set_tensorboard_dir(trainer, folder: Path) -> None:
    from transformers.integrations import TensorBoardCallback

    name = trainer.args.run_name
    if name:
        folder = folder / str(name).replace("/", "_").replace("\\", "_")
    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, TensorBoardCallback) and callback.logging_dir is None:
            callback.logging_dir = str(folder)


def report_scalars(trainer, scalars: dict[str, float]) -> None:
    """Send ``scalars`` to the reporting integrations only (``report_to``: TensorBoard, W&B, ...), at the current
    optimizer step, as ``Trainer.log`` would, but without an entry in ``log_history`` (and without printing them).
    For values a trainer keeps in ``log_history`` in another shape (T-Vaccine's lists of layer probabilities),
    which the integrations cannot plot."""
    if not trainer.args.report_to:
        return
    from transformers.integrations import get_reporting_integration_callbacks

    kinds = tuple(get_reporting_integration_callbacks(trainer.args.report_to))
    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, kinds):
            callback.on_log(trainer.args, trainer.state, trainer.control, model=trainer.model, logs=dict(scalars))


def mean_train_loss(trainer, result) -> float:
    """The mean logged training loss over the whole run. The Trainer's own ``training_loss`` covers only the steps
    of the last ``train()`` call, so a resumed run (0.0 if it resumed at its last step) would report another one."""
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    return sum(losses) / len(losses) if losses else result.training_loss


def save_trained(trainer, output: str | Path) -> bool:
    """Save the trained adapter (or model) into ``output``; returns whether this process is the one that writes.

    Every rank must call this: under ZeRO-3 and FSDP the Trainer gathers the sharded weights first (a collective),
    and only the main process writes. The pickled ``training_args.bin`` the Trainer adds is removed: the settings
    are kept as JSON beside the weights.
    """
    trainer.save_model(str(output))
    main = trainer.is_world_process_zero()
    if main:
        (Path(output) / TRAINING_ARGS).unlink(missing_ok=True)
    return main
