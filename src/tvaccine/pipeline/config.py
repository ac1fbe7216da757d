"""A run config and a sweep, read and checked: its sections, the settings each stage gets from them, and a sweep's
grid expanded into cells. Nothing here runs a stage."""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
from pathlib import Path

from tvaccine.errors import UserError
from tvaccine.settings import read_yaml

RUN_KEYS = {"model", "output", "seed", "dtype", "align", "attack", "eval"}
# Sweep axes with a short name, and where each lives in a run config.
AXES = {
    "method": "align.method",
    "rho": "align.settings.rho",
    "num_active_layers": "align.settings.num_active_layers",
    "poison_ratio": "attack.settings.poison_ratio",
    "sample_num": "attack.settings.sample_num",
    "task": "attack.task",
    "defense": "attack.defense",
    "attack_lr": "attack.settings.learning_rate",
    "attack_epochs": "attack.settings.num_train_epochs",
    "seed": "seed",
}
# Keys of a run's eval section that the pipeline reads itself (not evaluation settings).
PIPELINE_EVAL_KEYS = {"before_attack", "attack_steps", "curve_sets", "aligned_max_hs", "aligned_max_over_refusal"}
# The prompt sets of an evaluation, by the eval key that names each one's file.
PROMPT_SETS = {"harmful": "harmful_prompts", "task": "task_data", "benign": "benign_prompts",
               "xstest": "xstest_prompts", "knowledge": "knowledge_data"}


def get_path(config: dict, dotted: str):
    node = config
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def set_path(config: dict, dotted: str, value) -> None:
    keys = dotted.split(".")
    node = config
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise UserError(f"{dotted}: '{key}' is not a mapping")
    node[keys[-1]] = value


def load_run_config(path: str | Path, overrides: dict | None = None) -> dict:
    config = read_yaml(path)
    for key, value in (overrides or {}).items():
        set_path(config, AXES.get(key, key), value)
    check_run_config(config, str(path))
    return config


def check_run_config(config: dict, where: str, cache: dict | None = None) -> None:
    """Check a run before any stage starts: its keys and types, every stage's settings (built as the stage builds
    them, and against the model's structure) and every input file (read in full). ``cache`` shares read files
    and model structures between the cells of a sweep."""
    unknown = set(config) - RUN_KEYS
    if unknown:
        raise UserError(f"{where}: unknown key(s) {sorted(unknown)}; a run has {sorted(RUN_KEYS)}")
    for key in ("model", "output"):
        if not config.get(key):
            raise UserError(f"{where}: missing '{key}'")
    for section in ("align", "attack", "eval"):
        if config.get(section) is not None and not isinstance(config[section], dict):
            raise UserError(f"{where}: '{section}' must be a mapping")
    method = get_path(config, "align.method") or "none"
    from tvaccine.methods import METHODS

    if method not in METHODS and method != "none":
        raise UserError(f"{where}: align.method '{method}' is not one of none, {', '.join(sorted(METHODS))}")
    _check_shape(config, where)
    _check_inputs(config, where, {} if cache is None else cache)


