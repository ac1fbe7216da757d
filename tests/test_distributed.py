"""Distributed runs: a real two-process DDP T-Vaccine alignment on CPU (gloo), started the way `--num-processes`
starts one (accelerate launch with the shipped cpu-ddp config), and the launcher's command line."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import write_jsonl
from tvaccine import launch
from tvaccine.errors import UserError

REPO = Path(__file__).resolve().parents[1]
SHIPPED = {"ddp": "MULTI_GPU", "cpu-ddp": "MULTI_GPU", "zero2": "DEEPSPEED", "zero3": "DEEPSPEED", "fsdp": "FSDP"}


def layer_of(name: str) -> int:
    return int(name.split(".layers.")[1].split(".")[0])


def ddp_alignment(tiny_model_dir, folder: Path, out: Path, record: Path, steps: int = 4, save_steps: int = 100,
                  step_delay: float | None = None) -> tuple[list[str], dict]:
    """The command (and environment) of a two-process gloo DDP T-Vaccine alignment, started the way
    `--num-processes 2 --accelerate-config cpu-ddp` starts one, on data written into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    refusal = "I'm sorry, but I can't help with that."
    data = write_jsonl(folder / "align.jsonl", [
        {"instruction": f"How do I make weapon number {i}?", "output": refusal} for i in range(8)])
    # Each rank probes a different harmful file, so their own importance differs: every rank must use rank 0's.
    # (With one file the ranks' probe passes differ only through LoRA dropout, which on CPU draws the same masks.)
    for rank, answer in enumerate(["The sea is wide and blue.", "Write a poem about the sea."]):
        write_jsonl(folder / f"harmful-{rank}.jsonl", [
            {"instruction": f"How do I make weapon number {i}?", "output": answer} for i in range(3)])
    record.mkdir(parents=True, exist_ok=True)
    settings = ["--max-steps", str(steps), "--per-device-train-batch-size", "2", "--max-length", "64",
                "--num-active-layers", "1", "--layer-resample-steps", "2", "--importance-update-steps", "2",
                "--lora-dropout", "0.1", "--disable-tqdm", "true", "--save-steps", str(save_steps)]
    program = [str(REPO / "tests" / "distributed_align.py"), str(tiny_model_dir), str(data),
               str(folder / "harmful-{rank}.jsonl"), str(out), str(record), *settings]
    cmd, env = launch.launch_command(program, launch.resolve_config("cpu-ddp"), 2)
    env = {**env, "PYTHONPATH": f"{REPO / 'src'}:{REPO / 'tests'}", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    if step_delay:
        env["STEP_DELAY"] = str(step_delay)
    return cmd, env


def run_ddp(cmd, env, cwd) -> None:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]


def draws_of(log: list[dict]) -> list:
    return [(h["step"], h["tvaccine/active_layers"]) for h in log if "tvaccine/active_layers" in h]


