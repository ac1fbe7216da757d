"""Lisa on a tiny random Llama with LoRA: alternating states, the proximal term to the last switch, resume."""

import json

import pytest
import torch

from tvaccine.attack import AttackConfig
from tvaccine.cli import main
from tvaccine.data.tokenize import CausalCollator
from tvaccine.errors import UserError
from tvaccine.attack.lisa import ALIGNMENT, FINETUNE, LisaTrainer, lisa_phase, proximal_term

from conftest import tiny_llama, token_rows, with_lora, write_jsonl

LR = 0.05
ALIGN_FROM = 64  # alignment rows use token ids ≥ 64, the user's rows ids < 64: a batch tells where it came from


def alignment_rows(n=6):
    return [{"input_ids": [i + ALIGN_FROM for i in r["input_ids"]], "labels": [-100] * 4 + [
        i + ALIGN_FROM for i in r["input_ids"][4:]]} for r in token_rows(n, vocab=ALIGN_FROM, seed=5)]


def make_trainer(tmp_path, model=None, **overrides):
    settings = dict(output_dir=str(tmp_path), use_cpu=True, save_strategy="no", disable_tqdm=True, optim="sgd",
                    learning_rate=LR, weight_decay=0.0, max_grad_norm=0.0, warmup_steps=0,
                    lr_scheduler_type="constant", per_device_train_batch_size=2, max_steps=7, logging_steps=1,
                    lora_dropout=0.0, defense="lisa", lisa_alignment_steps=2, lisa_finetune_steps=3,
                    lisa_proximal_warmup=0.0, lisa_rho=1.0)
    settings.update(overrides)
    trainer = LisaTrainer(model=model if model is not None else with_lora(tiny_llama()),
                          args=AttackConfig(**settings), train_dataset=token_rows(8, vocab=ALIGN_FROM),
                          data_collator=CausalCollator(0), alignment_dataset=alignment_rows())
    return trainer


def spy_sources(trainer) -> list[tuple[int, str, list]]:
    """(step, source, input ids) of every training loss the trainer computes."""
    seen, original = [], trainer.compute_loss

    def spy(model, inputs, *args, **kwargs):
        ids = inputs["input_ids"]
        source = ALIGNMENT if ids.min() >= ALIGN_FROM else FINETUNE
        assert source == FINETUNE or ids.max() >= ALIGN_FROM
        seen.append((trainer.state.global_step, source, ids.tolist()))
        return original(model, inputs, *args, **kwargs)

    trainer.compute_loss = spy
    return seen


def lora(model) -> list[torch.Tensor]:
    return [p.detach().clone() for n, p in model.named_parameters() if "lora_" in n]


class Snapshots:
    """Callback: the LoRA weights after every optimizer step."""

    def __init__(self, trainer):
        from transformers import TrainerCallback

        self.after: dict[int, list] = {}
        outer = self

        class CB(TrainerCallback):
            def on_step_end(self, args, state, control, model=None, **kwargs):
                outer.after[state.global_step] = lora(model)

        trainer.add_callback(CB())


def test_phase_schedule():
    assert [lisa_phase(t, 2, 3) for t in range(11)] == [ALIGNMENT] * 2 + [FINETUNE] * 3 + [ALIGNMENT] * 2 + [
        FINETUNE] * 3 + [ALIGNMENT]


def test_proximal_term_is_zero_at_the_anchor_and_half_rho_squared_distance_after():
    torch.manual_seed(0)
    params = [torch.randn(3, 4), torch.randn(5)]
    anchor = [p.clone() for p in params]
    assert proximal_term(params, anchor, 2.5).item() == 0.0
    delta = [torch.randn_like(p) for p in params]
    moved = [p + d for p, d in zip(params, delta)]
    want = 2.5 / 2 * sum(d.pow(2).sum() for d in delta)
    assert proximal_term(moved, anchor, 2.5).item() == pytest.approx(want.item(), rel=1e-5)


