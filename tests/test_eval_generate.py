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
    real = gen.generate_answers
    monkeypatch.setattr(gen, "generate_answers", lambda m, t, p, n, **kw: asked.extend(p) or real(m, t, p, n, **kw))
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


def test_resume_refuses_a_file_made_with_the_other_stop_setting(model_and_tokenizer, tmp_path):
    model, tok = model_and_tokenizer
    path = tmp_path / "g.jsonl"
    path.write_text(json.dumps({"id": 0, "prompt": "p", "response": "x"}) + "\n")  # before the setting existed
    rows, stats = gen.generate_to_file(model, tok, [{"id": 0, "prompt": "p"}], path, progress=False)
    assert stats.generated == 0 and rows[0]["response"] == "x"
    with pytest.raises(UserError, match="stop_at_template=False, this run has True"):
        gen.generate_to_file(model, tok, [{"id": 0, "prompt": "p"}], path, progress=False, stop_at_template=True)


def _script(model, tok, pieces: dict[str, str]):
    """Make ``model`` greedy-say a fixed next token after each listed token (a bigram script), counting calls."""
    ids = {}
    for piece in {*pieces, *pieces.values()}:
        encoded = tok(piece, add_special_tokens=False)["input_ids"]
        assert len(encoded) == 1, piece
        ids[piece] = encoded[0]
    table = {ids[a]: ids[b] for a, b in pieces.items()}
    calls = []

    def hook(module, args, kwargs, output):
        calls.append(1)
        for row, last in enumerate(kwargs["input_ids"][:, -1].tolist()):
            if last in table:
                output.logits[row, -1, table[last]] += 1e4
        return output

    return model.register_forward_hook(hook, with_kwargs=True), calls


# After the prompt's final newline: "Sure thing.\n\n### Instruction:\n\n### Instruction: ..." (a template loop);
# after "Well": "Well, no, no, no, ..." (no marker, runs to the token limit).
LOOPS = {"\n": "Sure", "Sure": " thing", " thing": ".", ".": "\n\n", "\n\n": "###", "###": " Instruction",
         " Instruction": ":", ":": "\n\n", "Well": ",", ",": " no", " no": ","}


def test_stop_at_template_cuts_before_the_marker_batched_as_alone(model_and_tokenizer):
    model, tok = model_and_tokenizer
    prompts = [format_prompt(INSTRUCTIONS[1]), format_prompt(INSTRUCTIONS[2]) + "Well", format_prompt("Hi")]
    handle, calls = _script(model, tok, LOOPS)
    try:
        batched = gen.generate_answers(model, tok, prompts, max_new_tokens=20, stop_at_template=True)
        alone = [gen.generate_answers(model, tok, [p], max_new_tokens=20, stop_at_template=True)[0] for p in prompts]
        calls.clear()
        gen.generate_answers(model, tok, prompts[:1], max_new_tokens=20, stop_at_template=True)
        stopped_after = len(calls)
        plain = gen.generate_answers(model, tok, prompts, max_new_tokens=20)
    finally:
        handle.remove()
    assert batched == alone
    assert [a.text for a in batched] == ["Sure thing.", ", no" * 10, "Sure thing."]
    assert batched[0] == gen.Answer("Sure thing.", 6, "template")  # Sure, thing, ., \n\n, ###, " Instruction"
    assert batched[1].ended == "max_new_tokens" and batched[1].new_tokens == 20
    assert stopped_after == 6  # generation really stopped at the marker, not at the 20-token limit
    # Without the stop, the loop stays in the answer (as published), and the texts agree up to the marker.
    assert plain[0].text.startswith("Sure thing.\n\n### Instruction:") and plain[0].ended == "max_new_tokens"
    assert plain[1] == batched[1]


def test_an_answer_that_opens_a_new_template_block_is_cut_to_nothing(model_and_tokenizer):
    model, tok = model_and_tokenizer
    handle, calls = _script(model, tok, {"\n": "###", "###": " Instruction", " Instruction": ":", ":": "\n"})
    try:
        answer, = gen.generate_answers(model, tok, [format_prompt("Hi")], max_new_tokens=20, stop_at_template=True)
    finally:
        handle.remove()
    # The marker spans the prompt's final newline: transformers' stop string sees it there too.
    assert answer == gen.Answer("", 2, "template") and len(calls) == 2