def _check_shape(config: dict, where: str) -> None:
    from dataclasses import fields

    from tvaccine.evaluation.config import EvalSettings

    known = {"align": {"method", "variant", "data", "harmful_data", "probe_data", "settings", "by_method",
                       "adapter"},
             "attack": {"task", "data", "harmful", "task_data", "settings", "defense", "alignment_data"},
             "eval": {f.name for f in fields(EvalSettings)} - {"model", "adapters", "dtype"} | PIPELINE_EVAL_KEYS}
    for section, keys in known.items():
        unknown = set(config.get(section) or {}) - keys
        if unknown:
            raise UserError(f"{where}: unknown key(s) {sorted(f'{section}.{k}' for k in unknown)}; "
                            f"{section} has {sorted(keys)}")
    texts = ["model", "output", "dtype", "align.data", "align.harmful_data", "align.probe_data", "align.adapter",
             "align.variant", "attack.task", "attack.data", "attack.harmful", "attack.task_data", "attack.defense",
             "attack.alignment_data"]
    for dotted in texts:
        value = get_path(config, dotted)
        if value is not None and not isinstance(value, str):
            raise UserError(f"{where}: {dotted} must be a string (got {value!r})")
    seed = config.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise UserError(f"{where}: seed must be an integer (got {seed!r})")
    by_method = get_path(config, "align.by_method") or {}
    mappings = {"align.settings": get_path(config, "align.settings"), "align.by_method": by_method,
                "attack.settings": get_path(config, "attack.settings")}
    if isinstance(by_method, dict):
        mappings.update({f"align.by_method.{m}": v for m, v in by_method.items()})
    for dotted, value in mappings.items():
        if value is not None and not isinstance(value, dict):
            raise UserError(f"{where}: {dotted} must be a mapping of settings (got {type(value).__name__})")
    before = get_path(config, "eval.before_attack")
    if before is not None and not isinstance(before, bool):
        raise UserError(f"{where}: eval.before_attack must be true or false (got {before!r})")
    steps = get_path(config, "eval.attack_steps")
    if steps is not None and (not isinstance(steps, list) or not steps or not all(
            isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in steps)):
        raise UserError(f"{where}: eval.attack_steps must be a list of attack steps (integers ≥ 0), e.g. "
                        f"[0, 10, 20, 30] (got {steps!r})")
    curve_sets = get_path(config, "eval.curve_sets")
    if curve_sets is not None and (not isinstance(curve_sets, list) or not set(curve_sets) <= set(PROMPT_SETS)):
        raise UserError(f"{where}: eval.curve_sets must be a list of prompt sets among {', '.join(PROMPT_SETS)} "
                        f"(got {curve_sets!r})")
    for key in ("aligned_max_hs", "aligned_max_over_refusal"):
        value = get_path(config, f"eval.{key}")
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not 0 <= value <= 100):
            raise UserError(f"{where}: eval.{key} must be a percentage in [0, 100] (got {value!r})")


def _check_inputs(config: dict, where: str, cache: dict) -> None:
    """Each stage's own input checks (``check_inputs`` of align, attack and evaluation), with one cached reader and
    one model structure for every cell of a sweep."""
    from tvaccine.align.run import check_inputs as check_alignment
    from tvaccine.attack.config import AttackConfig
    from tvaccine.attack.rows import AttackData
    from tvaccine.attack.run import check_inputs as check_attack
    from tvaccine.data.sources import load_source
    from tvaccine.evaluation.run import check_inputs as check_evaluation
    from tvaccine.methods import METHODS
    from tvaccine.models import model_skeleton, torch_dtype
    from tvaccine.outputs import check_adapter_folder
    from tvaccine.settings import build_config

    def read(ref: str, view: str = "auto"):
        if (ref, view) not in cache:
            cache[ref, view] = load_source(ref, view)
        return cache[ref, view]

    def against_model(cfg, section: str) -> None:  # the model's structure, built once per sweep
        if ("model", config["model"]) not in cache:
            cache["model", config["model"]] = model_skeleton(config["model"])
        try:
            cfg.check_model(cache["model", config["model"]])
        except UserError as err:
            raise UserError(f"{where}: {section}.settings: {err}") from err

    torch_dtype(config.get("dtype"))
    spec = config.get("align") or {}
    method = spec.get("method", "none")
    if method != "none" and not spec.get("adapter"):
        cfg = build_config(METHODS[method][0], align_settings(config), where=[f"{where}: align.settings"])
        check_alignment(cfg, method, spec.get("data"), spec.get("harmful_data", spec.get("probe_data")), read,
                        f"{where}: align")
        against_model(cfg, "align")
    if spec.get("adapter"):
        check_adapter_folder(spec["adapter"], f"{where}: align.adapter")
    attack = config.get("attack")
    if attack:
        cfg = build_config(AttackConfig, attack_settings(config), where=[f"{where}: attack.settings"])
        curve_checkpoints(cfg, get_path(config, "eval.attack_steps"), f"{where}: eval.attack_steps")
        data = AttackData(**{k: attack.get(k) for k in ("task", "data", "harmful", "task_data", "alignment_data")})
        check_attack(cfg, data, read, aligned=method != "none" or bool(spec.get("adapter")), where=f"{where}: attack")
        against_model(cfg, "attack")
    check_evaluation(eval_settings(config, config["model"], []))


