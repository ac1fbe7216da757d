"""``tvaccine run`` / ``tvaccine sweep`` / ``tvaccine report``: the pipeline from one config file."""

from __future__ import annotations

from tvaccine.locks import STALE_AFTER_S, LockTiming


def register(sub) -> None:
    p = sub.add_parser("run", help="align → attack → evaluate from one YAML config (cached, resumable)",
                       description="Run one pipeline. Overrides: --method tvaccine --poison-ratio 0.2, or any "
                                   "dotted path, e.g. --attack.settings.learning_rate 1e-4.")
    p.add_argument("--config", required=True, help="run config (YAML): model, output, align, attack, eval")
    p.set_defaults(run=run_cmd, accepts_overrides=True)

    s = sub.add_parser("sweep", help="run a grid of pipelines sharing stages; writes summary.csv",
                       description="Run a grid of pipelines sharing stages; writes summary.csv. Several workers "
                                   "(processes, GPUs, machines on a shared file system) can share one sweep: start "
                                   "each with --shard I/N (see docs/distributed.md).")
    s.add_argument("--config", required=True, help="sweep config (YAML): base (a run config) and grid (lists)")
    s.add_argument("--report", action="store_true", help="write the report when the sweep is done (with --shard: "
                                                         "by a worker that ends with every cell finished)")
    s.add_argument("--shard", metavar="I/N", help="run only the cells whose index in the grid is I modulo N, "
                                                  "0-based (0/4 … 3/4, e.g. $SLURM_ARRAY_TASK_ID/4); the worker "
                                                  "that ends last writes the complete summary.csv")
    s.add_argument("--stale-after", type=float, default=STALE_AFTER_S, metavar="SECONDS",
                   help="a stage lock whose owner has not refreshed it for this long is taken over (default "
                        "%(default)g)")
    s.set_defaults(run=sweep_cmd, accepts_overrides=False)

    r = sub.add_parser("report", help="Markdown + HTML report with plots for a finished run or sweep folder")
    r.add_argument("folder")
    r.set_defaults(run=report_cmd, accepts_overrides=False)


def run_cmd(args, extra) -> int:
    from tvaccine.pipeline import load_run_config, run_one
    from tvaccine.settings import parse_overrides

    config = load_run_config(args.config, parse_overrides(extra))
    results = run_one(config)
    print(f"results: {config['output']}/results.json")
    print(f"scores: {results['scores']}")
    return 0


def sweep_cmd(args, extra) -> int:
    from tvaccine.errors import UserError
    from tvaccine.pipeline import parse_shard, run_sweep
    from tvaccine.report import build_report, markdown_table
    from tvaccine.settings import read_yaml

    shard = parse_shard(args.shard) if args.shard is not None else None
    if not 0 < args.stale_after < float("inf"):
        raise UserError(f"--stale-after: must be a number of seconds > 0 (got {args.stale_after:g})")
    sweep = read_yaml(args.config)
    reports = []

    def report(rows) -> None:
        reports.append(build_report(sweep["base"]["output"]))

    rows = run_sweep(sweep, args.config, shard=shard, timing=LockTiming(args.stale_after),
                     on_complete=report if args.report else None)
    print(markdown_table(rows))
    for md, html in reports:
        print(f"report: {md} ({html})")
    if args.report and not reports:
        print("report: not written, some cells are not finished (the worker that finishes them writes it)")
    return 0


def report_cmd(args, extra) -> int:
    from tvaccine.report import build_report

    md, html = build_report(args.folder)
    print(f"report: {md}\n        {html}")
    return 0
