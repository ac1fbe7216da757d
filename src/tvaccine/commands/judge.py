"""``tvaccine judge train``: train the light harm classifier (a proxy for beaver-dam) on labelled answers."""

from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser("judge", help="train the light harm classifier (proxy for beaver-dam)")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    t = actions.add_parser(
        "train", help="train the MiniLM + logistic-regression judge",
        description="Train on labelled (prompt, response, is_safe) rows; reports held-out accuracy and AUC on a "
                    "seeded split by prompt. Example (offline data): --data beavertails/harmful_qa.jsonl "
                    "--exclude-prompts beavertails/eval.jsonl --benign alpaca/alpaca_en_demo.json",
    )
    t.add_argument("--data", nargs="+", required=True,
                   help="JSON/JSONL files of rows with prompt, response and is_safe (true/false)")
    t.add_argument("--benign", nargs="*", default=[],
                   help="instruction files (instruction, input, output) whose answers count as safe")
    t.add_argument("--exclude-prompts", nargs="*", default=[],
                   help="prompt files to keep out of training (the HS evaluation prompts)")
    t.add_argument("--no-refusals", action="store_true",
                   help="do not add a refusal (safe) answer for every harmful prompt")
    t.add_argument("--test-fraction", type=float, default=0.2)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--output", help="folder for the classifier (default: the cache folder `eval` looks in)")
    p.set_defaults(run=run)


def _labelled(path: str) -> list[dict]:
    from tvaccine.data.files import read_records
    from tvaccine.errors import UserError

    rows = []
    for r in read_records(path):
        for name in ("prompt", "response"):
            if not isinstance(r.get(name), str):
                raise UserError(f"{r['_where']}: field '{name}' must be a string")
        if not isinstance(r.get("is_safe"), bool):
            raise UserError(f"{r['_where']}: field 'is_safe' must be true or false, got {r.get('is_safe')!r}")
        rows.append({"prompt": r["prompt"], "response": r["response"], "is_safe": r["is_safe"]})
    return rows


def run(args: argparse.Namespace, extra: list[str]) -> int:
    from tvaccine.data.sources import load_instruction_file
    from tvaccine.errors import UserError
    from tvaccine.evaluation.classifier import build_rows, train_classifier
    from tvaccine.evaluation.judges import default_classifier_dir
    from tvaccine.evaluation.prompts import read_prompts

    if not 0 < args.test_fraction < 1:
        raise UserError(f"--test-fraction: must be between 0 and 1, got {args.test_fraction}")
    labelled = [r for path in args.data for r in _labelled(path)]
    benign = [{"prompt": (r["instruction"] + ("\n" + r["input"] if r["input"] else "")), "response": r["output"]}
              for path in args.benign for r in load_instruction_file(path)]
    exclude = {p["instruction"].strip() for path in args.exclude_prompts for p in read_prompts(path)}
    rows = build_rows(labelled, benign, exclude, not args.no_refusals, args.seed)
    output = args.output or default_classifier_dir()
    sources = {"data": args.data, "benign": args.benign, "exclude_prompts": args.exclude_prompts,
               "refusals_added": not args.no_refusals, "rows": len(rows)}
    meta = train_classifier(rows, output, args.test_fraction, args.seed, sources)
    h = meta["held_out"]
    print(f"classifier (proxy for beaver-dam): held-out accuracy {h['accuracy']:.4f}, AUC {h['auc']}, "
          f"n={h['n']} ({h['n_harmful']} harmful); train n={meta['train']['n']}; saved to {output}")
    return 0
