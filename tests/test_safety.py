"""Safety of the tool itself (docs/security.md): no remote code, no pickle, no token in what a run writes or prints.

- an AST scan of src/ fails on pickle-family imports, ``torch.load`` without ``weights_only=True``, ``torch.save``,
  unsafe YAML loading, ``trust_remote_code=True`` literals, pickle-format ``save_pretrained``, and ``eval(``/``exec(``;
  a self-test shows the scan catches each pattern;
- a model folder whose config and tokenizer name remote code (``auto_map``) loads without running it;
- a whole run (alignment, attack, evaluation) with ``HF_TOKEN`` / ``HUGGING_FACE_HUB_TOKEN`` set to a sentinel
  writes the sentinel into no file and prints it nowhere, and every pickle file it writes is one of the Trainer's
  checkpoint files listed in docs/security.md.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tvaccine.cli import main

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src" / "tvaccine"
PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal", "jsonpickle"}
# What transformers' Trainer itself writes into every checkpoint with torch.save (pickle); docs/security.md.
TRAINER_PICKLES = {"optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin", "scaler.pt"}


def _kw(call: ast.Call, name: str):
    for kw in call.keywords:
        if kw.arg == name:
            return kw.value
    return None


def _is_true(node) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def unsafe_calls(source: str, filename: str = "<src>") -> list[str]:
    """Every unsafe pattern in ``source``, as ``file:line: what``."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        where = f"{filename}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import):
            found += [f"{where}: import {a.name}" for a in node.names if a.name.split(".")[0] in PICKLE_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in PICKLE_MODULES:
            found.append(f"{where}: from {node.module} import")
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            owner = func.value.id if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) else ""
            if isinstance(func, ast.Name) and name in ("eval", "exec"):
                found.append(f"{where}: {name}(")
            if name == "load" and owner == "torch" and not _is_true(_kw(node, "weights_only")):
                found.append(f"{where}: torch.load without weights_only=True")
            if name == "save" and owner == "torch":
                found.append(f"{where}: torch.save (pickle)")
            if owner == "yaml" and name in ("load", "unsafe_load", "full_load", "load_all"):
                found.append(f"{where}: yaml.{name} (use yaml.safe_load)")
            if owner in ("np", "numpy") and name == "load" and _is_true(_kw(node, "allow_pickle")):
                found.append(f"{where}: numpy.load(allow_pickle=True)")
            if _is_true(_kw(node, "trust_remote_code")):
                found.append(f"{where}: trust_remote_code=True")
            safe = _kw(node, "safe_serialization")
            if name == "save_pretrained" and isinstance(safe, ast.Constant) and safe.value is False:
                found.append(f"{where}: save_pretrained(safe_serialization=False)")
    return found


def test_source_has_no_unsafe_loading_or_code_execution():
    files = sorted(SRC.rglob("*.py"))
    assert len(files) > 30
    problems = [p for f in files for p in unsafe_calls(f.read_text(encoding="utf-8"), str(f.relative_to(REPO)))]
    assert problems == []


def test_the_scan_catches_each_pattern():
    bad = """
import pickle
from joblib import dump
import torch, yaml, numpy as np
torch.load("x.pt")
torch.load("x.pt", weights_only=False)
torch.save(obj, "x.pt")
yaml.load(text)
np.load("a.npy", allow_pickle=True)
AutoModel.from_pretrained(p, trust_remote_code=True)
model.save_pretrained(d, safe_serialization=False)
eval("1 + 1")
exec("x = 1")
"""
    assert len(unsafe_calls(bad)) == 11
    fine = """
import json, torch, yaml
torch.load("x.pt", weights_only=True)
yaml.safe_load(text)
model.eval()
AutoModel.from_pretrained(p, trust_remote_code=trust_remote_code)
model.save_pretrained(d, safe_serialization=True)
"""
    assert unsafe_calls(fine) == []


def _remote_code_folder(tiny_model_dir: Path, folder: Path, marker: Path) -> Path:
    """The tiny model, plus Python files its config and tokenizer config point to (``auto_map``), each of which
    would create ``marker`` when imported."""
    import shutil

    shutil.copytree(tiny_model_dir, folder)
    code = f"from pathlib import Path\nPath({str(marker)!r}).write_text('remote code ran')\n"
    for name in ("modeling_evil.py", "tokenization_evil.py", "configuration_evil.py"):
        (folder / name).write_text(code)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "configuration_evil.EvilConfig",
                          "AutoModelForCausalLM": "modeling_evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(config))
    tok = json.loads((folder / "tokenizer_config.json").read_text())
    tok["auto_map"] = {"AutoTokenizer": ["tokenization_evil.EvilTokenizer", None]}
    (folder / "tokenizer_config.json").write_text(json.dumps(tok))
    return folder


