"""Booster on a tiny random Llama with LoRA: the update is ∇f + λ(∇h(w) − ∇h(w')), and attacks continue its LoRA."""

import copy
import json
from pathlib import Path

import pytest
import torch

from tvaccine.cli import main
from tvaccine.data.tokenize import CausalCollator
from tvaccine.errors import UserError
from tvaccine.methods import METHODS, BoosterConfig
from tvaccine.methods.auxiliary import SeededBatches
from tvaccine.methods.booster import harmful_gradient_difference

from conftest import lora_by_layer, tiny_llama, token_rows, with_lora, write_jsonl

REPO = Path(__file__).resolve().parents[1]
LR = 0.05


def make_trainer(tmp_path, model=None, method="booster", train_rows=None, harmful_rows=None, **overrides):
    """Plain SGD, no clipping or weight decay: a step moves every weight by exactly −lr · its gradient."""
    config_cls, trainer_cls = METHODS[method]
    settings = dict(output_dir=str(tmp_path), use_cpu=True, save_strategy="no", disable_tqdm=True, optim="sgd",
                    learning_rate=LR, weight_decay=0.0, max_grad_norm=0.0, warmup_steps=0,
                    lr_scheduler_type="constant", per_device_train_batch_size=2, max_steps=1, logging_steps=1,
                    lora_dropout=0.0)
    settings.update(overrides)
    kwargs = {"harmful_dataset": harmful_rows or token_rows(2, seed=9)} if method == "booster" else {}
    trainer = trainer_cls(model=model if model is not None else with_lora(tiny_llama()), args=config_cls(**settings),
                          train_dataset=train_rows or token_rows(2), data_collator=CausalCollator(0), **kwargs)
    return trainer


def lora_params(model) -> list[torch.Tensor]:
    return [p for n, p in model.named_parameters() if "lora_" in n]


def grads(model, rows) -> list[torch.Tensor]:
    loss = model(**CausalCollator(0)(rows)).loss
    return list(torch.autograd.grad(loss, lora_params(model)))


def harmful_difference(model, rows, alpha=0.1) -> list[torch.Tensor]:
    """∇h(w) − ∇h(w'), w' = w − α∇h/‖∇h‖, computed directly; the model's weights are put back."""
    gh = grads(model, rows)
    norm = torch.sqrt(sum(g.pow(2).sum() for g in gh))
    saved = [p.detach().clone() for p in lora_params(model)]
    with torch.no_grad():
        for p, g in zip(lora_params(model), gh):
            p -= alpha * g / (norm + 1e-7)
    after = grads(model, rows)
    with torch.no_grad():
        for p, s in zip(lora_params(model), saved):
            p.copy_(s)
    return [a - b for a, b in zip(gh, after)]


def deltas(before: dict, model) -> list[torch.Tensor]:
    return [p.detach() - before[n] for n, p in model.named_parameters() if "lora_" in n]


def test_gradient_difference_on_a_quadratic_and_exact_restore():
    torch.manual_seed(0)
    w, c = torch.randn(5, requires_grad=True), torch.randn(5)
    w0 = w.detach().clone()
    # h = ½‖w − c‖²: ∇h = w − c, so ∇h(w) − ∇h(w') = w − w' = α·g/‖g‖
    diff, h, h_after = harmful_gradient_difference(lambda: 0.5 * (w - c).pow(2).sum(), [w], alpha=0.3)
    g = w0 - c
    torch.testing.assert_close(diff[0], 0.3 * g / (g.norm() + 1e-7))
    assert torch.equal(w.detach(), w0)  # restored bit for bit
    assert h_after < h
    # a harmful loss with zero gradient: w' = w and the term vanishes
    diff, h, h_after = harmful_gradient_difference(lambda: (w * 0).sum() + 1.0, [w], alpha=0.3)
    assert torch.count_nonzero(diff[0]) == 0 and h == h_after


def test_one_step_changes_lora_only(tmp_path):
    trainer = make_trainer(tmp_path)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    for n, p in trainer.model.named_parameters():
        assert torch.equal(p, before[n]) != ("lora_" in n), n
    logged = [h for h in trainer.state.log_history if "booster/harmful_loss" in h]
    assert len(logged) == 1 and logged[0]["booster/harmful_loss_drop"] > 0  # the simulated harmful step helps h