def test_generate_to_file_records_the_stop(model_and_tokenizer, tmp_path):
    model, tok = model_and_tokenizer
    handle, _ = _script(model, tok, LOOPS)
    try:
        rows, stats = gen.generate_to_file(model, tok, [{"id": 0, "prompt": format_prompt("Hi")}],
                                           tmp_path / "g.jsonl", max_new_tokens=20, progress=False,
                                           stop_at_template=True)
    finally:
        handle.remove()
    assert rows == [{"id": 0, "prompt": format_prompt("Hi"), "response": "Sure thing.", "new_tokens": 6,
                     "ended": "template", "stop_at_template": True, "max_new_tokens": 20}]
    assert stats.new_tokens == 6


def test_a_shorter_answer_is_cut_from_the_token_ids_of_the_longer_one(model_and_tokenizer):
    """Greedy decoding: the first k tokens of a 20-token answer are the k-token answer. Each cut goes through the
    same EOS, template-marker and strip handling, so it equals what a batched k-token run gives, for every k."""
    model, tok = model_and_tokenizer
    prompts = [format_prompt(INSTRUCTIONS[1]),  # "Sure thing.\n\n### Instruction…": the marker is whole at token 6
               format_prompt(INSTRUCTIONS[2]) + "Well",  # ", no" to the limit
               format_prompt(INSTRUCTIONS[0]) + "Done",  # " now", then EOS
               format_prompt(INSTRUCTIONS[3]) + " The sea"]  # the random model's own words
    cuts = list(range(1, 20))
    handle, _ = _script(model, tok, {**LOOPS, "Done": " now", " now": tok.eos_token})
    try:
        for stop in (True, False):
            longest = gen.generate_answers(model, tok, prompts, 20, stop_at_template=stop, cuts=cuts)
            for k in cuts:
                alone = gen.generate_answers(model, tok, prompts, k, stop_at_template=stop)
                assert [a.text_at.get(k, a.text) for a in longest] == [a.text for a in alone], (stop, k)
            assert [a.ended for a in longest] == ["template" if stop else "max_new_tokens", "max_new_tokens", "eos",
                                                  "max_new_tokens"]
            assert all(set(a.text_at) == {k for k in cuts if k < a.new_tokens} for a in longest)
    finally:
        handle.remove()
    # The marker is not whole until token 6: a 5-token run keeps "###", which the 20-token answer has cut away.
    assert longest[0].text_at[5] == "Sure thing.\n\n###" and longest[2].text_at == {}


def test_generate_to_file_keeps_each_cut_shorter_than_the_answer(model_and_tokenizer, tmp_path):
    model, tok = model_and_tokenizer
    handle, _ = _script(model, tok, LOOPS)
    items = [{"id": 0, "prompt": format_prompt("Hi")}, {"id": 1, "prompt": format_prompt("Hi") + "Well"}]
    try:
        rows, _ = gen.generate_to_file(model, tok, items, tmp_path / "g.jsonl", max_new_tokens=12, progress=False,
                                       stop_at_template=True, cuts=(3, 8))
    finally:
        handle.remove()
    assert rows[0]["response_at"] == {"3": "Sure thing."} and rows[0]["new_tokens"] == 6  # 8: the answer itself
    assert rows[1]["response_at"] == {"3": ", no,", "8": ", no, no, no, no"} and rows[1]["max_new_tokens"] == 12
    written = [json.loads(line) for line in (tmp_path / "g.jsonl").read_text().splitlines()]
    assert sorted(written, key=lambda r: r["id"]) == rows


