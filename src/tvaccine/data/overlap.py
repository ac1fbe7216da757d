"""Overlap of harmful prompts across the alignment, probe, attack and evaluation sets.

A harmful prompt seen in alignment and again in evaluation makes the harmful score measure memorisation, and the
published poisoned mixes do share prompts with held-out sets (beavertails/SPLITS.md, "Leakage warning"). Prompts
are compared after collapsing whitespace and case.
"""

from __future__ import annotations

from itertools import combinations
from pathlib import Path

from tvaccine.data.sets import HARMFUL_KINDS
from tvaccine.errors import UserError


def prompt_key(row: dict) -> str:
    return " ".join(f"{row['instruction']} {row.get('input') or ''}".split()).casefold()


def harmful_prompts(records: list[dict]) -> set[str]:
    return {prompt_key(r) for r in records if r.get("kind") in HARMFUL_KINDS}


def file_prompts(path: str | Path) -> set[str]:
    """Harmful prompts of a set file (its ``kind`` field), or of any data file read in the harmful view."""
    from tvaccine.data.files import read_records
    from tvaccine.data.sources import load_source

    records = read_records(path)
    if all("kind" in r for r in records):
        return harmful_prompts(records)
    return {prompt_key(r) for r in load_source(str(path), "harmful").rows}


def overlap_report(named: dict[str, set[str]]) -> list[dict]:
    """One entry per pair of sets that share prompts: names, count, and up to three examples."""
    out = []
    for (a, pa), (b, pb) in combinations(named.items(), 2):
        shared = sorted(pa & pb)
        if shared:
            out.append({"sets": [a, b], "shared_prompts": len(shared), "examples": shared[:3]})
    return out


def check_disjoint(named: dict[str, set[str]], strict: bool = False, echo=print) -> list[dict]:
    """Report shared harmful prompts; with ``strict`` any overlap is an error."""
    report = overlap_report(named)
    for entry in report:
        a, b = entry["sets"]
        echo(f"overlap: {entry['shared_prompts']} harmful prompts are in both {a} and {b} "
             f"(e.g. {entry['examples'][0][:60]!r})")
    if report and strict:
        worst = max(report, key=lambda e: e["shared_prompts"])
        raise UserError(f"--strict-disjoint: {worst['sets'][0]} and {worst['sets'][1]} share "
                        f"{worst['shared_prompts']} harmful prompts ({len(report)} overlapping pair(s) in all)")
    if not report and len(named) > 1:
        echo(f"overlap: none among {', '.join(named)}")
    return report


def write_checked(dataset, output: str | Path, others: list[str], strict: bool = False) -> dict:
    """Check the set's harmful prompts against the ``others`` files, then write it (an error writes nothing)."""
    if others:
        named = {dataset.name: harmful_prompts(dataset.records)}
        named.update({str(f): file_prompts(f) for f in others})
        dataset.overlap = check_disjoint(named, strict)
    return dataset.write(output)
