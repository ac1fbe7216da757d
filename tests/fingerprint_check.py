"""Not part of the suite (pytest collects only test_*.py): a before/after fingerprint of what every method trains.

Run before and after a change to a trainer or to the code around it:

    FP_OUT=before.json .venv/bin/python -m pytest -q tests/fingerprint_check.py
    (change)
    FP_OUT=after.json .venv/bin/python -m pytest -q tests/fingerprint_check.py

and compare the two files: each entry is (sha256 over every adapter tensor, sum of |w|) after 3 optimizer steps of
every alignment method and of four attacks (no defense, fresh after T-Vaccine, continue after Booster, Lisa) on a
tiny model. Equal hashes mean the change left every update bit-identical (issue 14's refactor was checked so).
Compare files made in one environment: another torch, transformers or peft gives other hashes for the same code."""

import hashlib
import json
import os

from safetensors.torch import load_file

from conftest import attack_sources
from tvaccine.cli import main
from tvaccine.methods import METHODS


def digest(folder):
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensors[name].float().numpy().tobytes())
    return h.hexdigest()[:16], float(sum(t.float().abs().sum() for t in tensors.values()))


def test_fingerprint(tiny_model_dir, align_files, tmp_path):
    align, probe = align_files
    common = ["--max-steps", "3", "--per-device-train-batch-size", "2", "--max-length", "64", "--disable-tqdm",
              "true", "--use-cpu", "true", "--save-steps", "100"]
    out = {}
    for method in sorted(METHODS):
        folder = tmp_path / method
        assert main(["align", "--method", method, "--model", str(tiny_model_dir), "--data", str(align),
                     "--harmful-data", str(probe), "--output", str(folder)] + common
                    + (["--num-active-layers", "2"] if method.startswith("tvaccine") else [])) == 0
        out[method] = digest(folder)
    harmful, task = attack_sources(tmp_path)
    for name, extra in [("attack-none", []), ("attack-fresh-tv", ["--aligned", str(tmp_path / "tvaccine")]),
                        ("attack-continue-booster", ["--aligned", str(tmp_path / "booster")]),
                        ("attack-lisa", ["--defense", "lisa", "--alignment-data", str(align),
                                         "--lisa-alignment-steps", "1", "--lisa-finetune-steps", "1"])]:
        folder = tmp_path / name
        assert main(["attack", "--model", str(tiny_model_dir), "--task", "sst2", "--harmful", str(harmful),
                     "--task-data", str(task), "--output", str(folder), "--poison-ratio", "0.2", "--sample-num",
                     "10", "--learning-rate", "1e-3"] + common + extra) == 0
        out[name] = digest(folder)
    with open(os.environ.get("FP_OUT", "fingerprint.json"), "w", encoding="utf-8") as f:
        json.dump(out, f, indent=1)
