"""The general-capability check (evaluation/knowledge.py) and benign-answer length: rows read in MMLU's and other
layouts, the prompt, the letter picked by likelihood, scores in results.json and the summary, and stage hashes
of evaluations without it unchanged."""

import json

import pytest
import torch

from tvaccine.errors import UserError
from tvaccine.evaluation import knowledge
from tvaccine.evaluation.scores import mean_interval

QUESTIONS = [{"question": "What colour is the sea?", "choices": ["red", "blue", "green", "black"], "answer": 1},
             {"question": "How many legs has a cat?", "choices": ["two", "three", "four", "six"], "answer": "C"},
             {"question": "Which is a fruit?", "A": "apple", "B": "stone", "C": "chair", "D": "cloud", "answer": 0}]


def test_rows_in_mmlu_and_lettered_layouts_parse_and_bad_rows_are_named():
    rows = [knowledge.parse_question(r, f"q.jsonl line {i + 1}") for i, r in enumerate(QUESTIONS)]
    assert [r["answer"] for r in rows] == [1, 2, 0] and rows[2]["choices"] == ["apple", "stone", "chair", "cloud"]
    with pytest.raises(UserError, match="q.jsonl line 4: field 'answer' must be the index"):
        knowledge.parse_question({"question": "x", "choices": ["a", "b"], "answer": 2}, "q.jsonl line 4")
    with pytest.raises(UserError, match="line 5: field 'choices'"):
        knowledge.parse_question({"question": "x", "choices": "a,b", "answer": 0}, "line 5")


def test_the_prompt_lists_the_options_in_the_evaluation_template():
    prompt = knowledge.question_prompt(knowledge.parse_question(QUESTIONS[0], "q"))
    assert prompt.endswith("### Instruction:\nWhat colour is the sea?\n\nA. red\nB. blue\nC. green\nD. black\n\n"
                           "Answer with the letter of the correct option.\n\n### Response:\n")


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval(), AutoTokenizer.from_pretrained(tiny_model_dir)


def test_the_letter_with_the_highest_likelihood_is_the_answer(model_and_tokenizer):
    model, tok = model_and_tokenizer
    rows = [knowledge.parse_question(r, "q") for r in QUESTIONS]
    one_by_one = [knowledge.answer_letters(model, tok, [r], 1)[0] for r in rows]
    assert knowledge.answer_letters(model, tok, rows, 3) == one_by_one  # left padding: batching changes nothing
    c = tok.encode("C", add_special_tokens=False)[0]
    bias = torch.zeros(model.config.vocab_size)
    bias[c] = 100.0
    handle = model.lm_head.register_forward_hook(lambda m, a, out: out + bias)
    try:
        assert knowledge.answer_letters(model, tok, rows, 2) == [2, 2, 2]
    finally:
        handle.remove()
    score = knowledge.knowledge_score(rows, [2, 2, 2])
    assert score["value"] == pytest.approx(100 / 3, abs=0.01) and score["n"] == 3 and score["chance"] == 25.0


def test_evaluate_writes_the_knowledge_score_and_benign_length(tiny_model_dir, tmp_path):
    from tvaccine.evaluation.config import EvalSettings
    from tvaccine.evaluation.run import evaluate
    from tvaccine.pipeline.summary import scores_row

    questions = tmp_path / "mmlu.jsonl"
    questions.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    benign = tmp_path / "benign.jsonl"
    benign.write_text("".join(json.dumps({"instruction": f"Write a poem about the sea {i}."}) + "\n"
                              for i in range(4)))
    results = evaluate(EvalSettings(model=str(tiny_model_dir), knowledge_data=str(questions),
                                    benign_prompts=str(benign), max_new_tokens=3, batch_size=2), tmp_path / "out",
                       progress=False)
    s = results["scores"]
    assert s["knowledge"]["n"] == 3 and 0 <= s["knowledge"]["value"] <= 100 and s["knowledge"]["chance"] == 25.0
    lengths = [json.loads(line)["new_tokens"] for line in open(tmp_path / "out" / "generations_benign.jsonl")]
    assert s["benign_length"]["mean"] == pytest.approx(sum(lengths) / 4) and s["benign_length"]["n"] == 4
    row = scores_row(s)
    assert row["knowledge"] == s["knowledge"]["value"] and row["benign_tokens"] == s["benign_length"]["mean"]
    # knowledge alone is something to evaluate; a bad file is named
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "q", "choices": ["a", "b"], "answer": 5}) + "\n")
    with pytest.raises(UserError, match="bad.jsonl"):
        evaluate(EvalSettings(model=str(tiny_model_dir), knowledge_data=str(bad)), tmp_path / "bad")


