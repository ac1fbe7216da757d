"""The stages of one run, cached: align → attack → evaluate, each in ``ROOT/stages/<stage>-<hash>``.

The hash is taken over the stage's *resolved* settings (every default filled in, so a changed default never reuses
an old stage), the package version, its upstream stage's folder and the content of its data files. So a rerun skips
finished stages, an interrupted stage resumes from its last Trainer checkpoint or its partial generations, and sweep
cells that need the same alignment share one folder. A stage is computed under a lock (``tvaccine.locks``), so that
workers of one sweep compute it once.

With ``eval.attack_steps`` the attacked model is also evaluated at earlier attack steps, from the attack's own
checkpoints (no retraining): a robustness curve per cell. Step 0 is the aligned model before the attack.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

from tvaccine.errors import UserError
from tvaccine.io import atomic_write_json, package_versions
from tvaccine.locks import FileLock, LockTiming
from tvaccine.outputs import EVAL_RESULTS, AlignedAdapter, AttackOutput
from tvaccine.pipeline.config import (align_settings, attack_settings, cell_values, curve_config, eval_settings,
                                      eval_spec)

# Fields of a stage's settings that say where it writes, not what it computes: left out of the stage hash.
UNHASHED_FIELDS = ("output_dir", "logging_dir", "run_name")
# Evaluation settings added after stages were cached: in the hash only when set (not None or empty), so that every
# evaluation computed before they existed keeps its folder.
HASHED_WHEN_SET = ("knowledge_data", "judge_models", "judge_max_new_tokens")


def file_digest(path: str | None) -> str | None:
    from tvaccine.data.files import file_sha256

    return file_sha256(path) if path and Path(path).is_file() else None


def stage_hash(*parts: Any) -> str:
    """A stage's cache key: its parts and the package version (a new release never reuses an older one's stage)."""
    from tvaccine import __version__

    text = json.dumps([__version__, *parts], sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def resolved(settings) -> dict:
    """A stage's settings object as the stage runs it, every default filled in, without where it writes."""
    d = settings.to_dict() if hasattr(settings, "to_dict") else dataclasses.asdict(settings)
    return {k: v for k, v in d.items() if k not in UNHASHED_FIELDS}


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


def compute_stage(folder: Path, finished: Callable[[], bool], work: Callable[[], dict | None],
                  timing: LockTiming | None = None) -> None:
    """Run ``work`` for the stage in ``folder`` unless it is finished, and write ``stage.json`` (its wall time, peak
    memory and whatever ``work`` returns) last. Under a lock beside the folder (tvaccine.locks), so that of several
    workers needing the stage one computes it and the others wait, then find it finished; a finished stage with its
    stage.json is read without a lock."""
    if finished() and (folder / "stage.json").is_file():
        return
    with FileLock(folder.with_name(folder.name + ".lock"), timing):
        if finished():
            return
        record: dict = {}
        with measured(record):
            extra = work()
        record.update(extra or {})
        atomic_write_json(folder / "stage.json", record)


def _stage_record(folder: Path) -> dict:
    path = folder / "stage.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def run_align(config: dict, root: Path, timing: LockTiming | None = None, cell: str | None = None) -> dict | None:
    """The alignment stage, or None for the no-defense row; an existing adapter can be given as align.adapter.
    ``cell``: the sweep cell's name, for the run name the tracking integrations show (``report_to``)."""
    spec = config.get("align") or {}
    method = spec.get("method", "none")
    if spec.get("adapter"):
        return {"dir": str(spec["adapter"]), "method": method, "reused": True}
    if method == "none":
        return None
    from tvaccine.align.run import align

    harmful = spec.get("harmful_data", spec.get("probe_data"))  # probe_data: the older name
    folder, cfg = align_stage(config, root)
    name_run(cfg, config, cell, "align")

    def work() -> dict:
        summary = align(method, config["model"], spec["data"], str(folder), cfg, harmful_data=harmful,
                        dtype=config.get("dtype"))
        return {"steps": summary["steps"], "s_per_step": summary["s_per_step"]}

    compute_stage(folder, lambda: AlignedAdapter.is_finished(folder), work, timing)
    return {"dir": str(folder), "method": method, **_stage_record(folder)}


