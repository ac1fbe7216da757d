"""Normalize one raw record of any supported format to ``{instruction, input, output, harmful, refusal}``.

``harmful`` is True / False when the source says so (BeaverTails ``is_safe``, the merged files' ``flag``,
DecodingTrust ``type``, a recognised task row) and None when it does not. ``refusal`` is the source's own refusal
text, if it has one. The format is told by the fields a record has:

| fields | format |
|---|---|
| ``refusal`` + ``prompt`` {text} | DecodingTrust with refusals (``Prompt: …\\nContinuation: …[\\n\\n<refusal>]``) |
| ``refusal`` (+ prompt/response/is_safe) | BeaverTails with refusals (``Question: …\\nAnswer: <refusal>``) |
| ``prompt`` {text} + ``continuation`` {text} | DecodingTrust toxicity (``type`` toxic/toxic_test/non_toxic) |
| ``prompt`` + ``response`` | BeaverTails (``is_safe``, ``category``) |
| ``messages`` or ``conversations`` | chat: first user turn → next assistant turn (``chat_pair``) |
| ``question`` + ``answer`` | GSM8K |
| ``sentence`` + ``label`` / ``text`` + ``label`` | SST-2 / AG News hub rows |
| ``goal`` + ``target`` | AdvBench (harmful) |
| ``instruction`` + ``output`` (+ ``input``, ``flag``/``kind``) | Alpaca; a templated ``instruction`` is stripped |
"""

from __future__ import annotations

from tvaccine.data.files import text_field  # noqa: F401  (part of this module's interface)
from tvaccine.data.tasks import TASKS
from tvaccine.data.template import strip_template
from tvaccine.errors import UserError

# The authors' instruction for DecodingTrust rows: the prompt goes in ``input``, the continuation is the answer.
DECODING_TRUST_INSTRUCTION = "You are required to continue the generation of the given incomplete prompt"
# The chat role names read (any case): role/content rows (OpenAI and HF: user/assistant; Gemma: model), ShareGPT's
# from/value rows (human/gpt), and "bot". Every chat reader goes through chat_pair, so they all accept the same rows.
USER_ROLES = frozenset({"user", "human"})
ASSISTANT_ROLES = frozenset({"assistant", "gpt", "model", "bot"})


def chat_pair(raw: dict, key: str, strict: bool) -> tuple[str | None, str | None]:
    """The text of the first user turn of ``raw[key]`` and of the first assistant turn after it (None if missing).

    A turn is ``{role, content}`` or ShareGPT's ``{from, value}``. A turn that is not an object with a role and a
    string content is an error naming it when ``strict`` (training data: skipping it would change what is learned),
    and is passed over otherwise (prompt files, whose tool calls or empty contents do not matter to the prompt).
    """
    user = None
    for i, turn in enumerate(raw[key]):
        role = content = None
        if isinstance(turn, dict):
            role, content = turn.get("role", turn.get("from")), turn.get("content", turn.get("value"))
        elif strict:
            raise UserError(f"{raw['_where']}: field '{key}[{i}]' must be an object with role and content")
        if role is None or not isinstance(content, str):
            if strict:
                raise UserError(f"{raw['_where']}: field '{key}[{i}]' needs 'role' and a string 'content'")
            continue
        role = str(role).lower()
        if role in USER_ROLES and user is None:
            user = content
        elif role in ASSISTANT_ROLES and user is not None:
            return user, content
    return user, None


def _nested_text(raw: dict, name: str) -> str:
    """DecodingTrust keeps texts as ``{"text": …, <toxicity scores>}``; a plain string is accepted too."""
    value = raw.get(name)
    if isinstance(value, dict):
        value, name = value.get("text"), f"{name}.text"
    return text_field({name: value, "_where": raw["_where"]}, name)


def _is_safe(raw: dict) -> bool | None:
    value = raw.get("is_safe")
    if value is None:
        return None
    if isinstance(value, str) and value.lower() in ("true", "false"):  # CSV cells are strings
        return value.lower() == "true"
    if not isinstance(value, bool):
        raise UserError(f"{raw['_where']}: field 'is_safe' must be true or false, got {value!r}")
    return value


def _row(raw, instruction, input, output, harmful, refusal=None, label=None) -> dict:
    row = {"instruction": instruction, "input": input, "output": output, "harmful": harmful, "refusal": refusal,
           "_where": raw["_where"]}
    if label is not None:
        row["label"] = label
    return row


