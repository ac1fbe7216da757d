"""The Alpaca prompt template used in training and evaluation (docs/design.md §3), as the authors'
``PROMPT_DICT`` has it.

Some published data files (the xinykou merged sets) hold the whole templated prompt in ``instruction``;
``strip_template`` recovers the instruction and input so the template is not applied twice.
"""

from __future__ import annotations

PREAMBLE_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
)
PREAMBLE_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request."
)
PROMPT_NO_INPUT = PREAMBLE_NO_INPUT + "\n\n### Instruction:\n{instruction}\n\n### Response:\n"
PROMPT_WITH_INPUT = (PREAMBLE_WITH_INPUT
                     + "\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n")

_INSTRUCTION, _INPUT, _RESPONSE = "\n\n### Instruction:\n", "\n\n### Input:\n", "\n\n### Response:"


def format_prompt(instruction: str, input: str = "") -> str:
    if input:
        return PROMPT_WITH_INPUT.format(instruction=instruction, input=input)
    return PROMPT_NO_INPUT.format(instruction=instruction)


def strip_template(text: str) -> tuple[str, str] | None:
    """``(instruction, input)`` if ``text`` is a whole Alpaca prompt (with or without the final newline), else None."""
    for preamble in (PREAMBLE_WITH_INPUT, PREAMBLE_NO_INPUT):
        head = preamble + _INSTRUCTION
        if text.startswith(head):
            break
    else:
        return None
    body = text[len(head):]
    if body.endswith("\n"):
        body = body[:-1]
    if not body.endswith(_RESPONSE):
        return None
    body = body[: -len(_RESPONSE)]
    if preamble == PREAMBLE_WITH_INPUT:
        instruction, sep, input = body.partition(_INPUT)
        return (instruction, input) if sep else None
    return body, ""