def align_stage(config: dict, root: Path) -> tuple[Path, Any]:
    """The alignment stage's folder and resolved settings (nothing is run)."""
    from tvaccine.methods import METHODS
    from tvaccine.settings import build_config

    spec = config.get("align") or {}
    method = spec["method"]
    cfg = build_config(METHODS[method][0], align_settings(config), where=["align.settings"])
    harmful = spec.get("harmful_data", spec.get("probe_data"))
    key = stage_hash("align", config["model"], method, resolved(cfg), file_digest(spec.get("data")),
                     file_digest(harmful))
    return root / "stages" / f"align-{method}-{key}", cfg


def run_attack(config: dict, root: Path, aligned: dict | None, timing: LockTiming | None = None,
               cell: str | None = None) -> dict | None:
    spec = config.get("attack")
    if not spec:
        return None
    from tvaccine.attack.config import AttackConfig
    from tvaccine.attack.rows import AttackData
    from tvaccine.attack.run import attack
    from tvaccine.settings import build_config

    settings = attack_settings(config)
    alignment_data = spec.get("alignment_data") if settings.get("defense") else None
    defense_inputs = [file_digest(alignment_data)] if settings.get("defense") else []
    # The mode is not set here: unset, attack() takes the one the aligned method assumes (continue after Booster),
    # which the aligned folder (in the hash) decides.
    aligned_dir = aligned["dir"] if aligned else None
    cfg = build_config(AttackConfig, settings, where=["attack.settings"])
    key = stage_hash("attack", config["model"], aligned_dir, resolved(cfg), spec.get("task"),
                     *(file_digest(spec.get(k)) for k in ("data", "harmful", "task_data")), *defense_inputs)
    folder = root / "stages" / f"attack-{key}"
    name_run(cfg, config, cell, "attack")

    def work() -> dict:
        data = AttackData(task=spec.get("task"), data=spec.get("data"), harmful=spec.get("harmful"),
                          task_data=spec.get("task_data"), alignment_data=alignment_data)
        summary = attack(config["model"], folder, cfg, aligned=aligned_dir, data=data,
                         dtype=config.get("dtype")).summary
        return {k: summary.get(k) for k in ("steps", "mode", "defense", "first_loss", "last_loss")}

    compute_stage(folder, lambda: AttackOutput.is_finished(folder), work, timing)
    return {"dir": str(folder), **_stage_record(folder)}


def name_run(cfg, config: dict, cell: str | None, stage: str) -> None:
    """The Trainer's ``run_name`` (the name W&B and the other integrations show; TensorBoard's event files go into
    ``<stage folder>/runs/<run_name>``): ``<cell>-<stage>``, the cell being the sweep cell's name or, in a single
    run, the method (or variant). Unless the settings name the run. Not in the stage hash (UNHASHED_FIELDS): a stage
    shared by several cells carries the name of the cell that computed it."""
    if cfg.run_name is None:
        cfg.run_name = f"{cell or cell_values(config)['variant']}-{stage}"


