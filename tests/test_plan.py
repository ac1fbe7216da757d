"""The memory planner against exact saved-tensor measurements of every method, --fit, its named configs, and its
input errors."""

import json

import pytest
import torch

from tvaccine.cli import main
from tvaccine.data.tokenize import CausalCollator
from tvaccine.errors import UserError
from tvaccine.layers import unwrap
from tvaccine.methods import METHODS as ALIGN_METHODS
from tvaccine.methods.repnoise import HARMFUL, PairedCollator
from tvaccine.plan import (FIT_SEQS, METHODS, NAMED, NOTES, SAMPLED, ModelShape, largest_batch, parse_size,
                           plan, plan_named, resolve_shape)
from tvaccine.profiling import measure_step

from conftest import tiny_llama, token_rows, with_lora

LAYERS, HIDDEN, VOCAB = 6, 64, 1000


def measured(method, tmp_path, dropout, dtype=torch.float32, batch=3, length=32, prompt=8, **overrides):
    """tvaccine.profiling's figures for one step of ``method`` (``*_gc``: the Trainer's activation checkpointing)."""
    name = method.removesuffix("_gc")
    model = with_lora(tiny_llama(LAYERS, vocab=VOCAB, hidden=HIDDEN).to(dtype), dropout=dropout, r=8)
    if method.endswith("_gc"):
        unwrap(model).activation_checkpointing_enable()  # what Trainer.train() calls for activation_checkpointing
    config_cls, trainer_cls = ALIGN_METHODS[name]
    args = config_cls(output_dir=str(tmp_path), use_cpu=True, save_strategy="no", disable_tqdm=True,
                      per_device_train_batch_size=batch, max_steps=1, lora_dropout=dropout, lora_r=8, **overrides)
    rows = token_rows(batch, length=length, prompt=prompt, vocab=VOCAB)
    harmful = token_rows(batch, length=length, prompt=prompt, vocab=VOCAB, seed=5)
    collator, kwargs = CausalCollator(0), {}
    if name == "repnoise":  # every row paired with a harmful answer
        rows = [{**r, **{HARMFUL + k: v for k, v in h.items()}} for r, h in zip(rows, harmful)]
        collator = PairedCollator(0)
    elif args.needs_harmful_data():
        kwargs["harmful_dataset"] = harmful
    if name == "tar":
        kwargs["tr_dataset"] = [{"chosen": r, "rejected": h} for r, h in zip(rows, harmful)]
    trainer = trainer_cls(model=model, args=args, train_dataset=rows, data_collator=collator, **kwargs)
    trainer.current_gradient_accumulation_steps = 1
    inputs = trainer._prepare_inputs(collator(rows))
    result = measure_step(trainer, inputs)
    if result.get("importance"):
        # Under the meter the graph below layer 0's captured output, which the importance pass's backward never
        # runs, stays alive (the meter's holders of saved outputs close a reference cycle through their grad_fn)
        # and would count in the passes after it; the same step again (no importance pass) measures them alone.
        result = {**measure_step(trainer, inputs), "importance": result["importance"]}
    active = list(trainer.schedule.active) if name in SAMPLED else None
    return result, active, (length - prompt) / (length - 1)


def as_profiled(p) -> dict:
    """The planner's passes as the profiler splits a step: pass1 and importance apart, the rest within pass2."""
    out = {}
    for name, value in p.saved_by_pass.items():
        key = name if name in ("pass1", "importance") else "pass2"
        out[key] = max(out.get(key, 0), value)
    return out


CASES = [(m, d, torch.float32) for m in METHODS for d in (0.0, 0.1)] + [(m, 0.1, torch.bfloat16) for m in METHODS]


@pytest.mark.parametrize("method,dropout,dtype", CASES, ids=lambda v: str(v).removeprefix("torch."))
def test_planner_matches_measured_saved_bytes(tmp_path, method, dropout, dtype):
    extra = {"num_active_layers": 2} if method in SAMPLED else {}
    got, active, fraction = measured(method, tmp_path, dropout, dtype, **extra)
    shape = ModelShape.from_config(tiny_llama(LAYERS, vocab=VOCAB, hidden=HIDDEN).config.to_dict())
    p = plan(shape, method, batch=3, seq=32, dtype=str(dtype).removeprefix("torch."), lora_r=8, lora_dropout=dropout,
             num_active_layers=2, target_fraction=fraction, active_layers=active)
    predicted = as_profiled(p)
    for name, value in predicted.items():
        assert value == pytest.approx(got[name], rel=0.10), (name, value, got[name])
    step = max(v for k, v in predicted.items() if k != "importance")  # the profiler's peak leaves importance out
    assert step == pytest.approx(got["peak"], rel=0.10)


def test_every_method_is_planned_and_described():
    assert set(METHODS) == set(ALIGN_METHODS) | {"sft_gc", "vaccine_gc"}
    assert set(NOTES) == set(METHODS)


def test_tvaccine_saves_less_than_vaccine_on_a_tiny_model(tmp_path):
    tv, _, _ = measured("tvaccine", tmp_path / "t", 0.1, num_active_layers=2)
    vac, _, _ = measured("vaccine", tmp_path / "v", 0.1)
    assert tv["peak"] < 0.6 * vac["peak"]
    assert vac["pass1"] < vac["pass2"]  # pass 1 saves nothing that only weight gradients need