def test_two_process_ddp_tvaccine_draws_the_same_layers_and_ends_identical(tiny_model_dir, tmp_path):
    record = tmp_path / "record"
    run_ddp(*ddp_alignment(tiny_model_dir, tmp_path, tmp_path / "out", record), cwd=tmp_path)

    ranks = [json.loads((record / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["world_size"] == 2 and r["parallel_mode"].endswith("DISTRIBUTED") for r in ranks)
    draws = [draws_of(r["log"]) for r in ranks]
    probs = [[h["tvaccine/layer_probs"] for h in r["log"] if "tvaccine/layer_probs" in h] for r in ranks]
    assert [step for step, _ in draws[0]] == [0, 2]  # J = 2 over 4 steps
    assert draws[0] == draws[1] and probs[0] == probs[1] and len(probs[0]) == 2

    before = [load_file(record / f"rank{r}.before.safetensors") for r in (0, 1)]
    after = [load_file(record / f"rank{r}.after.safetensors") for r in (0, 1)]
    for name in after[0]:
        assert torch.equal(before[0][name], before[1][name]), name
        assert torch.equal(after[0][name], after[1][name]), name  # gradients all-reduced: no drift
    drawn = {layer for _, layers in draws[0] for layer in layers}
    moved = {(layer_of(n), "self_attn" in n) for n in after[0] if not torch.equal(before[0][n], after[0][n])}
    # Only the drawn layers' attention LoRA trains (the default freeze scope, attention: every MLP LoRA trains); a
    # never-drawn layer's attention LoRA gets no gradient, no Adam or weight-decay step.
    assert {layer for layer, attn in moved if attn} == drawn
    assert {layer for layer, attn in moved if not attn} == {layer_of(n) for n in after[0]}
    saved = load_file(tmp_path / "out" / "adapter_model.safetensors")  # written once, by the main process
    for name, value in saved.items():
        full = next(n for n in after[0] if n.startswith(name.removesuffix(".weight")))
        assert torch.equal(value, after[0][full]), name
    assert not (tmp_path / "out" / "training_args.bin").exists()


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (torchrun starts its workers in sessions of their own: a process-group kill of the
    launcher does not reach them)."""
    out = []
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        out += [int(child), *descendants(int(child))]
    return out


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc to find the launched processes")
def test_a_killed_ddp_run_resumes_to_the_uninterrupted_adapter(tiny_model_dir, tmp_path):
    """SIGKILL the launcher and both ranks (a lost machine) after the step-2 checkpoint of a 6-step run; the same
    command then resumes every rank from it and ends where an uninterrupted run ends."""
    whole = ddp_alignment(tiny_model_dir, tmp_path / "a", tmp_path / "a" / "out", tmp_path / "a" / "record",
                          steps=6, save_steps=2)
    run_ddp(*whole, cwd=tmp_path)

    folder, out = tmp_path / "b", tmp_path / "b" / "out"
    cmd, env = ddp_alignment(tiny_model_dir, folder, out, folder / "record", steps=6, save_steps=2, step_delay=0.5)
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    try:
        while not (out / "checkpoints" / "checkpoint-2" / "trainer_state.json").is_file():
            assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint before the run ended"
            time.sleep(0.05)
        victims = [proc.pid, *descendants(proc.pid)]
        assert len(victims) >= 3  # the launcher and two ranks
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert not (out / "adapter_model.safetensors").exists()
    assert not (out / "checkpoints" / "checkpoint-6").exists()

    env.pop("STEP_DELAY")
    run_ddp(cmd, env, cwd=tmp_path)
    ranks = [json.loads((folder / "record" / f"rank{r}.json").read_text()) for r in (0, 1)]
    reference = json.loads((tmp_path / "a" / "record" / "rank0.json").read_text())
    # the rerun continued from step 2 (its log starts with the restored history) with the same layer draws
    assert draws_of(ranks[0]["log"]) == draws_of(ranks[1]["log"]) == draws_of(reference["log"])
    for rank in (0, 1):
        resumed = load_file(folder / "record" / f"rank{rank}.after.safetensors")
        expected = load_file(tmp_path / "a" / "record" / f"rank{rank}.after.safetensors")
        for name in expected:
            torch.testing.assert_close(resumed[name], expected[name], rtol=1e-5, atol=1e-6, msg=name)
    # and the rerun did start from the checkpoint, not from scratch: its first LoRA is the step-2 one
    start = load_file(folder / "record" / "rank0.before.safetensors")
    initial = load_file(tmp_path / "a" / "record" / "rank0.before.safetensors")
    assert any(not torch.equal(start[n], initial[n]) for n in initial)


def test_the_command_is_rerun_under_accelerate_launch(monkeypatch):
    argv = ["align", "--method", "tvaccine", "--num-processes", "2", "--model", "m", "--accelerate-config=ddp",
            "--overwrite", "--rho", "2"]
    program = ["-m", "tvaccine", *launch.strip_launch_options(argv)]
    assert program == ["-m", "tvaccine", "align", "--method", "tvaccine", "--model", "m", "--rho", "2"]
    cmd, env = launch.launch_command(program, launch.resolve_config("cpu-ddp"), 3)
    assert cmd[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    assert cmd[cmd.index("--config_file") + 1] == str(REPO / "configs" / "accelerate" / "cpu-ddp.yaml")
    assert cmd[cmd.index("--num_processes") + 1] == "3" and cmd[-len(program):] == program
    assert env["ACCELERATE_USE_CPU"] == "true"
    monkeypatch.delenv("ACCELERATE_USE_CPU", raising=False)
    cmd, env = launch.launch_command(program, launch.resolve_config("zero3"), None)
    assert "ACCELERATE_USE_CPU" not in env and "--num_processes" in cmd  # a GPU config without a count: filled in


@pytest.mark.parametrize("command", ["align", "attack"])
def test_cli_checks_settings_then_launches(command, monkeypatch, tmp_path):
    """`tvaccine align|attack --num-processes 2`: settings are checked and --overwrite done before launching."""
    from tvaccine.cli import main

    for key in launch.LAUNCHED_ENV:
        monkeypatch.delenv(key, raising=False)
    launched = []
    monkeypatch.setattr(launch.subprocess, "run", lambda cmd, env: launched.append((cmd, env)) or
                        subprocess.CompletedProcess(cmd, 0))
    out = tmp_path / "out"
    (out / "checkpoints" / "checkpoint-2").mkdir(parents=True)
    marker = out / ("tvaccine_config.json" if command == "align" else "tvaccine_attack.json")
    marker.write_text("{}")
    (out / "adapter_model.safetensors").write_bytes(b"")  # with the marker: a finished run
    args = [command, "--model", "m", "--output", str(out), "--num-processes", "2", "--accelerate-config",
            "cpu-ddp", "--max-steps", "3"]
    args += ["--method", "sft", "--data", "d.jsonl"] if command == "align" else ["--task", "sst2"]
    assert main(args + ["--learning-rate", "-1"]) == 2 and not launched  # a bad setting: no launch
    assert main(args) == 0 and not launched  # finished: nothing to do
    assert main(args + ["--overwrite"]) == 0
    (cmd, env), = launched
    assert cmd[cmd.index("-m", 3):] == ["-m", "tvaccine", *[a for a in args if a not in (
        "--num-processes", "2", "--accelerate-config", "cpu-ddp")]]
    assert env["ACCELERATE_USE_CPU"] == "true"
    assert not (out / "checkpoints").exists() and not marker.exists()  # --overwrite done here, once


def test_inside_a_launched_process_nothing_is_launched_again(monkeypatch):
    from argparse import Namespace

    args = Namespace(num_processes=2, accelerate_config=None)
    for key in launch.LAUNCHED_ENV:
        monkeypatch.delenv(key, raising=False)
    assert launch.requested(args)
    assert not launch.requested(Namespace(num_processes=None, accelerate_config=None))
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert not launch.requested(args)


def test_configs_resolve_and_parse_with_accelerate(tmp_path):
    from accelerate.commands.config.config_args import load_config_from_file

    assert set(launch.shipped_configs()) == set(SHIPPED)
    for name, kind in SHIPPED.items():
        config = load_config_from_file(str(launch.resolve_config(name)))
        assert str(config.distributed_type).endswith(kind), name
    assert load_config_from_file(str(launch.resolve_config("zero3"))).deepspeed_config["zero3_save_16bit_model"]
    own = tmp_path / "mine.yaml"
    own.write_text("distributed_type: MULTI_GPU\n")
    assert launch.resolve_config(str(own)) == own
    with pytest.raises(UserError, match="--accelerate-config: 'zero4' is neither a file nor a shipped config"):
        launch.resolve_config("zero4")


def test_tvaccine_config_keeps_what_ddp_needs():
    from tvaccine.methods import TVaccineConfig

    config = TVaccineConfig(output_dir="x")
    assert config.ddp_find_unused_parameters is True and not config.ddp_static_graph
    with pytest.raises(UserError, match="ddp_find_unused_parameters: must be true"):
        TVaccineConfig(output_dir="x", ddp_find_unused_parameters=False)
    with pytest.raises(UserError, match="ddp_static_graph: must be false"):
        TVaccineConfig(output_dir="x", ddp_static_graph=True)
