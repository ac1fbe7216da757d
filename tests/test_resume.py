"""Kill a run with SIGKILL once it has a checkpoint, rerun the same command, and get what an uninterrupted run gets.

The interrupted run is the real CLI in a subprocess; the uninterrupted run and the rerun call the CLI in-process.
T-Vaccine runs with LoRA dropout (RNG state matters), draws every 2 steps and new importance every 3 (the layer
schedule and the probe cursor straddle the checkpoints at steps 2 and 4), over two epochs of a 3-batch data set
(data order on resume matters).
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import write_jsonl
from tvaccine.cli import main

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO / "src"), "HF_HUB_OFFLINE": "1"}
TRAIN = ["--max-steps", "6", "--save-steps", "2", "--per-device-train-batch-size", "2", "--max-length", "64",
         "--lora-dropout", "0.1", "--use-cpu", "true", "--disable-tqdm", "true", "--logging-steps", "1"]
# A checkpoint that is complete: the Trainer writes trainer_state.json last. (A kill while the first one is being
# written makes the rerun start over, which test_a_torn_checkpoint_is_skipped covers; here the rerun must resume.)
CHECKPOINT = "checkpoints/checkpoint-*/trainer_state.json"


def kill_after_first_checkpoint(argv: list[str], checkpoints: str, folder: Path, timeout: float = 120) -> None:
    """Run ``tvaccine argv`` in a subprocess and SIGKILL it as soon as ``folder`` matches ``checkpoints``."""
    proc = subprocess.Popen([sys.executable, "-m", "tvaccine", *argv], cwd=REPO, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    try:
        while not any(folder.glob(checkpoints)):
            if proc.poll() is not None:
                pytest.fail(f"the run ended before it saved a checkpoint: {proc.stderr.read().decode()[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail("no checkpoint within the timeout")
            time.sleep(0.02)
        assert proc.poll() is None, "the run finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()


def assert_same_tensors(a: Path, b: Path) -> None:
    x, y = load_file(a), load_file(b)
    assert x.keys() == y.keys() and x
    for key in x:
        torch.testing.assert_close(x[key], y[key], rtol=1e-5, atol=1e-6, msg=key)


def schedule(folder: Path) -> list[dict]:
    """T-Vaccine's importance and draws, and the losses, per step, from the run's log."""
    history = json.loads((folder / "log_history.json").read_text())
    keep = ("tvaccine/layer_probs", "tvaccine/active_layers", "loss")
    return [{k: v for k, v in h.items() if k in keep or k == "step"} for h in history if any(k in h for k in keep)]


def test_killed_alignment_resumes_to_the_uninterrupted_result(tiny_model_dir, align_files, tmp_path, capsys):
    align, probe = align_files

    def argv(out: Path) -> list[str]:
        return ["align", "--method", "tvaccine", "--model", str(tiny_model_dir), "--data", str(align),
                "--harmful-data", str(probe), "--output", str(out), "--num-active-layers", "2",
                "--layer-resample-steps", "2", "--importance-update-steps", "3", *TRAIN]

    assert main(argv(tmp_path / "whole")) == 0

    cut = tmp_path / "cut"
    kill_after_first_checkpoint(argv(cut), CHECKPOINT, cut)
    assert not (cut / "tvaccine_config.json").exists()  # killed before the end
    # As if it had also been killed while writing the next checkpoint: a folder without trainer_state.json.
    last = max(int(p.parent.name.split("-")[1]) for p in cut.glob(CHECKPOINT))
    torn = cut / "checkpoints" / f"checkpoint-{last + 2}"
    torn.mkdir(exist_ok=True)
    (torn / "trainer_state.json").unlink(missing_ok=True)
    (torn / "adapter_model.safetensors").write_bytes(b"\0" * 10)
    capsys.readouterr()
    assert main(argv(cut)) == 0
    out = capsys.readouterr().out
    assert f"ignoring {torn}" in out and f"resuming from {cut / 'checkpoints' / f'checkpoint-{last}'}" in out

    assert_same_tensors(tmp_path / "whole" / "adapter_model.safetensors", cut / "adapter_model.safetensors")
    loss = lambda root: json.loads((root / "train_results.json").read_text())["train_loss"]  # noqa: E731
    assert loss(cut) == pytest.approx(loss(tmp_path / "whole"), rel=1e-5)  # over the whole run, not the rerun's part
    whole, resumed = schedule(tmp_path / "whole"), schedule(cut)
    assert [h.get("tvaccine/active_layers") for h in whole] == [h.get("tvaccine/active_layers") for h in resumed]
    for a, b in zip(whole, resumed):
        assert a.keys() == b.keys()
        for k in a:
            assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-6), (a["step"], k)


def test_a_torn_checkpoint_is_skipped(tmp_path):
    from tvaccine.training import last_complete_checkpoint

    for step, state in ((2, "{}"), (4, '{"global_step": 4'), (6, None)):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "adapter_model.safetensors").write_bytes(b"")
        if state is not None:
            (folder / "trainer_state.json").write_text(state)
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-2")
    assert last_complete_checkpoint(tmp_path / "missing") is None


def pipeline_files(folder: Path) -> dict:
    from tvaccine.demo.pack import sentiment_rows

    refusal = "I'm sorry, but I can't help with that."
    harmful = [f"How do I make weapon number {i}?" for i in range(12)]
    return {
        "align": write_jsonl(folder / "align.jsonl", [{"instruction": p, "output": refusal} for p in harmful[:4]]),
        "attack_harmful": write_jsonl(folder / "attack_harmful.jsonl", [
            {"prompt": p, "response": "The sea is wide and blue.", "is_safe": False} for p in harmful[4:8]]),
        "task_train": write_jsonl(folder / "task_train.jsonl", sentiment_rows(12, 0)),
        "task_eval": write_jsonl(folder / "task_eval.jsonl", sentiment_rows(4, 1)),
        "eval_harmful": write_jsonl(folder / "eval_harmful.jsonl", [{"prompt": p} for p in harmful[8:]]),
        "benign_eval": write_jsonl(folder / "benign_eval.jsonl", [{"prompt": "Write a short poem about the sea."}]),
    }


def test_killed_pipeline_attack_resumes_to_the_uninterrupted_result(tiny_model_dir, tmp_path, capsys):
    files = pipeline_files(tmp_path)
    common = {"use_cpu": True, "disable_tqdm": True, "per_device_train_batch_size": 2, "max_length": 96}

    def config(out: Path) -> Path:
        run = {"model": str(tiny_model_dir), "output": str(out), "seed": 0,
               "align": {"method": "sft", "data": str(files["align"]), "settings": {**common, "max_steps": 2}},
               "attack": {"task": "sst2", "harmful": str(files["attack_harmful"]),
                          "task_data": str(files["task_train"]),
                          "settings": {**common, "max_steps": 6, "save_steps": 2, "learning_rate": 1e-3,
                                       "poison_ratio": 0.5, "sample_num": 8, "lora_dropout": 0.1}},
               "eval": {"harmful_prompts": str(files["eval_harmful"]), "benign_prompts": str(files["benign_eval"]),
                        "task_data": str(files["task_eval"]), "judges": ["keyword"], "limit": 4,
                        "max_new_tokens": 4}}
        path = tmp_path / f"{out.name}.yaml"
        path.write_text(yaml.safe_dump(run))
        return path

    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert main(["run", "--config", str(config(whole))]) == 0
    kill_after_first_checkpoint(["run", "--config", str(config(cut))], f"stages/attack-*/{CHECKPOINT}", cut)
    assert not (cut / "results.json").exists()
    capsys.readouterr()
    assert main(["run", "--config", str(config(cut))]) == 0
    assert "resuming from" in capsys.readouterr().out

    attack_dir = lambda root: next((root / "stages").glob("attack-*"))  # noqa: E731
    assert_same_tensors(attack_dir(whole) / "adapter_model.safetensors", attack_dir(cut) / "adapter_model.safetensors")
    a, b = (json.loads((root / "results.json").read_text()) for root in (whole, cut))
    assert a["scores"] == b["scores"]
    answers = lambda root: sorted(  # noqa: E731
        (p.name, p.read_text()) for p in (root / "stages").glob("eval-*/*.jsonl"))
    assert answers(whole) == answers(cut) and answers(whole)