def test_named_configs_and_the_7b_figures():
    assert set(NAMED) >= {"llama-2-7b", "llama-3-8b", "qwen2-7b", "smollm2-135m"}
    assert resolve_shape("llama-2-7b").params() == pytest.approx(6.74e9, rel=0.01)
    assert resolve_shape("smollm2-135m").params() == pytest.approx(134.5e6, rel=0.01)
    plans = {m: plan_named("llama-2-7b", m, batch=10, seq=200, dtype="bf16") for m in METHODS}
    total = {m: p.total for m, p in plans.items()}
    assert total["tvaccine"] < total["sft"] < total["vaccine"]
    assert plans["tvaccine"].components["activations"] < 0.5 * plans["vaccine"].components["activations"]
    # where the code runs the same passes, the planner says the same
    assert total["tvaccine-topk"] == total["tvaccine"] and total["tvaccine-uniform"] <= total["tvaccine"]
    assert total["random-vaccine"] == total["vaccine"]  # its noise is the size of Vaccine's ε
    assert total["sft_gc"] < total["vaccine_gc"] < total["tvaccine"] < total["sft"]
    assert total["booster"] == total["tar-tvaccine"] > total["sft"]
    assert total["repnoise"] > 1.5 * total["sft"] and total["tar"] > 1.5 * total["sft"]


def test_fit_sizes_parse_and_bad_ones_name_the_option():
    assert parse_size("24GiB") == 24 * 2**30
    assert parse_size(" 24 gb ") == 24 * 10**9
    assert parse_size("1.5GiB") == 3 * 2**29
    assert parse_size("512MiB") == 2**29 and parse_size("80000MB") == 8 * 10**10
    for bad in ("24", "24 GiB/s", "GiB", "24TiB", "abc", "-1GB", "0GiB", ""):
        with pytest.raises(UserError, match="--fit: '"):
            parse_size(bad)


@pytest.mark.parametrize("method", ["sft", "tvaccine", "repnoise", "tar", "vaccine_gc"])
def test_largest_batch_fits_and_one_more_does_not(method):
    shape = resolve_shape("llama-2-7b")
    for gib in (24, 48, 80):
        budget = gib * 2**30
        previous = None
        for seq in FIT_SEQS:
            batch = largest_batch(shape, method, seq, budget)
            if batch:
                assert plan(shape, method, batch, seq).total <= budget
            assert plan(shape, method, batch + 1, seq).total > budget
            assert previous is None or batch <= previous  # longer rows: no more of them
            previous = batch
        assert largest_batch(shape, method, 512, budget) <= largest_batch(shape, method, 512, 2 * budget)


def test_local_config_folder_and_bad_input(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(NAMED["llama-2-7b"]))
    assert resolve_shape(str(tmp_path)) == resolve_shape("llama-2-7b")
    with pytest.raises(UserError, match="no such model folder"):
        resolve_shape(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no config.json"):
        resolve_shape(str(tmp_path / "empty"))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text('{"hidden_size": 8}')
    with pytest.raises(UserError, match="missing field 'num_attention_heads'"):
        resolve_shape(str(tmp_path / "bad"))
    with pytest.raises(UserError, match="method: unknown"):
        plan_named("llama-2-7b", "lisa", batch=1, seq=8)
    with pytest.raises(UserError, match="dtype: unknown"):
        plan_named("llama-2-7b", "sft", batch=1, seq=8, dtype="int3")


def test_hub_id_offline_gives_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="could not load 'nobody/no-such-model'"):
        resolve_shape("nobody/no-such-model")


def test_plan_command_table_and_json(capsys):
    assert main(["plan", "--model", "llama-2-7b", "--method", "tvaccine", "--batch", "10", "--seq", "200",
                 "--dtype", "bf16"]) == 0
    out = capsys.readouterr().out
    assert "activations" in out and "RTX 4090" in out and "basis:" in out
    assert main(["plan", "--model", "llama-2-7b", "--method", "vaccine", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["method"] == "vaccine" and data["total"] == sum(data["components"].values())
    assert main(["plan", "--model", "llama-2-7b", "--method", "all"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert all(any(line.startswith(m + " ") for line in lines) for m in METHODS)
    assert main(["plan", "--model", "nowhere/../x/", "--method", "sft"]) == 2


def test_plan_command_fit(capsys):
    assert main(["plan", "--model", "llama-2-7b", "--method", "all", "--fit", "24GiB", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["budget"] == 24 * 2**30 and data["seqs"] == list(FIT_SEQS)
    assert [(r["method"], r["seq"]) for r in data["rows"]] == [(m, s) for m in METHODS for s in FIT_SEQS]
    shape = resolve_shape("llama-2-7b")
    for row in data["rows"]:
        assert row["batch"] == largest_batch(shape, row["method"], row["seq"], data["budget"])
        assert (row["peak"] is None) == (row["batch"] == 0)
    assert main(["plan", "--model", "llama-2-7b", "--method", "tvaccine", "--fit", "24GiB", "--seq", "512"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[1].split() == ["method", "seq", "512"]
    assert table[2].split() == ["tvaccine", str(largest_batch(shape, "tvaccine", 512, 24 * 2**30))]
    assert main(["plan", "--model", "llama-2-7b", "--method", "sft", "--fit", "24"]) == 2
    assert "--fit: '24'" in capsys.readouterr().err