def align_settings(config: dict) -> dict:
    """The alignment settings a run gives its method: ``settings``, then ``by_method.<method>``, then the seed."""
    spec = config.get("align") or {}
    method = spec.get("method", "none")
    # settings: common to every method; by_method.<name>: only for that method (e.g. rho, S for tvaccine)
    settings = {**(spec.get("settings") or {}), **((spec.get("by_method") or {}).get(method) or {})}
    settings.setdefault("seed", config.get("seed", 42))
    return settings


def attack_settings(config: dict) -> dict:
    spec = config.get("attack") or {}
    settings = dict(spec.get("settings") or {})
    settings.setdefault("seed", config.get("seed", 42))
    # A robustness curve reads the attack's own checkpoints: save one at every step it evaluates.
    inner = [s for s in get_path(config, "eval.attack_steps") or [] if s > 0]
    if inner and "save_steps" not in settings:
        settings["save_steps"] = math.gcd(*inner)
    # attack.defense (or attack.settings.defense) with attack.alignment_data: a fine-tuning-stage defense (Lisa).
    # Left out of the settings and the hash when none, so undefended stages keep their folders.
    if spec.get("defense") is not None:
        settings["defense"] = spec["defense"]
    if settings.get("defense") == "none":
        del settings["defense"]
    return settings


def curve_checkpoints(cfg, steps: list[int] | None, where: str) -> None:
    """The attack settings must leave a checkpoint at every step the curve evaluates (the final step is the
    attack's output)."""
    inner = [s for s in steps or [] if s > 0]
    if not inner:
        return
    if cfg.max_steps > 0 and max(inner) > cfg.max_steps:
        raise UserError(f"{where}: step {max(inner)} is past the attack's max_steps {cfg.max_steps}")
    if cfg.save_strategy != "steps" or cfg.save_total_limit is not None or any(
            s % cfg.save_steps for s in inner if s != cfg.max_steps):
        raise UserError(f"{where}: {inner} need an attack checkpoint at each step: attack.settings save_strategy "
                        f"steps, save_steps dividing every step (got {cfg.save_steps:g}), no save_total_limit")
    if cfg.mode == "full":
        raise UserError(f"{where}: a curve needs a LoRA attack (mode fresh or continue), not mode full")


def eval_spec(config: dict, judges: list[str] | None = None) -> dict:
    """The run's eval section as evaluation settings: the attack's task is scored unless eval names its own."""
    spec = {k: v for k, v in (config.get("eval") or {}).items() if k not in PIPELINE_EVAL_KEYS}
    if judges:
        spec["judges"] = judges
    spec.setdefault("task", get_path(config, "attack.task"))
    return spec


def eval_settings(config: dict, model: str, adapters: list[str], judges: list[str] | None = None):
    from tvaccine.evaluation.config import EvalSettings

    return EvalSettings(model=model, adapters=list(adapters), dtype=config.get("dtype"),
                        **eval_spec(config, judges))


def curve_config(config: dict) -> dict:
    """The run as the curve's inner steps evaluate it: only ``eval.curve_sets`` (default: every set), so a long
    curve need not score over-refusal at every step; the first and last steps always score every set."""
    keep = get_path(config, "eval.curve_sets")
    if keep is None:
        return config
    out = copy.deepcopy(config)
    for name, key in PROMPT_SETS.items():
        if name not in keep:
            out["eval"].pop(key, None)
            if name == "task":
                out["eval"]["task"] = None
    return out


def cell_values(config: dict) -> dict:
    out = {name: get_path(config, path) for name, path in AXES.items()}
    out["method"] = out["method"] or "none"
    out["variant"] = get_path(config, "align.variant") or out["method"]
    return out