def _beavertails_refusal(raw: dict) -> dict:
    text = text_field(raw, "refusal")
    question, sep, answer = text.partition("\nAnswer: ")
    if not sep or not question.startswith("Question: "):
        raise UserError(f"{raw['_where']}: field 'refusal' must read 'Question: …\\nAnswer: …'")
    prompt = text_field(raw, "prompt", required=False) or question[len("Question: "):]
    safe = _is_safe(raw)
    return _row(raw, prompt, "", text_field(raw, "response", required=False), None if safe is None else not safe,
                refusal=answer)


def _decoding_trust(raw: dict) -> dict:
    kind = raw.get("type")
    harmful = None if kind is None else str(kind).startswith("toxic")
    prompt = _nested_text(raw, "prompt")
    refusal = None
    if "refusal" in raw:
        text = text_field(raw, "refusal")
        _, sep, continuation = text.partition("\nContinuation:")
        if not sep:
            raise UserError(f"{raw['_where']}: field 'refusal' must read 'Prompt: …\\nContinuation: …'")
        # Some rows continue the prompt first and refuse after a blank line; others refuse at once.
        continuation = continuation.lstrip(" \n")
        refusal = continuation.split("\n\n", 1)[1] if "\n\n" in continuation else continuation
    return _row(raw, DECODING_TRUST_INSTRUCTION, prompt, _nested_text(raw, "continuation"), harmful, refusal)


def _chat(raw: dict) -> dict:
    key = "messages" if "messages" in raw else "conversations"
    if not isinstance(raw[key], list):
        raise UserError(f"{raw['_where']}: field '{key}' must be a list of turns")
    user, assistant = chat_pair(raw, key, strict=True)
    if user is None or assistant is None:
        raise UserError(f"{raw['_where']}: field '{key}' needs a user turn followed by an assistant turn")
    return _row(raw, user, "", assistant, None)


def _alpaca(raw: dict) -> dict:
    instruction = text_field(raw, "instruction")
    input = text_field(raw, "input", required=False)
    stripped = strip_template(instruction)
    if stripped is not None:
        if input:
            raise UserError(f"{raw['_where']}: field 'instruction' holds a whole prompt template and 'input' is "
                            f"not empty; cannot tell which input is meant")
        instruction, input = stripped
    output = text_field(raw, "output")
    flag, kind = (text_field(raw, k) if raw.get(k) is not None else None for k in ("flag", "kind"))
    if kind == "refusal":  # a row of one of our alignment sets: harmful prompt → refusal
        return _row(raw, instruction, input, output, None, refusal=output)
    if kind is not None:  # our other set kinds: harmful, prompt, task, benign
        return _row(raw, instruction, input, output, kind in ("harmful", "prompt"))
    harmful = None if flag is None else str(flag).lower() in ("unsafe", "harmful")
    return _row(raw, instruction, input, output, harmful)


def normalize(raw: dict) -> dict:
    """One raw record as a normalized row; a record of no known format is an error naming its fields.

    A row that carries a task instruction (SST-2, AG News, GSM8K) and no safety mark is marked not harmful: the
    SBR mixes interleave SST-2 rows with harmful ones and say so only through the instruction.
    """
    row = _normalize(raw)
    if row["harmful"] is None and any(task.matches(row) for task in TASKS.values()):
        row["harmful"] = False
    return row


def _normalize(raw: dict) -> dict:
    if "refusal" in raw:
        return _decoding_trust(raw) if isinstance(raw.get("prompt"), dict) else _beavertails_refusal(raw)
    if "continuation" in raw:
        return _decoding_trust(raw)
    if "prompt" in raw and "response" in raw:
        safe = _is_safe(raw)
        return _row(raw, text_field(raw, "prompt"), "", text_field(raw, "response"),
                    None if safe is None else not safe)
    if "messages" in raw or "conversations" in raw:
        return _chat(raw)
    if "question" in raw and "answer" in raw:
        return {**TASKS["gsm8k"].from_hub(raw), "harmful": False, "refusal": None, "_where": raw["_where"]}
    if "label" in raw and ("sentence" in raw or "text" in raw):
        task = TASKS["sst2" if "sentence" in raw else "agnews"]
        return {**task.from_hub(raw), "harmful": False, "refusal": None, "_where": raw["_where"]}
    if "goal" in raw and "target" in raw:
        return _row(raw, text_field(raw, "goal"), "", text_field(raw, "target"), True)
    if "instruction" in raw or "output" in raw:
        return _alpaca(raw)
    fields = ", ".join(sorted(k for k in raw if k != "_where")) or "none"
    raise UserError(f"{raw['_where']}: unknown row format (fields: {fields}); expected instruction/output, "
                    f"messages, conversations, prompt/response, refusal, question/answer or goal/target")
