"""The fine-tuning tasks (SST-2, AG News, GSM8K) in the authors' instruction and answer formats (docs/design.md §3).

Each task turns a hub row (``sentence/label``, ``text/label``, ``question/answer``) or an already formatted row
(Alpaca, a templated merged file, or a chat turn ``<instruction>\\nInput: <text>``) into
``{instruction, input, output, label}``, where ``label`` is what fine-tuning accuracy compares against.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tvaccine.data.files import text_field
from tvaccine.errors import UserError

GSM8K_QUESTION_SUFFIX = "\nFirst think step by step and then answer the final number.\n"
GSM8K_ANSWER_PHRASE = "The final answer is: "  # replaces GSM8K's "####" in training targets
_NUMBER = re.compile(r"-?[\d,]*\.?\d+")


@dataclass(frozen=True)
class Task:
    name: str
    hub_id: str
    hub_config: str | None
    train_split: str
    eval_split: str
    instruction: str  # the authors' instruction; GSM8K appends GSM8K_QUESTION_SUFFIX to the question instead
    labels: tuple[str, ...] = ()  # label words, index = the hub's integer label

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
        output = answer.replace("####", GSM8K_ANSWER_PHRASE)
        label = final_number(output)
        if label is None:
            raise UserError(f"{where['_where']}: field '{field}' has no final number")
        return {"instruction": question + GSM8K_QUESTION_SUFFIX, "input": "", "output": output, "label": label}


def final_number(text: str) -> str | None:
    """The number after ``The final answer is:``, else the last number in ``text`` (commas removed)."""
    head, sep, tail = text.rpartition(GSM8K_ANSWER_PHRASE.strip())
    found = _NUMBER.findall(tail if sep else text)
    if not found:
        return None
    return (found[0] if sep else found[-1]).replace(",", "")



TASKS: dict[str, Task] = {
    "sst2": Task("sst2", "stanfordnlp/sst2", None, "train", "validation",
                 "Analyze the sentiment of the input, and respond only positive or negative",
                 ("negative", "positive")),
    "agnews": Task("agnews", "fancyzhx/ag_news", None, "train", "test",
                   "Categorize the news article given in the input into one of the 4 categories:\n\n"
                   "World\nSports\nBusiness\nSci/Tech\n",
                   ("World", "Sports", "Business", "Sci/Tech")),
    "gsm8k": Task("gsm8k", "openai/gsm8k", "main", "train", "test", ""),
}


def get_task(name: str) -> Task:
    key = name.lower().replace("_", "").replace("-", "")
    if key not in TASKS:
        raise UserError(f"task: unknown task '{name}' (choose from {', '.join(TASKS)})")
    return TASKS[key]


def hub_task(hub_id: str) -> Task | None:
    """The task whose hub data set is ``hub_id`` (also the short ids ``sst2``, ``ag_news``, ``gsm8k``)."""
    for task in TASKS.values():
        if hub_id.lower() in (task.hub_id.lower(), task.hub_id.split("/")[1].lower()):
            return task
    return None