def run_eval(config: dict, root: Path, adapters: list[str], label: str, model: str | None = None,
             judges: list[str] | None = None, timing: LockTiming | None = None) -> dict:
    """Evaluate ``model`` (default: the run's base model) with ``adapters`` merged in order."""
    from tvaccine.evaluation.config import judge_lengths
    from tvaccine.evaluation.run import evaluate

    model = model or config["model"]
    settings = eval_settings(config, model, adapters, judges)
    spec = eval_spec(config, judges)
    hashed = {k: v for k, v in resolved(settings).items() if not (k in HASHED_WHEN_SET and v in (None, {}))}
    # A judge that reads answers of another length than max_new_tokens (HarmBench's published 512) changes what is
    # generated even with no setting for it: an evaluation cached before judges read their own lengths is not one.
    other = {j: n for j, n in judge_lengths(settings).items() if n != settings.max_new_tokens}
    if other:
        hashed["judge_lengths"] = other
    key = stage_hash("eval", model, adapters, hashed,
                     *(file_digest(spec.get(k)) for k in ("harmful_prompts", "benign_prompts", "task_data",
                                                           "xstest_prompts")),
                     *(file_digest(spec[k]) for k in ("knowledge_data",) if spec.get(k)),
                     *_classifier_digest(settings))
    folder = root / "stages" / f"eval-{label}-{key}"
    results_path = folder / EVAL_RESULTS

    def work() -> None:  # results.json is the stage's output; stage.json keeps only the measurement
        evaluate(settings, folder)

    compute_stage(folder, results_path.is_file, work, timing)
    return {"dir": str(folder), **_stage_record(folder),
            "results": json.loads(results_path.read_text(encoding="utf-8"))}


def _classifier_digest(settings) -> list[str | None]:
    """The trained classifier's weights, when it judges: retrained in the same folder, it must not leave the
    evaluations it judged before in the cache. Empty otherwise, so other evaluations keep their hash."""
    if "classifier" not in settings.judges:
        return []
    from tvaccine.evaluation.classifier import WEIGHTS
    from tvaccine.evaluation.judges import default_classifier_dir

    return [file_digest(str(Path(settings.classifier or default_classifier_dir()) / WEIGHTS))]


def run(config: dict, echo=print, timing: LockTiming | None = None, cell: str | None = None) -> dict:
    """One align → attack → evaluate run; writes and returns ``OUTPUT/results.json``. ``timing``: of the stage
    locks (tvaccine.locks); ``cell``: the sweep cell's name (the training runs' names start with it)."""
    root = Path(config["output"])  # created by the first stage that writes: a bad input leaves no folder
    aligned = run_align(config, root, timing, cell)
    aligned_dir = aligned["dir"] if aligned else None
    adapters = [aligned_dir] if aligned else []
    eval_section = config.get("eval") or {}
    steps = sorted(set(eval_section.get("attack_steps") or []))
    before = None
    if eval_section.get("before_attack", False) or 0 in steps:
        before = run_eval(config, root, adapters, "aligned", timing=timing)
    attacked = run_attack(config, root, aligned, timing, cell)
    curve = []
    if attacked:
        done = AttackOutput.read(attacked["dir"])
        model, adapters = done.model_parts()
        after = run_eval(config, root, adapters, "attacked", model=model, timing=timing)
        final = attacked.get("steps")
        for step in steps:
            if step == 0:
                curve.append((0, before))
            elif step >= (final or 0):
                if step > (final or 0):
                    raise UserError(f"eval.attack_steps: step {step} is past the attack's last step {final}")
                curve.append((step, after))
            else:
                model, adapters = done.model_parts(step)
                curve.append((step, run_eval(curve_config(config), root, adapters, f"attacked-step{step}",
                                             model=model, timing=timing)))
    else:
        # the same folder as `before` when judges agree
        after = run_eval(config, root, adapters, "aligned", timing=timing)
    results = {"settings": config, "cell": cell_values(config),
               "stages": {"align": aligned, "attack": attacked,
                          "eval_before": _strip(before), "eval": _strip(after)},
               "scores": after["results"].get("scores"),
               "scores_before_attack": before["results"].get("scores") if before else None,
               "curve": [{"attack_step": step, "eval_dir": stage["dir"], "scores": stage["results"].get("scores")}
                         for step, stage in curve],
               "versions": package_versions()}
    return results


def _strip(stage: dict | None) -> dict | None:
    return None if stage is None else {k: v for k, v in stage.items() if k != "results"}
