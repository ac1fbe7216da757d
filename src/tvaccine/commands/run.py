"""``tvaccine run`` / ``tvaccine sweep`` / ``tvaccine report``: the pipeline from one config file."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("run", help="align → attack → evaluate from one YAML config (cached, resumable)",
                       description="Run one pipeline. Overrides: --method tvaccine --poison-ratio 0.2, or any "
                                   "dotted path, e.g. --attack.settings.learning_rate 1e-4.")
    p.add_argument("--config", required=True, help="run config (YAML): model, output, align, attack, eval")
    p.set_defaults(run=run_cmd, accepts_overrides=True)

    s = sub.add_parser("sweep", help="run a grid of pipelines sharing stages; writes summary.csv")
    s.add_argument("--config", required=True, help="sweep config (YAML): base (a run config) and grid (lists)")
    s.add_argument("--report", action="store_true", help="write the report when the sweep is done")
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
    from tvaccine.pipeline import run_sweep
    from tvaccine.report import build_report, markdown_table
    from tvaccine.settings import read_yaml

    sweep = read_yaml(args.config)
    rows = run_sweep(sweep, args.config)
    print(markdown_table(rows))
    if args.report:
        md, html = build_report(sweep["base"]["output"])
        print(f"report: {md} ({html})")
    return 0


def report_cmd(args, extra) -> int:
    from tvaccine.report import build_report

    md, html = build_report(args.folder)
    print(f"report: {md}\n        {html}")
    return 0
