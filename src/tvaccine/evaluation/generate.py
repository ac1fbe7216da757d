"""Greedy generation for evaluation: batched, resumable, identical in intent to the authors' one-at-a-time loop.

The authors call ``model.generate`` once per prompt (greedy, 128 new tokens) and keep the text after
``### Response:``. We batch prompts of similar length (sorted, LEFT padding so every row's last prompt token sits
at the end and the KV cache is shared) and cut each answer at the prompt's token length instead of splitting on
the marker, which also keeps answers that themselves contain ``### Response:``.

Outputs are appended to a JSONL file batch by batch, so an interrupted run keeps what it finished and a rerun
generates only the missing ids.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from tvaccine.errors import UserError


@dataclass
class GenerationStats:
    generated: int  # prompts generated in this call (not counting those resumed from the file)
    new_tokens: int  # answer tokens produced in this call, EOS and padding excluded
    seconds: float

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0


def load_for_generation(model: str, adapters: list[str] | tuple[str, ...] = (), dtype: str | None = None):
    """Base model with each LoRA adapter merged in order (aligned, then attacked), plus a left-padding tokenizer."""
    from tvaccine.models import load_model, load_tokenizer, model_skeleton

    model_skeleton(model)  # a damaged config.json fails here, before the tokenizer and the weights load
    tokenizer = load_tokenizer(model)
    tokenizer.padding_side = "left"
    for adapter in adapters:  # check every folder before the slow loads
        if not (Path(adapter) / "adapter_config.json").is_file():
            raise UserError(f"{adapter}: not a LoRA adapter folder (no adapter_config.json)")
    lm = load_model(model, dtype=dtype)
    if adapters:
        from peft import PeftModel

        for adapter in adapters:
            lm = PeftModel.from_pretrained(lm, adapter).merge_and_unload()
    lm.eval()
    return lm, tokenizer


def stop_token_ids(model, tokenizer) -> list[int]:
    """Every id that ends an answer: the tokenizer's EOS and whatever the model's generation config lists."""
    ids = {tokenizer.eos_token_id}
    cfg = model.generation_config.eos_token_id
    ids.update(cfg if isinstance(cfg, (list, tuple)) else [cfg])
    return sorted(i for i in ids if i is not None)


def generate_batch(model, tokenizer, prompts: list[str], max_new_tokens: int) -> tuple[list[str], list[int]]:
    """Greedy answers for ``prompts`` (already templated) in one ``generate`` call; returns texts and token counts."""
    import torch

    stops = stop_token_ids(model, tokenizer)
    enc = tokenizer(prompts, return_tensors="pt", padding=True)  # BOS as in training
    enc = {k: v.to(model.device) for k, v in enc.items()}
    with torch.inference_mode():
        out = model.generate(
            **enc, do_sample=False, num_beams=1, max_new_tokens=max_new_tokens, eos_token_id=stops,
            pad_token_id=tokenizer.pad_token_id, top_p=None, top_k=None, temperature=None,
        )
    new = out[:, enc["input_ids"].shape[1]:]
    texts, counts = [], []
    for row in new.tolist():
        n = next((i for i, t in enumerate(row) if t in stops), len(row))  # stop at the first EOS
        texts.append(tokenizer.decode(row[:n], skip_special_tokens=True).strip())
        counts.append(n)
    return texts, counts


def read_done(path: Path, prompts: dict[str, str]) -> dict[str, dict]:
    """Rows already in ``path``, keyed by id. Drops a torn last line; refuses a file made from other prompts."""
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
            if rid in prompts and row.get("prompt") != prompts[rid]:
                raise UserError(
                    f"{path}:{lineno}: id {rid} was generated from a different prompt; "
                    f"use another --output folder or delete the file"
                )
            done[rid] = row
    if good_bytes != path.stat().st_size:
        with open(path, "r+b") as f:
            f.truncate(good_bytes)
    return done


def generate_to_file(
    model, tokenizer, items: list[dict], path: str | os.PathLike, max_new_tokens: int = 128, batch_size: int = 16,
    progress: bool = True,
) -> tuple[list[dict], GenerationStats]:
    """Generate an answer for each ``{"id", "prompt"}`` item (prompt already templated), resuming from ``path``.

    Returns the rows in the order of ``items`` and the statistics of the work done in this call.
    """
    from tqdm import tqdm

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    by_id = {str(it["id"]): it["prompt"] for it in items}
    if len(by_id) != len(items):
        raise UserError(f"{path}: prompt ids are not unique")
    done = read_done(path, by_id)
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
            texts, counts = generate_batch(model, tokenizer, [it["prompt"] for it in batch], max_new_tokens)
            for it, text, n in zip(batch, texts, counts):
                row = {"id": it["id"], "prompt": it["prompt"], "response": text, "new_tokens": n}
                done[str(it["id"])] = row
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
            f.flush()
            new_tokens += sum(counts)
            bar.update(len(batch))
    stats = GenerationStats(len(todo), new_tokens, time.perf_counter() - start)
    return [done[str(it["id"])] for it in items], stats
