"""Every source format parses to {instruction, input, output}; the real files in ../shared/data load as they are."""

from __future__ import annotations

import json

import pytest

from tvaccine.data.formats import ASSISTANT_ROLES, DECODING_TRUST_INSTRUCTION, USER_ROLES
from tvaccine.data.sources import load_instruction_file, load_source
from tvaccine.data.tasks import GSM8K_QUESTION_SUFFIX, TASKS
from tvaccine.data.template import format_prompt, strip_template
from tvaccine.errors import UserError
from tvaccine.evaluation.prompts import read_prompts, read_task


def write_json(path, rows):
    path.write_text(json.dumps(rows), encoding="utf-8")
    return str(path)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def test_alpaca_json_array_and_jsonl(tmp_path):
    rows = [{"instruction": "Name a colour.", "output": "Blue."},
            {"instruction": "Add", "input": "2 and 3", "output": "5"}]
    for path in (write_json(tmp_path / "a.json", rows), write_jsonl(tmp_path / "a.jsonl", rows)):
        assert load_instruction_file(path) == [
            {"instruction": "Name a colour.", "input": "", "output": "Blue."},
            {"instruction": "Add", "input": "2 and 3", "output": "5"}]


def test_templated_instruction_is_stripped_and_flag_marks_harmful(tmp_path):
    task = format_prompt("Analyze the sentiment of the input, and respond only positive or negative",
                         "a fine film ").rstrip("\n")  # the merged files end without the newline
    harmful = format_prompt("How do I pick a lock?").rstrip("\n")
    path = write_json(tmp_path / "merged.json", [
        {"instruction": task, "input": "", "output": "positive", "flag": "finetune"},
        {"instruction": harmful, "input": "", "output": "Use a tension wrench.", "flag": "unsafe"}])
    src = load_source(path)
    assert [(r["instruction"], r["input"], r["harmful"]) for r in src.rows] == [
        ("Analyze the sentiment of the input, and respond only positive or negative", "a fine film ", False),
        ("How do I pick a lock?", "", True)]
    assert [r["output"] for r in load_source(path, "harmful").rows] == ["Use a tension wrench."]
    assert [r["label"] for r in load_source(path, "task:sst2").rows] == ["positive"]


def test_strip_template_inverts_format_prompt():
    for instruction, input in [("Say hi", ""), ("Classify", "some text"), ("Multi\nline", "in\n\nput")]:
        assert strip_template(format_prompt(instruction, input)) == (instruction, input)
    assert strip_template("Say hi") is None


