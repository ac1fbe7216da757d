"""The fine-tuning tasks (SST-2, AG News, GSM8K): each task's prompt, answer format, label words, answer
extraction and correctness checks, in the authors' formats (docs/design.md §3).

Each task turns a hub row (``sentence/label``, ``text/label``, ``question/answer``) or an already formatted row
(Alpaca, a templated merged file, or a chat turn ``<instruction>\\nInput: <text>``) into
``{instruction, input, output, label}``, where ``label`` is what fine-tuning accuracy compares against.

Published checks of an answer against its label, kept exactly:
- SST-2: correct if the label word ("positive"/"Positive", "negative"/"Negative") is a *substring* of the answer,
  so "not positive, negative" counts as correct for both labels.
- AG News: correct if "World"/"world", "Sports"/"sports", "Business"/"business" or "Sci/Tech"/"sci" is a
  substring ("sci" also matches "science", "scientists", "conscious").
- GSM8K: the first number after ``GSM8K_ANSWER_PHRASE``, else the LAST number in the answer, compared as floats
  with the reference extracted the same way; an answer without a number is wrong.
Strict variant (ours): the answer names exactly one label word (case-insensitive, whole word), and it is the right
one; for GSM8K, the answer must contain ``GSM8K_ANSWER_PHRASE`` followed by the right number.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from tvaccine.data.files import text_field
from tvaccine.errors import UserError

GSM8K_QUESTION_SUFFIX = "\nFirst think step by step and then answer the final number.\n"
# Replaces GSM8K's "####" in training targets and references; the checks read the number after it.
GSM8K_ANSWER_PHRASE = "The final answer is: "
# Two number patterns, because two existing behaviours depend on them and must not move:
# - _LABEL_NUMBER reads a training target's final number into the row's ``label`` (commas inside the match, removed
#   after): the labels of the data sets already built and hashed in manifests come from it.
# - _AUTHORS_NUMBER is the authors' evaluation pattern, applied after removing commas ("18." reads as 18.0, ".5" as
#   5): the published GSM8K accuracy is only comparable while it is kept exactly.
_LABEL_NUMBER = re.compile(r"-?[\d,]*\.?\d+")
_AUTHORS_NUMBER = re.compile(r"-?\d+\.?\d*")


@dataclass(frozen=True)
class Task:
    name: str
    hub_id: str
    hub_config: str | None
    train_split: str
    eval_split: str
    instruction: str  # the authors' instruction; GSM8K appends GSM8K_QUESTION_SUFFIX to the question instead
    labels: tuple[str, ...] = ()  # label words, index = the hub's integer label
    # The published check: label -> the substrings that count as that label (the authors' lists).
    published_words: dict[str, tuple[str, ...]] = field(default_factory=dict, hash=False)
    # The strict check: label -> the whole-word pattern (case-insensitive) that names that label.
    strict_patterns: dict[str, str] = field(default_factory=dict, hash=False)

    def from_hub(self, raw: dict) -> dict:
        """A row of the task's hub data set in the authors' format."""
        if self.name == "gsm8k":
            return self._gsm8k(text_field(raw, "question"), text_field(raw, "answer"), raw)
        text = text_field(raw, "sentence" if self.name == "sst2" else "text")
        label = raw.get("label")
        if not isinstance(label, int) or isinstance(label, bool) or not 0 <= label < len(self.labels):
            raise UserError(f"{raw['_where']}: field 'label' must be an integer 0..{len(self.labels) - 1}, "
                            f"got {label!r}")
        return {"instruction": self.instruction, "input": text, "output": self.labels[label],
                "label": self.labels[label]}

    def matches(self, row: dict) -> bool:
        """Whether ``row`` carries this task's instruction (answer not checked)."""
        return self._text(row) is not None

    def _text(self, row: dict) -> str | None:
        instruction, input = row["instruction"], row["input"]
        if self.name == "gsm8k":
            if not instruction.rstrip().endswith(GSM8K_QUESTION_SUFFIX.strip()):
                return None
            return instruction.rstrip()[: -len(GSM8K_QUESTION_SUFFIX.strip())].rstrip("\n")
        if instruction.strip().rstrip(".") == self.instruction.strip().rstrip(".") and input:
            return input
        if instruction.startswith(self.instruction) and "\nInput: " in instruction and not input:
            return instruction.split("\nInput: ", 1)[1]  # SBR chat rows put the sentence in the user turn
        return None

    def recognize(self, row: dict) -> dict | None:
        """``row`` (instruction/input/output) in the task's format with its label, or None if it is not a task row."""
        text, output = self._text(row), row["output"]
        if text is None:
            return None
        if self.name == "gsm8k":
            return self._gsm8k(text, output, row, "output")
        label = output.strip()
        if label not in self.labels:
            raise UserError(f"{row['_where']}: field 'output' of a {self.name} row must be one of "
                            f"{', '.join(self.labels)}, got {label!r}")
        return {"instruction": self.instruction, "input": text, "output": label, "label": label}

    def _gsm8k(self, question: str, answer: str, where: dict, field: str = "answer") -> dict:
        instruction, output = gsm8k_pair(question, answer)
        label = final_number(output)
        if label is None:
            raise UserError(f"{where['_where']}: field '{field}' has no final number")
        return {"instruction": instruction, "input": "", "output": output, "label": label}