def test_resume_refuses_answers_of_another_length(model_and_tokenizer, tmp_path):
    """Adding HarmBench (512 tokens) to a folder of 128-token answers must not reuse them."""
    model, tok = model_and_tokenizer
    path = tmp_path / "g.jsonl"

    def resume(row: dict, max_new_tokens: int = 512, cuts=()) -> int:
        path.write_text(json.dumps({"id": 0, "prompt": "p", "response": "x", **row}) + "\n")
        rows, stats = gen.generate_to_file(model, tok, [{"id": 0, "prompt": "p"}], path, max_new_tokens,
                                           progress=False, cuts=cuts)
        return stats.generated

    with pytest.raises(UserError, match=r"g.jsonl:1: id 0 was generated with max_new_tokens=128, this run needs 512"):
        resume({"max_new_tokens": 128, "new_tokens": 3, "ended": "eos"})
    assert resume({"max_new_tokens": 512, "new_tokens": 3, "ended": "eos"}) == 0
    # Rows from before the field are kept, unless one that ran to its limit shows another limit.
    assert resume({"new_tokens": 3, "ended": "eos"}) == 0 and resume({}) == 0
    assert resume({"new_tokens": 512, "ended": "max_new_tokens"}) == 0
    with pytest.raises(UserError, match="max_new_tokens=128, this run needs 512"):
        resume({"new_tokens": 128, "ended": "max_new_tokens"})
    # An answer longer than a cut a judge reads must carry that cut.
    with pytest.raises(UserError, match="g.jsonl:1: id 0 has no answer cut at 128 tokens"):
        resume({"max_new_tokens": 512, "new_tokens": 300, "ended": "eos"}, cuts=(128,))
    assert resume({"max_new_tokens": 512, "new_tokens": 300, "ended": "eos", "response_at": {"128": "y"}},
                  cuts=(128,)) == 0
    assert resume({"max_new_tokens": 512, "new_tokens": 100, "ended": "eos"}, cuts=(128,)) == 0


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


def test_the_generator_goes_to_the_gpu_when_there_is_one(tmp_path, monkeypatch):
    """Evaluation generates on the GPU if one is visible (it used to stay on the CPU), or on the device asked for."""
    from eval_helpers import save_tiny

    base_dir = save_tiny(tmp_path / "base")
    moved = []
    real_to = torch.nn.Module.to
    monkeypatch.setattr(torch.nn.Module, "to", lambda self, *a, **k: moved.append(a[0] if a else k) or self)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    gen.load_for_generation(str(base_dir))
    gen.load_for_generation(str(base_dir), device="cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    gen.load_for_generation(str(base_dir))
    monkeypatch.setattr(torch.nn.Module, "to", real_to)
    assert [m for m in moved if m in ("cuda", "cpu")] == ["cuda", "cpu", "cpu"]


def test_adapters_are_merged_in_float32_before_a_16_bit_cast(tmp_path):
    """--dtype bfloat16 with adapters: the weights are the float32 merge cast to bf16, not a merge in bf16 (which
    rounds most of a small LoRA delta away)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from eval_helpers import save_tiny

    base_dir = save_tiny(tmp_path / "base")
    torch.manual_seed(0)
    cfg = LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"], init_lora_weights=False)
    peft = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir), cfg)
    with torch.no_grad():  # a small delta, as a short alignment leaves
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.mul_(1e-3)
    peft.save_pretrained(tmp_path / "a")

    def q(dtype, device="cpu"):
        model, _ = gen.load_for_generation(str(base_dir), [str(tmp_path / "a")], dtype=dtype, device=device)
        return model.model.layers[0].self_attn.q_proj.weight

    merged32, merged16 = q("float32"), q("bfloat16")
    assert merged16.dtype == torch.bfloat16
    torch.testing.assert_close(merged16, merged32.to(torch.bfloat16), rtol=0, atol=0)
    in_bf16 = (AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.bfloat16)
               .model.layers[0].self_attn.q_proj.weight
               + (merged32 - AutoModelForCausalLM.from_pretrained(base_dir).model.layers[0].self_attn.q_proj.weight)
               .to(torch.bfloat16))
    assert not torch.equal(merged16, in_bf16)  # the test's delta is one that a bf16 merge would change
