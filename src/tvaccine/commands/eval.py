"""``tvaccine eval``: generate answers (batched greedy, resumable), judge them, score HS / over-refusal / FA."""

from __future__ import annotations

import argparse


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _judge_model(value: str) -> tuple[str, str]:
    name, sep, model = value.partition("=")
    if not sep or not name.strip() or not model.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=MODEL, got '{value}'")
    return name.strip(), model.strip()


def _judge_length(value: str) -> tuple[str, int]:
    name, sep, tokens = value.partition("=")
    if not sep or not name.strip() or not tokens.strip().isdigit() or int(tokens) < 1:
        raise argparse.ArgumentTypeError(f"expected NAME=N with N a whole number of at least 1, got '{value}'")
    return name.strip(), int(tokens)


def register(sub) -> None:
    from tvaccine.data.tasks import TASKS, task_name

    p = sub.add_parser(
        "eval", help="harmful score, over-refusal and fine-tuning accuracy of a model (+ adapters)",
        description="Generate greedy answers in the Alpaca template and score them as published (docs/design.md §3). "
                    "Harmful means flagged by the judge and not degenerate (empty, template echo, loop); "
                    "intervals are Wilson 95%. Rerunning the same command resumes from the generations already in "
                    "OUTPUT.",
    )
    p.add_argument("--model", required=True, help="hub id, local folder, or smollm2-135m (embedded, offline)")
    p.add_argument("--adapters", type=_csv, default=[], help="LoRA adapter folders, comma-separated, merged in order")
    p.add_argument("--harmful-prompts", help="prompt file (JSON/JSONL/CSV) or PKU-Alignment/BeaverTails (hub)")
    p.add_argument("--task", type=task_name, choices=sorted(TASKS), help="fine-tuning task for FA")
    p.add_argument("--task-data", help="task evaluation file (e.g. sst2/val.json, ag_news/test.json, gsm8k/test.json)")
    p.add_argument("--benign-prompts", help="benign prompt file for over-refusal (e.g. alpaca_eval.json)")
    p.add_argument("--xstest-prompts", help="XSTest's xstest_prompts.csv or walledai/XSTest (hub): over-refusal on "
                                            "its safe prompts")
    p.add_argument("--knowledge-data", help="multiple-choice questions for general capability: cais/mmlu (hub) or a "
                                            "local file of question, choices, answer rows")
    p.add_argument("--no-stop-at-template", dest="stop_at_template", action="store_false",
                   help="keep generating past the template's next '### ' block (the authors' decoding)")
    p.add_argument("--judge", type=_csv, default=["keyword"],
                   help="comma-separated: keyword, classifier (proxy for beaver-dam), beaver-dam, harmbench, "
                        "strongreject, llama-guard, strongreject-rubric (needs --judge-model: a chat model)")
    p.add_argument("--judge-model", type=_judge_model, action="append", default=[], metavar="NAME=MODEL",
                   help="hub id or local folder of a model-based judge (repeatable), e.g. "
                        "harmbench=cais/HarmBench-Mistral-7b-val-cls or llama-guard=meta-llama/Llama-Guard-3-8B; "
                        "strongreject-rubric has no default: name a chat model")
    p.add_argument("--judge-max-new-tokens", type=_judge_length, action="append", default=[], metavar="NAME=N",
                   help="answer length a judge reads, in new tokens (repeatable), e.g. harmbench=256. Default: the "
                        "length its source generated (harmbench 512), else --max-new-tokens. The harmful answers "
                        "are generated once, as long as the longest, and each judge reads them cut to its length")
    p.add_argument("--classifier", help="trained classifier folder (default: the cache folder `judge train` uses)")
    p.add_argument("--beaver-dam", default="PKU-Alignment/beaver-dam-7b", help="beaver-dam hub id or local folder")
    p.add_argument("--limit", type=int, help="first N prompts of each set (published: 500)")
    p.add_argument("--max-new-tokens", type=int, default=128,
                   help="answer length in new tokens (default: 128, the paper's); see --judge-max-new-tokens")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--dtype", default=None, help="model weights dtype: auto, float32, bfloat16, float16")
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)  # unused since intervals are Wilson
    p.add_argument("--output", required=True, help="folder for generations_*.jsonl and results.json")
    p.set_defaults(run=run)


