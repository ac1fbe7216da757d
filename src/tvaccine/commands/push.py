"""``tvaccine push``: upload a finished alignment or attack folder with its model card, and evaluation scores."""

from __future__ import annotations

import argparse

DESCRIPTION = """\
Upload FOLDER, a finished `tvaccine align` or `tvaccine attack` output (without its checkpoints or an attack's
training rows), to the hub model repository REPO. Its model card (README.md: method, settings, citation) is
rendered again from the folder's settings file; with --results it gets an Evaluation section: per judge the harmful
score with its 95% interval and n, over-refusal (benign, XSTest), degenerate answers, fine-tuning accuracy with the
majority-label baseline and the knowledge score, as the file has them (a score it lacks is left out), with the
judges' notes and the evaluation's settings. The card is written into FOLDER as well, so the folder and the hub's
copy agree. The folder and the results are checked first, then the repository id, the hub's reachability and a
token; nothing is written before all of them pass."""

EXAMPLE = """\
example:
  tvaccine align --method tvaccine ... --output runs/tvaccine
  tvaccine eval --model smollm2-135m --adapters runs/tvaccine --harmful-prompts eval.jsonl ... --output runs/eval
  tvaccine push runs/tvaccine me/tvaccine-smollm2 --results runs/eval/results.json

The scores must be of FOLDER: an evaluation's results.json must name it among its adapters (or as its model,
for an attack in mode full); a pipeline run's or sweep cell's must name it as its alignment or its attack.
Paths are compared resolved from the current folder. Without --results the card has no Evaluation section."""


def register(sub) -> None:
    p = sub.add_parser(
        "push", help="upload a finished alignment or attack folder to the hub, with its model card and scores",
        description=DESCRIPTION,
        epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", metavar="FOLDER", help="a finished alignment or attack folder (--output of the stage)")
    p.add_argument("repo", metavar="REPO", help="hub repository id, NAME or NAMESPACE/NAME (created if missing)")
    p.add_argument("--results", metavar="FILE", help="scores for the card: the results.json of `tvaccine eval` on "
                                                     "this folder, or of a pipeline run or sweep cell it belongs to")
    p.add_argument("--private", action="store_true", help="create the repository private (an existing one keeps "
                                                          "its visibility)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace, extra: list[str]) -> int:
    from pathlib import Path

    from tvaccine.io import atomic_write_text
    from tvaccine.outputs import MODEL_CARD
    from tvaccine.push import check_push, push_folder, render_card

    card, what = render_card(args.folder, args.results)  # a bad folder or results file fails first, even offline
    # The results file names the folder by its path: a copy pushed from elsewhere needs the same layout.
    check_push(args.repo, flag="tvaccine push", offline="push from a machine that reaches it, with the folder and "
                                                        "the results file at the same paths")
    atomic_write_text(Path(args.folder) / MODEL_CARD, card)
    url = push_folder(args.folder, args.repo, args.private, what, args.results)
    print(f"pushed {args.folder} to {url}")
    return 0
