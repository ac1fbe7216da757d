"""``tvaccine align``: safety alignment with SFT, Vaccine or T-Vaccine."""

from __future__ import annotations

import argparse

from tvaccine import launch
from tvaccine.commands import add_push_arguments, before_training, push_if_asked
from tvaccine.errors import UserError


# The names of tvaccine.methods.METHODS, listed here so that `tvaccine --help` does not import transformers.
METHOD_NAMES = ["booster", "random-vaccine", "repnoise", "sft", "tar", "tar-tvaccine", "tvaccine",
                "tvaccine-no-perturbation", "tvaccine-topk", "tvaccine-uniform", "vaccine"]


def register(sub) -> None:
    p = sub.add_parser(
        "align", help="align a model (LoRA) with a safety method",
        description="Align a model with T-Vaccine, a baseline (SFT, Vaccine, RepNoise, TAR, Booster) or an ablation "
                    "(docs/methods.md). Any setting of the method's config can be given as --name value after the "
                    "options below (e.g. --rho 3 --max-steps 10).",
    )
    p.add_argument("--method", required=True, choices=METHOD_NAMES)
    p.add_argument("--model", required=True, help="hub id, local folder, or smollm2-135m (embedded, offline)")
    p.add_argument("--data", required=True, help="alignment file (JSON/JSONL rows of instruction, input, output)")
    p.add_argument("--harmful-data", "--probe-data", dest="harmful_data",
                   help="harmful prompt → harmful answer rows: T-Vaccine's importance probe; what RepNoise, TAR "
                        "and Booster train against (--probe-data is the same option)")
    p.add_argument("--output", required=True, help="folder for the adapter, settings and model card")
    p.add_argument("--config", help="YAML recipe (e.g. configs/tvaccine.yaml); --name value overrides it")
    p.add_argument("--dtype", default=None, help="model weights dtype: auto, float32, bfloat16, float16")
    p.add_argument("--overwrite", action="store_true", help="train again even if OUTPUT holds a finished run")
    add_push_arguments(p)
    launch.add_arguments(p)
    p.set_defaults(run=run, accepts_overrides=True)


def resolve_config(method: str, recipe: str | None, extra: list[str]):
    from tvaccine.methods import METHODS
    from tvaccine.settings import build_config, parse_overrides, read_yaml

    recipe_settings = read_yaml(recipe) if recipe else {}
    recipe_method = recipe_settings.pop("method", method)
    if recipe_method != method:
        raise UserError(f"{recipe}: recipe is for method '{recipe_method}', not '{method}'")
    cls = METHODS[method][0]
    return build_config(cls, recipe_settings, parse_overrides(extra), where=[recipe or "recipe", "command line"])


def run(args: argparse.Namespace, extra: list[str]) -> int:
    from tvaccine.align import align, is_finished
    from tvaccine.outputs import ALIGN_SETTINGS

    config = resolve_config(args.method, args.config, extra)
    done = before_training(args, is_finished(args.output), ALIGN_SETTINGS, "alignment")
    if done is not None:
        return done
    summary = align(args.method, args.model, args.data, args.output, config, harmful_data=args.harmful_data,
                    dtype=args.dtype)
    if config.should_save:  # the main process; in a distributed run it alone saved
        print(f"{args.method}: {summary['steps']} steps, {summary['s_per_step']:.2f} s/step, "
              f"loss {summary['train_loss']:.4f}; adapter saved to {args.output}")
        push_if_asked(args, "alignment")
    return 0