def run(args: argparse.Namespace, extra: list[str]) -> int:
    from tvaccine.errors import UserError
    from tvaccine.evaluation.judges import JUDGES
    from tvaccine.evaluation.config import EvalSettings
    from tvaccine.evaluation.run import evaluate

    for name in args.judge:
        if name not in JUDGES:
            raise UserError(f"--judge: unknown judge '{name}' (use {', '.join(JUDGES)})")
    from tvaccine.evaluation.model_judges import MODEL_JUDGES

    for name, _ in args.judge_model:
        if name not in MODEL_JUDGES:
            raise UserError(f"--judge-model: '{name}' has no model to choose (use {', '.join(MODEL_JUDGES)})")
    for name, _ in args.judge_max_new_tokens:
        if name not in JUDGES:
            raise UserError(f"--judge-max-new-tokens: unknown judge '{name}' (use {', '.join(JUDGES)})")
    for flag in ("limit", "max_new_tokens", "batch_size"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise UserError(f"--{flag.replace('_', '-')}: must be at least 1, got {value}")
    settings = EvalSettings(
        model=args.model, adapters=args.adapters, harmful_prompts=args.harmful_prompts,
        task=args.task, task_data=args.task_data,
        benign_prompts=args.benign_prompts, xstest_prompts=args.xstest_prompts, knowledge_data=args.knowledge_data,
        stop_at_template=args.stop_at_template, judges=args.judge, classifier=args.classifier,
        beaver_dam=args.beaver_dam, judge_models=dict(args.judge_model), limit=args.limit,
        max_new_tokens=args.max_new_tokens, judge_max_new_tokens=dict(args.judge_max_new_tokens),
        batch_size=args.batch_size, dtype=args.dtype, seed=args.seed,
    )
    results = evaluate(settings, args.output)
    print(summary(results))
    print(f"results: {args.output}/results.json")
    return 0


def summary(results: dict) -> str:
    def fmt(r: dict) -> str:
        lo, hi = r["ci95"]
        return f"{r['value']}% [{lo}, {hi}] (n={r['n']})"

    s = results["scores"]
    lines = [f"HS ({judge}, {r['max_new_tokens']} tokens): {fmt(r)}" for judge, r in s.get("harmful_score", {}).items()]
    for pair, a in results.get("judge_agreement", {}).items():
        kappa = "undefined" if a["kappa"] is None else f"{a['kappa']:.2f}"
        lines.append(f"judges {pair}: agree on {100 * a['agreement']:.1f}% of {a['n']} answers, Cohen's kappa {kappa}")
    if "degenerate" in s:
        lines.append(f"degenerate answers (harmful prompts): {fmt(s['degenerate'])}")
    for key, label in (("over_refusal", "over-refusal"), ("over_refusal_xstest", "over-refusal (XSTest safe)")):
        if key in s:
            lines.append(f"{label}: {fmt(s[key])}")
    if "fine_tune_accuracy" in s:
        fa = s["fine_tune_accuracy"]
        lines.append(f"FA {fa['task']}: {fmt(fa['published'])}; strict {fmt(fa['strict'])}; always answering "
                     f"'{fa['majority']['label']}': {fa['majority']['value']}%")
    if "benign_length" in s:
        r = s["benign_length"]
        lines.append(f"benign answers: {r['mean']} tokens on average {r['ci95']} (n={r['n']})")
    if "knowledge" in s:
        lines.append(f"knowledge check: {fmt(s['knowledge'])}; chance {s['knowledge']['chance']}%")
    return "\n".join(lines)
