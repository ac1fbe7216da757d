"""align → attack → evaluate as one cached, resumable run; sweeps over grids of runs.

Each stage writes into ``ROOT/stages/<stage>-<hash>``, the hash taken over every setting that shapes the stage's
output (and its upstream stage's hash, and the content of its data files). So a rerun skips finished stages, an
interrupted stage resumes from its last Trainer checkpoint or its partial generations, and sweep cells that need
the same alignment share one folder.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import hashlib
import io
import itertools
import json
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tvaccine.errors import UserError
from tvaccine.io import atomic_write_json, atomic_write_text, package_versions
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
SUMMARY_COLUMNS = ["cell", "method", "defense", "rho", "num_active_layers", "poison_ratio", "sample_num", "task",
                   "attack_lr", "attack_epochs", "seed", "hs_keyword_before", "hs_keyword", "hs_classifier",
                   "hs_beaver_dam", "over_refusal", "fa", "fa_strict", "align_s", "attack_s", "eval_s",
                   "align_peak_rss_mb", "attack_peak_rss_mb", "align_dir", "attack_dir", "eval_dir"]


def file_digest(path: str | None) -> str | None:
    from tvaccine.data.files import file_sha256

    return file_sha256(path) if path and Path(path).is_file() else None


def stage_hash(*parts: Any) -> str:
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


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

    from tvaccine.evaluation.run import EvalSettings

    known = {"align": {"method", "data", "harmful_data", "probe_data", "settings", "by_method", "adapter"},
             "attack": {"task", "data", "harmful", "task_data", "settings", "defense", "alignment_data"},
             "eval": {f.name for f in fields(EvalSettings)} - {"model", "adapters", "dtype"} | {"before_attack"}}
    for section, keys in known.items():
        unknown = set(config.get(section) or {}) - keys
        if unknown:
            raise UserError(f"{where}: unknown key(s) {sorted(f'{section}.{k}' for k in unknown)}; "
                            f"{section} has {sorted(keys)}")
    texts = ["model", "output", "dtype", "align.data", "align.harmful_data", "align.probe_data", "align.adapter",
             "attack.task", "attack.data", "attack.harmful", "attack.task_data", "attack.defense",
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


def _check_inputs(config: dict, where: str, cache: dict) -> None:
    from tvaccine.attack import BEAVERTAILS_TRAIN, AttackConfig
    from tvaccine.data.sets import attack_set
    from tvaccine.data.sources import load_source
    from tvaccine.data.tasks import get_task
    from tvaccine.evaluation.run import check_settings, prompt_sets
    from tvaccine.methods import METHODS
    from tvaccine.models import model_skeleton, torch_dtype
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
        if not spec.get("data"):
            raise UserError(f"{where}: align.data: {method} needs an alignment file")
        read(spec["data"])
        harmful = spec.get("harmful_data", spec.get("probe_data"))
        if cfg.needs_harmful_data():
            if not harmful:
                raise UserError(f"{where}: align.harmful_data: {method} needs a harmful file")
            read(harmful)
        against_model(cfg, "align")
    if spec.get("adapter") and not (Path(spec["adapter"]) / "adapter_config.json").is_file():
        raise UserError(f"{where}: align.adapter: {spec['adapter']} is not an adapter folder (no adapter_config.json)")
    attack = config.get("attack")
    if attack:
        cfg = build_config(AttackConfig, attack_settings(config), where=[f"{where}: attack.settings"])
        if cfg.mode == "continue" and method == "none" and not spec.get("adapter"):
            raise UserError(f"{where}: attack.settings.mode continue needs an alignment (align.method or "
                            f"align.adapter)")
        if attack.get("data"):
            read(attack["data"])
        elif not attack.get("task"):
            raise UserError(f"{where}: attack.task: name the task (sst2, agnews, gsm8k) or give attack.data")
        else:  # build the set (not written) to see that both sources have the rows it takes
            task = get_task(attack["task"])
            attack_set(read(attack.get("harmful") or BEAVERTAILS_TRAIN, "harmful"),
                       read(attack.get("task_data") or f"{task.hub_id}:{task.train_split}", f"task:{task.name}"),
                       cfg.poison_ratio, cfg.sample_num, cfg.seed)
        if cfg.defense != "none":
            if not attack.get("alignment_data"):
                raise UserError(f"{where}: attack.alignment_data: defense {cfg.defense} needs the provider's "
                                f"alignment rows")
            read(attack["alignment_data"])
        against_model(cfg, "attack")
    settings = eval_settings(config, config["model"], [])
    check_settings(settings)
    prompt_sets(settings)


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
    # attack.defense (or attack.settings.defense) with attack.alignment_data: a fine-tuning-stage defense (Lisa).
    # Left out of the settings and the hash when none, so undefended stages keep their folders.
    if spec.get("defense") is not None:
        settings["defense"] = spec["defense"]
    if settings.get("defense") == "none":
        del settings["defense"]
    return settings


@contextmanager
def measured(record: dict):
    """Wall time and peak resident memory of a stage (the peak is reset first where Linux allows it)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM, the peak RSS
    except OSError:
        pass
    start = time.perf_counter()
    yield
    record["wall_s"] = round(time.perf_counter() - start, 2)
    record["peak_rss_mb"] = peak_rss_mb()