def test_a_run_config_with_a_bad_knowledge_file_fails_before_any_stage(tiny_model_dir, tmp_path):
    from tvaccine.pipeline import check_run_config

    bad = tmp_path / "mmlu.jsonl"
    bad.write_text(json.dumps({"question": "q", "choices": ["a", "b"], "answer": "Z"}) + "\n")
    config = {"model": str(tiny_model_dir), "output": str(tmp_path / "out"),
              "eval": {"knowledge_data": str(bad), "judges": ["keyword"]}}
    with pytest.raises(UserError, match="mmlu.jsonl.*field 'answer'"):
        check_run_config(config, "run.yaml")
    assert not (tmp_path / "out").exists()


def test_mean_interval_brackets_the_mean():
    r = mean_interval([1, 2, 3, 4, 100])
    assert r["mean"] == 22.0 and r["ci95"][0] < 22.0 < r["ci95"][1] and r["n"] == 5
    assert mean_interval([5, 5, 5])["ci95"] == [5.0, 5.0] and mean_interval([])["mean"] is None


def test_evaluations_without_a_knowledge_set_keep_their_stage_folders(tmp_path, monkeypatch):
    """knowledge_data, judge_models and judge_max_new_tokens entered the settings after evaluations were cached:
    unset, they leave the hash as it was. A judge with its own answer length (HarmBench's 512) changes what is
    generated, so it changes the hash even unset."""
    from tvaccine.evaluation import run as evaluation
    from tvaccine.pipeline import stages

    monkeypatch.setattr(evaluation, "evaluate", lambda s, folder: (folder.mkdir(parents=True),
                                                                   (folder / "results.json").write_text("{}")))
    questions = tmp_path / "q.jsonl"
    questions.write_text(json.dumps(QUESTIONS[0]) + "\n")

    def before_the_fields(config: dict) -> str:
        settings = stages.resolved(stages.eval_settings(config, "m", []))
        assert settings.pop("knowledge_data") is None and settings.pop("judge_models") == {}
        assert settings.pop("judge_max_new_tokens") == {}
        return stages.stage_hash("eval", "m", [], settings, None, None, None, None)

    config = {"model": "m", "eval": {"harmful_prompts": None, "judges": ["keyword"]}}
    plain = stages.run_eval(config, tmp_path, [], "aligned")["dir"]
    assert plain.endswith(before_the_fields(config))
    for key, value in (("knowledge_data", str(questions)), ("judge_max_new_tokens", {"keyword": 64})):
        config["eval"][key] = value
        assert stages.run_eval(config, tmp_path, [], "aligned")["dir"] != plain, key
        del config["eval"][key]
    config["eval"]["judges"] = ["keyword", "harmbench"]
    assert not stages.run_eval(config, tmp_path, [], "aligned")["dir"].endswith(before_the_fields(config))


def test_an_evaluation_judged_by_a_retrained_classifier_is_not_reused(tmp_path, monkeypatch):
    from tvaccine.evaluation import run as evaluation
    from tvaccine.evaluation.classifier import WEIGHTS
    from tvaccine.pipeline import stages

    monkeypatch.setattr(evaluation, "evaluate", lambda s, folder: (folder.mkdir(parents=True),
                                                                   (folder / "results.json").write_text("{}")))
    judge = tmp_path / "judge"
    judge.mkdir()
    (judge / WEIGHTS).write_bytes(b"first")
    config = {"model": "m", "eval": {"harmful_prompts": None, "judges": ["keyword", "classifier"],
                                     "classifier": str(judge)}}
    first = stages.run_eval(config, tmp_path, [], "aligned")["dir"]
    assert stages.run_eval(config, tmp_path, [], "aligned")["dir"] == first
    (judge / WEIGHTS).write_bytes(b"retrained")
    assert stages.run_eval(config, tmp_path, [], "aligned")["dir"] != first
