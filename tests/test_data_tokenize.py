"""Label masking covers exactly the prompt; rows with no answer token left are dropped and counted."""

from __future__ import annotations

import pytest

from tvaccine.data.template import format_prompt
from tvaccine.data.tokenize import IGNORE_INDEX, encode_for_training, encode_row, encode_rows
from tvaccine.errors import UserError
from tvaccine.models import load_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("smollm2-135m")


@pytest.mark.parametrize("row", [{"instruction": "Name a colour.", "input": "", "output": "Blue."},
                                 {"instruction": "Classify", "input": "a fine film", "output": "positive"}])
def test_labels_mask_exactly_the_prompt(tokenizer, row):
    enc = encode_row(tokenizer, row, max_length=512)
    prompt_ids = tokenizer(format_prompt(row["instruction"], row["input"]))["input_ids"]
    target_ids = tokenizer(row["output"] + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
    assert enc["input_ids"] == prompt_ids + target_ids
    assert enc["labels"] == [IGNORE_INDEX] * len(prompt_ids) + target_ids


def test_rows_without_answer_tokens_are_dropped_and_counted(tokenizer, capsys):
    rows = [{"instruction": "word " * 300, "input": "", "output": "x"},
            {"instruction": "short", "input": "", "output": "y"}]
    enc = encode_rows(tokenizer, rows, max_length=64)
    assert enc.dropped == 1 and len(enc.rows) == 1
    assert all(len(r["input_ids"]) <= 64 for r in enc.rows)
    encode_for_training(tokenizer, rows, 64, "attack data", "f.jsonl")
    assert "dropped 1 of 2 rows" in capsys.readouterr().out
    with pytest.raises(UserError, match="f.jsonl: no usable rows"):
        encode_for_training(tokenizer, rows[:1], 64, "attack data", "f.jsonl")
