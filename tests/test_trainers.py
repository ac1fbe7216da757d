"""SFT, Vaccine and T-Vaccine trainers on a tiny random Llama with LoRA."""

import pytest
import torch

from tvaccine.data.tokenize import CausalCollator
from tvaccine.errors import UserError
from tvaccine.methods import METHODS, TVaccineConfig
from tvaccine.methods.tvaccine import LayerSchedule

from conftest import changed_layers, lora_by_layer, tiny_llama, token_rows, with_lora

N_LAYERS = 6


def make_trainer(method, tmp_path, model=None, **overrides):
    config_cls, trainer_cls = METHODS[method]
    settings = dict(output_dir=str(tmp_path), use_cpu=True, save_strategy="no", disable_tqdm=True,
                    learning_rate=1e-2, warmup_steps=0, lr_scheduler_type="constant",
                    per_device_train_batch_size=2, max_steps=1, logging_steps=1, lora_dropout=0.0)
    settings.update(overrides)
    args = config_cls(**settings)
    kwargs = {"harmful_dataset": token_rows(3, seed=9)} if args.needs_harmful_data() else {}
    model = model if model is not None else with_lora(tiny_llama(N_LAYERS))
    trainer = trainer_cls(model=model, args=args, train_dataset=token_rows(8), data_collator=CausalCollator(0),
                          **kwargs)
    trainer.current_gradient_accumulation_steps = 1  # set by train(); tests also call training_step directly
    return trainer


def active_history(trainer):
    return [(h["step"], h["tvaccine/active_layers"]) for h in trainer.state.log_history
            if "tvaccine/active_layers" in h]


def test_tvaccine_step_changes_only_the_active_layers(tmp_path):
    """The paper's text: inactive layers freeze all their LoRA."""
    trainer = make_trainer("tvaccine", tmp_path, num_active_layers=2, freeze_scope="layer")
    before = lora_by_layer(trainer.model)
    trainer.train()
    [(_, active)] = active_history(trainer)
    assert changed_layers(before, trainer.model) == set(active)
    # the probabilities are logged for plotting
    probs = [h["tvaccine/layer_probs"] for h in trainer.state.log_history if "tvaccine/layer_probs" in h]
    assert len(probs) == 1 and len(probs[0]) == N_LAYERS and sum(probs[0]) == pytest.approx(1.0)


def test_attention_freeze_scope_keeps_every_mlp_trainable(tmp_path):
    """The original code's behaviour, our default: inactive layers freeze only their attention LoRA."""
    trainer = make_trainer("tvaccine", tmp_path, num_active_layers=2)
    assert trainer.args.freeze_scope == "attention"
    before = lora_by_layer(trainer.model)
    trainer.train()
    [(_, active)] = active_history(trainer)
    assert changed_layers(before, trainer.model, "self_attn") == set(active)
    assert changed_layers(before, trainer.model, "mlp") == set(range(N_LAYERS))


def test_vaccine_step_changes_every_layer(tmp_path):
    trainer = make_trainer("vaccine", tmp_path)
    before = lora_by_layer(trainer.model)
    trainer.train()
    assert changed_layers(before, trainer.model) == set(range(N_LAYERS))


def test_perturbation_has_norm_rho_over_the_active_layers(tmp_path):
    trainer = make_trainer("tvaccine", tmp_path, num_active_layers=3, rho=2.5)
    seen = []
    original = trainer.perturbation

    def spy(model, inputs, layers):
        eps = original(model, inputs, layers)
        seen.append((list(layers), eps))
        return eps

    trainer.perturbation = spy
    trainer.train()
    [(layers, eps)] = seen
    assert layers == active_history(trainer)[0][1] and len(eps) == 3
    assert torch.sqrt(sum(e.pow(2).sum() for e in eps)).item() == pytest.approx(2.5, rel=1e-5)


@pytest.mark.parametrize("scope", ["attention", "layer"])
def test_rho_zero_is_exactly_an_sft_step_on_the_same_trainable_set(tmp_path, scope):
    tv = make_trainer("tvaccine", tmp_path / "tv", num_active_layers=2, rho=0.0, freeze_scope=scope)
    tv.train()
    [(_, active)] = active_history(tv)

    model = with_lora(tiny_llama(N_LAYERS))  # same seeds: identical start
    for name, p in model.named_parameters():
        inactive = "lora_" in name and int(name.split(".layers.")[1].split(".")[0]) not in active
        if inactive and (scope == "layer" or "self_attn" in name):
            p.requires_grad_(False)
    sft = make_trainer("sft", tmp_path / "sft", model=model)
    sft.train()
    tv_params = dict(tv.model.named_parameters())
    for name, p in sft.model.named_parameters():
        assert torch.equal(p, tv_params[name]), name


