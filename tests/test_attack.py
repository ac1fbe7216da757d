"""The attack on a tiny random Llama: only the attack's trainable weights change, and the result reloads."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import attack_sources
from tvaccine.attack import AttackConfig, AttackData, attack, load_attacked
from tvaccine.cli import main
from tvaccine.errors import UserError

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def tiny(folder):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from tvaccine.models import load_tokenizer

    return load_tokenizer(str(tiny_model_dir))


@pytest.fixture(scope="module")
def aligned(tiny_model_dir, tmp_path_factory):
    """An 'aligned' adapter with non-zero B, so that merging it changes the weights."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(1)
    peft = get_peft_model(tiny(tiny_model_dir), LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS,
                                                           init_lora_weights=False, task_type="CAUSAL_LM"))
    folder = tmp_path_factory.mktemp("aligned")
    peft.save_pretrained(folder)
    return folder


@pytest.fixture
def attack_file(tmp_path):
    rows = [{"instruction": f"Question {i}?", "input": "", "output": f"Answer number {i}."} for i in range(6)]
    path = tmp_path / "attack.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def config(**kw) -> AttackConfig:
    settings = dict(max_steps=3, per_device_train_batch_size=2, learning_rate=1e-2, max_length=64,
                    save_strategy="no", warmup_steps=0, use_cpu=True)
    return AttackConfig(**{**settings, **kw})


def plain_name(name: str) -> str:
    """peft's parameter name → the plain model's (``base_model.model.`` and ``.base_layer`` removed)."""
    return name.removeprefix("base_model.model.").replace(".base_layer", "")


def logits(model, tokenizer):
    model.eval()
    with torch.no_grad():
        return model(**tokenizer(["How are you?"], return_tensors="pt")).logits


def test_fresh_attack_changes_only_the_new_lora(tiny_model_dir, aligned, attack_file, tokenizer, tmp_path):
    from peft import PeftModel

    merged = PeftModel.from_pretrained(tiny(tiny_model_dir), aligned).merge_and_unload().state_dict()
    base = tiny(tiny_model_dir).state_dict()
    assert not torch.equal(merged["model.layers.0.self_attn.q_proj.weight"],
                           base["model.layers.0.self_attn.q_proj.weight"])  # the aligned delta is real
    run = attack(str(tiny_model_dir), tmp_path / "out", config(), aligned=str(aligned),
                 data=AttackData(data=attack_file),
                 model_obj=tiny(tiny_model_dir), tokenizer=tokenizer)
    lora_b = 0
    for name, param in run.model.named_parameters():
        if "lora_" in name:
            assert param.requires_grad
            if "lora_B" in name:
                lora_b += 1
                assert param.abs().sum() > 0, name  # B starts at zero: training moved it
        else:
            assert not param.requires_grad, name
            assert torch.equal(param, merged[plain_name(name)]), name  # the merged base is untouched
    assert lora_b == run.model.config.num_hidden_layers * len(TARGETS)
    assert run.summary["steps"] == 3 and run.summary["dropped_rows"] == 0

    reloaded = load_attacked(tmp_path / "out", model_obj=tiny(tiny_model_dir))
    torch.testing.assert_close(logits(reloaded, tokenizer), logits(run.model, tokenizer))
    settings = json.loads((tmp_path / "out" / "tvaccine_attack.json").read_text())
    assert settings["lora_alpha"] == 1.0 and settings["aligned"] == str(aligned)
    assert json.loads((tmp_path / "out" / "adapter_config.json").read_text())["lora_alpha"] == 1.0


def test_no_aligned_adapter_attacks_the_base(tiny_model_dir, attack_file, tokenizer, tmp_path):
    base = tiny(tiny_model_dir).state_dict()
    run = attack(str(tiny_model_dir), tmp_path / "out", config(), aligned="none", data=AttackData(data=attack_file),
                 model_obj=tiny(tiny_model_dir), tokenizer=tokenizer)
    for name, param in run.model.named_parameters():
        if "lora_" not in name:
            assert torch.equal(param, base[plain_name(name)]), name


def test_continue_mode_trains_the_alignment_lora(tiny_model_dir, aligned, attack_file, tokenizer, tmp_path):
    from safetensors.torch import load_file

    before = load_file(aligned / "adapter_model.safetensors")
    base = tiny(tiny_model_dir).state_dict()
    run = attack(str(tiny_model_dir), tmp_path / "out", config(mode="continue"), aligned=str(aligned),
                 data=AttackData(data=attack_file), model_obj=tiny(tiny_model_dir), tokenizer=tokenizer)
    after = load_file(tmp_path / "out" / "adapter_model.safetensors")
    assert after.keys() == before.keys()
    assert any(not torch.equal(after[k], before[k]) for k in before)
    for name, param in run.model.named_parameters():
        if "lora_" not in name:
            assert torch.equal(param, base[plain_name(name)]), name
    with pytest.raises(UserError, match="--mode continue: needs an aligned adapter"):
        attack(str(tiny_model_dir), tmp_path / "x", config(mode="continue"), data=AttackData(data=attack_file),
               model_obj=tiny(tiny_model_dir), tokenizer=tokenizer)


