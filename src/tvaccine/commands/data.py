"""``tvaccine data``: build task files and the alignment, probe, attack and evaluation sets, with manifests."""

from __future__ import annotations

import argparse
from pathlib import Path

BEAVERTAILS_TRAIN = "PKU-Alignment/BeaverTails:30k_train"
BEAVERTAILS_TEST = "PKU-Alignment/BeaverTails:30k_test"
SOURCE_HELP = "a local file (JSON, JSONL, CSV, Parquet) or a hub id with an optional split (ID:SPLIT)"


def register(sub) -> None:
    from tvaccine.data.tasks import TASKS

    p = sub.add_parser("data", help="build task files and data sets (with manifests)",
                       description="Build data files. Every set is written with FILE.manifest.json beside it.")
    dsub = p.add_subparsers(dest="data_command", required=True, metavar="ACTION")

    b = dsub.add_parser("build", help="a task's training and evaluation files in the authors' format")
    b.add_argument("--task", required=True, choices=sorted(TASKS))
    b.add_argument("--source", help=f"training rows: {SOURCE_HELP} (default: the task's hub data set, train split)")
    b.add_argument("--eval-source", help="evaluation rows (default: the task's hub evaluation split; 'none' skips)")
    b.add_argument("--limit", type=int, help="keep the first N training rows")
    b.add_argument("--eval-limit", type=int, help="keep the first N evaluation rows")
    b.add_argument("--eval-balanced", action="store_true",
                   help="the same number of evaluation rows per label (the first N/labels of each)")
    b.add_argument("--output", required=True, help="training file (JSONL)")
    b.add_argument("--eval-output", help="evaluation file (default: OUTPUT with .eval before the suffix)")
    b.set_defaults(run=run_build)

    a = _set_parser(dsub, "alignment", "harmful prompt → refusal rows, optionally mixed with benign rows",
                    BEAVERTAILS_TRAIN)
    a.add_argument("--n-align", type=int, required=True, help="rows in the set")
    a.add_argument("--benign", help=f"benign instructions: {SOURCE_HELP}")
    a.add_argument("--benign-ratio", type=float, default=0.0, help="share of benign rows (default 0)")
    a.add_argument("--seed", type=int, default=42, help="shuffle seed")
    a.add_argument("--refusal-seed", type=int, default=0, help="seed of the refusal writer (prompts without one)")

    pr = _set_parser(dsub, "probe", "harmful prompt → harmful answer pairs for layer importance", BEAVERTAILS_TRAIN)
    pr.add_argument("--num-probe-samples", type=int, default=200, help="rows in the set (paper: 200)")

    at = _set_parser(dsub, "attack", "the user's poisoned fine-tuning set: round(p·n) harmful + task rows",
                     BEAVERTAILS_TRAIN, source_flag="--harmful")
    at.add_argument("--task", required=True, choices=sorted(TASKS))
    at.add_argument("--task-data", help=f"task rows: {SOURCE_HELP} (default: the task's hub train split)")
    at.add_argument("--poison-ratio", type=float, default=0.1, help="p, the harmful share (paper: 0.1)")
    at.add_argument("--sample-num", type=int, default=1000, help="n, the rows in the set (paper: 1000)")
    at.add_argument("--seed", type=int, default=42, help="shuffle seed")

    ev = _set_parser(dsub, "eval", "harmful prompts for the harmful score (answers blanked)", BEAVERTAILS_TEST)
    ev.add_argument("--num-prompts", type=int, default=500, help="prompts in the set (paper: 500)")

    c = dsub.add_parser("check", help="report harmful prompts shared between set files")
    c.add_argument("files", nargs="+", help="set files (or any data files, read as harmful rows)")
    c.add_argument("--strict-disjoint", action="store_true", help="any shared prompt is an error")
    c.set_defaults(run=run_check)

    v = dsub.add_parser("verify", help="rebuild a set from its manifest and compare hashes")
    v.add_argument("file")
    v.set_defaults(run=run_verify)


