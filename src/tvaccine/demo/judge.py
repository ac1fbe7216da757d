"""The demo's second judge: the light classifier (``tvaccine.evaluation.classifier``), trained on the pack itself.

The offline demo has no labelled harmful answers (BeaverTails is on the hub), so the labels come from how the pack
was made: the base model's answers to the probe and attack prompts count as harmful (SmolLM2 answers harmful
prompts; a few of its answers may refuse and are mislabelled), the alignment rows (refusals, and the base model's
answers to benign instructions) and a stock refusal for every harmful prompt count as safe. No evaluation prompt is
trained on. The keyword judge reads fixed refusal phrases; this one learns from whole answers, so where the two
disagree on the same answers says how much the demo's harmful score depends on the judge. It is a judge of the
demo's kind of answers, not a validated harm classifier: ``benchmarks/judges/`` measures the classifier trained on
real labels.
"""

from __future__ import annotations

from pathlib import Path

SPLIT_SEED = 1
TRAIN_FILES = {"harmful": ("probe.jsonl", "attack_harmful.jsonl"), "safe": ("alignment.jsonl",)}
EXCLUDED = "eval_harmful.jsonl"  # the evaluation's prompts: never trained on


def pack_judge(pack: Path, folder: Path, echo=print) -> Path:
    """Train the classifier on ``pack`` into ``folder``, unless it was trained there on these very files (a demo
    rerun keeps it; another ``--data-dir`` into the same output retrains it); returns ``folder``."""
    import json

    from tvaccine.data.files import file_sha256
    from tvaccine.data.sources import load_source
    from tvaccine.evaluation.classifier import CONFIG, build_rows, train_classifier
    from tvaccine.evaluation.prompts import read_prompts

    names = [*TRAIN_FILES["harmful"], *TRAIN_FILES["safe"], EXCLUDED]
    digests = {name: file_sha256(pack / name) for name in names}
    try:
        if json.loads((folder / CONFIG).read_text(encoding="utf-8"))["data"]["sha256"] == digests:
            return folder
    except (OSError, ValueError, KeyError, TypeError):
        pass  # none yet, or one of an earlier version: train

    def rows(name: str, view: str) -> list[dict]:
        return [{"prompt": r["instruction"] + ("\n" + r["input"] if r["input"] else ""), "response": r["output"]}
                for r in load_source(str(pack / name), view).rows]

    harmful = [{**r, "is_safe": False} for name in TRAIN_FILES["harmful"] for r in rows(name, "harmful")]
    safe = [r for name in TRAIN_FILES["safe"] for r in rows(name, "auto")]
    exclude = {p["instruction"].strip() for p in read_prompts(str(pack / EXCLUDED))}
    labelled = build_rows(harmful, safe, exclude, add_refusals=True, seed=SPLIT_SEED)
    sources = {"pack": str(pack), "harmful": list(TRAIN_FILES["harmful"]), "safe": list(TRAIN_FILES["safe"]),
               "excluded_prompts": EXCLUDED, "sha256": digests, "refusals_added": True, "rows": len(labelled),
               "labels": "by construction: base-model answers to harmful prompts = harmful; refusals and benign "
                         "answers = safe"}
    # Seed 1: the pack split its prompts by the same seeded hash with seed 0, so with seed 0 every probe and attack
    # prompt (hash ranks 40-80 %) would land on the training side and the held-out part would have no harmful row.
    meta = train_classifier(labelled, folder, test_fraction=0.2, seed=SPLIT_SEED, sources=sources)
    held = meta["held_out"]
    echo(f"demo judge: classifier trained on the pack ({meta['train']['n']} answers); held-out accuracy "
         f"{held['accuracy']:.2f} on {held['n']} answers to unseen prompts")
    return folder