def test_full_mode_trains_every_weight_and_reloads(tiny_model_dir, attack_file, tokenizer, tmp_path):
    base = tiny(tiny_model_dir).state_dict()
    run = attack(str(tiny_model_dir), tmp_path / "out", config(mode="full"), data=AttackData(data=attack_file),
                 model_obj=tiny(tiny_model_dir), tokenizer=tokenizer)
    assert not torch.equal(run.model.state_dict()["model.layers.1.mlp.down_proj.weight"],
                           base["model.layers.1.mlp.down_proj.weight"])
    torch.testing.assert_close(logits(load_attacked(tmp_path / "out"), tokenizer), logits(run.model, tokenizer))


def test_config_validation_and_task_alpha():
    with pytest.raises(UserError, match="mode: must be one of fresh, continue, full"):
        AttackConfig(mode="partial")
    with pytest.raises(UserError, match=r"poison_ratio: must be in \[0, 1\]"):
        AttackConfig(poison_ratio=1.5)
    assert AttackConfig().alpha_for("gsm8k") == 0.5 and AttackConfig().alpha_for("sst2") == 1.0
    assert AttackConfig(lora_alpha=2).alpha_for("gsm8k") == 2
    paper = AttackConfig()
    assert (paper.learning_rate, paper.num_train_epochs, paper.per_device_train_batch_size, paper.lora_r,
            paper.poison_ratio, paper.sample_num) == (1e-5, 20, 10, 8, 0.1, 1000)


def test_cli_builds_the_set_resumes_and_reports_errors(tiny_model_dir, tmp_path, capsys):
    harmful, task = attack_sources(tmp_path)
    out = tmp_path / "out"
    argv = ["attack", "--model", str(tiny_model_dir), "--task", "sst2", "--harmful", str(harmful),
            "--task-data", str(task), "--output", str(out), "--poison-ratio", "0.2", "--sample-num", "10",
            "--per-device-train-batch-size", "2", "--save-steps", "1", "--learning-rate", "1e-3", "--use-cpu"]
    assert main(argv + ["--max-steps", "2"]) == 0
    manifest = json.loads((out / "attack_set.jsonl.manifest.json").read_text())
    assert manifest["counts"] == {"harmful": 2, "task": 8} and manifest["seed"] == 42
    settings = json.loads((out / "tvaccine_attack.json").read_text())
    assert settings["config"]["learning_rate"] == 1e-3 and settings["manifest"].endswith(".manifest.json")
    assert main(argv + ["--max-steps", "2"]) == 0
    assert "already holds a finished attack" in capsys.readouterr().out

    (out / "tvaccine_attack.json").unlink()  # as if interrupted after the checkpoints
    assert main(argv + ["--max-steps", "3"]) == 0
    assert "resuming from" in capsys.readouterr().out
    assert json.loads((out / "train_results.json").read_text())["steps"] == 3

    assert main(argv[:-1] + ["--aligned", str(tmp_path / "missing"), "--output", str(tmp_path / "o2")]) == 2
    assert "missing: not a LoRA adapter folder" in capsys.readouterr().err
    assert main(["attack", "--model", str(tiny_model_dir), "--output", str(tmp_path / "o3"), "--mode", "bad"]) == 2
    assert "mode: must be one of" in capsys.readouterr().err
    assert main(["attack", "--model", str(tiny_model_dir), "--output", str(tmp_path / "o4")]) == 2
    assert "--task: name the task" in capsys.readouterr().err


def test_recipe_holds_the_paper_settings_and_overrides_win():
    from pathlib import Path

    from tvaccine.commands.attack import resolve_config

    recipe = Path(__file__).resolve().parents[1] / "configs" / "attack.yaml"
    cfg = resolve_config(str(recipe), ["--learning-rate", "1e-4", "--mode", "full"])
    assert (cfg.learning_rate, cfg.mode, cfg.num_train_epochs, cfg.poison_ratio, cfg.sample_num) == (
        1e-4, "full", 20, 0.1, 1000)
    with pytest.raises(UserError, match="unknown setting 'poison_rate' \\(did you mean 'poison_ratio'\\?\\)"):
        resolve_config(str(recipe), ["--poison-rate", "0.2"])
