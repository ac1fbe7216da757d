"""General capability, before and after the attack: a multiple-choice knowledge check (MMLU-style), scored by the
answer letter's likelihood.

A defense that breaks the model must not look safe: a model that answers nothing coherent has a low harmful score
too. This check needs no generation and no judge. Each question is put in the evaluation template, with the four
options and "Answer with the letter of the correct option." as the instruction. The model's answer is the letter
among A-D that gets the highest probability as the response's first token. The score is accuracy with a Wilson
interval, beside chance (25 % for four options).

Zero-shot, in the evaluation template, unlike the published 5-shot MMLU numbers: the comparison that matters here is
the same model before and after alignment and attack, not a leaderboard. Rows: ``question``, ``choices`` (a list of
options, or ``A``..``D`` columns) and ``answer`` (the index, or the letter), as the ``cais/mmlu`` hub data set has
them (config ``all``, split ``test``) or a local file.
"""

from __future__ import annotations

from tvaccine.errors import UserError

LETTERS = "ABCDEFGHIJ"
MMLU_HUB = "cais/mmlu"
INSTRUCTION_TAIL = "Answer with the letter of the correct option."


def parse_question(raw: dict, where: str) -> dict:
    """One row as {question, choices, answer (index)}; a bad row is named by ``where``."""
    question = raw.get("question")
    choices = raw.get("choices")
    if choices is None and "A" in raw:
        choices = [raw[letter] for letter in LETTERS if letter in raw]
    if not isinstance(question, str) or not question.strip():
        raise UserError(f"{where}: field 'question' must be a non-empty string")
    if not isinstance(choices, list) or not 2 <= len(choices) <= len(LETTERS) or not all(
            isinstance(c, str) for c in choices):
        raise UserError(f"{where}: field 'choices' must be a list of 2 to {len(LETTERS)} option strings")
    answer = raw.get("answer")
    if isinstance(answer, str) and len(answer.strip()) == 1 and answer.strip().upper() in LETTERS:
        answer = LETTERS.index(answer.strip().upper())
    if not isinstance(answer, int) or isinstance(answer, bool) or not 0 <= answer < len(choices):
        raise UserError(f"{where}: field 'answer' must be the index (0..{len(choices) - 1}) or the letter of the "
                        f"correct option, got {raw.get('answer')!r}")
    return {"question": question.strip(), "choices": choices, "answer": answer}


def read_questions(ref: str, limit: int | None = None) -> list[dict]:
    """The questions of a local file or a hub data set (``cais/mmlu`` → config all, split test)."""
    from tvaccine.data.files import read_records
    from tvaccine.data.sources import hub_records, is_local, parse_ref

    ref, split = parse_ref(ref)
    if is_local(ref):
        raw = read_records(ref)
    else:
        raw, _, _ = hub_records(ref, split or "test", config="all" if ref.lower() == MMLU_HUB else None)
    rows = [{"id": str(i), **parse_question(r, r.get("_where", f"{ref} row {i}"))} for i, r in enumerate(raw)]
    if not rows:
        raise UserError(f"{ref}: no questions")
    return rows[:limit] if limit else rows


def question_prompt(row: dict) -> str:
    from tvaccine.data.template import format_prompt

    options = "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(row["choices"]))
    return format_prompt(f"{row['question']}\n\n{options}\n\n{INSTRUCTION_TAIL}", "")


def letter_token_ids(tokenizer, count: int) -> list[int]:
    """The token each answer letter starts with at the start of a response. Letters that share a first token
    could not be told apart: refused."""
    ids = [tokenizer.encode(letter, add_special_tokens=False)[0] for letter in LETTERS[:count]]
    if len(set(ids)) != len(ids):
        raise UserError(f"knowledge check: the tokenizer gives two answer letters the same first token ({ids})")
    return ids


def answer_letters(model, tokenizer, rows: list[dict], batch_size: int = 16) -> list[int]:
    """The option each question gets: the letter with the highest next-token logit after the prompt."""
    import torch

    device = next(model.parameters()).device
    letters = letter_token_ids(tokenizer, max(len(r["choices"]) for r in rows))
    side, tokenizer.padding_side = tokenizer.padding_side, "left"  # the last position is every row's next token
    chosen = []
    try:
        for start in range(0, len(rows), batch_size):
            batch = rows[start:start + batch_size]
            enc = tokenizer([question_prompt(r) for r in batch], return_tensors="pt", padding=True).to(device)
            with torch.no_grad():
                last = model(**enc).logits[:, -1, :]
            for row, logits in zip(batch, last):
                chosen.append(int(torch.argmax(logits[letters[:len(row["choices"])]])))
    finally:
        tokenizer.padding_side = side
    return chosen


def knowledge_score(rows: list[dict], chosen: list[int]) -> dict:
    """Accuracy (percent, Wilson interval) and chance, the accuracy of guessing."""
    from tvaccine.evaluation.scores import rate

    out = rate([c == r["answer"] for r, c in zip(rows, chosen)])
    out["chance"] = round(100 * sum(1 / len(r["choices"]) for r in rows) / len(rows), 2)
    return out