def peak_rss_mb() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _stage_record(folder: Path) -> dict:
    path = folder / "stage.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def run_align(config: dict, root: Path) -> dict | None:
    """The alignment stage, or None for the no-defense row; an existing adapter can be given as align.adapter."""
    spec = config.get("align") or {}
    method = spec.get("method", "none")
    if spec.get("adapter"):
        return {"dir": str(spec["adapter"]), "method": method, "reused": True}
    if method == "none":
        return None
    from tvaccine.align import align, is_finished

    settings = align_settings(config)
    harmful = spec.get("harmful_data", spec.get("probe_data"))  # probe_data: the older name
    key = stage_hash("align", config["model"], method, settings, file_digest(spec.get("data")),
                     file_digest(harmful))
    folder = root / "stages" / f"align-{method}-{key}"
    if not is_finished(folder):
        from tvaccine.settings import build_config
        from tvaccine.methods import METHODS

        cfg = build_config(METHODS[method][0], settings, where=["align.settings"])
        record: dict = {}
        with measured(record):
            summary = align(method, config["model"], spec["data"], str(folder), cfg,
                            harmful_data=harmful, dtype=config.get("dtype"))
        record.update(steps=summary["steps"], s_per_step=summary["s_per_step"])
        atomic_write_json(folder / "stage.json", record)
    return {"dir": str(folder), "method": method, **_stage_record(folder)}


def run_attack(config: dict, root: Path, aligned: dict | None) -> dict | None:
    spec = config.get("attack")
    if not spec:
        return None
    from tvaccine.attack import AttackConfig, attack, is_finished
    from tvaccine.settings import build_config

    settings = attack_settings(config)
    alignment_data = spec.get("alignment_data") if settings.get("defense") else None
    defense_inputs = [file_digest(alignment_data)] if settings.get("defense") else []
    # The mode is not set here: unset, attack() takes the one the aligned method assumes (continue after Booster),
    # which the aligned folder (in the hash) decides.
    aligned_dir = aligned["dir"] if aligned else None
    key = stage_hash("attack", config["model"], aligned_dir, settings, spec.get("task"),
                     *(file_digest(spec.get(k)) for k in ("data", "harmful", "task_data")), *defense_inputs)
    folder = root / "stages" / f"attack-{key}"
    if not is_finished(folder):
        cfg = build_config(AttackConfig, settings, where=["attack.settings"])
        record: dict = {}
        with measured(record):
            summary = attack(config["model"], folder, cfg, aligned=aligned_dir, task=spec.get("task"),
                             data=spec.get("data"), harmful=spec.get("harmful"), task_data=spec.get("task_data"),
                             dtype=config.get("dtype"), alignment_data=alignment_data).summary
        record.update(steps=summary["steps"], mode=summary["mode"], defense=summary["defense"],
                      first_loss=summary.get("first_loss"), last_loss=summary.get("last_loss"))
        atomic_write_json(folder / "stage.json", record)
    return {"dir": str(folder), **_stage_record(folder)}


def attacked_model(attack_dir: str, aligned_dir: str | None) -> tuple[str | None, list[str]]:
    """(model folder or None for the base, adapters merged in order) that make up an attacked model."""
    settings = json.loads((Path(attack_dir) / "tvaccine_attack.json").read_text(encoding="utf-8"))
    if settings["mode"] == "full":
        return attack_dir, []
    if settings["mode"] == "continue" or not aligned_dir:
        return None, [attack_dir]
    return None, [aligned_dir, attack_dir]


def run_eval(config: dict, root: Path, adapters: list[str], label: str, model: str | None = None,
             judges: list[str] | None = None) -> dict:
    """Evaluate ``model`` (default: the run's base model) with ``adapters`` merged in order."""
    from tvaccine.evaluation.run import evaluate

    model = model or config["model"]
    settings = eval_settings(config, model, adapters, judges)
    spec = eval_spec(config, judges)
    key = stage_hash("eval", model, adapters, spec,
                     *(file_digest(spec.get(k)) for k in ("harmful_prompts", "benign_prompts", "task_data")))
    folder = root / "stages" / f"eval-{label}-{key}"
    results_path = folder / "results.json"
    if not results_path.is_file():
        record: dict = {}
        with measured(record):
            evaluate(settings, folder)
        atomic_write_json(folder / "stage.json", record)
    return {"dir": str(folder), **_stage_record(folder),
            "results": json.loads(results_path.read_text(encoding="utf-8"))}


def eval_spec(config: dict, judges: list[str] | None = None) -> dict:
    """The run's eval section as evaluation settings: the attack's task is scored unless eval names its own."""
    spec = {k: v for k, v in (config.get("eval") or {}).items() if k != "before_attack"}
    if judges:
        spec["judges"] = judges
    spec.setdefault("task", get_path(config, "attack.task"))
    return spec