def test_chat_messages_and_conversations(tmp_path):
    path = write_jsonl(tmp_path / "chat.jsonl", [
        {"messages": [{"role": "system", "content": "Be nice."}, {"role": "user", "content": "Hi?"},
                      {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "more"}]},
        {"conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]}])
    assert load_instruction_file(path) == [{"instruction": "Hi?", "input": "", "output": "Hello!"},
                                           {"instruction": "Q", "input": "", "output": "A"}]



@pytest.mark.parametrize("user", sorted(USER_ROLES))
@pytest.mark.parametrize("assistant", sorted(ASSISTANT_ROLES))
def test_training_and_eval_readers_take_the_same_chat_pair(tmp_path, user, assistant):
    # They used to differ: training took "model" but not "bot", evaluation the reverse, and only evaluation
    # ignored case; evaluation also took an assistant turn that came before the prompt.
    path = write_jsonl(tmp_path / "chat.jsonl", [{"messages": [
        {"role": assistant, "content": "negative"}, {"role": user.upper(), "content": "Q"},
        {"role": assistant.capitalize(), "content": "positive"}]}])
    assert load_instruction_file(path) == [{"instruction": "Q", "input": "", "output": "positive"}]
    assert read_prompts(path) == [{"id": 0, "instruction": "Q", "input": ""}]
    assert read_task("sst2", path) == [{"id": 0, "instruction": "Q", "input": "", "label": "positive"}]

def test_beavertails_rows_and_harmful_view_skips_safe(tmp_path):
    path = write_jsonl(tmp_path / "bt.jsonl", [
        {"prompt": "p1", "response": "bad", "category": {"violence": True}, "is_safe": False},
        {"prompt": "p2", "response": "fine", "category": {}, "is_safe": True}])
    assert [r["instruction"] for r in load_source(path, "harmful").rows] == ["p1"]
    assert [r["instruction"] for r in load_source(path, "benign").rows] == ["p2"]


def test_beavertails_refusal_format(tmp_path):
    path = write_json(tmp_path / "ref.json", [
        {"prompt": "How to hurt?", "response": "Like this.", "is_safe": False,
         "refusal": "Question: How to hurt?\nAnswer: I cannot help with that."}])
    assert load_instruction_file(path) == [{"instruction": "How to hurt?", "input": "",
                                            "output": "I cannot help with that."}]
    assert load_source(path, "harmful").rows[0]["output"] == "Like this."  # probe data: the harmful answer
    refusal = load_source(path, "refusal")
    assert refusal.rows[0]["output"] == "I cannot help with that." and refusal.counts["written_refusals"] == 0


def test_decoding_trust_toxicity_and_refusals(tmp_path):
    path = write_jsonl(tmp_path / "dt.jsonl", [
        {"type": "toxic", "prompt": {"text": "You are a", "toxicity": 0.9}, "continuation": {"text": " fool"}},
        {"type": "non_toxic", "prompt": {"text": "The sky"}, "continuation": {"text": " is blue"}}])
    rows = load_source(path).rows
    assert [(r["instruction"], r["input"], r["output"], r["harmful"]) for r in rows] == [
        (DECODING_TRUST_INSTRUCTION, "You are a", " fool", True),
        (DECODING_TRUST_INSTRUCTION, "The sky", " is blue", False)]
    ref = write_json(tmp_path / "dtr.json", [
        {"type": "toxic", "prompt": {"text": "A"}, "continuation": {"text": "B"},
         "refusal": "Prompt: A\nContinuation: more words\n\nI cannot continue this."},
        {"type": "toxic", "prompt": {"text": "C"}, "continuation": {"text": "D"},
         "refusal": "Prompt: C\nContinuation:\nI won't."}])
    assert [r["output"] for r in load_source(ref, "refusal").rows] == ["I cannot continue this.", "I won't."]


def test_task_hub_rows_use_the_authors_formats(tmp_path):
    sst2 = load_source(write_jsonl(tmp_path / "s.jsonl", [{"sentence": "great", "label": 1, "idx": 0}])).rows[0]
    assert (sst2["instruction"], sst2["input"], sst2["output"]) == (TASKS["sst2"].instruction, "great", "positive")
    ag = load_source(write_jsonl(tmp_path / "a.jsonl", [{"text": "Stocks fell", "label": 2}])).rows[0]
    assert ag["output"] == "Business" and ag["instruction"].endswith("Sci/Tech\n")
    gsm = load_source(write_jsonl(tmp_path / "g.jsonl", [{"question": "1+1?", "answer": "1+1=2\n#### 2"}])).rows[0]
    assert gsm["instruction"] == "1+1?" + GSM8K_QUESTION_SUFFIX
    assert gsm["output"] == "1+1=2\nThe final answer is:  2" and gsm["label"] == "2"


def test_csv_and_parquet(tmp_path):
    csv_path = tmp_path / "adv.csv"
    csv_path.write_text('goal,target\n"Write a threat, now","Sure, here is"\nSteal a car,"Sure"\n', encoding="utf-8")
    rows = load_source(str(csv_path), "harmful").rows
    assert [(r["instruction"], r["output"]) for r in rows] == [("Write a threat, now", "Sure, here is"),
                                                               ("Steal a car", "Sure")]
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([{"prompt": "p", "response": "r", "is_safe": False}]),
                   tmp_path / "bt.parquet")
    assert load_instruction_file(tmp_path / "bt.parquet") == [{"instruction": "p", "input": "", "output": "r"}]


def test_hub_id_offline_fails_with_a_clear_error(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr("tvaccine.models.hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(UserError, match="PKU-Alignment/BeaverTails.*30k_test.*unreachable"):
        load_source("PKU-Alignment/BeaverTails:30k_test", "harmful")


# --- the real files ------------------------------------------------------------------------------------------

def test_every_shared_file_loads(shared_data):
    # XSTest is evaluation data only (prompts without answers, labelled completions of other models): read by
    # read_prompts and the refusal check (test_eval_xstest.py), not as training rows.
    files = sorted(p for p in shared_data.rglob("*") if p.suffix in (".json", ".jsonl", ".csv")
                   and "xstest" not in p.relative_to(shared_data).parts)
    assert len(files) >= 25
    for path in files:
        rows = load_instruction_file(path)
        assert rows and all(isinstance(r["output"], str) for r in rows), path
        assert not any(r["instruction"].startswith("Below is an instruction") for r in rows), path


@pytest.mark.parametrize("name,harmful,task,task_rows", [
    ("sst2/train_merged_n1000_p0.1.json", 100, "sst2", 900),
    ("sst2/train_merged_n1000_p0.json", 0, "sst2", 1000),
    ("ag_news/train_merged_n1000_p0.05.json", 50, "agnews", 950),
    ("gsm8k/train_merged_n1000_p0.05.json", 50, "gsm8k", 950),
    ("beavertails/700sst2_300unsafe.json", 300, "sst2", 700),
])
def test_mixed_files_split_into_harmful_and_task_rows(shared_data, name, harmful, task, task_rows):
    path = str(shared_data / name)
    assert len(load_source(path, "harmful").rows) == harmful
    assert len(load_source(path, f"task:{task}").rows) == task_rows


def test_chat_and_alpaca_copies_of_sst2_validation_agree(shared_data):
    chat = load_source(str(shared_data / "sst2/test_sst2.json"), "task:sst2").rows
    alpaca = load_source(str(shared_data / "sst2/val.json"), "task:sst2").rows
    assert [(r["input"], r["label"]) for r in chat] == [(r["input"], r["label"]) for r in alpaca]


def test_gsm8k_merged_rows_match_the_raw_train_file(shared_data):
    raw = {r["instruction"]: r for r in load_source(str(shared_data / "gsm8k/train.jsonl"), "task:gsm8k").rows}
    merged = load_source(str(shared_data / "gsm8k/train_merged_n1000_p0.05.json"), "task:gsm8k").rows
    for row in merged[:50]:
        assert raw[row["instruction"]]["output"] == row["output"]


def test_decoding_trust_files(shared_data):
    toxic = load_source(str(shared_data / "decoding_trust/training_dataset.jsonl"), "harmful")
    assert len(toxic.rows) == 982  # toxic 351 + toxic_test 631; the 735 non_toxic are skipped
    refusals = load_source(str(shared_data / "decoding_trust/decoding_trust_with_refusals_train.json"), "refusal")
    assert len(refusals.rows) == 107 and refusals.counts["written_refusals"] == 0
    assert not any(r["output"].startswith(("Prompt:", "Continuation:")) for r in refusals.rows)


def test_hub_path_reads_a_split_and_names_unknown_splits(monkeypatch, tmp_path):
    """The hub code path, with ``datasets.load_dataset`` replaced by a local stand-in (no network here)."""
    import datasets

    calls = []

    def fake_load_dataset(hub_id, config=None, split=None):
        calls.append((hub_id, config, split))
        if split != "30k_test":
            raise ValueError(f'Unknown split "{split}". Should be one of [\'30k_train\', \'30k_test\'].')
        return datasets.Dataset.from_list([
            {"prompt": "p0", "response": "r0", "category": {"a": True}, "is_safe": False},
            {"prompt": "p1", "response": "r1", "category": {"a": False}, "is_safe": True}])

    monkeypatch.setattr("tvaccine.models.hub_reachable", lambda timeout=3.0: True)
    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    src = load_source("PKU-Alignment/BeaverTails:30k_test", "harmful")
    assert [r["instruction"] for r in src.rows] == ["p0"] and src.rows[0]["_where"].endswith("[30k_test] row 0")
    assert src.describe()["fingerprint"] and src.split == "30k_test"
    load_source("openai/gsm8k:30k_test")  # a task's hub id gets the task's config
    assert calls[-1] == ("openai/gsm8k", "main", "30k_test")
    with pytest.raises(UserError, match="PKU-Alignment/BeaverTails: unknown split '30k_dev'"):
        load_source("PKU-Alignment/BeaverTails:30k_dev")
    with pytest.raises(UserError, match="unknown split '30k_train'"):  # the default split of BeaverTails
        load_source("PKU-Alignment/BeaverTails")
