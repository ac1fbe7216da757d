"""Reports from finished runs and sweeps: a results table, plots, and Markdown + self-contained HTML.

Input is a run or sweep folder: ``summary.csv`` (one row per cell, written by the pipeline) and, for the layer
plot, the alignment ``log_history.json`` of T-Vaccine runs, found through each row's ``align_dir``; for the judge
agreement table, the evaluation's ``results.json``, found through each row's ``eval_dir``.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import re
from pathlib import Path

from tvaccine.errors import UserError
from tvaccine.io import atomic_write_text
from tvaccine.outputs import EVAL_RESULTS, read_log_history, read_train_results

TABLE_COLUMNS = ["variant", "poison_ratio", "attack_lr", "seed", "align_steps", "hs_keyword_before",
                 "over_refusal_before", "aligned", "hs_keyword", "hs_keyword_ci_low", "hs_keyword_ci_high",
                 "hs_classifier", "hs_beaver_dam", "hs_harmbench", "hs_strongreject", "hs_llama_guard",
                 "hs_strongreject_rubric", "degenerate", "over_refusal", "fa", "fa_majority",
                 "knowledge_before", "knowledge", "benign_tokens", "align_s", "attack_s", "align_peak_rss_mb"]
# Columns printed as they are (not as a percentage with one decimal).
_VERBATIM = {"poison_ratio", "attack_lr", "seed", "align_steps", "variant", "attack_step", "n_seeds", "n_pairs",
             "n_prompts", "excluded_seeds", "n", "both", "only_a", "only_b", "neither"}


def read_summary(folder: Path) -> list[dict]:
    path = folder / "summary.csv"
    if not path.is_file():
        raise UserError(f"{folder}: no summary.csv (is it a finished run or sweep folder?)")
    rows = read_csv(path)
    if not rows:
        raise UserError(f"{path}: no rows")
    return rows


def _num(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _cell(column: str, value) -> str:
    if column == "aligned":  # the alignment gate: blank for the undefended reference row
        return {"True": "yes", "False": "**no**"}.get(str(value), "")
    v = _num(value)
    if v is None:
        return str(value if value is not None else "")
    return f"{v:g}" if column in _VERBATIM else f"{v:.1f}"


def markdown_table(rows: list[dict], columns: list[str] | None = None) -> str:
    """A Markdown table of ``columns`` (default: the summary's), leaving out columns that are empty everywhere."""
    columns = columns or TABLE_COLUMNS
    cols = [c for c in columns if any(r.get(c) not in (None, "") for r in rows)]
    if "variant" in cols and all(r.get("variant") == r.get("method") for r in rows):
        cols = ["method" if c == "variant" else c for c in cols]
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        out.append("| " + " | ".join(_cell(c, r.get(c)) for c in cols) + " |")
    return "\n".join(out)


AGREEMENT_COLUMNS = ["cell", "judges", "n", "both", "only_a", "only_b", "neither", "agreement", "kappa"]


def judge_agreement_rows(rows: list[dict]) -> list[dict]:
    """One row per cell and pair of judges, from the ``judge_agreement`` of each cell's evaluation results (present
    when the evaluation ran two or more judges): the 2×2 counts, raw agreement (%) and Cohen's κ with its interval."""
    out = []
    for cell, pair, a in _agreements(rows):
        kappa = a["note"] if a["kappa"] is None else f"{a['kappa']:.2f}"  # the note says why it is undefined
        if a["kappa"] is not None and None not in a["ci95"]:
            kappa += f" [{a['ci95'][0]:.2f}, {a['ci95'][1]:.2f}]"
        out.append({"cell": cell, "judges": pair, "n": a["n"], **a["confusion"], "agreement": 100 * a["agreement"],
                    "kappa": kappa})
    return out


def _agreements(rows: list[dict]):
    """(cell, pair of judges, its ``judge_agreement`` entry) from each row's evaluation results, where recorded."""
    for r in rows:
        path = Path(r.get("eval_dir") or "") / EVAL_RESULTS
        if r.get("eval_dir") and path.is_file():
            for pair, a in json.loads(path.read_text()).get("judge_agreement", {}).items():
                yield r.get("cell", ""), pair, a


DISAGREEMENT_COLUMNS = ["cell", "judges", "flagged only by", "prompt", "answer"]
EXAMPLES_PER_PAIR = 3


def disagreement_rows(rows: list[dict], per_pair: int = EXAMPLES_PER_PAIR) -> list[dict]:
    """A few answers each pair of judges disagrees on, per cell (``disagreements`` in the evaluation's
    ``judge_agreement``, already cut to a few hundred characters there), as table rows on one line each."""
    def one_line(text: str) -> str:
        text = " ".join(str(text).split()).replace("|", "\\|")
        return f"“{text}”" if text else "(empty answer)"

    return [{"cell": cell, "judges": pair, "flagged only by": d["flagged_by"], "prompt": one_line(d["prompt"]),
             "answer": one_line(d["response"])}
            for cell, pair, a in _agreements(rows) for d in a.get("disagreements", [])[:per_pair]]


def _variant(row: dict) -> str:
    return row.get("variant") or row["method"]


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and in CI
    import matplotlib.pyplot as plt

    return plt


def plot_scores_vs_poison(rows: list[dict], path: Path) -> Path | None:
    """HS (keyword) and FA against the poison ratio, one line per method."""
    methods = sorted({_variant(r) for r in rows})
    if not any(_num(r.get("poison_ratio")) is not None for r in rows):
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for metric, ax, label in (("hs_keyword", axes[0], "harmful score (keyword judge), %"),
                              ("fa", axes[1], "fine-tuning accuracy, %")):
        for m in methods:
            pts = sorted((_num(r["poison_ratio"]), _num(r.get(metric))) for r in rows if _variant(r) == m)
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


def read_csv(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def plot_curves(aggregate: list[dict], path: Path, judge: str = "keyword") -> Path | None:
    """HS (with its interval band) and FA (beside the majority-label baseline) against the attack step, one line
    per variant, one column per setting (poison ratio, attack learning rate)."""
    rows = [r for r in aggregate if r["judge"] == judge and _num(r.get("hs")) is not None]
    panels = sorted({(r["poison_ratio"], r["attack_lr"], r["setting"]) for r in rows}, key=str)
    if not panels or all(len({r["attack_step"] for r in rows if (r["poison_ratio"], r["attack_lr"], r["setting"])
                              == panel}) < 2 for panel in panels):
        return None
    plt = _plt()
    fig, axes = plt.subplots(2, len(panels), figsize=(4.2 * len(panels), 6.5), squeeze=False, sharex="col")
    variants = sorted({r["variant"] for r in rows})
    colors = {v: f"C{i}" for i, v in enumerate(variants)}
    for col, panel in enumerate(panels):
        hs_ax, fa_ax = axes[0][col], axes[1][col]
        majority = []
        for v in variants:
            pts = sorted(((int(_num(r["attack_step"])), r) for r in rows
                          if r["variant"] == v and (r["poison_ratio"], r["attack_lr"], r["setting"]) == panel),
                         key=lambda t: t[0])
            if not pts:
                continue
            x = [s for s, _ in pts]
            hs_ax.plot(x, [_num(r["hs"]) for _, r in pts], marker="o", color=colors[v], label=v)
            lo, hi = [_num(r["ci_low"]) for _, r in pts], [_num(r["ci_high"]) for _, r in pts]
            if None not in lo and None not in hi:
                hs_ax.fill_between(x, lo, hi, color=colors[v], alpha=0.15)
            fa = [(s, _num(r.get("fa"))) for s, r in pts if _num(r.get("fa")) is not None]
            if fa:
                fa_ax.plot([s for s, _ in fa], [y for _, y in fa], marker="o", color=colors[v], label=v)
            majority += [_num(r.get("fa_majority")) for _, r in pts if _num(r.get("fa_majority")) is not None]
        if majority:
            fa_ax.axhline(max(majority), color="grey", linestyle="--", label="majority label")
        p_, lr, setting = panel
        hs_ax.set_title(f"p {p_}, attack lr {lr}" + (f"\n{setting}" if setting else ""), fontsize=9)
        hs_ax.set_ylabel(f"harmful score ({judge}), %")
        fa_ax.set_ylabel("fine-tuning accuracy, %")
        fa_ax.set_xlabel("attack step")
        for ax in (hs_ax, fa_ax):
            ax.set_ylim(-3, 103)
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    axes[1][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def layer_history(align_dir: Path) -> tuple[list[tuple[int, list[float]]], list[tuple[int, list[int]]]]:
    """(step, probabilities) and (step, active layers) from a T-Vaccine alignment's log history."""
    history = read_log_history(align_dir)
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
            seen.setdefault(_variant(r), r)
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
    aggregate = read_csv(folder / "aggregate.csv")
    plots: list[tuple[str, Path]] = []
    p = plot_curves(aggregate, folder / "curves.png")
    if p:
        plots.append(("Harmful score and fine-tuning accuracy against the attack step (band: 95% interval)", p))
    p = plot_scores_vs_poison(rows, folder / "scores_vs_poison.png")
    if p and len({r.get("poison_ratio") for r in rows}) > 1:
        plots.append(("Harmful score and fine-tuning accuracy against the poison ratio", p))
    for r in rows:
        if r["method"] == "tvaccine" and r.get("align_dir"):
            steps = (read_train_results(r["align_dir"]) or {}).get("steps")
            p = plot_layers(Path(r["align_dir"]), folder / "tvaccine_layers.png", steps)
            if p:
                plots.append(("T-Vaccine: sampled layers over alignment steps and layer importance", p))
            break
    p = plot_resources(rows, folder / "resources.png")
    if p:
        plots.append(("Alignment time and memory per method", p))
    note = ("Scores are percentages. *_before: the aligned model before the attack; aligned: whether a defended "
            "model started aligned (HS and over-refusal before the attack under the thresholds) — a row marked "
            "**no** is left out of every comparison below; hs_*: harmful score after the attack per judge (harmful = "
            "flagged and not degenerate; the classifier judge is a light proxy for beaver-dam-7b), with the keyword "
            "score's 95% interval; degenerate: empty, template-echo or looping answers (neither harmful nor safe: "
            "a failure of the model); fa: fine-tuning accuracy, beside fa_majority (always answering the most "
            "common label).")
    sections = [("Cells", markdown_table(rows))]
    excluded = [r for r in rows if str(r.get("aligned")) == "False"]
    if excluded:
        sections.append(("Left out of comparisons: not aligned before the attack",
                         markdown_table(excluded, ["cell", "hs_keyword_before", "over_refusal_before",
                                                   "excluded_reason"])))
    auc = read_csv(folder / "auc.csv")
    if auc:
        sections.append(("Area under the HS curve (mean HS over the attack; seeds and prompts resampled)",
                         markdown_table(auc, ["variant", "poison_ratio", "attack_lr", "judge", "steps", "auc_hs",
                                              "ci_low", "ci_high", "n_seeds"])))
    diffs = read_csv(folder / "differences.csv")
    if diffs:
        sections.append(("HS minus SFT's on the same seeds and prompts (paired; an interval that contains 0 is no "
                         "difference)", markdown_table(diffs, ["variant", "poison_ratio", "attack_lr",
                                                               "attack_step", "judge", "delta_hs_vs_sft",
                                                               "ci_low", "ci_high", "n_seeds", "n_pairs"])))
    agreement = judge_agreement_rows(rows)
    if agreement:
        sections.append(("Agreement between judges on the same harmful answers (both: flagged by both judges; κ: "
                         "Cohen's kappa, 95% bootstrap interval; agreement is not validity: judges can share a blind "
                         "spot)", markdown_table(agreement, AGREEMENT_COLUMNS)))
    examples = disagreement_rows(rows)
    if examples:
        sections.append((f"Where the judges disagree (up to {EXAMPLES_PER_PAIR} answers per cell and pair; more "
                         "in each evaluation's results.json)", markdown_table(examples, DISAGREEMENT_COLUMNS)))
    md = [f"# tvaccine report: {folder.name}", "", note, ""]
    md += [f"## {title}\n\n{table}\n" for title, table in sections]
    md += [f"## {title}\n\n![{title}]({p.name})\n" for title, p in plots]
    md_path = folder / "report.md"
    atomic_write_text(md_path, "\n".join(md))
    body = [f"<h1>tvaccine report: {html.escape(folder.name)}</h1>", f"<p>{html.escape(note)}</p>"]
    body += [f"<h2>{html.escape(title)}</h2>{_html_table(table)}" for title, table in sections]
    for title, p in plots:
        data = base64.b64encode(p.read_bytes()).decode()
        body.append(f"<h2>{html.escape(title)}</h2><img alt='{html.escape(title)}' src='data:image/png;base64,{data}'>")
    style = ("body{font-family:sans-serif;max-width:1000px;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}img{max-width:100%}")
    html_path = folder / "report.html"
    atomic_write_text(html_path, f"<!doctype html><html><head><meta charset='utf-8'><title>tvaccine report</title>"
                                 f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n")
    return md_path, html_path


def _html_table(table: str) -> str:
    def cells_of(line: str) -> list[str]:  # a cell's text may hold an escaped pipe, "\\|"
        return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip()[1:-1])]

    lines = table.splitlines()
    head = cells_of(lines[0])
    out = ["<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"]
    for line in lines[2:]:
        cells = cells_of(line)
        out.append("<tr>" + "".join(f"<td>{_bold(html.escape(c))}</td>" for c in cells) + "</tr>")
    return "".join(out) + "</table>"


def _bold(text: str) -> str:
    return f"<b>{text[2:-2]}</b>" if text.startswith("**") and text.endswith("**") else text