def eval_settings(config: dict, model: str, adapters: list[str], judges: list[str] | None = None):
    from tvaccine.evaluation.run import EvalSettings

    return EvalSettings(model=model, adapters=list(adapters), dtype=config.get("dtype"),
                        **eval_spec(config, judges))


def run(config: dict, echo=print) -> dict:
    """One align → attack → evaluate run; writes and returns ``OUTPUT/results.json``."""
    root = Path(config["output"])  # created by the first stage that writes: a bad input leaves no folder
    aligned = run_align(config, root)
    adapters = [aligned["dir"]] if aligned else []
    before = None
    if (config.get("eval") or {}).get("before_attack", False):
        before = run_eval(config, root, adapters, "aligned", judges=["keyword"])
    attacked = run_attack(config, root, aligned)
    if attacked:
        model, adapters = attacked_model(attacked["dir"], aligned["dir"] if aligned else None)
        after = run_eval(config, root, adapters, "attacked", model=model)
    else:
        after = run_eval(config, root, adapters, "aligned")  # the same folder as `before` when judges agree
    results = {"settings": config, "cell": cell_values(config),
               "stages": {"align": aligned, "attack": attacked,
                          "eval_before": _strip(before), "eval": _strip(after)},
               "scores": after["results"].get("scores"),
               "scores_before_attack": before["results"].get("scores") if before else None,
               "versions": package_versions()}
    return results


def _strip(stage: dict | None) -> dict | None:
    return None if stage is None else {k: v for k, v in stage.items() if k != "results"}


def cell_values(config: dict) -> dict:
    out = {name: get_path(config, path) for name, path in AXES.items()}
    out["method"] = out["method"] or "none"
    return out


def _pct(scores: dict | None, *path: str):
    node = scores
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    if isinstance(node, dict):
        node = node.get("value")
    return node


def summary_row(name: str, results: dict) -> dict:
    s, before = results.get("scores") or {}, results.get("scores_before_attack")
    stages = results["stages"]
    hs = "harmful_score"
    row = {"cell": name, **results["cell"],
           "hs_keyword_before": _pct(before, hs, "keyword"), "hs_keyword": _pct(s, hs, "keyword"),
           "hs_classifier": _pct(s, hs, "classifier"), "hs_beaver_dam": _pct(s, hs, "beaver-dam"),
           "over_refusal": _pct(s, "over_refusal"), "fa": _pct(s, "fine_tune_accuracy", "published"),
           "fa_strict": _pct(s, "fine_tune_accuracy", "strict")}
    for stage in ("align", "attack"):
        info = stages.get(stage) or {}
        row[f"{stage}_s"] = info.get("wall_s")
        row[f"{stage}_peak_rss_mb"] = info.get("peak_rss_mb")
        row[f"{stage}_dir"] = info.get("dir")
    row["eval_s"] = (stages.get("eval") or {}).get("wall_s")
    row["eval_dir"] = (stages.get("eval") or {}).get("dir")
    return row


def write_summary(folder: Path, rows: list[dict]) -> Path:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=SUMMARY_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(folder / "summary.csv", buf.getvalue())
    return folder / "summary.csv"


def run_one(config: dict, echo=print) -> dict:
    results = run(config, echo)
    root = Path(config["output"])
    atomic_write_json(root / "results.json", results)
    write_summary(root, [summary_row("run", results)])
    return results


def expand_sweep(sweep: dict, where: str) -> list[tuple[str, dict]]:
    """The cells of a sweep: the product of ``grid`` lists applied to the ``base`` run config."""
    base, grid = sweep.get("base"), sweep.get("grid") or {}
    if not isinstance(base, dict) or not isinstance(grid, dict):
        raise UserError(f"{where}: a sweep needs 'base' (a run config) and 'grid' (a mapping of lists per axis)")
    unknown = set(sweep) - {"base", "grid"}
    if unknown:
        raise UserError(f"{where}: unknown key(s) {sorted(unknown)}; a sweep has base and grid")
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
        method = get_path(cfg, "align.method")
        if method == "none":
            cfg["align"] = {"method": "none"}
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


def run_sweep(sweep: dict, where: str, echo=print) -> list[dict]:
    """Run every cell (stages shared through the cache under the sweep's output) and write ``summary.csv``."""
    cells = expand_sweep(sweep, where)
    root = Path(sweep["base"]["output"])
    rows = []
    for i, (name, cfg) in enumerate(cells, 1):
        cell_dir = root / "cells" / name.replace("/", "_")
        results_path = cell_dir / "results.json"
        if results_path.is_file():
            echo(f"[{i}/{len(cells)}] {name}: finished earlier")
            results = json.loads(results_path.read_text(encoding="utf-8"))
        else:
            echo(f"[{i}/{len(cells)}] {name}")
            results = run(cfg, echo)
            atomic_write_json(results_path, results)
        rows.append(summary_row(name, results))
        write_summary(root, rows)  # after every cell, so an interrupted sweep still has its finished rows
    return rows
