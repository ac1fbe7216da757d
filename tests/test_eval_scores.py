import math

import pytest

from tvaccine.evaluation.scores import bootstrap_interval, extract_number, is_correct, is_correct_strict, rate


@pytest.mark.parametrize("answer,label,published,strict", [
    ("positive", "positive", True, True),
    ("The sentiment is Positive.", "positive", True, True),
    ("positively glowing", "positive", True, False),          # substring, as published
    ("not positive, negative", "positive", True, False),      # both words: published counts it for either label
    ("not positive, negative", "negative", True, False),
    ("POSITIVE", "positive", False, True),                    # published checks two spellings only
    ("I think it is neutral", "negative", False, False),
])
def test_sst2(answer, label, published, strict):
    assert is_correct("sst2", answer, label) is published
    assert is_correct_strict("sst2", answer, label) is strict


@pytest.mark.parametrize("answer,label,published,strict", [
    ("Business", "Business", True, True),
    ("This is about science.", "Sci/Tech", True, False),      # "sci" is a substring of "science"
    ("Sci/Tech", "Sci/Tech", True, True),
    ("the world of sports", "Sports", True, False),           # names World and Sports
    ("the world of sports", "World", True, False),
    ("Sports", "World", False, False),
])
def test_agnews(answer, label, published, strict):
    assert is_correct("agnews", answer, label) is published
    assert is_correct_strict("agnews", answer, label) is strict


def test_gsm8k_extraction_follows_the_authors():
    assert extract_number("3 + 4 = 7\nThe final answer is: 18 dollars, not 20") == 18
    assert extract_number("first 5, then 7") == 7                # no phrase: the LAST number
    assert extract_number("The final answer is: 1,234") == 1234  # commas removed
    assert extract_number("The final answer is: many, 12 or 3") == 12
    assert extract_number("no number here") == math.inf
    assert extract_number("The final answer is:  18") == 18      # the reference files' two spaces


def test_gsm8k_scores():
    label = "9 eggs, 9 * 2 = 18\nThe final answer is:  18"
    assert is_correct("gsm8k", "so she makes 18", label)                 # fallback to the last number
    assert not is_correct_strict("gsm8k", "so she makes 18", label)       # strict wants the phrase
    assert is_correct_strict("gsm8k", "The final answer is: 18", label)
    assert not is_correct("gsm8k", "18 then 20", label)
    assert not is_correct("gsm8k", "no idea", label)


def test_unknown_label_is_an_error():
    with pytest.raises(ValueError, match="unknown label"):
        is_correct("sst2", "positive", "neutral")


def test_bootstrap_interval_is_seeded_and_brackets_the_mean():
    values = [True] * 30 + [False] * 70
    lo, hi = bootstrap_interval(values, seed=1)
    assert (lo, hi) == bootstrap_interval(values, seed=1)
    assert lo < 30 < hi and hi - lo < 25
    assert bootstrap_interval([True] * 5) == (100.0, 100.0)
    r = rate(values)
    assert r["value"] == 30.0 and r["n"] == 100 and len(r["ci95"]) == 2
    assert rate([])["value"] is None