def _grads_after_step(tmp_path, checkpoint_inactive, method="tvaccine", **kw):
    trainer = make_trainer(method, tmp_path, num_active_layers=2, rho=2.0, checkpoint_inactive=checkpoint_inactive,
                           **kw)
    batch = CausalCollator(0)(token_rows(2, seed=3))
    trainer.training_step(trainer.model, batch)
    return {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}, trainer


@pytest.mark.parametrize("scope", ["attention", "layer"])
def test_checkpointing_the_inactive_layers_does_not_change_the_gradients(tmp_path, scope):
    plain, _ = _grads_after_step(tmp_path / "a", False, freeze_scope=scope)
    ckpt, trainer = _grads_after_step(tmp_path / "b", True, freeze_scope=scope)
    assert plain.keys() == ckpt.keys() and plain
    for name in plain:
        assert torch.allclose(plain[name], ckpt[name], atol=1e-6, rtol=1e-5), name
    active = set(trainer.schedule.active)
    flags = [layer.gradient_checkpointing for layer in trainer.decoder.layers]
    assert flags == [i not in active for i in range(N_LAYERS)]


def test_perturbation_survives_recomputation_of_checkpointed_layers(tmp_path):
    """Vaccine with every layer checkpointed: ε must still be there when backward recomputes the layers."""
    def grads(checkpointing):
        trainer = make_trainer("vaccine", tmp_path, rho=2.0)
        if checkpointing:
            trainer.model.get_base_model().activation_checkpointing_enable({"use_reentrant": False})
        batch = CausalCollator(0)(token_rows(2, seed=3))
        trainer.training_step(trainer.model, batch)
        return {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}

    plain, ckpt = grads(False), grads(True)
    for name in plain:
        assert torch.allclose(plain[name], ckpt[name], atol=1e-6, rtol=1e-5), name


def test_hooks_are_gone_after_a_step_and_after_an_exception(tmp_path):
    trainer = make_trainer("tvaccine", tmp_path, num_active_layers=2)
    batch = CausalCollator(0)(token_rows(2))
    count = lambda: sum(len(m._forward_hooks) for m in trainer.decoder.attentions)  # noqa: E731
    trainer.training_step(trainer.model, batch)
    assert count() == 0

    calls = []

    def fail_in_pass_two(module, args):
        calls.append(1)
        if len(calls) == 2:  # pass 1 is the first forward of the top layer, pass 2 the second
            raise RuntimeError("fault inside pass 2")

    handle = trainer.decoder.layers[-1].register_forward_pre_hook(fail_in_pass_two)
    trainer.state.global_step = 1  # no importance pass this time
    with pytest.raises(RuntimeError, match="fault inside pass 2"):
        trainer.training_step(trainer.model, batch)
    handle.remove()
    assert count() == 0


def test_schedule_follows_optimizer_steps_under_gradient_accumulation(tmp_path):
    trainer = make_trainer("tvaccine", tmp_path, num_active_layers=2, max_steps=6, gradient_accumulation_steps=2,
                           layer_resample_steps=2, importance_update_steps=3)
    used = []
    original_importance, original_layers = trainer.layer_importance, trainer.perturbed_layers
    importance_steps = []
    trainer.layer_importance = lambda m: importance_steps.append(trainer.state.global_step) or original_importance(m)
    trainer.perturbed_layers = lambda: used.append((trainer.state.global_step, original_layers())) or used[-1][1]
    trainer.train()
    assert importance_steps == [0, 3]
    history = active_history(trainer)
    assert [s for s, _ in history] == [0, 2, 4]
    assert len(used) == 12  # 6 optimizer steps × 2 micro-steps
    by_step = {}
    for step, layers in used:
        by_step.setdefault(step, []).append(layers)
    for step, draws in by_step.items():
        expected = [layers for s, layers in history if s <= step][-1]
        assert draws == [expected, expected], step


def test_neighbor_rule_keeps_layer_below_each_active_one_uncheckpointed(tmp_path):
    model = with_lora(tiny_llama(28, hidden=16))
    trainer = make_trainer("tvaccine", tmp_path, model=model, num_active_layers=3, neighbor_uncheckpointed=True)
    trainer._activate([5, 6, 20])
    flags = [layer.gradient_checkpointing for layer in trainer.decoder.layers]
    assert [i for i, f in enumerate(flags) if not f] == [4, 5, 6, 19, 20]


