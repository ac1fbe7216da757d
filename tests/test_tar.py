"""TAR and the T-Vaccine authors' TAR variant on a tiny random Llama with LoRA."""

import copy
import json
import math
from pathlib import Path

import pytest
import torch

from tvaccine.cli import main
from tvaccine.data.tokenize import CausalCollator
from tvaccine.errors import UserError
from tvaccine.methods import METHODS
from tvaccine.methods.tar import batch_rows, dpo_loss, sequence_logps, tr_weights

from conftest import lora_by_layer, tiny_llama, token_rows, with_lora

REPO = Path(__file__).resolve().parents[1]
COLLATE = CausalCollator(0)


def pairs(n=2, seed=5):
    """Refusal/harmful pairs that share their prompt (the first 4 tokens)."""
    chosen, rejected = token_rows(n, seed=seed), token_rows(n, seed=seed + 1)
    for c, r in zip(chosen, rejected):
        r["input_ids"][:4] = c["input_ids"][:4]
    return [{"chosen": c, "rejected": r} for c, r in zip(chosen, rejected)]


def make_trainer(method, tmp_path, model=None, harmful=None, tr=None, **overrides):
    config_cls, trainer_cls = METHODS[method]
    settings = dict(output_dir=str(tmp_path), use_cpu=True, save_strategy="no", disable_tqdm=True,
                    learning_rate=1e-2, warmup_steps=0, lr_scheduler_type="constant", per_device_train_batch_size=2,
                    max_steps=1, logging_steps=1, lora_dropout=0.0)
    settings.update(overrides)
    args = config_cls(**settings)
    kwargs = {}
    if method.startswith("tar"):
        kwargs["harmful_dataset"] = harmful or token_rows(2, seed=9)
    if method == "tar":
        kwargs["tr_dataset"] = tr or (pairs() if args.tr_loss == "dpo" else token_rows(2, seed=5))
    model = model if model is not None else with_lora(tiny_llama(4))
    trainer = trainer_cls(model=model, args=args, train_dataset=token_rows(8), data_collator=COLLATE, **kwargs)
    trainer.current_gradient_accumulation_steps = 1  # set by train(); tests also call training_step directly
    return trainer


def trainable(model):
    return [p for p in model.parameters() if p.requires_grad]


def grads_after_one_step(trainer, batch):
    trainer.model.zero_grad(set_to_none=True)
    trainer.training_step(trainer.model, batch)
    return [p.grad.clone() for p in trainable(trainer.model)]


# -- the attack is a sandbox ----------------------------------------------------------------------------------------

def test_inner_attack_moves_the_weights_and_is_fully_undone(tmp_path):
    """With a vanishing outer learning rate a TAR step leaves the model bit-identical, although the spy sees the
    simulated attack move the LoRA weights at every inner step."""
    trainer = make_trainer("tar", tmp_path, learning_rate=1e-30, inner_steps=3, adversary_lrs=[1e-2])
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    seen, original = [], trainer.tamper_resistance_loss

    def spy(model, batch):
        seen.append(lora_by_layer(model))
        return original(model, batch)

    trainer.tamper_resistance_loss = spy
    trainer.train()
    assert len(seen) == 3
    lora_before = lora_by_layer(trainer.model)
    for snapshot in seen:
        assert any(not torch.equal(snapshot[k], lora_before[k]) for k in snapshot)
    assert not all(torch.equal(seen[0][k], seen[1][k]) for k in seen[0])  # every inner step moves them on
    after = trainer.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_a_tar_step_changes_only_the_lora_weights(tmp_path):
    trainer = make_trainer("tar", tmp_path, tr_loss="entropy")
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    after = trainer.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all("lora_" in k for k in changed)
    assert {k for k in before if "lora_B" in k} <= changed


def test_attack_restores_weights_and_grads_after_an_exception(tmp_path):
    trainer = make_trainer("tar", tmp_path, adversary_lrs=[1e-2])
    model, batch = trainer.model, trainer._prepare_inputs(COLLATE(token_rows(2)))
    for p in trainable(model):
        p.grad = torch.full_like(p, 0.5)  # gradients accumulated by an earlier micro-step
    before = lora_by_layer(model)

    def boom(model, batch):
        raise RuntimeError("boom")

    trainer.tamper_resistance_loss = boom
    with pytest.raises(RuntimeError, match="boom"):
        trainer.training_step(model, batch)
    assert all(torch.equal(before[k], v) for k, v in lora_by_layer(model).items())
    assert all(torch.equal(p.grad, torch.full_like(p, 0.5)) for p in trainable(model))