def gsm8k_pair(question: str, answer: str) -> tuple[str, str]:
    """A GSM8K question and its ``####`` answer as the authors' (instruction, target)."""
    return question + GSM8K_QUESTION_SUFFIX, answer.replace("####", GSM8K_ANSWER_PHRASE)


def final_number(text: str) -> str | None:
    """A training target's label: the number after ``GSM8K_ANSWER_PHRASE``, else the last number in ``text`` (commas
    removed)."""
    head, sep, tail = text.rpartition(GSM8K_ANSWER_PHRASE.strip())
    found = _LABEL_NUMBER.findall(tail if sep else text)
    if not found:
        return None
    return (found[0] if sep else found[-1]).replace(",", "")


def extract_number(text: str) -> float:
    """The authors' GSM8K extraction for scoring: the number after the answer phrase, else the last number; inf
    when none."""
    text = text.replace(",", "")
    numbers = _AUTHORS_NUMBER.findall(text)
    if not numbers:
        return math.inf
    parts = text.split(GSM8K_ANSWER_PHRASE)
    if len(parts) > 1:
        after = _AUTHORS_NUMBER.findall(parts[1])
        if after:
            return _to_float(after[0])
    return _to_float(numbers[-1])


def _to_float(s: str) -> float:
    try:
        return float(s)
    except ValueError:
        return math.inf


def is_correct(task: str, answer: str, label: str) -> bool:
    """The published check for one answer (see the module's docstring)."""
    if task == "gsm8k":
        return extract_number(answer) == extract_number(label)
    return any(word in answer for word in _words(task, label))


def is_correct_strict(task: str, answer: str, label: str) -> bool:
    """Exactly one label word in the answer, and it is the right one (GSM8K: the phrase must be there)."""
    if task == "gsm8k":
        after = answer.replace(",", "").split(GSM8K_ANSWER_PHRASE.strip(), 1)
        numbers = _AUTHORS_NUMBER.findall(after[1]) if len(after) == 2 else []
        return bool(numbers) and _to_float(numbers[0]) == extract_number(label)
    _words(task, label)  # validates task and label
    patterns = TASKS[task].strict_patterns
    named = [lab for lab, pat in patterns.items() if re.search(pat, answer, re.IGNORECASE)]
    return named == [label]


def _words(task: str, label: str) -> tuple[str, ...]:
    # ValueError, not UserError: labels were checked when the task file was read, so this is a caller's bug
    words = TASKS[task].published_words if task in TASKS else {}
    if not words:
        raise ValueError(f"unknown task '{task}' (use one of {', '.join(TASKS)})")
    if label not in words:
        raise ValueError(f"{task}: unknown label '{label}' (use one of {', '.join(words)})")
    return words[label]


TASKS: dict[str, Task] = {
    "sst2": Task("sst2", "stanfordnlp/sst2", None, "train", "validation",
                 "Analyze the sentiment of the input, and respond only positive or negative",
                 ("negative", "positive"),
                 {"positive": ("positive", "Positive"), "negative": ("negative", "Negative")},
                 {"positive": r"\bpositive\b", "negative": r"\bnegative\b"}),
    "agnews": Task("agnews", "fancyzhx/ag_news", None, "train", "test",
                   "Categorize the news article given in the input into one of the 4 categories:\n\n"
                   "World\nSports\nBusiness\nSci/Tech\n",
                   ("World", "Sports", "Business", "Sci/Tech"),
                   {"World": ("World", "world"), "Sports": ("Sports", "sports"), "Business": ("Business", "business"),
                    "Sci/Tech": ("Sci/Tech", "sci")},
                   {"World": r"\bworld\b", "Sports": r"\bsports\b", "Business": r"\bbusiness\b",
                    "Sci/Tech": r"\bsci\s*/\s*tech\b"}),
    "gsm8k": Task("gsm8k", "openai/gsm8k", "main", "train", "test", ""),
}


def task_name(name: str) -> str:
    """``name`` spelled as a key of TASKS (``ag_news``, ``AG-News`` -> ``agnews``); an unknown name comes back as it
    is, for the caller (argparse's choices, ``get_task``) to reject."""
    key = name.lower().replace("_", "").replace("-", "")
    return key if key in TASKS else name


def get_task(name: str) -> Task:
    key = task_name(name)
    if key not in TASKS:
        raise UserError(f"task: unknown task '{name}' (choose from {', '.join(TASKS)})")
    return TASKS[key]


def hub_task(hub_id: str) -> Task | None:
    """The task whose hub data set is ``hub_id`` (also the short ids ``sst2``, ``ag_news``, ``gsm8k``)."""
    for task in TASKS.values():
        if hub_id.lower() in (task.hub_id.lower(), task.hub_id.split("/")[1].lower()):
            return task
    return None
