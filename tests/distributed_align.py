"""Run on every rank by tests/test_distributed.py: a T-Vaccine alignment through ``tvaccine.align.align``; each rank
records what it saw (its LoRA before and after training, its log with the layers it drew) in RECORD/rank<i>.*.

usage: distributed_align.py MODEL DATA HARMFUL OUTPUT RECORD [--setting value ...]
HARMFUL may hold "{rank}": each rank then probes its own file. With STEP_DELAY set (seconds), every step sleeps that
long, so that a test can kill the run between two checkpoints.
"""

import json
import os
import sys
import time
from pathlib import Path

from safetensors.torch import save_file
from transformers import TrainerCallback

from tvaccine.align import align
from tvaccine.commands.align import resolve_config


def lora(model) -> dict:
    return {n: p.detach().cpu().clone().contiguous() for n, p in model.named_parameters() if "lora_" in n}


class RankRecord(TrainerCallback):
    def __init__(self, folder: Path):
        self.folder = folder

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        save_file(lora(model), self.folder / f"rank{args.process_index}.before.safetensors")

    def on_train_end(self, args, state, control, model=None, **kwargs):
        rank = args.process_index
        save_file(lora(model), self.folder / f"rank{rank}.after.safetensors")
        info = {"world_size": args.world_size, "parallel_mode": str(args.parallel_mode), "log": state.log_history}
        (self.folder / f"rank{rank}.json").write_text(json.dumps(info))


class StepDelay(TrainerCallback):
    def __init__(self, seconds: float):
        self.seconds = seconds

    def on_step_end(self, args, state, control, **kwargs):
        time.sleep(self.seconds)


if __name__ == "__main__":
    model, data, harmful, output, record, *settings = sys.argv[1:]
    config = resolve_config("tvaccine", None, settings)
    harmful = harmful.format(rank=os.environ["RANK"])
    callbacks = [RankRecord(Path(record))]
    if os.environ.get("STEP_DELAY"):
        callbacks.append(StepDelay(float(os.environ["STEP_DELAY"])))
    align("tvaccine", model, data, output, config, harmful_data=harmful, callbacks=callbacks)