def test_states_alternate_as_configured(tmp_path):
    trainer = make_trainer(tmp_path)
    seen = spy_sources(trainer)
    trainer.train()
    assert [(step, source) for step, source, _ in seen] == list(enumerate(
        [ALIGNMENT] * 2 + [FINETUNE] * 3 + [ALIGNMENT] * 2))
    switches = [(h["step"], h["lisa/phase"]) for h in trainer.state.log_history if "lisa/phase" in h]
    assert switches == [(0, ALIGNMENT), (2, FINETUNE), (5, ALIGNMENT)]


def test_proximal_term_pulls_towards_the_weights_at_the_last_switch(tmp_path):
    """Steps 0 and 1 start a state (w = anchor: no pull), so both runs agree up to w2; at step 2 the anchor is
    w1, the weights where the fine-tuning state began, and the update differs by exactly −lr·ρ·(w2 − w1)."""
    rho = 4.0
    runs = {}
    for r in (0.0, rho):
        trainer = make_trainer(tmp_path / str(r), lisa_rho=r, lisa_alignment_steps=1, max_steps=3)
        snaps = Snapshots(trainer)
        trainer.train()
        runs[r] = snaps.after
    w1, w2 = runs[rho][1], runs[rho][2]
    for a, b in zip(runs[0.0][2], w2):
        assert torch.equal(a, b)
    moved = 0.0
    for plain, lisa, a1, a2 in zip(runs[0.0][3], runs[rho][3], w1, w2):
        torch.testing.assert_close(lisa - plain, -LR * rho * (a2 - a1), rtol=1e-4, atol=1e-7)
        moved += (a2 - a1).abs().sum().item()
    assert moved > 1e-3  # the pull is real


def test_proximal_warmup_leaves_the_first_steps_plain(tmp_path):
    after = []
    for r in (0.0, 4.0):
        trainer = make_trainer(tmp_path / str(r), lisa_rho=r, lisa_alignment_steps=1, max_steps=3,
                               lisa_proximal_warmup=1.0)
        trainer.train()
        after.append(lora(trainer.model))
    assert all(torch.equal(a, b) for a, b in zip(*after))


def test_resume_mid_cycle_continues_the_same_sequence(tmp_path):
    def run(resume=None, model_seed=0):
        trainer = make_trainer(tmp_path, with_lora(tiny_llama(), seed=model_seed), save_strategy="steps",
                               save_steps=3, max_steps=6, lisa_rho=10.0)
        seen = spy_sources(trainer)
        trainer.train(resume_from_checkpoint=resume)
        return seen, lora(trainer.model)

    seen, final = run()
    ckpt = tmp_path / "checkpoint-3"  # step 3: inside the fine-tuning state that began at step 2
    assert (ckpt / "lisa_anchor.safetensors").is_file() and json.loads(
        (ckpt / "lisa_state.json").read_text())["anchor_step"] == 2
    resumed, final2 = run(str(ckpt))
    assert resumed == seen[3:]  # same states (finetune, finetune, alignment), same alignment batches
    assert [source for _, source, _ in resumed] == [FINETUNE, FINETUNE, ALIGNMENT]
    for a, b in zip(final, final2):
        torch.testing.assert_close(a, b)
    # without the saved anchor the resumed run would anchor at step 3 and end elsewhere: the check above has teeth
    (ckpt / "lisa_anchor.safetensors").unlink()
    _, final3 = run(str(ckpt))
    assert any(not torch.allclose(a, b) for a, b in zip(final, final3))


