"""Reports from finished runs and sweeps: a results table, plots, and Markdown + self-contained HTML.

Input is a run or sweep folder: ``summary.csv`` (one row per cell, written by the pipeline) and, for the layer
plot, the alignment ``log_history.json`` of T-Vaccine runs, found through each row's ``align_dir``.
"""

from __future__ import annotations

import base64
import csv
import html
import json
from pathlib import Path

from tvaccine.errors import UserError
from tvaccine.io import atomic_write_text

TABLE_COLUMNS = ["method", "poison_ratio", "hs_keyword_before", "hs_keyword", "hs_classifier", "hs_beaver_dam",
                 "over_refusal", "fa", "align_s", "attack_s", "align_peak_rss_mb"]


def read_summary(folder: Path) -> list[dict]:
    path = folder / "summary.csv"
    if not path.is_file():
        raise UserError(f"{folder}: no summary.csv (is it a finished run or sweep folder?)")
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise UserError(f"{path}: no rows")
    return rows


def _num(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def markdown_table(rows: list[dict]) -> str:
    cols = [c for c in TABLE_COLUMNS if any(r.get(c) not in (None, "") for r in rows)]
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = []
        for c in cols:
            v = _num(r.get(c))
            cells.append(str(r.get(c) or "") if v is None else f"{v:.1f}" if c != "poison_ratio" else f"{v:g}")
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and in CI
    import matplotlib.pyplot as plt

    return plt


def plot_scores_vs_poison(rows: list[dict], path: Path) -> Path | None:
    """HS (keyword) and FA against the poison ratio, one line per method."""
    methods = sorted({r["method"] for r in rows})
    if not any(_num(r.get("poison_ratio")) is not None for r in rows):
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for metric, ax, label in (("hs_keyword", axes[0], "harmful score (keyword judge), %"),
                              ("fa", axes[1], "fine-tuning accuracy, %")):
        for m in methods:
            pts = sorted((_num(r["poison_ratio"]), _num(r.get(metric))) for r in rows if r["method"] == m)
            pts = [(x, y) for x, y in pts if x is not None and y is not None]
            if pts:
                ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", label=m)
        ax.set_xlabel("poison ratio p")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def layer_history(align_dir: Path) -> tuple[list[tuple[int, list[float]]], list[tuple[int, list[int]]]]:
    """(step, probabilities) and (step, active layers) from a T-Vaccine alignment's log history."""
    path = align_dir / "log_history.json"
    if not path.is_file():
        return [], []
    history = json.loads(path.read_text(encoding="utf-8"))
    probs = [(h["step"], h["tvaccine/layer_probs"]) for h in history if "tvaccine/layer_probs" in h]
    active = [(h["step"], h["tvaccine/active_layers"]) for h in history if "tvaccine/active_layers" in h]
    return probs, active


def plot_layers(align_dir: Path, path: Path, total_steps: int | None = None) -> Path | None:
    """Heat map of the sampled layers over alignment steps, beside the latest importance probabilities."""
    probs, active = layer_history(align_dir)
    if not active:
        return None
    import numpy as np

    n_layers = len(probs[-1][1]) if probs else max(max(a) for _, a in active) + 1
    end = total_steps or (active[-1][0] + 1)
    grid = np.zeros((n_layers, end))
    for k, (step, layers) in enumerate(active):
        stop = active[k + 1][0] if k + 1 < len(active) else end
        for layer in layers:
            grid[layer, step:stop] = 1
    plt = _plt()
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(10, 3.8), gridspec_kw={"width_ratios": [3, 1]})
    ax0.imshow(grid, aspect="auto", origin="lower", cmap="Greens", interpolation="nearest")
    ax0.set_xlabel("optimizer step")
    ax0.set_ylabel("layer")
    ax0.set_title("layers trained and perturbed")
    if probs:
        ax1.barh(range(n_layers), probs[-1][1], color="tab:green")
        ax1.set_title(f"importance P (step {probs[-1][0]})")
        ax1.set_xlabel("probability")
        ax1.set_ylim(-0.5, n_layers - 0.5)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_resources(rows: list[dict], path: Path) -> Path | None:
    """Alignment time and peak memory per method (first cell of each method)."""
    seen: dict[str, dict] = {}
    for r in rows:
        if _num(r.get("align_s")) is not None:
            seen.setdefault(r["method"], r)
    if not seen:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(8, 3))
    names = list(seen)
    axes[0].bar(names, [_num(seen[m]["align_s"]) for m in names], color="tab:blue")
    axes[0].set_ylabel("alignment wall time, s")
    mem = [_num(seen[m].get("align_peak_rss_mb")) or 0 for m in names]
    axes[1].bar(names, mem, color="tab:orange")
    axes[1].set_ylabel("alignment peak RSS, MB")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def build_report(folder: str | Path) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.html`` (plots embedded) into ``folder``; return both paths."""
    folder = Path(folder)
    rows = read_summary(folder)
    plots: list[tuple[str, Path]] = []
    p = plot_scores_vs_poison(rows, folder / "scores_vs_poison.png")
    if p:
        plots.append(("Harmful score and fine-tuning accuracy against the poison ratio", p))
    for r in rows:
        if r["method"] == "tvaccine" and r.get("align_dir"):
            results = Path(r["align_dir"]) / "train_results.json"
            steps = json.loads(results.read_text(encoding="utf-8"))["steps"] if results.is_file() else None
            p = plot_layers(Path(r["align_dir"]), folder / "tvaccine_layers.png", steps)
            if p:
                plots.append(("T-Vaccine: sampled layers over alignment steps and layer importance", p))
            break
    p = plot_resources(rows, folder / "resources.png")
    if p:
        plots.append(("Alignment time and memory per method", p))
    table = markdown_table(rows)
    note = ("Scores are percentages. hs_keyword_before: harmful score of the aligned model before the attack; "
            "hs_*: after the attack, per judge (the classifier judge is a light proxy for beaver-dam-7b); "
            "over_refusal: refusals on benign prompts; fa: fine-tuning task accuracy.")
    md = [f"# tvaccine report: {folder.name}", "", note, "", table, ""]
    md += [f"## {title}\n\n![{title}]({p.name})\n" for title, p in plots]
    md_path = folder / "report.md"
    atomic_write_text(md_path, "\n".join(md))
    body = [f"<h1>tvaccine report: {html.escape(folder.name)}</h1>", f"<p>{html.escape(note)}</p>",
            _html_table(rows)]
    for title, p in plots:
        data = base64.b64encode(p.read_bytes()).decode()
        body.append(f"<h2>{html.escape(title)}</h2><img alt='{html.escape(title)}' src='data:image/png;base64,{data}'>")
    style = ("body{font-family:sans-serif;max-width:1000px;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}img{max-width:100%}")
    html_path = folder / "report.html"
    atomic_write_text(html_path, f"<!doctype html><html><head><meta charset='utf-8'><title>tvaccine report</title>"
                                 f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n")
    return md_path, html_path


def _html_table(rows: list[dict]) -> str:
    lines = markdown_table(rows).splitlines()
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    out = ["<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"]
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        out.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    return "".join(out) + "</table>"
