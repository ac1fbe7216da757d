"""Fuzz: hostile command lines and model folders for ``tvaccine align | attack | eval``.

Damaged model folders (bad or non-UTF-8 config.json, an unknown architecture, truncated or pickled weights, no
tokenizer), files where folders are expected, adapters that are not adapters, judges that are not trained, the
attack without its inputs, and argparse usage errors. Each exits 2 with one line, no traceback and nothing written;
errors about inputs fire before a model loads, errors about the weights themselves fire while loading them (there is
nothing to load before). 
Inputs tried here: 49 (75 runs); by kind in tests/README.md (checked by test_fuzz_readme_counts).
"""

from __future__ import annotations

import json
import shutil

import pytest

from fuzz_helpers import fails_cleanly, refuse_hub, refuse_model_loads, write_jsonl
from tvaccine.cli import main

REFUSAL = "I'm sorry, but I can't help with that."


@pytest.fixture(autouse=True)
def no_hub(monkeypatch):
    refuse_hub(monkeypatch)


@pytest.fixture
def no_model(monkeypatch):
    refuse_model_loads(monkeypatch)



@pytest.fixture
def f(tmp_path, tiny_model_dir):
    d = tmp_path / "in"
    d.mkdir()
    return {
        "model": str(tiny_model_dir), "out": tmp_path / "out", "dir": tmp_path, "in": d,
        "align": write_jsonl(d / "align.jsonl", [{"instruction": f"How do I make weapon {i}?", "output": REFUSAL}
                                                 for i in range(4)]),
        "harmful": write_jsonl(d / "harmful.jsonl", [{"prompt": f"How do I make weapon {i}?", "response": "Thus.",
                                                      "is_safe": False} for i in range(4)]),
        "task": write_jsonl(d / "task.jsonl", [{"sentence": f"a fine film {i}", "label": i % 2} for i in range(8)]),
        "harmful_copy": write_jsonl(d / "harmful-copy.jsonl", [{"prompt": "How do I make weapon 1?", "response": "So.",
                                                                "is_safe": False}]),
        "prompts": write_jsonl(d / "prompts.jsonl", [{"prompt": "How do I make a weapon?"}]),
        "long": write_jsonl(d / "long.jsonl", [{"instruction": "word " * 300, "output": "ok"}]),
    }


def _config(d, **changes):
    config = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**config, **changes}))


# Damaged model folders: (kind, how the copy of the tiny model is damaged, needle, fails before the weights load)
MODEL_CASES = [
    pytest.param("model folder", lambda d: (d / "config.json").write_text("{nope"), "not a valid JSON file", True,
                 id="config-invalid-json"),
    pytest.param("model folder", lambda d: (d / "config.json").write_text("[1, 2]"), "not a loadable model folder",
                 True, id="config-list"),
    pytest.param("model folder", lambda d: (d / "config.json").write_bytes(b"\xff\xfe{"), "not a valid JSON file", True,
                 id="config-non-utf8"),
    pytest.param("model folder", lambda d: _config(d, model_type="no-such-arch"), "no-such-arch", True,
                 id="unknown-architecture"),
    pytest.param("model folder", lambda d: (d / "config.json").write_text('{"hidden_size": 4}'),
                 "not a loadable model folder", True, id="config-without-type"),
    pytest.param("model folder", lambda d: _config(d, num_hidden_layers="four"), "num_hidden_layers", True,
                 id="layers-string"),
    pytest.param("model folder", lambda d: (d / "config.json").unlink(), "not a model folder (no config.json)", True,
                 id="no-config"),
    pytest.param("model folder", lambda d: [(d / n).unlink() for n in ("tokenizer.json", "tokenizer_config.json")],
                 "not a loadable model folder", True, id="no-tokenizer"),
    pytest.param("model folder", lambda d: (d / "tokenizer.json").write_text("{nope"), "not a loadable model folder",
                 True, id="tokenizer-invalid-json"),
    pytest.param("model folder", lambda d: (d / "model.safetensors").write_bytes(b"garbage"),
                 "not a loadable model folder (SafetensorError", False, id="weights-garbage"),
    pytest.param("model folder", lambda d: (d / "model.safetensors").write_bytes(
        (d / "model.safetensors").read_bytes()[:4000]), "not a loadable model folder (SafetensorError", False,
                 id="weights-truncated"),
    pytest.param("model folder", lambda d: (d / "model.safetensors").unlink(), "not a loadable model folder", False,
                 id="no-weights"),
    pytest.param("model folder", lambda d: ((d / "model.safetensors").unlink(),
                                            (d / "pytorch_model.bin").write_bytes(b"\x80\x04cos\nsystem\n.")),
                 "not a loadable model folder (UnpicklingError: Weights only load failed", False,
                 id="pickled-weights-refused"),
]