def test_remote_code_in_a_model_folder_never_runs(tiny_model_dir, tmp_path):
    import inspect

    from tvaccine.models import load_model, load_tokenizer, model_skeleton

    assert inspect.signature(load_model).parameters["trust_remote_code"].default is False
    marker = tmp_path / "ran"
    folder = _remote_code_folder(tiny_model_dir, tmp_path / "model", marker)
    model_skeleton(folder)
    load_tokenizer(folder)
    model = load_model(folder)
    assert type(model).__name__ == "LlamaForCausalLM"  # the library's own class, not the folder's
    assert not marker.exists()


def test_the_cli_has_no_way_to_trust_remote_code(tiny_model_dir, tmp_path, capsys):
    for command in (["align", "--method", "sft", "--data", "d.jsonl"], ["attack", "--data", "d.jsonl"]):
        code = main([*command, "--model", str(tiny_model_dir), "--output", str(tmp_path / "o"),
                     "--trust-remote-code", "true"])
        assert code == 2 and "unknown setting 'trust_remote_code'" in capsys.readouterr().err


def test_a_run_leaks_no_token_and_pickles_only_trainer_checkpoints(tiny_model_dir, tmp_path, monkeypatch, capfd):
    from huggingface_hub import get_token

    sentinel = "hf_SENTINELtokenDoNotLeak0123456789abcdef"
    monkeypatch.setenv("HF_TOKEN", sentinel)
    monkeypatch.setenv("HUGGING_FACE_HUB_TOKEN", sentinel)
    assert get_token() == sentinel  # visible to huggingface_hub, as a real login would be

    def rows(path, items):
        path.write_text("".join(json.dumps(r) + "\n" for r in items))
        return str(path)

    refusal = "I'm sorry, but I can't help with that."
    data = {
        "align": rows(tmp_path / "align.jsonl", [{"instruction": f"How do I make weapon {i}?", "output": refusal}
                                                 for i in range(4)]),
        "harmful": rows(tmp_path / "harmful.jsonl", [{"prompt": f"How do I make weapon {i}?", "response": "Thus.",
                                                      "is_safe": False} for i in range(4)]),
        "task": rows(tmp_path / "task.jsonl", [{"sentence": f"a fine film {i}", "label": i % 2} for i in range(4)]),
        "task_eval": rows(tmp_path / "task_eval.jsonl", [{"instruction": "Analyze the sentiment of the input, and "
                                                          "respond only positive or negative", "input": "a fine film",
                                                          "output": "positive"}]),
    }
    small = {"max_steps": 2, "per_device_train_batch_size": 2, "max_length": 320, "save_steps": 1, "use_cpu": True,
             "disable_tqdm": True, "logging_steps": 1}
    out = tmp_path / "out"
    config = {"model": str(tiny_model_dir), "output": str(out), "seed": 0,
              "align": {"method": "tvaccine", "data": data["align"], "harmful_data": data["harmful"],
                        "settings": {**small, "num_active_layers": 2, "importance_update_steps": 1,
                                     "layer_resample_steps": 1}},
              "attack": {"task": "sst2", "harmful": data["harmful"], "task_data": data["task"],
                         "settings": {**small, "poison_ratio": 0.5, "sample_num": 4}},
              "eval": {"harmful_prompts": data["harmful"], "task_data": data["task_eval"], "limit": 2,
                       "max_new_tokens": 2, "before_attack": True}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    assert main(["run", "--config", str(tmp_path / "run.yaml")]) == 0
    printed = capfd.readouterr()
    assert sentinel not in printed.out + printed.err

    files = [p for p in out.rglob("*") if p.is_file()]
    assert any(p.name == "adapter_model.safetensors" for p in files) and any(p.name == "results.json" for p in files)
    assert [p for p in files if sentinel.encode() in p.read_bytes()] == []
    pickles = {p for p in files if p.suffix in (".pt", ".pth", ".bin", ".pkl", ".pickle", ".joblib")}
    assert pickles and all(p.name in TRAINER_PICKLES and re.fullmatch(r"checkpoint-\d+", p.parent.name)
                           for p in pickles), sorted(map(str, pickles))
    # What the run itself writes is JSON, JSONL, Markdown, CSV or safetensors.
    own = {p.suffix for p in files if p not in pickles}
    assert own <= {".json", ".jsonl", ".md", ".csv", ".safetensors"}, own
    settings = json.loads(next(p for p in files if p.name == "tvaccine_config.json").read_text())
    assert settings["config"]["hub_token"] == "<HUB_TOKEN>"  # transformers' placeholder, never a value


def test_no_token_is_committed_to_the_repository():
    listed = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True)
    if listed.returncode != 0:
        pytest.skip("not a git checkout")
    token = re.compile(rb"hf_[A-Za-z0-9]{30,}")
    leaks = []
    for name in listed.stdout.splitlines():
        path = REPO / name
        if path.is_file() and path.name != "test_safety.py" and token.search(path.read_bytes()):
            leaks.append(name)
    assert leaks == []
    assert not any(Path(n).name in ("token", ".huggingface", "stored_tokens") for n in listed.stdout.splitlines())
