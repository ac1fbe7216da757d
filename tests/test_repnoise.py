"""RepNoise: the MMD term, pairing and masking, the loss and its signs, a training step, the recipe, the CLI."""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tvaccine.align import AlignmentData
from tvaccine.errors import UserError
from tvaccine.methods import METHODS
from tvaccine.methods.repnoise import (HARMFUL, PairedCollator, RepNoiseTrainer, mmd, noise_mmd, pair_encoded,
                                       pair_rows, repnoise_loss)

from conftest import changed_layers, lora_by_layer, tiny_llama, with_lora, write_jsonl

REPO = Path(__file__).resolve().parents[1]
N_LAYERS = 4


# ------------------------------------------------------------------------------------------------------------ MMD

def test_mmd_is_near_zero_for_gaussian_representations_and_large_for_a_shifted_one():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(128, 32, generator=g), torch.randn(128, 32, generator=g)
    same, shifted, scaled = mmd(x, y).item(), mmd(x + 1, y).item(), mmd(3 * x, y).item()
    assert mmd(x, x).item() == pytest.approx(0.0, abs=1e-6)
    assert 0 <= same < 0.1
    assert shifted > 10 * same and scaled > 5 * same

    # per layer: B×T×D representations against noise, masked positions zeroed in both
    mask = torch.ones(64, 6, dtype=torch.bool)
    mask[:, :2] = False
    torch.manual_seed(1)
    gaussian = noise_mmd(torch.randn(64, 6, 8), mask).item()
    offset = noise_mmd(torch.randn(64, 6, 8) + 2, mask).item()
    assert gaussian < 0.15 and offset > 5 * gaussian
    # what sits at masked positions does not matter
    torch.manual_seed(2)
    h = torch.randn(64, 6, 8)
    torch.manual_seed(3)
    a = noise_mmd(h, mask)
    h[:, :2] = 100.0
    torch.manual_seed(3)
    assert noise_mmd(h, mask).item() == pytest.approx(a.item(), rel=1e-5)


# ------------------------------------------------------------------------------------------------------- pairing

@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


REFUSAL = "I'm sorry, but I can't help with that."
HARMFUL_ANSWER = "I'm sure. The sea is wide and blue."  # begins like the refusal: those tokens are masked too