def test_settings_validate():
    c = AttackConfig()
    assert (c.defense, c.lisa_rho, c.lisa_alignment_steps, c.lisa_finetune_steps, c.lisa_proximal_warmup) == (
        "none", 1.0, 100, 900, 0.1)
    for field, value in (("defense", "vaccine"), ("lisa_rho", -1), ("lisa_alignment_steps", 0),
                         ("lisa_finetune_steps", 0), ("lisa_proximal_warmup", 1.5)):
        with pytest.raises(UserError, match=f"^{field}: "):
            AttackConfig(**{field: value})
    from pathlib import Path

    from tvaccine.commands.attack import resolve_config

    recipe = resolve_config(str(Path(__file__).resolve().parents[1] / "configs" / "attack.yaml"),
                            ["--defense", "lisa"])
    assert (recipe.defense, recipe.lisa_rho, recipe.lisa_alignment_steps, recipe.lisa_finetune_steps,
            recipe.mode) == ("lisa", 1.0, 100, 900, None)
    with pytest.raises(UserError, match="--alignment-data: Lisa needs"):
        LisaTrainer(model=with_lora(tiny_llama()), args=AttackConfig(output_dir="x", use_cpu=True),
                    train_dataset=token_rows(2), data_collator=CausalCollator(0))


def test_cli_attack_with_lisa(tiny_model_dir, align_files, tmp_path, capsys):
    align, _ = align_files
    data = write_jsonl(tmp_path / "attack.jsonl", [{"instruction": f"Q {i}?", "output": f"A {i}."} for i in range(4)])
    argv = ["attack", "--model", str(tiny_model_dir), "--data", str(data), "--output", str(tmp_path / "out"),
            "--max-steps", "3", "--per-device-train-batch-size", "2", "--max-length", "64", "--use-cpu",
            "--disable-tqdm", "true", "--defense", "lisa", "--lisa-alignment-steps", "1", "--lisa-finetune-steps",
            "1"]
    assert main(argv + ["--alignment-data", str(align)]) == 0
    assert "defense lisa" in capsys.readouterr().out
    settings = json.loads((tmp_path / "out" / "tvaccine_attack.json").read_text())
    assert settings["defense"] == "lisa" and settings["alignment_data"] == str(align)
    assert settings["alignment_data_sha256"] and settings["config"]["lisa_finetune_steps"] == 1
    history = json.loads((tmp_path / "out" / "log_history.json").read_text())
    assert [h["lisa/phase"] for h in history if "lisa/phase" in h] == [ALIGNMENT, FINETUNE, ALIGNMENT]

    assert main(argv[:-6] + ["--output", str(tmp_path / "o2"), "--defense", "lisa"]) == 2
    assert "--alignment-data: --defense lisa needs" in capsys.readouterr().err
    assert main(argv + ["--alignment-data", str(align), "--output", str(tmp_path / "o3"), "--lisa-rho", "-1"]) == 2
    assert "lisa_rho: must be non-negative" in capsys.readouterr().err


def test_pipeline_hash_follows_defense_and_alignment_data(tmp_path, monkeypatch):
    import tvaccine.attack.run
    from tvaccine.pipeline import run_attack

    calls = []

    class Run:
        summary = {"steps": 1, "mode": "fresh", "defense": "none"}

    def fake_attack(model, folder, cfg, **kw):
        calls.append((cfg.defense, kw["data"].alignment_data))
        return Run()

    monkeypatch.setattr(tvaccine.attack.run, "attack", fake_attack)
    a1 = write_jsonl(tmp_path / "a1.jsonl", [{"instruction": "x", "output": "no"}])
    a2 = write_jsonl(tmp_path / "a2.jsonl", [{"instruction": "y", "output": "no"}])

    def folder(**attack):
        return run_attack({"model": "m", "attack": {"data": "d.jsonl", **attack}}, tmp_path, None)["dir"]

    plain = folder()
    assert folder(defense="none", alignment_data=str(a1)) == plain  # undefended stages keep their folder
    lisa1 = folder(defense="lisa", alignment_data=str(a1))
    assert lisa1 != plain and folder(defense="lisa", alignment_data=str(a2)) != lisa1
    assert folder(settings={"defense": "lisa"}, alignment_data=str(a1)) == lisa1
    assert calls == [("none", None), ("none", None), ("lisa", str(a1)), ("lisa", str(a2)), ("lisa", str(a1))]