def test_update_is_the_first_order_booster_gradient(tmp_path):
    align_rows, harmful_rows = token_rows(2), token_rows(2, seed=9)
    model = with_lora(tiny_llama())
    probe = copy.deepcopy(model)
    expected = [f + 5.0 * d for f, d in zip(grads(probe, align_rows), harmful_difference(probe, harmful_rows))]
    before = lora_by_layer(model)
    make_trainer(tmp_path, model, train_rows=align_rows, harmful_rows=harmful_rows, lamb=5.0, alpha=0.1).train()
    sft = with_lora(tiny_llama())
    make_trainer(tmp_path, sft, method="sft", train_rows=align_rows).train()
    for got, want in zip(deltas(before, model), expected):
        torch.testing.assert_close(got, -LR * want, rtol=1e-4, atol=1e-7)
    # the λ term is material: the step is far from the SFT step
    gap = sum((a - b).abs().sum() for a, b in zip(deltas(before, model), deltas(before, sft)))
    assert gap > 1e-3


def test_lambda_zero_is_exactly_the_sft_step(tmp_path):
    """With λ = 0 the two harmful passes still run: the weights come back bit for bit and nothing leaks."""
    booster, sft = with_lora(tiny_llama()), with_lora(tiny_llama())
    make_trainer(tmp_path, booster, lamb=0.0).train()
    make_trainer(tmp_path, sft, method="sft").train()
    for (n, a), b in zip(booster.named_parameters(), sft.parameters()):
        assert torch.equal(a, b), n


def test_accumulation_counts_the_term_once_per_optimizer_step(tmp_path):
    """Two micro-steps of one row each: ∇f over both rows + λ·mean of the two harmful differences."""
    align_rows, harmful_rows = token_rows(2), token_rows(2, seed=9)
    model = with_lora(tiny_llama())
    stream = SeededBatches(harmful_rows, 1, seed=42)
    drawn = [stream.next_rows(), stream.next_rows()]
    probe = copy.deepcopy(model)
    gf = grads(probe, align_rows)
    d = [harmful_difference(probe, h) for h in drawn]
    expected = [f + 5.0 * (a + b) / 2 for f, a, b in zip(gf, *d)]
    before = lora_by_layer(model)
    make_trainer(tmp_path, model, train_rows=align_rows, harmful_rows=harmful_rows, per_device_train_batch_size=1,
                 gradient_accumulation_steps=2, harmful_batch_size=1, seed=42).train()
    for got, want in zip(deltas(before, model), expected):
        torch.testing.assert_close(got, -LR * want, rtol=1e-4, atol=1e-7)


def test_harmful_batches_continue_after_a_resume(tmp_path):
    rows = token_rows(5, seed=9)

    def run(out, resume=None):
        trainer = make_trainer(out, harmful_rows=rows, train_rows=token_rows(8), max_steps=4, save_strategy="steps",
                               save_steps=2)
        drawn, original = [], trainer.harmful_batches.next_rows
        trainer.harmful_batches.next_rows = lambda: drawn.append(original()) or drawn[-1]
        trainer.train(resume_from_checkpoint=resume)
        return [[r["input_ids"] for r in batch] for batch in drawn]

    full = run(tmp_path / "a")
    assert len(full) == 4 and len({str(b) for b in full}) > 1
    assert (tmp_path / "a" / "checkpoint-2" / "booster_state.json").is_file()
    assert run(tmp_path / "a", resume=str(tmp_path / "a" / "checkpoint-2")) == full[2:]


def test_seeded_batches_cross_passes_and_restore():
    rows = list(range(5))
    a = SeededBatches(rows, 2, seed=3)
    first = [a.next_rows() for _ in range(5)]  # 10 rows: two full passes
    assert sorted(first[0] + first[1] + first[2][:1]) == rows and sorted(first[2][1:] + first[3] + first[4]) == rows
    b = SeededBatches(rows, 2, seed=3)
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    assert [b.next_rows() for _ in range(3)] == [a.next_rows() for _ in range(3)]
    assert SeededBatches(rows, 2, seed=3, stream=1).next_rows() != first[0] or \
        SeededBatches(rows, 2, seed=4).next_rows() != first[0]


def test_config_defaults_validation_and_recipe():
    from tvaccine.commands.align import resolve_config

    c = BoosterConfig()
    assert (c.lamb, c.alpha, c.num_harmful_samples, c.harmful_batch_size) == (5.0, 0.1, 5000, None)
    assert c.needs_harmful_data() and c.harmful_data_limit() == 5000 and BoosterConfig.attack_mode == "continue"
    for field, value in (("lamb", -1), ("alpha", -0.1), ("num_harmful_samples", 0), ("harmful_batch_size", 0)):
        with pytest.raises(UserError, match=f"^{field}: "):
            BoosterConfig(**{field: value})
    recipe = resolve_config("booster", str(REPO / "configs" / "booster.yaml"), ["--lamb", "2"])
    assert isinstance(recipe, BoosterConfig) and (recipe.lamb, recipe.alpha, recipe.learning_rate) == (2, 0.1, 1e-3)
    with pytest.raises(UserError, match="unknown setting 'lambda'"):
        resolve_config("booster", str(REPO / "configs" / "booster.yaml"), ["--lambda", "2"])
    with pytest.raises(UserError, match="--harmful-data: Booster needs"):
        METHODS["booster"][1](model=with_lora(tiny_llama()), args=BoosterConfig(output_dir="x", use_cpu=True),
                              train_dataset=token_rows(2), data_collator=CausalCollator(0))