def expand_sweep(sweep: dict, where: str) -> list[tuple[str, dict]]:
    """The cells of a sweep: the product of ``grid`` lists applied to the ``base`` run config."""
    base, grid, variants = sweep.get("base"), sweep.get("grid") or {}, sweep.get("variants") or {}
    if not isinstance(base, dict) or not isinstance(grid, dict):
        raise UserError(f"{where}: a sweep needs 'base' (a run config) and 'grid' (a mapping of lists per axis)")
    unknown = set(sweep) - {"base", "grid", "variants"}
    if unknown:
        raise UserError(f"{where}: unknown key(s) {sorted(unknown)}; a sweep has base, grid and variants")
    check_variants(variants, where)
    for axis, values in grid.items():
        if not isinstance(values, list) or not values:
            raise UserError(f"{where}: grid.{axis} must be a non-empty list")
        if axis not in AXES and "." not in axis:
            raise UserError(f"{where}: unknown sweep axis '{axis}' (known: {', '.join(AXES)}, or a dotted path)")
    from tvaccine.methods import METHODS

    cells, cache = [], {}
    axes = list(grid)
    for combo in itertools.product(*(grid[a] for a in axes)):
        cfg = copy.deepcopy(base)
        for axis, value in zip(axes, combo):
            set_path(cfg, AXES.get(axis, axis), value)
            if axis == "task":
                set_path(cfg, "eval.task", value)
        if get_path(cfg, "align.method") in variants:  # a named method with its own settings
            apply_variant(cfg, get_path(cfg, "align.method"), variants)
        method = get_path(cfg, "align.method")
        if method == "none":
            cfg["align"] = {"method": "none", **({"variant": cfg["align"]["variant"]}
                                                  if "variant" in cfg["align"] else {})}
        elif method in METHODS:  # a T-Vaccine axis (rho, S) set no setting on the SFT cells of the same grid
            fields = {f.name for f in dataclasses.fields(METHODS[method][0])}
            settings = get_path(cfg, "align.settings") or {}
            for axis in axes:
                head, _, key = AXES.get(axis, axis).rpartition(".")
                if head == "align.settings" and key not in fields:
                    settings.pop(key, None)
        name = "-".join(f"{a}={v}" for a, v in zip(axes, combo)) or "cell"
        check_run_config(cfg, f"{where} cell {name}", cache)
        cells.append((name, cfg))
    return cells


def check_variants(variants, where: str) -> None:
    from tvaccine.methods import METHODS

    if not isinstance(variants, dict):
        raise UserError(f"{where}: variants must map a name to {{method, settings}}")
    for name, spec in variants.items():
        if not isinstance(spec, dict) or set(spec) - {"method", "settings"} or "method" not in spec:
            raise UserError(f"{where}: variants.{name} must have 'method' and optional 'settings' (got {spec!r})")
        if spec["method"] not in METHODS and spec["method"] != "none":
            raise UserError(f"{where}: variants.{name}.method '{spec['method']}' is not one of none, "
                            f"{', '.join(sorted(METHODS))}")
        if name in METHODS:
            raise UserError(f"{where}: variants.{name}: the name of a method; give the variant its own name")
        if not isinstance(spec.get("settings") or {}, dict):
            raise UserError(f"{where}: variants.{name}.settings must be a mapping of settings")


def apply_variant(cfg: dict, name: str, variants: dict) -> None:
    """A variant (e.g. ``tvaccine-layer: {method: tvaccine, settings: {freeze_scope: layer}}``, or SFT at a longer
    budget) is its method with settings on top of ``by_method``; the summary keeps its name in ``variant``."""
    spec = variants[name]
    set_path(cfg, "align.method", spec["method"])
    set_path(cfg, "align.variant", name)
    by_method = cfg["align"].setdefault("by_method", {})
    by_method[spec["method"]] = {**(by_method.get(spec["method"]) or {}), **(spec.get("settings") or {})}