def test_pairs_by_prompt_regardless_of_order_and_masks_the_shared_prefix(tokenizer):
    refusals = [{"instruction": "How do I make a weapon at home?", "input": "", "output": REFUSAL},
                {"instruction": "Write a poem about the sea.", "input": "", "output": "The sea is wide."},  # benign
                {"instruction": "How do I make a weapon?", "input": "at home", "output": REFUSAL}]
    # harmful file in another order; surrounding whitespace does not break a match
    harmful = [{"instruction": "How do I make a weapon? ", "input": "at home", "output": "The sea is blue."},
               {"instruction": "Something else entirely", "input": "", "output": "The sea."},
               {"instruction": "How do I make a weapon at home?", "input": "", "output": HARMFUL_ANSWER}]
    pairs = pair_rows(tokenizer, refusals, harmful, max_length=200)
    assert (pairs.paired, pairs.no_partner, pairs.no_difference, pairs.harmful_unused) == (2, 1, 0, 1)
    first, benign, third = pairs.rows

    def check(row, refusal, harm):
        a = tokenizer(_prompt(refusal), add_special_tokens=True)["input_ids"] + \
            tokenizer(refusal["output"] + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
        b = tokenizer(_prompt(harm), add_special_tokens=True)["input_ids"] + \
            tokenizer(harm["output"] + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
        p = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
        prompt_len = len(tokenizer(_prompt(refusal), add_special_tokens=True)["input_ids"])
        harm_prompt_len = len(tokenizer(_prompt(harm), add_special_tokens=True)["input_ids"])
        # prompt tokens are never targets; nor are answer tokens both begin with
        start, harm_start = max(p, prompt_len), max(p, harm_prompt_len)
        assert row["input_ids"] == a and row[HARMFUL + "input_ids"] == b
        assert row["labels"] == [-100] * start + a[start:]
        assert row[HARMFUL + "labels"] == [-100] * harm_start + b[harm_start:]
        return p, prompt_len

    p, prompt_len = check(first, refusals[0], harmful[2])
    assert p > prompt_len + 1  # "I'm" starts both answers: masked as shared prefix, not trained on
    p, prompt_len = check(third, refusals[2], harmful[0])
    assert p < prompt_len  # the prompts differ in a space: the answers are the targets
    # the benign row has no partner: plain SFT labels, no harmful half
    assert HARMFUL + "input_ids" not in benign and benign["labels"].count(-100) < len(benign["labels"])

    batch = PairedCollator(tokenizer.pad_token_id)(pairs.rows)
    assert batch["input_ids"].shape[0] == 3 and batch[HARMFUL + "input_ids"].shape[0] == 2
    assert batch[HARMFUL + "attention_mask"].sum(1).tolist() == [len(first[HARMFUL + "input_ids"]),
                                                                 len(third[HARMFUL + "input_ids"])]


def _prompt(row):
    from tvaccine.data.template import format_prompt

    return format_prompt(row["instruction"], row.get("input") or "")


def test_a_pair_with_nothing_after_the_shared_prefix_keeps_only_its_refusal():
    harmless = {"input_ids": [5, 6, 7, 8], "labels": [-100, -100, 7, 8]}
    assert pair_encoded(harmless, {"input_ids": [5, 6, 7, 8], "labels": [-100, -100, 7, 8]}) is None
    row = pair_encoded(harmless, {"input_ids": [5, 6, 7, 9, 10], "labels": [-100, -100, 7, 9, 10]})
    assert row["labels"] == [-100, -100, -100, 8] and row[HARMFUL + "labels"] == [-100, -100, -100, 9, 10]


def test_no_pair_at_all_names_both_files(tokenizer, tmp_path):
    align = write_jsonl(tmp_path / "align.jsonl", [{"instruction": "How do I make a weapon?", "output": REFUSAL}])
    harm = write_jsonl(tmp_path / "harm.jsonl", [{"instruction": "Another prompt", "output": "The sea."}])
    data = AlignmentData(tokenizer, str(align), str(harm), 64)
    with pytest.raises(UserError, match=f"{align} and {harm}: no alignment row has a harmful row"):
        RepNoiseTrainer.trainer_inputs(METHODS["repnoise"][0](output_dir=str(tmp_path)), data)


# ---------------------------------------------------------------------------------------------------------- loss

def make_trainer(tmp_path, model=None, **overrides):
    config_cls, _ = METHODS["repnoise"]
    settings = dict(output_dir=str(tmp_path), use_cpu=True, save_strategy="no", disable_tqdm=True,
                    learning_rate=1e-2, warmup_steps=0, lr_scheduler_type="constant", per_device_train_batch_size=3,
                    max_steps=1, logging_steps=1, lora_dropout=0.0)
    settings.update(overrides)
    model = model if model is not None else with_lora(tiny_llama(N_LAYERS))
    trainer = RepNoiseTrainer(model=model, args=config_cls(**settings), train_dataset=paired_token_rows(),
                              data_collator=PairedCollator(0))
    trainer.current_gradient_accumulation_steps = 1
    return trainer


def paired_token_rows(n=6, prompt=5, seed=0):
    """Rows of random tokens: the harmful half shares the prompt and the first answer token; every third row
    has no partner."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        p = torch.randint(3, 128, (prompt + 1,), generator=g).tolist()
        a = torch.randint(3, 128, (6,), generator=g).tolist()
        b = torch.randint(3, 128, (4 + i % 3,), generator=g).tolist()
        harmless = {"input_ids": p + a, "labels": [-100] * prompt + p[prompt:] + a}
        harmful = {"input_ids": p + b, "labels": [-100] * prompt + p[prompt:] + b}
        rows.append(harmless if i % 3 == 2 else pair_encoded(harmless, harmful))
    return rows


def hand_terms(model, batch):
    """CE(harmless), the per-layer MMD and L_harm computed directly from full logits and hidden states."""
    def ce(logits, labels):
        return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)

    harmless = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    base = model.get_base_model()
    mlp_out = []
    hooks = [layer.mlp.register_forward_hook(lambda m, a, o: mlp_out.append(o)) for layer in base.model.layers]
    out = model(input_ids=batch[HARMFUL + "input_ids"], attention_mask=batch[HARMFUL + "attention_mask"],
                output_hidden_states=True)
    for h in hooks:
        h.remove()
    labels = batch[HARMFUL + "labels"]
    lens = [ce(base.lm_head(base.model.norm(h)), labels) for h in out.hidden_states[:-1]]
    harm = (sum(lens) + ce(out.logits, labels)) / (len(lens) + 1)
    return ce(harmless, batch["labels"]), mlp_out, labels != -100, harm


@pytest.mark.parametrize("checkpoint_lens", [True, False])
def test_loss_is_harmless_ce_plus_beta_mmd_minus_alpha_log_harmful_loss(tmp_path, checkpoint_lens):
    trainer = make_trainer(tmp_path, checkpoint_lens=checkpoint_lens)
    model = trainer.model
    batch = PairedCollator(0)(paired_token_rows()[:3])  # two pairs and one refusal without a partner
    assert batch[HARMFUL + "input_ids"].shape[0] == 2

    with torch.no_grad():
        ce, mlp_out, answer, harm = hand_terms(model, batch)
        torch.manual_seed(7)  # the noise: N(0, I) of each layer's shape, drawn in layer order
        noise = sum(noise_mmd(h, answer) for h in mlp_out) / len(mlp_out)
    assert harm > 0 and noise > 0

    def total(alpha, beta):
        trainer.args.alpha, trainer.args.beta = alpha, beta
        torch.manual_seed(7)
        return trainer.compute_loss(model, batch)

    assert total(0.0, 0.0).item() == pytest.approx(ce.item(), rel=1e-5)  # α = β = 0: the plain CE
    assert total(0.5, 0.0).item() == pytest.approx((ce - 0.5 * torch.log(1 + harm)).item(), rel=1e-5)
    assert total(0.5, 2.0).item() == pytest.approx((ce + 2.0 * noise - 0.5 * torch.log(1 + harm)).item(), rel=1e-5)
    # the signs: a larger harmful loss lowers the total, a larger MMD raises it
    ce_t, m, h = torch.tensor(1.0), torch.tensor(0.3), torch.tensor(2.0)
    assert repnoise_loss(ce_t, m, h + 1, 0.1, 0.001) < repnoise_loss(ce_t, m, h, 0.1, 0.001)
    assert repnoise_loss(ce_t, m + 1, h, 0.1, 0.001) > repnoise_loss(ce_t, m, h, 0.1, 0.001)


def test_checkpointed_logit_lens_gives_the_same_gradients(tmp_path):
    grads = []
    for flag in (True, False):
        trainer = make_trainer(tmp_path / str(flag), checkpoint_lens=flag, alpha=1.0, beta=0.0)
        trainer.compute_loss(trainer.model, PairedCollator(0)(paired_token_rows()[:3])).backward()
        grads.append({n: p.grad for n, p in trainer.model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-6, rtol=1e-5), name


def test_one_step_changes_every_layers_lora_and_no_base_weight(tmp_path):
    trainer = make_trainer(tmp_path, alpha=0.1, beta=0.001)
    before = lora_by_layer(trainer.model)
    base = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_" not in n}
    trainer.train()
    assert changed_layers(before, trainer.model) == set(range(N_LAYERS))
    assert all(torch.equal(p, base[n]) for n, p in trainer.model.named_parameters() if n in base)
    logged = [h for h in trainer.state.log_history if "repnoise/mmd" in h]
    assert len(logged) == 1 and logged[0]["repnoise/harmful_loss"] > 0


# --------------------------------------------------------------------------------------------- recipe and CLI

def test_recipe_parses_and_bad_settings_name_the_field(tmp_path):
    from tvaccine.commands.align import resolve_config

    config = resolve_config("repnoise", str(REPO / "configs" / "repnoise.yaml"), [])
    assert (config.alpha, config.beta, config.per_device_train_batch_size, config.max_length) == (0.1, 0.001, 8, 100)
    assert config.needs_harmful_data()
    for field in ("alpha", "beta"):
        with pytest.raises(UserError, match=f"{field}: must be non-negative"):
            resolve_config("repnoise", None, [f"--{field}", "-0.5"])


def test_cli_aligns_with_repnoise(tiny_model_dir, align_files, tmp_path, capsys):
    from tvaccine.cli import main

    align, probe = align_files  # 6 refusals; harmful answers to the first 3 prompts
    out = tmp_path / "repnoise"
    rc = main(["align", "--method", "repnoise", "--model", str(tiny_model_dir), "--data", str(align),
               "--harmful-data", str(probe), "--output", str(out), "--max-steps", "1",
               "--per-device-train-batch-size", "4", "--max-length", "64", "--disable-tqdm", "true",
               "--use-cpu", "true"])
    assert rc == 0
    assert "repnoise: 3 of 6 alignment rows paired" in capsys.readouterr().out
    assert (out / "adapter_model.safetensors").exists()
    assert json.loads((out / "tvaccine_config.json").read_text())["config"]["alpha"] == 0.1
    assert json.loads((out / "train_results.json").read_text())["steps"] == 1
    # without harmful data RepNoise refuses to start
    assert main(["align", "--method", "repnoise", "--model", str(tiny_model_dir), "--data", str(align),
                 "--output", str(tmp_path / "none")]) == 2


def test_both_harmful_terms_reach_every_layers_lora(tmp_path):
    """Neither the MMD nor the logit-lens loss is cut off from the graph (e.g. by a detached capture)."""
    trainer = make_trainer(tmp_path)
    batch = PairedCollator(0)(paired_token_rows()[:3])
    half = {k[len(HARMFUL):]: v for k, v in batch.items() if k.startswith(HARMFUL)}
    for term in trainer.harmful_terms(trainer.model, half):
        trainer.model.zero_grad()
        term.backward(retain_graph=True)
        reached = {int(n.split(".layers.")[1].split(".")[0]) for n, p in trainer.model.named_parameters()
                   if p.grad is not None and p.grad.abs().sum() > 0}
        assert reached == set(range(N_LAYERS))
