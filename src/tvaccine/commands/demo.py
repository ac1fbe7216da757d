"""``tvaccine demo``: the offline end-to-end demo on the embedded model (the README's main command)."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("demo", help="offline demo: no defense vs SFT vs T-Vaccine, align → attack → evaluate",
                       description="Builds a small data pack from assets shipped in wheels (StrongREJECT prompts, "
                                   "refusals, base-model answers, a generated sentiment task), then compares no "
                                   "defense, SFT and T-Vaccine through alignment and a harmful fine-tuning attack, "
                                   "judged by refusal phrases and by a classifier trained on the pack. "
                                   "About 12 to 17 minutes on 2 CPU cores; rerunning resumes and skips what is done.")
    p.add_argument("--output", default="runs/demo", help="output folder (default runs/demo)")
    p.add_argument("--model", default="smollm2-135m", help="model (default: the embedded SmolLM2-135M)")
    p.add_argument("--data-dir", help="a folder with the pack's files in data-layer formats, instead of the "
                                      "generated pack")
    p.add_argument("--methods", default="none,sft,tvaccine", help="comma-separated: none,sft,vaccine,tvaccine")
    p.add_argument("--quick", action="store_true", help="a few steps only (smoke test, about 5 minutes on 2 CPU cores)")
    p.set_defaults(run=run, accepts_overrides=False)


def run(args, extra) -> int:
    from tvaccine.demo.run import run_demo

    run_demo(args.output, args.model, args.data_dir, args.quick, [m.strip() for m in args.methods.split(",")])
    return 0
