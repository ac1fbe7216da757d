"""Running: one run (``run_one``) or a sweep of cells (``run_sweep``), sharded over workers if asked
(docs/distributed.md). A cell's ``results.json`` carries a key over its settings and data, so that a rerun skips
exactly the cells that are still current."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from tvaccine.errors import UserError
from tvaccine.io import atomic_write_json
from tvaccine.locks import FileLock, LockTiming
from tvaccine.pipeline.config import expand_sweep
from tvaccine.pipeline.stages import file_digest, run, stage_hash
from tvaccine.pipeline.summary import summary_row, write_summary

def run_one(config: dict, echo=print) -> dict:
    results = run(config, echo)
    root = Path(config["output"])
    atomic_write_json(root / "results.json", results)
    write_summary(root, [summary_row("run", results)])
    write_analysis(root, [("run", results)])
    return results


def parse_shard(text: str) -> tuple[int, int]:
    """``I/N`` (0-based: ``0/4`` … ``3/4``, as SLURM_ARRAY_TASK_ID counts with ``--array=0-3``) → (I, N)."""
    index, _, count = str(text).partition("/")
    try:
        index, count = int(index), int(count)
    except ValueError:
        index = count = None
    if index is None or count < 1 or not 0 <= index < count:
        raise UserError(f"--shard: expected I/N with 0 ≤ I < N (0-based: 0/4, 1/4, 2/4, 3/4 for four workers), "
                        f"got {text!r}")
    return index, count


def run_sweep(sweep: dict, where: str, echo=print, shard: tuple[int, int] | None = None,
              timing: LockTiming | None = None, on_complete: Callable[[list[dict]], None] | None = None
              ) -> list[dict]:
    """Run every cell (stages shared through the cache under the sweep's output) and write ``summary.csv``.

    With ``shard=(I, N)`` only the cells whose index in the grid is I modulo N, so that N workers share the sweep
    (docs/distributed.md): stages are computed under a lock (``compute_stage``, ``timing``), and after each of its cells
    a worker rebuilds summary.csv from every cell finished so far, and at its end the analysis files too, under a
    lock on the summary: whichever worker ends last writes the complete files. ``on_complete(rows)`` is called
    (under that lock) by every worker that ends with every cell finished. Returns the summary's rows."""
    cells = expand_sweep(sweep, where)
    index, count = shard or (0, 1)
    if not (isinstance(index, int) and isinstance(count, int) and 0 <= index < count):
        raise UserError(f"shard: expected (I, N) with 0 ≤ I < N, got {shard!r}")
    root = Path(sweep["base"]["output"])
    keys = {name: cell_key(cfg) for name, cfg in cells}
    if index >= len(cells):
        echo(f"shard {index}/{count}: no cells (the grid has {len(cells)})")
    for i, (name, cfg) in enumerate(cells):
        if i % count != index:
            continue  # another worker's cell
        results_path = cell_results(root, name)
        if finished_cell(results_path, keys[name]) is not None:
            echo(f"[{i + 1}/{len(cells)}] {name}: finished earlier")
            continue
        if results_path.is_file():
            echo(f"[{i + 1}/{len(cells)}] {name}: its settings or data changed since its results were written; "
                 f"recomputing (stages whose settings did not change are reused)")
        else:
            echo(f"[{i + 1}/{len(cells)}] {name}")
        atomic_write_json(results_path, {**run(cfg, echo, timing, cell=name), "cell_key": keys[name]})
        write_sweep_summary(root, cells, timing, keys=keys)  # after every cell: an interrupted sweep keeps its rows
    return write_sweep_summary(root, cells, timing, analysis=True, on_complete=on_complete, keys=keys)


def cell_results(root: Path, name: str) -> Path:
    return root / "cells" / name.replace("/", "_") / "results.json"


def cell_key(config: dict) -> str:
    """What a cell's results depend on: its settings and the contents of the files they name. A cell whose
    results.json carries another key (the sweep was edited, a quick run preceded a full one, a data file changed)
    is recomputed; its stages still come from the cache where their own settings did not change."""
    def leaves(node):
        if isinstance(node, dict):
            for value in node.values():
                yield from leaves(value)
        elif isinstance(node, list):
            for value in node:
                yield from leaves(value)
        elif isinstance(node, str):
            yield node

    files = {value: file_digest(value) for value in leaves(config) if _is_file(value)}
    return stage_hash("cell", config, files)


def _is_file(text: str) -> bool:
    try:
        return Path(text).is_file()
    except OSError:  # a string too long to be a path
        return False


def finished_cell(path: Path, key: str) -> dict | None:
    """A cell's results when they were computed from the settings and data that ``key`` stands for, else None."""
    if not path.is_file():
        return None
    results = json.loads(path.read_text(encoding="utf-8"))
    return results if results.get("cell_key") == key else None


def write_sweep_summary(root: Path, cells: list[tuple[str, dict]], timing: LockTiming | None = None,
                        analysis: bool = False, on_complete: Callable[[list[dict]], None] | None = None,
                        keys: dict[str, str] | None = None) -> list[dict]:
    """summary.csv (and with ``analysis`` the analysis files) from every cell finished with its current settings
    (``keys``: each cell's ``cell_key``), in grid order. Under a lock, so that the rebuilds of several workers are
    written in the order they read: the last one to take the lock has read every cell finished before it."""
    keys = keys or {name: cell_key(cfg) for name, cfg in cells}
    with FileLock(root / "summary.lock", timing):
        finished = [(name, results) for name, results in
                    ((name, finished_cell(cell_results(root, name), keys[name])) for name, _ in cells)
                    if results is not None]
        rows = [summary_row(name, results) for name, results in finished]
        write_summary(root, rows)
        if analysis:
            write_analysis(root, finished)
            if on_complete and len(finished) == len(cells):
                on_complete(rows)
    return rows


def write_analysis(root: Path, cells: list[tuple[str, dict]]) -> None:
    """curves.csv, aggregate.csv, differences.csv and auc.csv beside summary.csv (see tvaccine.curves)."""
    from tvaccine.curves import write_curve_files

    write_curve_files(root, cells)
