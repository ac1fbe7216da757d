"""``tvaccine attack``: harmful fine-tuning of an aligned (or unaligned) model on a poisoned task set."""

from __future__ import annotations

import argparse

from tvaccine import launch
from tvaccine.commands import add_push_arguments, before_training, push_if_asked


def register(sub) -> None:
    from tvaccine.data.tasks import TASKS

    p = sub.add_parser(
        "attack", help="harmful fine-tuning attack on an aligned model", allow_abbrev=False,
        description="Fine-tune the model as a user of a fine-tuning service would, on task data of which a share p "
                    "is harmful. Any AttackConfig or TrainingArguments setting can follow as --name value, e.g. "
                    "--poison-ratio 0.1 --sample-num 1000 --mode fresh|continue|full --learning-rate 1e-5 "
                    "--num-train-epochs 20 --lora-alpha 1 --max-steps 50 --seed 42. Without --mode, a Booster "
                    "adapter is attacked in continue mode (its threat model), others fresh. --defense lisa "
                    "--alignment-data FILE runs the job under Lisa (--lisa-rho, --lisa-alignment-steps, "
                    "--lisa-finetune-steps).",
    )
    p.add_argument("--model", required=True, help="hub id, local folder, or smollm2-135m (embedded, offline)")
    p.add_argument("--aligned", help="aligned adapter folder ('none' or omitted: attack the base model)")
    p.add_argument("--task", choices=sorted(TASKS), help="the task whose rows fill the attack set")
    p.add_argument("--data", help="a ready attack set (any data file); replaces --harmful/--task-data")
    p.add_argument("--harmful", help="harmful rows: local file or hub id[:split] "
                                     "(default PKU-Alignment/BeaverTails:30k_train)")
    p.add_argument("--task-data", help="task rows: local file or hub id[:split] (default: the task's hub train split)")
    p.add_argument("--output", required=True, help="folder for the attack adapter, settings, set and manifest")
    p.add_argument("--alignment-data", help="--defense lisa: the provider's alignment rows (harmful prompt → refusal)")
    p.add_argument("--config", help="YAML recipe (e.g. configs/attack.yaml); --name value overrides it")
    p.add_argument("--dtype", default=None, help="model weights dtype: auto, float32, bfloat16, float16")
    p.add_argument("--disjoint-from", nargs="*", default=[], metavar="FILE",
                   help="set files whose harmful prompts must not recur in the attack set (the aligned "
                        "adapter's recorded alignment and probe files are checked too)")
    p.add_argument("--strict-disjoint", action="store_true", help="a shared harmful prompt is an error")
    p.add_argument("--overwrite", action="store_true", help="train again even if OUTPUT holds a finished run")
    add_push_arguments(p)
    launch.add_arguments(p)
    # No prefix matching: an override such as --mode must not be taken for --model.
    p.set_defaults(run=run, accepts_overrides=True)


def resolve_config(recipe: str | None, extra: list[str]):
    from tvaccine.attack import AttackConfig
    from tvaccine.settings import build_config, parse_overrides, read_yaml

    recipe_settings = read_yaml(recipe) if recipe else {}
    return build_config(AttackConfig, recipe_settings, parse_overrides(extra),
                        where=[recipe or "recipe", "command line"])


def run(args: argparse.Namespace, extra: list[str]) -> int:
    from tvaccine.attack import AttackData, attack, is_finished
    from tvaccine.outputs import ATTACK_SETTINGS

    config = resolve_config(args.config, extra)
    done = before_training(args, is_finished(args.output), ATTACK_SETTINGS, "attack")
    if done is not None:
        return done
    data = AttackData(task=args.task, data=args.data, harmful=args.harmful, task_data=args.task_data,
                      alignment_data=args.alignment_data, disjoint_from=list(args.disjoint_from),
                      strict_disjoint=args.strict_disjoint)
    s = attack(args.model, args.output, config, aligned=args.aligned, data=data, dtype=args.dtype).summary
    if config.should_save:  # the main process; in a distributed run it alone saved
        defense = "" if s["defense"] == "none" else f", defense {s['defense']}"
        print(f"attack ({s['mode']}{defense}): {s['steps']} steps, {s['s_per_step']:.2f} s/step, "
              f"loss {s['first_loss']:.4f} → {s['last_loss']:.4f}; saved to {args.output}")
        push_if_asked(args, "attack")
    return 0