def _set_parser(dsub, name: str, help: str, default_source: str, source_flag: str = "--source"):
    p = dsub.add_parser(name, help=f"{name} set: {help}", allow_abbrev=False)
    p.add_argument(source_flag, dest="source", default=default_source,
                   help=f"{SOURCE_HELP} (default: {default_source})")
    p.add_argument("--output", required=True, help="set file (JSONL); the manifest goes beside it")
    p.add_argument("--disjoint-from", nargs="*", default=[], metavar="FILE",
                   help="other set files whose harmful prompts must not recur here")
    p.add_argument("--strict-disjoint", action="store_true", help="a shared harmful prompt is an error")
    p.set_defaults(run=run_set, set_name=name)
    return p


def build_set(args: argparse.Namespace):
    from tvaccine.data import sets
    from tvaccine.data.sources import load_source

    if args.set_name == "alignment":
        benign = load_source(args.benign, "benign") if args.benign else None
        return sets.alignment_set(load_source(args.source, "refusal", refusal_seed=args.refusal_seed), args.n_align,
                                  benign, args.benign_ratio, args.seed)
    if args.set_name == "probe":
        return sets.probe_set(load_source(args.source, "harmful"), args.num_probe_samples)
    if args.set_name == "attack":
        from tvaccine.data.tasks import TASKS

        task = TASKS[args.task]
        task_ref = args.task_data or f"{task.hub_id}:{task.train_split}"
        return sets.attack_set(load_source(args.source, "harmful"), load_source(task_ref, f"task:{args.task}"),
                               args.poison_ratio, args.sample_num, args.seed)
    return sets.eval_set(load_source(args.source, "harmful"), args.num_prompts)


def run_set(args: argparse.Namespace, extra) -> int:
    from tvaccine.data.overlap import write_checked
    from tvaccine.data.sets import manifest_summary

    manifest = write_checked(build_set(args), args.output, args.disjoint_from, args.strict_disjoint)
    print(manifest_summary(args.output, manifest))
    return 0


def run_build(args: argparse.Namespace, extra) -> int:
    from tvaccine.data import sets
    from tvaccine.data.sets import manifest_summary
    from tvaccine.data.sources import load_source
    from tvaccine.data.tasks import TASKS

    task = TASKS[args.task]
    outputs = [(args.source or f"{task.hub_id}:{task.train_split}", args.limit, args.output, "task-train", False)]
    if (args.eval_source or "").lower() != "none":
        out = Path(args.output)
        eval_out = args.eval_output or str(out.with_name(f"{out.stem}.eval{out.suffix or '.jsonl'}"))
        outputs.append((args.eval_source or f"{task.hub_id}:{task.eval_split}", args.eval_limit, eval_out,
                        "task-eval", args.eval_balanced))
    built = [(sets.task_set(name, load_source(ref, f"task:{args.task}"), limit, balanced), path)
             for ref, limit, path, name, balanced in outputs]  # read every source before writing anything
    for dataset, path in built:
        skipped = dataset.sources[0][0].counts.get("skipped", 0)
        print(manifest_summary(path, dataset.write(path)) + (f"; skipped {skipped} non-task rows" if skipped else ""))
    return 0


def run_check(args: argparse.Namespace, extra) -> int:
    from tvaccine.data.overlap import check_disjoint, file_prompts

    check_disjoint({f: file_prompts(f) for f in args.files}, args.strict_disjoint)
    return 0


def run_verify(args: argparse.Namespace, extra) -> int:
    from tvaccine.data.sets import verify
    from tvaccine.errors import UserError

    result = verify(args.file)
    if not (result["file_matches"] and result["rebuild_matches"]):
        raise UserError(f"{args.file}: does not match its manifest (file {result['file_matches']}, "
                        f"rebuilt from sources {result['rebuild_matches']})")
    print(f"{args.file}: matches its manifest (sha256 {result['manifest_sha256'][:16]}…), and rebuilds identically")
    return 0
