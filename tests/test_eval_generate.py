import json

import pytest
import torch

import tvaccine.evaluation.generate as gen
from eval_helpers import tiny_llama, tokenizer
from tvaccine.data.template import format_prompt
from tvaccine.errors import UserError

INSTRUCTIONS = [
    "Hi",
    "Tell me how to bake bread at home with a very old oven and no yeast at all, step by step please",
    "What is two plus two?",
    "Write a long poem about the sea, the wind, the sky and a small boat that sails alone at night",
    "Name a colour",
]


@pytest.fixture(scope="module")
def model_and_tokenizer():
    tok = tokenizer()
    tok.padding_side = "left"
    return tiny_llama(len(tok)), tok


def test_batched_and_sequential_greedy_agree(model_and_tokenizer):
    model, tok = model_and_tokenizer
    prompts = [format_prompt(i) for i in INSTRUCTIONS]
    lengths = {len(tok(p)["input_ids"]) for p in prompts}
    assert len(lengths) > 2  # the batch really is padded
    batched, counts = gen.generate_batch(model, tok, prompts, max_new_tokens=12)
    sequential = [gen.generate_batch(model, tok, [p], max_new_tokens=12)[0][0] for p in prompts]
    assert batched == sequential
    assert all(0 < n <= 12 for n in counts)


def test_generation_stops_at_eos(model_and_tokenizer):
    model, tok = model_and_tokenizer
    prompt = format_prompt(INSTRUCTIONS[2])
    with torch.no_grad():
        first_id = int(model(**tok(prompt, return_tensors="pt")).logits[0, -1].argmax())
    saved = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = first_id  # the first token it would say now ends the answer
    try:
        texts, counts = gen.generate_batch(model, tok, [prompt], max_new_tokens=8)
    finally:
        model.generation_config.eos_token_id = saved
    assert texts == [""] and counts == [0]


def test_resume_generates_only_missing_rows(model_and_tokenizer, tmp_path, monkeypatch):
    model, tok = model_and_tokenizer
    items = [{"id": i, "prompt": format_prompt(t)} for i, t in enumerate(INSTRUCTIONS)]
    path = tmp_path / "generations.jsonl"
    full, stats = gen.generate_to_file(model, tok, items, path, max_new_tokens=6, batch_size=2, progress=False)
    assert stats.generated == 5 and [r["id"] for r in full] == list(range(5))

    lines = path.read_text().splitlines(keepends=True)
    kept = [json.loads(line)["id"] for line in lines[:2]]
    path.write_text("".join(lines[:2]) + lines[2][:15])  # two rows and a torn third, as after a kill

    asked = []
    real = gen.generate_batch
    monkeypatch.setattr(gen, "generate_batch", lambda m, t, p, n: asked.extend(p) or real(m, t, p, n))
    resumed, stats = gen.generate_to_file(model, tok, items, path, max_new_tokens=6, batch_size=2, progress=False)
    assert stats.generated == 3
    assert sorted(asked) == sorted(it["prompt"] for it in items if it["id"] not in kept)
    assert resumed == full
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert sorted(r["id"] for r in rows) == list(range(5))


def test_resume_refuses_a_file_from_other_prompts(model_and_tokenizer, tmp_path):
    model, tok = model_and_tokenizer
    path = tmp_path / "g.jsonl"
    path.write_text(json.dumps({"id": 0, "prompt": "something else", "response": "x"}) + "\n")
    with pytest.raises(UserError, match="different prompt"):
        gen.generate_to_file(model, tok, [{"id": 0, "prompt": "p"}], path, progress=False)


def test_adapters_are_merged_in_turn(tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from eval_helpers import save_tiny

    base_dir = save_tiny(tmp_path / "base")
    for i, name in enumerate(("a", "b")):
        torch.manual_seed(i)
        cfg = LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
        get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir), cfg).save_pretrained(tmp_path / name)

    def q_weight(adapters):
        model, tok = gen.load_for_generation(str(base_dir), [str(tmp_path / a) for a in adapters])
        assert tok.padding_side == "left"
        return model.model.layers[0].self_attn.q_proj.weight

    base, a, b, ab = q_weight([]), q_weight(["a"]), q_weight(["b"]), q_weight(["a", "b"])
    assert not torch.allclose(a, base) and not torch.allclose(b, base)
    torch.testing.assert_close(ab - base, (a - base) + (b - base))  # both deltas are in
    with pytest.raises(UserError, match="not a LoRA adapter"):
        gen.load_for_generation(str(base_dir), [str(tmp_path)])
