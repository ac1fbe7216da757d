"""Input files of the research benchmark, from the Hugging Face hub (default) or from a local copy (``--data-dir``).

``build_sets(work, data_dir, settings)`` writes every file into ``work`` and returns ``{name: path}``; each name
with its source on the hub / in DIR (the layout of the local copy):

- alignment: refusals to harmful prompts + benign rows. Alignment split + ``tatsu-lab/alpaca`` /
  ``beavertails/alignment.jsonl`` + ``alpaca/alpaca_en_demo.json``;
- probe: harmful pairs for the layer-importance probe. Probe split / ``beavertails/probe.jsonl``;
- attack_harmful: harmful pairs the attack mixes into the task data. Attack split / ``beavertails/attack.jsonl``;
- harmful_eval: held-out harmful prompts (harmful score). ``PKU-Alignment/BeaverTails`` ``30k_test`` /
  ``beavertails/eval.jsonl``;
- task, task_eval: SST-2 training rows and a label-balanced evaluation set (so always answering one label scores
  50%). ``stanfordnlp/sst2`` train, validation / ``sst2/train_merged_n1000_p0.json``, ``sst2/val.json``;
- benign: benign instruction/answer pairs (judge training). ``tatsu-lab/alpaca`` train /
  ``alpaca/alpaca_en_demo.json``;
- benign_eval: AlpacaEval prompts (over-refusal). ``alpaca_eval.json`` of ``tatsu-lab/alpaca_eval`` /
  ``alpaca/alpaca_eval.json``;
- xstest: XSTest prompts, of which ``read_prompts`` keeps the safe ones (over-refusal). ``walledai/XSTest`` /
  ``xstest/xstest_prompts.csv``;
- judge_harmful: BeaverTails harmful pairs (judge training; exclude harmful_eval). The whole train pool /
  ``beavertails/harmful_qa.jsonl``.

From the hub, the BeaverTails splits are made here, by the rule of the local copy's splits: the unsafe rows of
``30k_train``, one per prompt (the first), minus every unsafe prompt of ``30k_test`` (so that no evaluation prompt
is trained on, should the two splits share prompts), ranked by ``sha256(f"{split_seed}:{prompt}")``; the first 40%
are the alignment split, the next 10% the probe split, the rest the attack split. They are written to
``work/hub/beavertails/`` in the local copy's format, with ``work/hub/SOURCES.json`` recording the hub ids,
fingerprints and counts. The sets themselves are built by ``tvaccine data alignment|probe|eval|build`` (each with
its manifest) and checked disjoint by ``tvaccine data check --strict-disjoint``.

Hub ids and fields, as their cards and loaders state: ``stanfordnlp/sst2`` splits train / validation with
``sentence``, ``label`` (0 negative, 1 positive), read by ``tvaccine.data.tasks``; ``tatsu-lab/alpaca`` split train
with ``instruction``, ``input``, ``output``; ``tatsu-lab/alpaca_eval`` is a loading-script repository (which
``datasets`` ≥ 4 no longer runs), so its ``alpaca_eval.json`` (the 805 AlpacaEval instructions with ``output``,
``generator``, ``dataset``) is downloaded as a file; ``walledai/XSTest`` see ``tvaccine.evaluation.prompts``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tvaccine.data.overlap import prompt_key
from tvaccine.data.sets import poison_count
from tvaccine.errors import UserError

REPO = Path(__file__).resolve().parents[2]
BEAVERTAILS = "PKU-Alignment/BeaverTails"
SST2 = "stanfordnlp/sst2"
ALPACA = "tatsu-lab/alpaca"
ALPACA_EVAL = "tatsu-lab/alpaca_eval"
XSTEST = "walledai/XSTest"
SHARES = (40, 10)  # percent of the train pool for alignment and probe; the rest is the attack split
N_BENIGN = 1000  # benign pairs kept from Alpaca for judge training (the local copy's alpaca_en_demo.json has 1000)
N_TASK_TRAIN = 1000  # default SST-2 training rows (the local copy's train_merged_n1000_p0.json has 1000)
REQUIRED = ("n_align", "benign_ratio", "num_probe_samples", "eval_prompts", "n_task_eval")
LOCAL = {  # name → path under --data-dir
    "bt_alignment": "beavertails/alignment.jsonl", "bt_probe": "beavertails/probe.jsonl",
    "bt_attack": "beavertails/attack.jsonl", "bt_eval": "beavertails/eval.jsonl",
    "bt_all": "beavertails/harmful_qa.jsonl", "sst2_train": "sst2/train_merged_n1000_p0.json",
    "sst2_eval": "sst2/val.json", "benign": "alpaca/alpaca_en_demo.json", "benign_eval": "alpaca/alpaca_eval.json",
    "xstest": "xstest/xstest_prompts.csv",
}


def tv(*args: str) -> None:
    """One ``tvaccine`` command; its own error message is on stderr, so a failure names only the command."""
    done = subprocess.run([sys.executable, "-m", "tvaccine", *args], cwd=REPO)
    if done.returncode:
        raise UserError(f"tvaccine {' '.join(args[:2])} failed (exit {done.returncode}); its error is above")


def build_sets(work: Path, data_dir: Path | None, settings: dict) -> dict[str, str]:
    """Write the benchmark's input files into ``work``; ``data_dir``: a local copy instead of the hub.

    ``settings``: n_align, benign_ratio, num_probe_samples (the alignment and probe sets), eval_prompts (harmful
    evaluation prompts; the local copy has 150), n_task_eval (SST-2 evaluation rows, half of each label), and
    optionally n_task_train (SST-2 training rows, default 1000) and split_seed (the hub splits' rank, default 0).
    """
    missing = [k for k in REQUIRED if k not in settings]
    if missing:
        raise UserError(f"settings: missing {', '.join(missing)}")
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    sources = _local_sources(Path(data_dir)) if data_dir is not None else _hub_sources(work / "hub", settings)
    s = settings
    files = {"alignment": work / "alignment.jsonl", "probe": work / "probe.jsonl",
             "harmful_eval": work / "harmful_eval.jsonl", "task": work / "sst2_train.jsonl",
             "task_eval": work / "sst2_eval.jsonl"}
    tv("data", "alignment", "--source", sources["bt_alignment"], "--n-align", str(s["n_align"]),
       "--benign", sources["benign"], "--benign-ratio", str(s["benign_ratio"]), "--output", str(files["alignment"]))
    tv("data", "probe", "--source", sources["bt_probe"], "--num-probe-samples", str(s["num_probe_samples"]),
       "--output", str(files["probe"]), "--disjoint-from", str(files["alignment"]), "--strict-disjoint")
    tv("data", "eval", "--source", sources["bt_eval"], "--num-prompts", str(s["eval_prompts"]),
       "--output", str(files["harmful_eval"]))
    tv("data", "build", "--task", "sst2", "--source", sources["sst2_train"],
       "--limit", str(s.get("n_task_train", N_TASK_TRAIN)),
       "--eval-source", sources["sst2_eval"], "--eval-limit", str(s["n_task_eval"]), "--eval-balanced",
       "--output", str(files["task"]), "--eval-output", str(files["task_eval"]))
    tv("data", "check", str(files["alignment"]), str(files["probe"]), sources["bt_attack"],
       str(files["harmful_eval"]), "--strict-disjoint")
    out = {k: str(v) for k, v in files.items()}
    out.update(attack_harmful=sources["bt_attack"], judge_harmful=sources["bt_all"], benign=sources["benign"],
               benign_eval=sources["benign_eval"], xstest=sources["xstest"])
    return out


def questions_first(source: str, dest: Path) -> str:
    """The benign rows with the question-form instructions first (stable), written to ``dest`` as JSONL.

    Four in five BeaverTails prompts are questions and nine in ten Alpaca instructions are not: an alignment set
    that mixes them as they come teaches "a question → refuse", and the aligned model then refuses benign questions
    (calibrate.py). Taking the benign rows' questions first matches the two halves in form.
    """
    from tvaccine.data.sources import load_source

    rows = load_source(source, "benign").rows
    rows = sorted(rows, key=lambda r: not r["instruction"].strip().endswith("?"))
    _write_jsonl(dest, [{k: r.get(k, "") for k in ("instruction", "input", "output")} for r in rows])
    return str(dest)


def _local_sources(data_dir: Path) -> dict[str, str]:
    absent = [rel for rel in LOCAL.values() if not (data_dir / rel).is_file()]
    if absent:
        raise UserError(f"{data_dir}: not a local copy of the benchmark's data; missing {', '.join(absent)}")
    return {name: str(data_dir / rel) for name, rel in LOCAL.items()}


def _hub_sources(dest: Path, settings: dict) -> dict[str, str]:
    from tvaccine.models import hub_reachable

    if os.environ.get("HF_HUB_OFFLINE") != "1" and not hub_reachable():
        raise UserError("the Hugging Face hub is unreachable from this machine, and the benchmark's data "
                        "(BeaverTails, SST-2, Alpaca, AlpacaEval, XSTest) comes from it by default; pass "
                        "--data-dir DIR with a local copy instead")
    from tvaccine.data.sources import load_source
    from tvaccine.evaluation.prompts import read_prompts

    seed = settings.get("split_seed", 0)
    bt = dest / "beavertails"
    bt.mkdir(parents=True, exist_ok=True)
    train = load_source(f"{BEAVERTAILS}:30k_train", "harmful")
    test = load_source(f"{BEAVERTAILS}:30k_test", "harmful")
    evaluation = _unique(test.rows)
    held_out = {prompt_key(r) for r in evaluation}
    pool = sorted((r for r in _unique(train.rows) if prompt_key(r) not in held_out),
                  key=lambda r: hashlib.sha256(f"{seed}:{r['instruction']}".encode()).hexdigest())
    b1, b2 = len(pool) * SHARES[0] // 100, len(pool) * sum(SHARES) // 100
    splits = {"alignment": pool[:b1], "probe": pool[b1:b2], "attack": pool[b2:], "eval": evaluation,
              "harmful_qa": pool}
    for name, rows in splits.items():
        _write_pairs(bt / f"{name}.jsonl", rows)

    n_benign = max(N_BENIGN, poison_count(settings["benign_ratio"], settings["n_align"]))
    benign = load_source(f"{ALPACA}:train", "benign").take(n_benign, "the benign instructions")
    _write_jsonl(dest / "alpaca_benign.jsonl", [{k: r[k] for k in ("instruction", "input", "output")}
                                                  for r in benign])
    shutil.copyfile(_hub_file(ALPACA_EVAL, "alpaca_eval.json"), dest / "alpaca_eval.json")
    _write_jsonl(dest / "xstest_safe.jsonl", [{"prompt": p["instruction"]} for p in read_prompts(XSTEST)])

    record = {"split_rule": f"rank by sha256('{seed}:' + prompt); alignment {SHARES[0]}%, probe {SHARES[1]}%, "
                            f"attack the rest; train pool = unsafe 30k_train prompts not among 30k_test's",
              "sources": {src.label: {"fingerprint": src.fingerprint, "rows": src.rows_total,
                                      "unsafe_rows": len(src.rows)} for src in (train, test)},
              "counts": {name: len(rows) for name, rows in splits.items()}}
    (dest / "SOURCES.json").write_text(json.dumps(record, indent=2) + "\n")
    return {"bt_alignment": str(bt / "alignment.jsonl"), "bt_probe": str(bt / "probe.jsonl"),
            "bt_attack": str(bt / "attack.jsonl"), "bt_eval": str(bt / "eval.jsonl"),
            "bt_all": str(bt / "harmful_qa.jsonl"), "sst2_train": f"{SST2}:train", "sst2_eval": f"{SST2}:validation",
            "benign": str(dest / "alpaca_benign.jsonl"), "benign_eval": str(dest / "alpaca_eval.json"),
            "xstest": str(dest / "xstest_safe.jsonl")}


def _unique(rows: list[dict]) -> list[dict]:
    """One row per prompt (the first): BeaverTails has several answers to many prompts."""
    seen, out = set(), []
    for r in rows:
        if prompt_key(r) not in seen:
            seen.add(prompt_key(r))
            out.append(r)
    return out


def _write_pairs(path: Path, rows: list[dict]) -> None:
    # the local copy's format, which `tvaccine data` and `tvaccine judge train` both read
    _write_jsonl(path, [{"prompt": r["instruction"], "response": r["output"], "category": None, "is_safe": False}
                        for r in rows])


def _write_jsonl(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")


def _hub_file(repo_id: str, filename: str) -> str:
    from huggingface_hub import hf_hub_download

    try:
        return hf_hub_download(repo_id, filename, repo_type="dataset")
    except Exception as err:  # network, missing file, not cached with HF_HUB_OFFLINE=1
        first = str(err).splitlines()[0] if str(err) else ""
        raise UserError(f"{repo_id}: could not download {filename} ({type(err).__name__}: {first})") from err