@pytest.mark.parametrize("method", ["tar", "tar-tvaccine"])
def test_zero_tr_weight_is_exactly_sft_rng_and_optimizer_included(method, tmp_path):
    """tr_weight 0 gives SFT's weights after two steps with LoRA dropout on: the attack consumes none of the
    Trainer's random streams (dropout, data order) and leaves the outer optimizer alone. tr_weight > 0 differs."""
    model = with_lora(tiny_llama(4), dropout=0.1)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    results = {}
    for name, extra in (("sft", {}), ("zero", {"tr_weight": 0.0}), ("tar", {"tr_weight": 1.0})):
        model.load_state_dict(state)
        kind = "sft" if name == "sft" else method
        if kind == "tar":
            extra = {**extra, "adversary_lrs": [1e-2], "inner_steps": 2}
        trainer = make_trainer(kind, tmp_path / name, model=model, lora_dropout=0.1, max_steps=2, **extra)
        trainer.train()
        results[name] = lora_by_layer(trainer.model)
    assert all(torch.equal(results["sft"][k], results["zero"][k]) for k in results["sft"])
    assert any(not torch.equal(results["sft"][k], results["tar"][k]) for k in results["sft"])


# -- the TR gradient reaches the update, and is the right one --------------------------------------------------------

def full_row_logps(model, batch):
    """Σ log p(answer tokens) per row from the full logits (independent of the trainer's position selection)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
    labels = batch["labels"][:, 1:]
    mask = labels != -100
    logp = logits.log_softmax(-1).gather(-1, labels.clamp(min=0)[..., None])[..., 0]
    return (logp * mask).sum(-1)


def full_neg_entropy(model, batch):
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
    mask = batch["labels"][:, 1:] != -100
    p = logits.softmax(-1)
    return -(-(p * logits.log_softmax(-1)).sum(-1))[mask].mean()


@pytest.mark.parametrize("tr_loss", ["entropy", "dpo"])
def test_tr_term_is_tr_weight_times_the_hand_computed_tr_gradient(tr_loss, tmp_path):
    """One inner SGD step by hand: θ' = θ − η ∇CE(harmful; θ), g_TR = ∇L_TR(x_tr; θ'). The TAR gradient minus the
    SFT gradient on the same batch is tr_weight · g_TR."""
    lr, weight = 0.5, 0.7
    harmful = token_rows(2, seed=9)
    tr = pairs() if tr_loss == "dpo" else token_rows(2, seed=5)
    model = with_lora(tiny_llama(4))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    batch = COLLATE(token_rows(2, seed=3))

    sft = make_trainer("sft", tmp_path / "sft", model=model)
    g_sft = grads_after_one_step(sft, sft._prepare_inputs(batch))
    model.load_state_dict(state)
    tar = make_trainer("tar", tmp_path / "tar", model=model, harmful=harmful, tr=tr, tr_loss=tr_loss,
                       inner_steps=1, adversary_optimizer="sgd", adversary_lrs=[lr], tr_weight=weight,
                       dpo_beta=0.5)
    g_tar = grads_after_one_step(tar, tar._prepare_inputs(batch))

    model.load_state_dict(state)
    hand = copy.deepcopy(model)
    params = trainable(hand)
    adv = hand(**COLLATE(harmful)).loss
    with torch.no_grad():
        for p, g in zip(params, torch.autograd.grad(adv, params)):
            p -= lr * g
    if tr_loss == "entropy":
        loss = full_neg_entropy(hand, COLLATE(tr))
    else:
        both = COLLATE([r["chosen"] for r in tr] + [r["rejected"] for r in tr])
        with torch.no_grad(), hand.disable_adapter():
            ref = full_row_logps(hand, both)
        pol = full_row_logps(hand, both)
        z = 0.5 * ((pol[:2] - pol[2:]) - (ref[:2] - ref[2:]))
        loss = -torch.nn.functional.logsigmoid(z).mean()
    g_tr = torch.autograd.grad(loss, params)
    assert max(g.abs().max().item() for g in g_tr) > 1e-4  # a real gradient, not a vacuous match
    for a, b, g in zip(g_tar, g_sft, g_tr):
        torch.testing.assert_close(a - b, weight * g, rtol=1e-4, atol=1e-6)


def test_gradient_accumulation_averages_the_tr_term_over_micro_steps(tmp_path):
    """Through train() with 2 accumulation steps (the loss normalised by num_items_in_batch, so not divided by the
    Trainer): the accumulated gradient is SFT's plus tr_weight · the mean of the micro-steps' g_TR."""
    from transformers import TrainerCallback

    class Grads(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, model=None, **kw):
            self.grads = [p.grad.clone() for p in trainable(model)]

    model = with_lora(tiny_llama(4))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    settings = dict(per_device_train_batch_size=1, gradient_accumulation_steps=2, max_grad_norm=0)
    runs = {}
    for name in ("sft", "tar"):
        model.load_state_dict(state)
        extra = {"tr_weight": 0.7, "tr_loss": "entropy", "adversary_lrs": [0.1]} if name == "tar" else {}
        trainer = make_trainer(name, tmp_path / name, model=model, **settings, **extra)
        spy = Grads()
        trainer.add_callback(spy)
        if name == "tar":
            g_tr, original = [], trainer.tamper_resistance_gradient
            trainer.tamper_resistance_gradient = lambda *a: g_tr.append(original(*a)) or g_tr[-1]
        trainer.train()
        runs[name] = spy.grads
    assert len(g_tr) == 2
    for tar_g, sft_g, g1, g2 in zip(runs["tar"], runs["sft"], *g_tr):
        torch.testing.assert_close(tar_g - sft_g, 0.7 * (g1 + g2) / 2, rtol=1e-4, atol=1e-7)


def authors_tar_grads(model, harmful, batch):
    """A faithful re-creation of Lslland/T-Vaccine trainer.py TarTrainer.training_step (their `step`), bug included:
    the TR gradient is assigned to `param.data.grad`, a temporary, so `param.grad` is the plain SFT gradient."""
    params = trainable(model)
    model(**harmful).loss.backward()
    stored = {id(p): p.grad.data.clone() for p in params}
    for p in params:
        p.data -= 0.01 * stored[id(p)]
    model(**batch).loss.backward()  # no zero_grad before: harmful gradient included
    stored_tr = {id(p): p.grad.data.clone() for p in params}
    model.zero_grad()
    for p in params:
        p.data += 0.01 * stored[id(p)]
    model(**batch).loss.backward()
    for p in params:
        p.data.grad = p.grad.data + 2 * stored_tr[id(p)]
    return [p.grad.clone() for p in params]


def test_tar_tvaccine_applies_the_tr_gradient_their_code_dropped(tmp_path):
    harmful = token_rows(2, seed=9)
    model = with_lora(tiny_llama(4))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    batch = COLLATE(token_rows(2, seed=3))

    sft = make_trainer("sft", tmp_path / "sft", model=model)
    g_sft = grads_after_one_step(sft, batch)
    model.load_state_dict(state)
    ours = make_trainer("tar-tvaccine", tmp_path / "ours", model=model, harmful=harmful)
    g_ours = grads_after_one_step(ours, batch)
    assert all(torch.equal(v, state[k]) for k, v in lora_by_layer(model).items())  # the attack was undone

    model.load_state_dict(state)
    model.zero_grad(set_to_none=True)
    g_theirs = authors_tar_grads(model, COLLATE(harmful), batch)

    model.load_state_dict(state)
    hand = copy.deepcopy(model)
    params = trainable(hand)
    g_harmful = torch.autograd.grad(hand(**COLLATE(harmful)).loss, params)
    with torch.no_grad():
        for p, g in zip(params, g_harmful):
            p -= 0.01 * g
    g_attacked = torch.autograd.grad(hand(**batch).loss, params)

    for ours_g, theirs_g, sft_g, g in zip(g_ours, g_theirs, g_sft, g_attacked):
        # theirs is SFT up to the rounding their `+=` restore leaves in the weights
        torch.testing.assert_close(theirs_g, sft_g, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(ours_g - sft_g, 2.0 * g, rtol=1e-4, atol=1e-6)
    assert max((a - b).abs().max().item() for a, b in zip(g_ours, g_sft)) > 1e-2


# -- pieces ----------------------------------------------------------------------------------------------------------

def test_tr_weights_schedule():
    assert tr_weights(4, 1, 0.0) == pytest.approx([0.25] * 4)
    w = tr_weights(8, 1, 0.0625)
    assert sum(w) == pytest.approx(1.0) and all(a < b for a, b in zip(w, w[1:]))
    assert w[-1] / w[0] == pytest.approx(math.exp(0.0625 * 7))
    assert tr_weights(4, 2, 0.0) == pytest.approx([0.0, 0.5, 0.0, 0.5])
    assert tr_weights(4, 4, 1.0) == pytest.approx([0.0, 0.0, 0.0, 1.0])


def test_batch_rows_covers_every_row_once_per_pass_and_is_reproducible():
    rows = list(range(5))
    stream = [r for i in range(5) for r in batch_rows(rows, 2, i, seed=3)]  # two passes
    assert sorted(stream[:5]) == rows and sorted(stream[5:10]) == rows
    assert stream[:5] != stream[5:10]  # each pass reshuffled
    assert batch_rows(rows, 2, 3, seed=3) == stream[6:8]


def test_dpo_loss_and_sequence_logps():
    x = torch.tensor([-3.0, -1.0])
    assert dpo_loss(x, x - 1, x, x - 1, beta=0.1).item() == pytest.approx(math.log(2))
    assert dpo_loss(x + 5, x, x, x, beta=0.1) < dpo_loss(x, x + 5, x, x, beta=0.1)  # prefers the chosen answer
    model = with_lora(tiny_llama(2))
    batch = COLLATE(token_rows(3, length=10, prompt=3))
    logps = sequence_logps(model, batch)
    torch.testing.assert_close(logps, full_row_logps(model, batch))
    n_tokens = (batch["labels"][:, 1:] != -100).sum()
    torch.testing.assert_close(-logps.sum() / n_tokens, model(**batch).loss)


# -- settings and the command line -----------------------------------------------------------------------------------

def test_recipes_parse_and_validate():
    from tvaccine.commands.align import resolve_config

    tar = resolve_config("tar", str(REPO / "configs" / "tar.yaml"), [])
    assert (tar.inner_steps, tar.tr_loss, tar.adversary_optimizer) == (4, "dpo", "adamw")
    assert tar.adversary_lrs == [2e-6, 2e-5, 4e-5] and tar.needs_harmful_data()
    variant = resolve_config("tar-tvaccine", str(REPO / "configs" / "tar-tvaccine.yaml"), [])
    assert (variant.adversary_lr, variant.tr_weight) == (0.01, 2.0)
    assert resolve_config("tar", None, ["--adversary-lrs", "1e-4"]).adversary_lrs == [1e-4]


@pytest.mark.parametrize("method,args,message", [
    ("tar", ["--inner-steps", "0"], "inner_steps: must be at least 1"),
    ("tar", ["--adversary-lrs", "[1e-4, -1e-5]"], "adversary_lrs: must be a non-empty list of positive"),
    ("tar", ["--adversary-lrs", "[]"], "adversary_lrs: must be a non-empty list of positive"),
    ("tar", ["--adversary-optimizer", "adam"], "adversary_optimizer: must be adamw or sgd"),
    ("tar", ["--tr-loss", "nll"], "tr_loss: must be dpo or entropy"),
    ("tar", ["--tr-every", "5"], "tr_every: must be between 1 and inner_steps"),
    ("tar", ["--tr-weight", "-1"], "tr_weight: must be non-negative"),
    ("tar-tvaccine", ["--adversary-lr", "-0.01"], "adversary_lr: must be positive"),
])
def test_bad_settings_name_the_field(method, args, message):
    from tvaccine.commands.align import resolve_config

    with pytest.raises(UserError, match=message):
        resolve_config(method, None, args)


def test_dpo_needs_pairs(tmp_path):
    with pytest.raises(UserError, match="tr_loss dpo: needs tr_dataset"):
        make_trainer("tar", tmp_path, tr=token_rows(2))


def test_cli_align_tar_writes_an_adapter_and_logs_the_attack(tiny_model_dir, align_files, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    align, probe = align_files
    out = tmp_path / "tar"
    rc = main(["align", "--method", "tar", "--model", str(tiny_model_dir), "--data", str(align),
               "--harmful-data", str(probe), "--output", str(out), "--config", str(REPO / "configs" / "tar.yaml"),
               "--max-steps", "1", "--per-device-train-batch-size", "2", "--max-length", "64",
               "--inner-steps", "2", "--warmup-steps", "0", "--disable-tqdm", "true", "--use-cpu", "true"])
    assert rc == 0
    assert json.loads((out / "tvaccine_config.json").read_text())["config"]["inner_steps"] == 2
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), out)
    assert any(p.abs().sum() > 0 for n, p in model.named_parameters() if "lora_B" in n)
    [logged] = [h for h in json.loads((out / "log_history.json").read_text()) if "tar/tr_loss" in h]
    assert logged["tar/adversary_lr"] in (2e-6, 2e-5, 4e-5) and math.isfinite(logged["tar/tr_loss"])
