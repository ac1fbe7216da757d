"""align → attack → evaluate as one cached, resumable run; sweeps over grids of runs.

Each stage writes into ``ROOT/stages/<stage>-<hash>``, the hash taken over every setting that shapes the stage's
output (and its upstream stage's hash, and the content of its data files). So a rerun skips finished stages, an
interrupted stage resumes from its last Trainer checkpoint or its partial generations, and sweep cells that need
the same alignment share one folder.
"""

from __future__ import annotations

import copy
import csv
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
                   "hs_beaver_dam", "over_refusal", "fa", "fa_strict", "align_s", "attack_s", "eval_s", "align_peak_rss_mb",
                   "attack_peak_rss_mb", "align_dir", "attack_dir", "eval_dir"]


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


def check_run_config(config: dict, where: str) -> None:
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

    # settings: common to every method; by_method.<name>: only for that method (e.g. rho, S for tvaccine)
    settings = {**(spec.get("settings") or {}), **((spec.get("by_method") or {}).get(method) or {})}
    settings.setdefault("seed", config.get("seed", 42))
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

    settings = dict(spec.get("settings") or {})
    settings.setdefault("seed", config.get("seed", 42))
    # attack.defense (or attack.settings.defense) with attack.alignment_data: a fine-tuning-stage defense (Lisa).
    # Left out of the settings and the hash when none, so undefended stages keep their folders.
    if spec.get("defense") is not None:
        settings["defense"] = spec["defense"]
    if settings.get("defense") == "none":
        del settings["defense"]
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
    from tvaccine.evaluation.run import EvalSettings, evaluate

    spec = {k: v for k, v in (config.get("eval") or {}).items() if k != "before_attack"}
    if judges:
        spec["judges"] = judges
    spec.setdefault("task", get_path(config, "attack.task"))
    model = model or config["model"]
    try:
        settings = EvalSettings(model=model, adapters=list(adapters), dtype=config.get("dtype"), **spec)
    except TypeError as err:
        raise UserError(f"eval: {err}") from err
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


def run(config: dict, echo=print) -> dict:
    """One align → attack → evaluate run; writes and returns ``OUTPUT/results.json``."""
    root = Path(config["output"])
    root.mkdir(parents=True, exist_ok=True)
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
    if not isinstance(base, dict):
        raise UserError(f"{where}: a sweep needs 'base' (a run config) and 'grid' (lists per axis)")
    for axis, values in grid.items():
        if not isinstance(values, list) or not values:
            raise UserError(f"{where}: grid.{axis} must be a non-empty list")
        if axis not in AXES and "." not in axis:
            raise UserError(f"{where}: unknown sweep axis '{axis}' (known: {', '.join(AXES)}, or a dotted path)")
    cells = []
    axes = list(grid)
    for combo in itertools.product(*(grid[a] for a in axes)):
        cfg = copy.deepcopy(base)
        for axis, value in zip(axes, combo):
            set_path(cfg, AXES.get(axis, axis), value)
            if axis == "task":
                set_path(cfg, "eval.task", value)
        if get_path(cfg, "align.method") == "none":
            cfg["align"] = {"method": "none"}
        name = "-".join(f"{a}={v}" for a, v in zip(axes, combo)) or "cell"
        check_run_config(cfg, f"{where} cell {name}")
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
