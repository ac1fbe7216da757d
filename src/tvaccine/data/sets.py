"""The data sets of the threat model, each written with a manifest that lets it be rebuilt and audited.

- alignment: harmful prompt → refusal, plus round(benign_ratio · n_align) benign instructions; ``n_align`` rows;
- probe: ``num_probe_samples`` harmful prompt → harmful answer pairs (T-Vaccine's layer importance);
- attack: round(p · n) harmful pairs + n − round(p · n) task rows, shuffled with a seed (p = ``poison_ratio``,
  n = ``sample_num``; rounding is half up, computed on the decimal value of p);
- eval: harmful prompts (answers blanked) for the harmful score;
- task-train / task-eval: a task's rows in the authors' format (``tvaccine data build``).

Rows are taken from the front of each source, as the authors' code does (hash-ranked BeaverTails splits are already
in random order); the seed only orders mixed sets. Every written row is ``{instruction, input, output, kind}`` (+
``label`` for task rows), where ``kind`` is harmful, refusal, benign, task or prompt. The manifest beside the file
(``FILE.manifest.json``) records each source (path or hub id, split, view, sha256 or fingerprint), the row indices
taken from it in output order, the seed, the counts and the sha256 of the written file.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

from tvaccine.data.sources import Source, load_source
from tvaccine.data.tasks import get_task
from tvaccine.errors import UserError
from tvaccine.io import atomic_write_json, write_jsonl

HARMFUL_KINDS = ("harmful", "refusal", "prompt")  # kinds whose prompt is a harmful prompt (overlap check)
MANIFEST_VERSION = 1


def poison_count(poison_ratio: float, sample_num: int) -> int:
    """round(p · n), half up, on p's decimal value (so p = 0.05, n = 50 gives 3, not float rounding's 2)."""
    return math.floor(Decimal(repr(float(poison_ratio))) * sample_num + Decimal("0.5"))


def render(row: dict, kind: str) -> dict:
    record = {"instruction": row["instruction"], "input": row["input"],
              "output": "" if kind == "prompt" else row["output"], "kind": kind}
    if "label" in row:
        record["label"] = row["label"]
    return record


def manifest_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".manifest.json")


def _jsonl_text(records: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


@dataclass
class DataSet:
    name: str
    sources: list[tuple[Source, str]]  # each source with the kind its rows get
    picks: list[tuple[int, int]]  # (source number, row index in that source), in output order
    seed: int | None = None
    parameters: dict = field(default_factory=dict)
    overlap: list[dict] | None = None

    def _picked(self) -> list[tuple[dict, str]]:
        by_index = [{r["_index"]: r for r in src.rows} for src, _ in self.sources]
        return [(by_index[s][i], self.sources[s][1]) for s, i in self.picks]

    @property
    def records(self) -> list[dict]:
        return [render(row, kind) for row, kind in self._picked()]

    def counts(self) -> dict:
        """Rows per kind, and how many refusals ``write_refusal`` wrote (the source had none)."""
        out: dict[str, int] = {}
        for row, kind in self._picked():
            out[kind] = out.get(kind, 0) + 1
            if kind == "refusal" and row["refusal"] is None:
                out["written_refusals"] = out.get("written_refusals", 0) + 1
        return out

    def write(self, path: str | Path) -> dict:
        """Write the rows, then the manifest (each atomically); returns the manifest."""
        from tvaccine import __version__

        records = self.records
        text = _jsonl_text(records)
        path = Path(path)
        write_jsonl(path, records)
        manifest = {
            "manifest_version": MANIFEST_VERSION, "set": self.name, "file": path.name,
            "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(), "rows": len(records),
            "counts": self.counts(), "seed": self.seed, "parameters": self.parameters,
            "sources": [{**src.describe(), "kind": kind} for src, kind in self.sources],
            "picks": [list(p) for p in self.picks], "overlap": self.overlap, "tvaccine": __version__,
        }
        atomic_write_json(manifest_path(path), manifest)
        return manifest


def _shuffled(picks: list[tuple[int, int]], seed: int) -> list[tuple[int, int]]:
    picks = list(picks)
    random.Random(seed).shuffle(picks)
    return picks


def alignment_set(refusals: Source, n_align: int, benign: Source | None = None, benign_ratio: float = 0.0,
                  seed: int = 42) -> DataSet:
    if n_align < 1:
        raise UserError(f"n_align: must be at least 1 (got {n_align})")
    if not 0 <= benign_ratio <= 1:
        raise UserError(f"benign_ratio: must be in [0, 1] (got {benign_ratio})")
    n_benign = poison_count(benign_ratio, n_align)
    if n_benign and benign is None:
        raise UserError("benign_ratio > 0 needs a benign source (--benign FILE)")
    picks = [(0, r["_index"]) for r in refusals.take(n_align - n_benign, "the alignment set's refusal rows")]
    sources = [(refusals, "refusal")]
    if benign is not None:
        picks += [(1, r["_index"]) for r in benign.take(n_benign, "the alignment set's benign rows")]
        sources.append((benign, "benign"))
    return DataSet("alignment", sources, _shuffled(picks, seed), seed,
                   {"n_align": n_align, "benign_ratio": benign_ratio})


def probe_set(harmful: Source, num_probe_samples: int) -> DataSet:
    if num_probe_samples < 1:
        raise UserError(f"num_probe_samples: must be at least 1 (got {num_probe_samples})")
    rows = harmful.take(num_probe_samples, "the probe set")
    return DataSet("probe", [(harmful, "harmful")], [(0, r["_index"]) for r in rows], None,
                   {"num_probe_samples": num_probe_samples})


def attack_set(harmful: Source, task: Source, poison_ratio: float, sample_num: int, seed: int = 42) -> DataSet:
    if not 0 <= poison_ratio <= 1:
        raise UserError(f"poison_ratio: must be in [0, 1] (got {poison_ratio})")
    if sample_num < 1:
        raise UserError(f"sample_num: must be at least 1 (got {sample_num})")
    n_harmful = poison_count(poison_ratio, sample_num)
    picks = [(0, r["_index"]) for r in harmful.take(n_harmful, f"round(p·n) = {n_harmful} harmful rows")]
    picks += [(1, r["_index"]) for r in task.take(sample_num - n_harmful, f"{sample_num - n_harmful} task rows")]
    return DataSet("attack", [(harmful, "harmful"), (task, "task")], _shuffled(picks, seed), seed,
                   {"poison_ratio": poison_ratio, "sample_num": sample_num, "task": task.view.removeprefix("task:")})


def eval_set(harmful: Source, num_prompts: int) -> DataSet:
    if num_prompts < 1:
        raise UserError(f"num_prompts: must be at least 1 (got {num_prompts})")
    rows = harmful.take(num_prompts, "the evaluation set")
    return DataSet("eval", [(harmful, "prompt")], [(0, r["_index"]) for r in rows], None,
                   {"num_prompts": num_prompts})


def task_set(name: str, task: Source, limit: int | None = None, balanced: bool = False) -> DataSet:
    """The first ``limit`` task rows; ``balanced``: the first ``limit / labels`` rows of each label, in source order
    (so that always answering the majority label scores 1 / labels, not the source's majority share)."""
    if limit is not None and limit < 1:  # rows[:-1] would silently drop the last row
        raise UserError(f"limit: must be at least 1 (got {limit})")
    if balanced:
        rows = _balanced(task, limit, name)
    else:
        rows = task.rows if limit is None else task.take(limit, name)
    parameters = {"task": task.view.removeprefix("task:"), "limit": limit}
    if balanced:  # only then, so that manifests of unbalanced sets stay as they were
        parameters["balanced"] = True
    return DataSet(name, [(task, "task")], [(0, r["_index"]) for r in rows], None, parameters)


def _balanced(task: Source, limit: int | None, name: str) -> list[dict]:
    labels = get_task(task.view.removeprefix("task:")).labels
    if not labels:
        raise UserError(f"{name}: a balanced set needs a task with label words ({task.view} has none)")
    if limit is not None and limit % len(labels):
        raise UserError(f"limit: a balanced {name} needs a multiple of {len(labels)} rows (got {limit})")
    by_label = {label: [r for r in task.rows if r["label"] == label] for label in labels}
    per_label = min(len(rows) for rows in by_label.values()) if limit is None else limit // len(labels)
    for label, rows in by_label.items():
        if len(rows) < per_label:
            raise UserError(f"{task.label}: a balanced {name} of {limit} rows needs {per_label} rows labelled "
                            f"{label!r}, the source has {len(rows)}")
    return sorted((r for rows in by_label.values() for r in rows[:per_label]), key=lambda r: r["_index"])


# --- manifests: read, rebuild, verify -------------------------------------------------------------------------


def read_manifest(path: str | Path) -> dict:
    """The manifest of a set file (``FILE`` or ``FILE.manifest.json``)."""
    path = Path(path)
    mpath = path if path.name.endswith(".manifest.json") else manifest_path(path)
    if not mpath.is_file():
        raise UserError(f"{mpath}: no such manifest")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise UserError(f"{mpath}: not UTF-8 text ({err.reason} at byte {err.start})") from err
    except json.JSONDecodeError as err:
        raise UserError(f"{mpath}:{err.lineno}: invalid JSON ({err.msg})") from err
    if not isinstance(manifest, dict):
        raise UserError(f"{mpath}: expected a JSON object, got {type(manifest).__name__}")
    for key, kind in (("set", str), ("sources", list), ("picks", list), ("sha256", str)):
        if key not in manifest:
            raise UserError(f"{mpath}: missing field '{key}'")
        if not isinstance(manifest[key], kind):
            raise UserError(f"{mpath}: field '{key}' must be a {'list' if kind is list else 'string'}")
    for n, src in enumerate(manifest["sources"]):
        if not isinstance(src, dict) or not all(isinstance(src.get(k), str) for k in ("ref", "view", "kind")):
            raise UserError(f"{mpath}: field 'sources[{n}]' must be an object with string ref, view and kind")
    for n, pick in enumerate(manifest["picks"]):
        if not (isinstance(pick, list) and len(pick) == 2 and all(type(i) is int and i >= 0 for i in pick)):
            raise UserError(f"{mpath}: field 'picks[{n}]' must be a pair of row numbers, got {pick!r}")
    return manifest


def rebuild(manifest: dict) -> DataSet:
    """The set a manifest describes, read again from its sources; a source whose content changed is an error."""
    sources = []
    for n, desc in enumerate(manifest["sources"]):
        src = load_source(desc["ref"], desc["view"], desc.get("split"), desc.get("refusal_seed", 0))
        for key in ("sha256", "fingerprint"):
            if desc.get(key) and getattr(src, key) != desc[key]:
                raise UserError(f"{src.label}: content changed since the manifest was written "
                                f"(sources[{n}].{key} {desc[key][:12]}…, now {str(getattr(src, key))[:12]}…)")
        sources.append((src, desc["kind"]))
    picks = [tuple(p) for p in manifest["picks"]]
    for p in picks:
        if p[0] >= len(sources) or not any(r["_index"] == p[1] for r in sources[p[0]][0].rows):
            raise UserError(f"manifest: picks entry {list(p)} names no row of its source")
    return DataSet(manifest["set"], sources, picks, manifest.get("seed"), manifest.get("parameters", {}),
                   manifest.get("overlap"))


def verify(path: str | Path) -> dict:
    """Rebuild the set of ``path`` from its manifest and check that the file and the rebuild match its sha256."""
    path = Path(path)
    manifest = read_manifest(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    on_disk = hashlib.sha256(path.read_bytes()).hexdigest()
    rebuilt = hashlib.sha256(_jsonl_text(rebuild(manifest).records).encode("utf-8")).hexdigest()
    return {"file": str(path), "manifest_sha256": manifest["sha256"], "file_matches": on_disk == manifest["sha256"],
            "rebuild_matches": rebuilt == manifest["sha256"]}


def manifest_summary(path: str | Path, manifest: dict) -> str:
    """One line for the terminal: rows per kind, refusals written, where the file went."""
    counts = dict(manifest["counts"])
    written = counts.pop("written_refusals", 0)
    text = ", ".join(f"{v} {k}" for k, v in counts.items())
    if written:
        text += f"; {written} refusals by the refusal writer"
    return f"{manifest['set']}: {manifest['rows']} rows ({text}) → {path} (+ .manifest.json)"