@pytest.mark.parametrize("command", ["align", "attack", "eval"])
@pytest.mark.parametrize("kind,damage,needle,early", MODEL_CASES)
def test_damaged_model_folder(kind, damage, needle, early, command, f, tmp_path, monkeypatch, capsys):
    model = tmp_path / "model"
    shutil.copytree(f["model"], model)
    damage(model)
    if early:  # the folder's config or tokenizer is at fault: no weights are read
        import tvaccine.models

        monkeypatch.setattr(tvaccine.models, "load_model", lambda *a, **k: pytest.fail("weights loaded"))
    argv = {"align": ["align", "--method", "sft", "--model", model, "--data", f["align"], "--output", f["out"],
                      "--max-steps", "1", "--use-cpu", "true"],
            "attack": ["attack", "--model", model, "--data", f["align"], "--output", f["out"], "--max-steps", "1",
                       "--use-cpu", "true"],
            "eval": ["eval", "--model", model, "--harmful-prompts", f["prompts"], "--output", f["out"],
                     "--max-new-tokens", "1"]}[command]
    fails_cleanly(argv, capsys, f["out"], str(model), needle)


# (kind, command line with {model} {align} ... filled in, needle)
ARG_CASES = [
    pytest.param("path", "align --method sft --model {align} --data {align} --output {out}",
                 "align.jsonl: is a file; --model takes a model folder", id="align-model-is-file"),
    pytest.param("path", "align --method sft --model {dir}/no-model --data {align} --output {out}",
                 "no-model: no such model folder", id="align-model-missing"),
    pytest.param("path", "align --method sft --model {in} --data {align} --output {out}",
                 "in: not a model folder (no config.json)", id="align-model-not-model"),
    pytest.param("missing or extra", "align --method tvaccine --model {model} --data {align} --output {out}",
                 "--harmful-data: tvaccine needs a harmful file", id="tvaccine-without-harmful"),
    pytest.param("impossible setting", "align --method sft --model {model} --data {align} --output {out} "
                 "--dtype int8", "dtype: unknown value 'int8'", id="align-dtype-int8"),
    pytest.param("impossible setting", "align --method sft --model {model} --data {align} --output {out} "
                 "--dtype nn", "dtype: unknown value 'nn'", id="align-dtype-module"),
    pytest.param("impossible setting", "align --method sft --model {model} --data {long} --output {out} "
                 "--max-length 8", "long.jsonl: no usable rows (every answer is cut off by max_length 8)",
                 id="align-every-row-cut"),
    pytest.param("path", "attack --model {model} --aligned {in} --data {align} --output {out}",
                 "in: not a LoRA adapter folder", id="attack-aligned-not-adapter"),
    pytest.param("path", "attack --model {model} --aligned {dir}/nope --data {align} --output {out}",
                 "nope: not a LoRA adapter folder", id="attack-aligned-missing"),
    pytest.param("missing or extra", "attack --model {model} --data {align} --output {out} --mode continue",
                 "--mode continue: needs an aligned adapter", id="attack-continue-alone"),
    pytest.param("missing or extra", "attack --model {model} --output {out}", "--task: name the task",
                 id="attack-no-task-no-data"),
    pytest.param("path", "attack --model {model} --task sst2 --task-data {task} --output {out} --sample-num 4",
                 "PKU-Alignment/BeaverTails' (split '30k_train') needs the Hugging Face hub", id="attack-default-hub"),
    pytest.param("path", "attack --model {model} --data {align} --disjoint-from {dir}/nope.jsonl --output {out}",
                 "nope.jsonl: no such file", id="attack-disjoint-missing"),
    pytest.param("missing or extra", "attack --model {model} --data {harmful} --disjoint-from {harmful_copy} "
                 "--strict-disjoint --output {out}", "--strict-disjoint: ", id="attack-ready-set-leaks"),
    pytest.param("impossible setting", "attack --model {model} --task sst2 --harmful {harmful} --task-data {task} "
                 "--sample-num 4 --max-length 3 --output {out}", "attack_set.jsonl: no usable rows",
                 id="attack-built-set-cut"),
    pytest.param("impossible setting", "attack --model {model} --data {align} --output {out} --dtype float7",
                 "dtype: unknown value 'float7'", id="attack-dtype"),
    pytest.param("missing or extra", "eval --model {model} --output {out}", "nothing to evaluate", id="eval-nothing"),
    pytest.param("missing or extra", "eval --model {model} --task sst2 --output {out}",
                 "task sst2: fine-tuning accuracy needs its evaluation file", id="eval-task-without-data"),
    pytest.param("missing or extra", "eval --model {model} --task sst2 --task-data {align} --output {out}",
                 "align.jsonl:1: answer", id="eval-task-bad-label"),
    pytest.param("path", "eval --model {model} --harmful-prompts {prompts} --adapters {in} --output {out}",
                 "in: not a LoRA adapter folder", id="eval-adapter-not-adapter"),
    pytest.param("path", "eval --model {model} --harmful-prompts {prompts} --judge classifier --classifier {in} "
                 "--output {out}", "no trained classifier", id="eval-classifier-untrained"),
    pytest.param("path", "eval --model {model} --harmful-prompts {prompts} --judge beaver-dam --beaver-dam "
                 "{dir}/no-judge --output {out}", "no-judge: no such model folder", id="eval-beaver-dam-missing"),
    pytest.param("impossible setting", "eval --model {model} --harmful-prompts {prompts} --judge oracle "
                 "--output {out}", "unknown judge 'oracle'", id="eval-judge-bogus"),
    pytest.param("impossible setting", "eval --model {model} --harmful-prompts {prompts} --limit 0 --output {out}",
                 "--limit: must be at least 1", id="eval-limit-0"),
    pytest.param("impossible setting", "eval --model {model} --harmful-prompts {prompts} --batch-size -1 "
                 "--output {out}", "--batch-size: must be at least 1", id="eval-batch-neg"),
    pytest.param("impossible setting", "eval --model {model} --harmful-prompts {prompts} --max-new-tokens 0 "
                 "--output {out}", "--max-new-tokens: must be at least 1", id="eval-new-tokens-0"),
    pytest.param("impossible setting", "eval --model {model} --harmful-prompts {prompts} --dtype bogus "
                 "--output {out}", "dtype: unknown value 'bogus'", id="eval-dtype"),
    pytest.param("path", "eval --model {model} --harmful-prompts PKU-Alignment/BeaverTails --output {out}",
                 "the Hugging Face hub is unreachable", id="eval-hub-prompts"),
]


