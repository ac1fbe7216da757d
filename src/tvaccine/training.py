"""Run a Trainer so that a rerun of an interrupted job resumes from its last checkpoint."""

from __future__ import annotations

import time
from pathlib import Path


def train_resumable(trainer):
    """Train from the last checkpoint in ``trainer.args.output_dir`` if there is one; returns (result, wall s)."""
    from transformers.trainer_utils import get_last_checkpoint

    folder = trainer.args.output_dir
    last = get_last_checkpoint(folder) if Path(folder).is_dir() else None
    if last:
        print(f"resuming from {last}")
    start = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=last)
    return result, time.perf_counter() - start
