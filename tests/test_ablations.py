"""T-Vaccine's ablations: random perturbation, uniform and top-S layer choice, and no perturbation."""

import pytest
import torch

from tvaccine.errors import UserError
from tvaccine.methods import METHODS
from tvaccine.perturb import add_gaussian_to_outputs

from conftest import changed_layers, lora_by_layer, tiny_llama, with_lora
from test_trainers import N_LAYERS, active_history, make_trainer


def test_gaussian_noise_has_variance_rho_and_is_reused_within_scope():
    torch.manual_seed(0)
    layer = torch.nn.Linear(64, 64)
    x = torch.randn(512, 64)
    clean = layer(x)
    with add_gaussian_to_outputs([layer], std=3.0 ** 0.5, generator=torch.Generator().manual_seed(1)):
        first, again = layer(x), layer(x)  # a recomputed layer must see the same noise
    noise = first - clean
    assert torch.equal(first, again)
    assert noise.var().item() == pytest.approx(3.0, rel=0.05) and abs(noise.mean().item()) < 0.05
    with add_gaussian_to_outputs([layer], std=3.0 ** 0.5, generator=torch.Generator().manual_seed(2)):
        assert not torch.equal(layer(x), first)  # a new scope draws new noise
    assert torch.equal(layer(x), clean)  # the hook is gone


def test_random_vaccine_trains_every_layer_and_with_zero_noise_is_sft(tmp_path):
    model = with_lora(tiny_llama(N_LAYERS))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    noisy = make_trainer("random-vaccine", tmp_path / "a", model=model, rho=3.0)
    before = lora_by_layer(noisy.model)
    noisy.train()
    assert changed_layers(before, noisy.model) == set(range(N_LAYERS))
    noisy_after = lora_by_layer(noisy.model)

    results = {}
    for method, rho in (("random-vaccine", 0.0), ("sft", None)):
        model.load_state_dict(state)
        extra = {"rho": rho} if rho is not None else {}
        trainer = make_trainer(method, tmp_path / method, model=model, **extra)
        trainer.train()
        results[method] = lora_by_layer(trainer.model)
    assert all(torch.equal(results["sft"][k], results["random-vaccine"][k]) for k in results["sft"])
    assert any(not torch.equal(results["sft"][k], noisy_after[k]) for k in noisy_after)


def test_random_vaccine_noise_is_the_same_on_resume(tmp_path):
    """The noise depends on (seed, step, micro-step) only, so a resumed run draws the same noise."""
    drawn = []
    for run in range(2):
        trainer = make_trainer("random-vaccine", tmp_path / str(run))
        trainer.state.global_step = 7
        outputs = []
        handle = trainer.decoder.attentions[0].register_forward_hook(lambda m, a, o: outputs.append(o[0].detach()))
        batch = trainer.data_collator(trainer.train_dataset[:2])
        trainer.training_step(trainer.model, batch)
        handle.remove()
        drawn.append(outputs[0])
    assert torch.equal(drawn[0], drawn[1])


def test_uniform_ablation_needs_no_probe_and_draws_uniformly(tmp_path):
    config_cls, trainer_cls = METHODS["tvaccine-uniform"]
    assert not config_cls(output_dir=str(tmp_path)).needs_harmful_data()
    trainer = make_trainer("tvaccine-uniform", tmp_path, num_active_layers=2)
    trainer.train()
    [probs] = [h["tvaccine/layer_probs"] for h in trainer.state.log_history if "tvaccine/layer_probs" in h]
    assert probs == pytest.approx([1 / N_LAYERS] * N_LAYERS)


def test_topk_ablation_trains_the_most_important_layers(tmp_path):
    trainer = make_trainer("tvaccine-topk", tmp_path, num_active_layers=2)
    before = lora_by_layer(trainer.model)
    trainer.train()
    [probs] = [h["tvaccine/layer_probs"] for h in trainer.state.log_history if "tvaccine/layer_probs" in h]
    [(_, active)] = active_history(trainer)
    assert set(active) == set(torch.tensor(probs).topk(2).indices.tolist())
    # the default freeze scope (attention): attention LoRA of the active layers only, MLP LoRA of every layer
    assert changed_layers(before, trainer.model, "self_attn") == set(active)
    assert changed_layers(before, trainer.model, "mlp") == set(range(N_LAYERS))


def test_no_perturbation_ablation_is_tvaccine_at_rho_zero_without_pass_one(tmp_path):
    model = with_lora(tiny_llama(N_LAYERS))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    results, losses = {}, {}
    for method, extra in (("tvaccine-no-perturbation", {}), ("tvaccine", {"rho": 0.0})):
        model.load_state_dict(state)
        trainer = make_trainer(method, tmp_path / method, model=model, num_active_layers=2, **extra)
        calls = []
        original = trainer.compute_loss
        trainer.compute_loss = lambda *a, **k: calls.append(1) or original(*a, **k)
        trainer.train()
        results[method], losses[method] = lora_by_layer(trainer.model), len(calls)
    ref = results["tvaccine"]
    assert all(torch.equal(ref[k], results["tvaccine-no-perturbation"][k]) for k in ref)
    # importance probe + one pass, against importance probe + two passes
    assert losses["tvaccine-no-perturbation"] == losses["tvaccine"] - 1


@pytest.mark.parametrize("method,setting", [("tvaccine-uniform", {"layer_sampling": "importance"}),
                                            ("tvaccine-topk", {"layer_sampling": "uniform"}),
                                            ("tvaccine-no-perturbation", {"rho": 1.0}),
                                            ("random-vaccine", {"rho": -1.0})])
def test_ablation_configs_refuse_a_contradicting_setting(method, setting, tmp_path):
    config_cls, _ = METHODS[method]
    with pytest.raises(UserError, match=next(iter(setting))):
        config_cls(output_dir=str(tmp_path), **setting)