def _train_with_active(tmp_path, monkeypatch, active, **overrides):
    """One optimizer step of T-Vaccine with the drawn layers forced to ``active``; LoRA before and the trainer."""
    monkeypatch.setattr("tvaccine.methods.tvaccine.sample_layers", lambda probs, k, generator: list(active))
    trainer = make_trainer("tvaccine", tmp_path, num_active_layers=len(active), **overrides)
    before = lora_by_layer(trainer.model)
    trainer.train()
    assert active_history(trainer) == [(0, list(active))]
    return before, trainer


def test_reentrant_gradient_gap_freezes_everything_below_the_lowest_active_layer(tmp_path, monkeypatch):
    before, trainer = _train_with_active(tmp_path, monkeypatch, [2, 4], reentrant_gradient_gap=True)
    below = [n for n in before if int(n.split(".layers.")[1].split(".")[0]) < 2]
    assert below and all(torch.equal(before[n], trainer.model.get_parameter(n)) for n in below)
    assert changed_layers(before, trainer.model, "mlp") == {2, 3, 4, 5}  # inactive 3 and 5 above it still train
    assert changed_layers(before, trainer.model, "self_attn") == {2, 4}


def test_without_the_gap_the_mlp_below_the_lowest_active_layer_trains(tmp_path, monkeypatch):
    before, trainer = _train_with_active(tmp_path, monkeypatch, [2, 4])
    assert changed_layers(before, trainer.model, "mlp") == set(range(N_LAYERS))
    assert changed_layers(before, trainer.model, "self_attn") == {2, 4}


def test_reentrant_gradient_gap_starts_at_the_lowest_uncheckpointed_layer(tmp_path):
    """With the neighbour rule, layer i-1 of the lowest active i is un-checkpointed and so still trains."""
    model = with_lora(tiny_llama(28, hidden=16))
    trainer = make_trainer("tvaccine", tmp_path, model=model, num_active_layers=3, neighbor_uncheckpointed=True,
                           reentrant_gradient_gap=True)
    trainer._activate([5, 6, 20])
    trains = {int(n.split(".layers.")[1].split(".")[0]) for n, p in trainer.model.named_parameters()
              if p.requires_grad}
    assert trains == set(range(4, 28))


def test_schedule_state_round_trips():
    a = LayerSchedule(torch.Generator().manual_seed(3), probs=[0.5, 0.5], active=[1], step=7, probe_epoch=2,
                      probe_pos=1)
    torch.rand(5, generator=a.generator)
    b = LayerSchedule(torch.Generator().manual_seed(0))
    b.load_state_dict(a.state_dict())
    assert (b.probs, b.active, b.step, b.probe_epoch, b.probe_pos) == ([0.5, 0.5], [1], 7, 2, 1)
    assert torch.equal(torch.rand(4, generator=a.generator), torch.rand(4, generator=b.generator))


def test_layer_count_and_probe_set_are_checked(tmp_path):
    with pytest.raises(UserError, match="num_active_layers: 7 is more than the model's 6 layers"):
        make_trainer("tvaccine", tmp_path, num_active_layers=7)
    config_cls, trainer_cls = METHODS["tvaccine"]
    args = TVaccineConfig(output_dir=str(tmp_path), use_cpu=True, num_active_layers=2)
    with pytest.raises(UserError, match="probe set"):
        trainer_cls(model=with_lora(tiny_llama()), args=args, train_dataset=token_rows(4),
                    data_collator=CausalCollator(0))


@pytest.mark.parametrize("field,value,match", [
    ("rho", -1.0, "rho: must be non-negative"),
    ("num_active_layers", 0, "num_active_layers: must be at least 1"),
    ("layer_resample_steps", 0, "layer_resample_steps: must be at least 1"),
    ("importance_update_steps", 0, "importance_update_steps"),
    ("freeze_scope", "mlp", "freeze_scope: must be layer or attention"),
    ("layer_sampling", "random", "layer_sampling"),
    ("lora_dropout", 1.5, "lora_dropout"),
    ("lora_r", 0, "lora_r"),
    ("gradient_checkpointing", True, "gradient_checkpointing"),
    ({"reentrant_gradient_gap": True, "freeze_scope": "layer"}, None,
     "reentrant_gradient_gap: needs freeze_scope: attention"),
    ({"reentrant_gradient_gap": True, "checkpoint_inactive": False}, None,
     "reentrant_gradient_gap: needs checkpoint_inactive: true"),
])
def test_bad_settings_are_rejected_by_name(tmp_path, field, value, match):
    settings = field if isinstance(field, dict) else {field: value}
    with pytest.raises(UserError, match=match):
        TVaccineConfig(output_dir=str(tmp_path), **settings)