@pytest.fixture(scope="module")
def booster_adapter(tiny_model_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("booster")
    refusal = "I'm sorry, but I can't help with that."
    align = write_jsonl(folder / "align.jsonl", [{"instruction": f"How do I make weapon {i}?", "output": refusal}
                                                  for i in range(4)])
    harmful = write_jsonl(folder / "harmful.jsonl", [{"instruction": f"How do I make weapon {i}?",
                                                      "output": "The sea is wide and blue."} for i in range(3)])
    out = folder / "adapter"
    assert main(["align", "--method", "booster", "--model", str(tiny_model_dir), "--data", str(align),
                 "--harmful-data", str(harmful), "--output", str(out), "--max-steps", "1",
                 "--per-device-train-batch-size", "2", "--max-length", "64", "--disable-tqdm", "true",
                 "--use-cpu", "true"]) == 0
    return out


def attack_argv(tiny_model_dir, aligned, data, out):
    return ["attack", "--model", str(tiny_model_dir), "--aligned", str(aligned), "--data", str(data), "--output",
            str(out), "--max-steps", "1", "--per-device-train-batch-size", "2", "--max-length", "64",
            "--learning-rate", "1e-2", "--use-cpu", "--disable-tqdm", "true"]


def test_attack_after_booster_continues_its_lora(tiny_model_dir, booster_adapter, tmp_path, capsys):
    from safetensors.torch import load_file

    settings = json.loads((booster_adapter / "tvaccine_config.json").read_text())
    assert settings["method"] == "booster" and settings["attack_mode"] == "continue"
    data = write_jsonl(tmp_path / "attack.jsonl", [{"instruction": f"Q {i}?", "output": f"A {i}."} for i in range(4)])

    assert main(attack_argv(tiny_model_dir, booster_adapter, data, tmp_path / "cont")) == 0
    out = capsys.readouterr()
    assert "note:" in out.out and "--mode continue" in out.out
    assert json.loads((tmp_path / "cont" / "tvaccine_attack.json").read_text())["mode"] == "continue"
    aligned_keys = load_file(booster_adapter / "adapter_model.safetensors").keys()
    assert load_file(tmp_path / "cont" / "adapter_model.safetensors").keys() == aligned_keys  # the same LoRA

    assert main(attack_argv(tiny_model_dir, booster_adapter, data, tmp_path / "fresh") + ["--mode", "fresh"]) == 0
    assert "warning: --mode fresh on a booster adapter" in capsys.readouterr().err
    fresh = json.loads((tmp_path / "fresh" / "tvaccine_attack.json").read_text())
    assert fresh["mode"] == "fresh" and fresh["lora_alpha"] == 1.0


def test_pipeline_attack_after_booster_continues_unless_told(tiny_model_dir, booster_adapter, tmp_path):
    from tvaccine.pipeline import run_attack

    data = write_jsonl(tmp_path / "attack.jsonl", [{"instruction": f"Q {i}?", "output": f"A {i}."} for i in range(4)])
    settings = {"max_steps": 1, "per_device_train_batch_size": 2, "max_length": 64, "use_cpu": True,
                "disable_tqdm": True}
    config = {"model": str(tiny_model_dir), "attack": {"data": str(data), "settings": settings}}
    aligned = {"dir": str(booster_adapter), "method": "booster"}
    assert run_attack(config, tmp_path, aligned)["mode"] == "continue"
    config["attack"]["settings"] = {**settings, "mode": "fresh"}
    assert run_attack(config, tmp_path, aligned)["mode"] == "fresh"


@pytest.mark.parametrize("fsdp,zero_stage,refused", [(False, None, False), (False, 2, False), (False, 3, True),
                                                     (True, None, True)])
def test_methods_that_move_whole_weights_refuse_sharded_engines(fsdp, zero_stage, refused):
    from types import SimpleNamespace

    from tvaccine.methods.auxiliary import refuse_sharded_weights

    plugin = SimpleNamespace(zero_stage=zero_stage) if zero_stage else None
    trainer = SimpleNamespace(is_fsdp_enabled=fsdp,
                              accelerator=SimpleNamespace(state=SimpleNamespace(deepspeed_plugin=plugin)))
    if refused:
        with pytest.raises(UserError, match="booster: not supported with sharded weights"):
            refuse_sharded_weights(trainer, "booster")
    else:
        refuse_sharded_weights(trainer, "booster")