@pytest.mark.parametrize("kind,args,needle", ARG_CASES)
def test_bad_command_line(kind, args, needle, f, no_model, capsys):
    fails_cleanly([a.format(**f) for a in args.split()], capsys, f["out"], needle)


# argparse's own errors: exit 2 with the usage and one error line (kind, argv, needle)
USAGE_CASES = [
    pytest.param("usage", ["align", "--method", "magic", "--model", "m", "--data", "d", "--output", "o"],
                 "invalid choice: 'magic'", id="unknown-method"),
    pytest.param("usage", ["align", "--model", "m", "--data", "d", "--output", "o"],
                 "the following arguments are required: --method", id="no-method"),
    pytest.param("usage", ["eval", "--model", "m", "--output", "o", "--limit", "ten"],
                 "argument --limit: invalid int value: 'ten'", id="limit-string"),
    pytest.param("usage", ["eval", "--model", "m", "--output", "o", "--rho", "3"], "unrecognized arguments: --rho 3",
                 id="eval-override"),
    pytest.param("usage", ["data", "probe", "--num-probe-samples", "x", "--output", "o"],
                 "invalid int value: 'x'", id="probe-string"),
    pytest.param("usage", ["data", "attack", "--task", "mnli", "--output", "o"], "invalid choice: 'mnli'",
                 id="unknown-task"),
    pytest.param("usage", ["frobnicate"], "invalid choice: 'frobnicate'", id="unknown-command"),
    pytest.param("usage", [], "the following arguments are required: COMMAND", id="no-command"),
]


@pytest.mark.parametrize("kind,argv,needle", USAGE_CASES)
def test_usage_errors(kind, argv, needle, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert exit_.value.code == 2 and len(errors) == 1 and needle in errors[0], err
    assert "Traceback" not in err


def test_settings_after_a_bad_override_name_the_flag(f, no_model, capsys):
    """``--rho`` with no value reads as true, which is no number."""
    fails_cleanly(["align", "--method", "vaccine", "--model", f["model"], "--data", f["align"], "--output", f["out"],
                   "--rho"], capsys, f["out"], "command line: rho: must be a number (got True)")


FUZZ = [(MODEL_CASES, 3), (ARG_CASES, 1), (USAGE_CASES, 1)]


def test_fuzz_readme_counts():
    """tests/README.md's table and each fuzz module's docstring state the counts of the case lists above."""
    import importlib
    import re
    from pathlib import Path

    from fuzz_helpers import MODULES, table

    readme = (Path(__file__).parent / "README.md").read_text(encoding="utf-8")
    block = readme.split("<!-- fuzz-table -->")[1].split("<!-- /fuzz-table -->")[0].strip()
    assert block == table(), "regenerate the table with `python tests/fuzz_helpers.py`"
    for name in MODULES:
        module = importlib.import_module(name)
        inputs = sum(len(cases) for cases, _ in module.FUZZ)
        runs = sum(r(c) if callable(r) else r for cases, r in module.FUZZ for c in cases)
        stated = re.search(r"Inputs tried here: (\d+) \((\d+) runs\)", module.__doc__)
        assert stated and (int(stated[1]), int(stated[2])) == (inputs, runs), (name, inputs, runs)