def test_paper_defaults():
    c = TVaccineConfig(output_dir="x")
    assert (c.rho, c.num_active_layers, c.layer_resample_steps, c.importance_update_steps) == (3.0, 8, 20, 200)
    assert (c.lora_r, c.lora_alpha, c.lora_dropout, c.learning_rate, c.weight_decay) == (8, 4, 0.1, 1e-3, 0.1)
    assert (c.num_train_epochs, c.per_device_train_batch_size, c.max_length, c.probe_batch_size) == (20, 10, 200, 1)
    # the freeze scope of the authors' code, which produced the paper's results; its other quirks off
    assert (c.freeze_scope, c.neighbor_uncheckpointed, c.reentrant_gradient_gap) == ("attention", False, False)
    assert c.lr_scheduler_type == "cosine"


@pytest.mark.parametrize("recipe,scope,neighbor,gap,alpha", [
    ("tvaccine", "attention", False, False, 4),
    ("tvaccine-layer", "layer", False, False, 4),
    ("tvaccine-original", "attention", True, True, 1),
])
def test_tvaccine_recipes_are_the_documented_variants(recipe, scope, neighbor, gap, alpha):
    from pathlib import Path

    from tvaccine.commands.align import resolve_config

    c = resolve_config("tvaccine", str(Path(__file__).resolve().parents[1] / "configs" / f"{recipe}.yaml"), [])
    assert (c.freeze_scope, c.neighbor_uncheckpointed, c.reentrant_gradient_gap, c.lora_alpha) == \
        (scope, neighbor, gap, alpha)
    assert (c.rho, c.num_active_layers, c.layer_resample_steps, c.importance_update_steps) == (3.0, 8, 20, 200)


def test_loss_on_target_positions_equals_the_models_own_loss(tmp_path):
    """The loss is computed on target positions only; value and gradients match the model's full-logits loss."""
    trainer = make_trainer("sft", tmp_path)
    batch = CausalCollator(0)(token_rows(3, seed=4))
    batch["labels"][0, :9] = -100  # rows with different numbers of targets
    model = trainer.model
    ours = trainer.compute_loss(model, batch)
    ours_grads = torch.autograd.grad(ours, [p for p in model.parameters() if p.requires_grad])
    full = model(**batch).loss
    full_grads = torch.autograd.grad(full, [p for p in model.parameters() if p.requires_grad])
    assert torch.allclose(ours, full, rtol=1e-6, atol=1e-7)
    for a, b in zip(ours_grads, full_grads):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("checkpoint_inactive", [True, False])
def test_importance_equals_a_plain_pass_with_every_parameter_trainable(tmp_path, checkpoint_inactive):
    """The importance pass runs frozen and (with checkpoint_inactive) fully checkpointed to save memory; with LoRA
    dropout on, P and the RNG stream after it equal those of an uncheckpointed pass through the trainable model."""
    from tvaccine.importance import grad_norms, importance_probs
    from tvaccine.perturb import capture_outputs

    trainer = make_trainer("tvaccine", tmp_path, num_active_layers=2, lora_dropout=0.3,
                           checkpoint_inactive=checkpoint_inactive)
    trainer.model.train()
    trainer._activate([1, 4])  # as at a later step: some attention LoRA frozen, the other layers checkpointed
    torch.manual_seed(7)
    probs = trainer.layer_importance(trainer.model)
    after = torch.rand(3)
    if checkpoint_inactive:  # the layers checkpointed before the pass are checkpointed after it
        flags = [layer.gradient_checkpointing for layer in trainer.decoder.layers]
        assert flags == [i not in (1, 4) for i in range(N_LAYERS)]

    trainer.schedule.probe_epoch = trainer.schedule.probe_pos = 0  # the same probe batch again
    batch = trainer._prepare_inputs(trainer._next_probe_batch())
    trainer._set_checkpointed(set())
    torch.manual_seed(7)
    with capture_outputs(trainer.decoder.attentions) as captured:
        loss = trainer.compute_loss(trainer.model, batch)
    reference = importance_probs(grad_norms(torch.autograd.grad(loss, list(captured))))
    assert torch.allclose(probs, reference, atol=1e-7, rtol=1e-6)
    assert torch.equal(torch.rand(3), after)  # the dropout draws consumed the same random numbers
    assert probs.max() > probs.min()


def test_pin_memory_is_off_without_a_gpu(tmp_path):
    """Pinned memory only speeds up copies to a GPU; left on, the Trainer warns on every CPU run."""
    config = METHODS["sft"][0](output_dir=str(tmp_path), use_cpu=True)
    assert config.dataloader_pin_memory is False
