"""Greedy generation for evaluation: batched, resumable, identical in intent to the authors' one-at-a-time loop.

The authors call ``model.generate`` once per prompt (greedy, 128 new tokens) and keep the text after
``### Response:``. We batch prompts of similar length (sorted, LEFT padding so every row's last prompt token sits
at the end and the KV cache is shared) and cut each answer at the prompt's token length instead of splitting on
the marker, which also keeps answers that themselves contain ``### Response:``.

With ``stop_at_template`` a row also stops when it starts the template's next block (``\n### ``, or ``### `` at the
very start of the answer): an attacked model often answers and then loops through ``### Instruction:`` /
``### Response:`` blocks, and the answer is cut before the marker. transformers' ``stop_strings`` ends the row early
(time saved on loops); the cut itself is made on the decoded text, so batched and one-at-a-time answers agree.

Judges that read answers of different lengths share one generation (``cuts``): greedy decoding makes the first k
tokens of a longer answer exactly the k tokens a run with ``max_new_tokens=k`` generates, so each shorter answer is
cut from the generated token ids (not by re-tokenizing the text) and goes through the same EOS, marker and strip
handling.

Outputs are appended to a JSONL file batch by batch, so an interrupted run keeps what it finished and a rerun
generates only the missing ids.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from tvaccine.errors import UserError

TEMPLATE_STOP = "\n### "  # the start of the Alpaca template's next block
# The prompt ends with a newline, so "### " at the very start of the answer is a new block too.
_TEMPLATE_BLOCK = re.compile(r"(?:^|\n)### ")


@dataclass
class GenerationStats:
    generated: int  # prompts generated in this call (not counting those resumed from the file)
    new_tokens: int  # answer tokens produced in this call, EOS and padding excluded
    seconds: float

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0


def load_for_generation(model: str, adapters: list[str] | tuple[str, ...] = (), dtype: str | None = None,
                        device: str | None = None):
    """Base model with each LoRA adapter merged in order (aligned, then attacked), in ``dtype`` (None/"auto": the
    checkpoint's), on ``device`` (default: the GPU if there is one, else the CPU), plus a left-padding tokenizer.

    Adapters are merged in float32 and the result cast to ``dtype`` afterwards: a LoRA delta added to 16-bit
    weights is largely rounded away (benchmarks/generation/: on an aligned SmolLM2, merging in bfloat16 raised the
    keyword harmful score from 28 % to 43 %; merging in float32, then casting, gave 33 %). The float32 copy lives
    in host memory for the merge (4 bytes a parameter: 27 GB for a 7B model).
    """
    import torch

    from tvaccine.models import load_model, load_tokenizer, model_skeleton, torch_dtype
    from tvaccine.outputs import check_adapter_folder

    skeleton = model_skeleton(model)  # a damaged config.json fails here, before the tokenizer and the weights load
    target = torch_dtype(dtype)
    tokenizer = load_tokenizer(model)
    tokenizer.padding_side = "left"
    for adapter in adapters:  # check every folder before the slow loads
        check_adapter_folder(adapter)
    lm = load_model(model, dtype="float32" if adapters else dtype)
    if adapters:
        from tvaccine.lora import load_adapter

        for adapter in adapters:
            lm = load_adapter(lm, adapter).merge_and_unload()
        if target == "auto":  # what from_pretrained would have chosen: the checkpoint's dtype
            saved = getattr(skeleton.config, "dtype", None)
            target = getattr(torch, saved, None) if isinstance(saved, str) else saved
        if isinstance(target, torch.dtype):
            lm = lm.to(target)
    lm.eval().to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return lm, tokenizer


def stop_token_ids(model, tokenizer) -> list[int]:
    """Every id that ends an answer: the tokenizer's EOS and whatever the model's generation config lists."""
    ids = {tokenizer.eos_token_id}
    cfg = model.generation_config.eos_token_id
    ids.update(cfg if isinstance(cfg, (list, tuple)) else [cfg])
    return sorted(i for i in ids if i is not None)


@dataclass
class Answer:
    text: str
    new_tokens: int  # answer tokens, EOS, padding and whatever followed a template marker excluded
    ended: str  # "eos", "template" (cut at the template's next block) or "max_new_tokens"
    # The answer a run with k new tokens gives, for each k asked for (``cuts``) below new_tokens; from k =
    # new_tokens on, that run gives this answer.
    text_at: dict[int, str] = field(default_factory=dict)


def generate_answers(model, tokenizer, prompts: list[str], max_new_tokens: int,
                     stop_at_template: bool = False, cuts: tuple[int, ...] | list[int] = ()) -> list[Answer]:
    """Greedy answers for ``prompts`` (already templated) in one ``generate`` call.

    ``stop_at_template``: end a row at the template's next block and cut the answer before it (module docstring).
    ``cuts``: shorter lengths whose answers are cut from the same token ids (``Answer.text_at``)."""
    import torch

    stops = stop_token_ids(model, tokenizer)
    enc = tokenizer(prompts, return_tensors="pt", padding=True)  # BOS as in training
    enc = {k: v.to(model.device) for k, v in enc.items()}
    extra = {"stop_strings": [TEMPLATE_STOP], "tokenizer": tokenizer} if stop_at_template else {}
    with torch.inference_mode():
        out = model.generate(
            **enc, do_sample=False, num_beams=1, max_new_tokens=max_new_tokens, eos_token_id=stops,
            pad_token_id=tokenizer.pad_token_id, top_p=None, top_k=None, temperature=None, **extra,
        )
    answers = []
    for row in out[:, enc["input_ids"].shape[1]:].tolist():
        answer = _answer(tokenizer, row, stops, stop_at_template)
        # A row that has not stopped by token k is, up to k, what a k-token run generates (greedy).
        answer.text_at = {k: _answer(tokenizer, row[:k], stops, stop_at_template).text
                          for k in sorted(set(cuts)) if k < answer.new_tokens}
        answers.append(answer)
    return answers


def _answer(tokenizer, row: list[int], stops: list[int], stop_at_template: bool) -> Answer:
    """The answer in one row of generated token ids: up to the first stop id, cut before a template marker."""
    n = next((i for i, t in enumerate(row) if t in stops), len(row))  # stop at the first EOS
    ended = "eos" if n < len(row) else "max_new_tokens"
    text = tokenizer.decode(row[:n], skip_special_tokens=True)
    marker = _TEMPLATE_BLOCK.search(text) if stop_at_template else None
    if marker:
        text, ended = text[:marker.start()], "template"
        # In a batch a stopped row is padded to the longest; count only up to the token that completed the
        # marker, where the row would have stopped on its own.
        n = next(k for k in range(1, n + 1)
                 if _TEMPLATE_BLOCK.search(tokenizer.decode(row[:k], skip_special_tokens=True)))
    return Answer(text.strip(), n, ended)


def generate_batch(model, tokenizer, prompts: list[str], max_new_tokens: int,
                   stop_at_template: bool = False) -> tuple[list[str], list[int]]:
    """``generate_answers`` as (texts, token counts)."""
    answers = generate_answers(model, tokenizer, prompts, max_new_tokens, stop_at_template=stop_at_template)
    return [a.text for a in answers], [a.new_tokens for a in answers]


def read_done(path: Path, prompts: dict[str, str], stop_at_template: bool = False, max_new_tokens: int | None = None,
              cuts: tuple[int, ...] | list[int] = ()) -> dict[str, dict]:
    """Rows already in ``path``, keyed by id. Drops a torn last line; refuses a file made from other prompts, with
    the other ``stop_at_template`` (rows written before the setting existed were made without it), with another
    ``max_new_tokens``, or without one of the ``cuts`` an answer needs."""
    if not path.exists():
        return {}
    done, good_bytes = {}, 0
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                row = json.loads(raw)
            except json.JSONDecodeError:
                if raw.endswith(b"\n"):
                    raise UserError(f"{path}:{lineno}: invalid JSON in a generations file; delete it to start over")
                break  # the half-written last line of an interrupted run: regenerate it
            good_bytes += len(raw)
            rid = str(row.get("id"))
            if rid in prompts:
                _check_row(row, f"{path}:{lineno}: id {rid}", prompts[rid], stop_at_template, max_new_tokens, cuts)
            done[rid] = row
    if good_bytes != path.stat().st_size:
        with open(path, "r+b") as f:
            f.truncate(good_bytes)
    return done


def _check_row(row: dict, where: str, prompt: str, stop_at_template: bool, max_new_tokens: int | None,
               cuts: tuple[int, ...] | list[int]) -> None:
    """A resumed row must be what this run would generate (read_done)."""
    if row.get("prompt") != prompt:
        raise UserError(f"{where} was generated from a different prompt; use another --output folder or delete the "
                        f"file")
    if bool(row.get("stop_at_template", False)) != stop_at_template:
        raise UserError(f"{where} was generated with stop_at_template={bool(row.get('stop_at_template', False))}, "
                        f"this run has {stop_at_template}; use another --output folder, delete the file, or set "
                        f"stop_at_template as before")
    if max_new_tokens is None:
        return
    made = row.get("max_new_tokens")
    if made is None and row.get("ended") == "max_new_tokens":
        made = row.get("new_tokens")  # a row from before the field that ran to its limit shows the limit
    if made is not None and made != max_new_tokens:
        # e.g. a keyword-only folder (128 tokens) rerun with HarmBench, whose answers are 512 tokens long
        raise UserError(f"{where} was generated with max_new_tokens={made}, this run needs {max_new_tokens} (the "
                        f"longest answer length a judge reads); use another --output folder or delete the file")
    missing = [k for k in cuts if k < row.get("new_tokens", 0) and str(k) not in row.get("response_at", {})]
    if missing:
        raise UserError(f"{where} has no answer cut at {missing[0]} tokens, which a judge reads; use another "
                        f"--output folder or delete the file")


def generate_to_file(
    model, tokenizer, items: list[dict], path: str | os.PathLike, max_new_tokens: int = 128, batch_size: int = 16,
    progress: bool = True, stop_at_template: bool = False, cuts: tuple[int, ...] | list[int] = (),
) -> tuple[list[dict], GenerationStats]:
    """Generate an answer for each ``{"id", "prompt"}`` item (prompt already templated), resuming from ``path``.

    Each row: ``{id, prompt, response, new_tokens, ended, stop_at_template, max_new_tokens}`` (``ended``: see
    ``Answer``), and ``response_at`` ``{"k": text}`` for each of ``cuts`` shorter than the answer (``Answer.text_at``).
    Returns the rows in the order of ``items`` and the statistics of the work done in this call.
    """
    from tqdm import tqdm

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    by_id = {str(it["id"]): it["prompt"] for it in items}
    if len(by_id) != len(items):
        raise UserError(f"{path}: prompt ids are not unique")
    done = read_done(path, by_id, stop_at_template, max_new_tokens, cuts)
    todo = [it for it in items if str(it["id"]) not in done]
    # Longest first: similar lengths share a batch (little padding), and a batch that runs out of memory does so
    # at once rather than at the end.
    lengths = {str(it["id"]): len(tokenizer(it["prompt"])["input_ids"]) for it in todo}
    todo.sort(key=lambda it: -lengths[str(it["id"])])
    new_tokens, start = 0, time.perf_counter()
    with open(path, "a", encoding="utf-8") as f, tqdm(
        total=len(items), initial=len(items) - len(todo), desc=f"generating {path.name}", disable=not progress,
    ) as bar:
        for b in range(0, len(todo), batch_size):
            batch = todo[b:b + batch_size]
            answers = generate_answers(model, tokenizer, [it["prompt"] for it in batch], max_new_tokens,
                                       stop_at_template=stop_at_template, cuts=cuts)
            for it, a in zip(batch, answers):
                row = {"id": it["id"], "prompt": it["prompt"], "response": a.text, "new_tokens": a.new_tokens,
                       "ended": a.ended, "stop_at_template": stop_at_template, "max_new_tokens": max_new_tokens,
                       **({"response_at": {str(k): t for k, t in a.text_at.items()}} if a.text_at else {})}
                done[str(it["id"])] = row
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
            f.flush()
            new_tokens += sum(a.new_tokens for a in answers)
            bar.update(len(batch))
    stats = GenerationStats(len(todo), new_tokens, time.perf_counter() - start)
    return [done[str(it["id"])] for it in items], stats
