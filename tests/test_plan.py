"""The memory planner against exact saved-tensor measurements, its named configs, and its input errors."""

import json

import pytest

from tvaccine.cli import main
from tvaccine.data.tokenize import CausalCollator
from tvaccine.errors import UserError
from tvaccine.methods import METHODS
from tvaccine.plan import NAMED, ModelShape, plan, plan_named, resolve_shape
from tvaccine.profiling import measure_step

from conftest import tiny_llama, token_rows, with_lora

LAYERS, HIDDEN, VOCAB = 6, 64, 1000


def measured(method, tmp_path, dropout, batch=3, length=32, prompt=8, **overrides):
    model = with_lora(tiny_llama(LAYERS, vocab=VOCAB, hidden=HIDDEN), dropout=dropout, r=8)
    config_cls, trainer_cls = METHODS[method]
    args = config_cls(output_dir=str(tmp_path), use_cpu=True, save_strategy="no", disable_tqdm=True,
                      per_device_train_batch_size=batch, max_steps=1, lora_dropout=dropout, lora_r=8, **overrides)
    rows = token_rows(batch, length=length, prompt=prompt, vocab=VOCAB)
    kwargs = {"harmful_dataset": token_rows(1, length=length, vocab=VOCAB, seed=5)} if method == "tvaccine" else {}
    trainer = trainer_cls(model=model, args=args, train_dataset=rows, data_collator=CausalCollator(0), **kwargs)
    trainer.current_gradient_accumulation_steps = 1
    result = measure_step(trainer, trainer._prepare_inputs(CausalCollator(0)(rows)))
    active = list(trainer.schedule.active) if method == "tvaccine" else None
    return result, active, (length - prompt) / (length - 1)


@pytest.mark.parametrize("dropout", [0.0, 0.1])
@pytest.mark.parametrize("method", ["sft", "vaccine", "tvaccine"])
def test_planner_matches_measured_saved_bytes(tmp_path, method, dropout):
    extra = {"num_active_layers": 2} if method == "tvaccine" else {}
    got, active, fraction = measured(method, tmp_path, dropout, **extra)
    shape = ModelShape.from_config(tiny_llama(LAYERS, vocab=VOCAB, hidden=HIDDEN).config.to_dict())
    p = plan(shape, method, batch=3, seq=32, dtype="float32", lora_r=8, lora_dropout=dropout,
             num_active_layers=2, target_fraction=fraction, active_layers=active)
    for name, value in p.saved_by_pass.items():
        assert value == pytest.approx(got[name], rel=0.10), (name, value, got[name])
    assert p.saved_peak == pytest.approx(got["peak"], rel=0.10)


def test_tvaccine_saves_less_than_vaccine_on_a_tiny_model(tmp_path):
    tv, _, _ = measured("tvaccine", tmp_path / "t", 0.1, num_active_layers=2)
    vac, _, _ = measured("vaccine", tmp_path / "v", 0.1)
    assert tv["peak"] < 0.6 * vac["peak"]
    assert vac["pass1"] < vac["pass2"]  # pass 1 saves nothing that only weight gradients need


def test_named_configs_and_the_7b_figures():
    assert set(NAMED) >= {"llama-2-7b", "llama-3-8b", "qwen2-7b", "smollm2-135m"}
    assert resolve_shape("llama-2-7b").params() == pytest.approx(6.74e9, rel=0.01)
    assert resolve_shape("smollm2-135m").params() == pytest.approx(134.5e6, rel=0.01)
    plans = {m: plan_named("llama-2-7b", m, batch=10, seq=200, dtype="bf16") for m in ("sft", "vaccine", "tvaccine")}
    assert plans["tvaccine"].total < plans["sft"].total < plans["vaccine"].total
    assert plans["tvaccine"].components["activations"] < 0.5 * plans["vaccine"].components["activations"]


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
        plan_named("llama-2-7b", "booster", batch=1, seq=8)
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
    assert "activations" in out and "RTX 4090" in out
    assert main(["plan", "--model", "llama-2-7b", "--method", "vaccine", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["method"] == "vaccine" and data["total"] == sum(data["components"].values())
    assert main(["plan", "--model", "nowhere/../x/", "--method", "sft"]) == 2
