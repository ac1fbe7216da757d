"""`tvaccine align` end to end on a tiny local model: adapter, settings, model card, clear errors."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tvaccine.cli import main
from tvaccine.methods import METHODS

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("method", sorted(METHODS))
def test_align_writes_a_loadable_adapter(method, tiny_model_dir, align_files, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    align, probe = align_files
    out = tmp_path / method
    rc = main(["align", "--method", method, "--model", str(tiny_model_dir), "--data", str(align),
               "--harmful-data", str(probe), "--output", str(out), "--max-steps", "2",
               "--per-device-train-batch-size", "2", "--max-length", "64", "--disable-tqdm", "true",
               "--use-cpu", "true"] + (["--num-active-layers", "2"] if method.startswith("tvaccine") else []))
    assert rc == 0
    settings = json.loads((out / "tvaccine_config.json").read_text())
    assert settings["method"] == method and settings["config"]["max_steps"] == 2
    card = (out / "README.md").read_text()
    assert f"{method} alignment adapter" in card and "2410.09760" in card
    assert json.loads((out / "train_results.json").read_text())["steps"] == 2
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model = PeftModel.from_pretrained(base, out)
    trained = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert trained and any(p.abs().sum() > 0 for p in trained)  # B starts at zero: training moved it
    if method.startswith("tvaccine"):
        history = json.loads((out / "log_history.json").read_text())
        assert any("tvaccine/active_layers" in h for h in history)
    # a rerun finds the finished run and does not train again
    assert main(["align", "--method", method, "--model", str(tiny_model_dir), "--data", str(align),
                 "--harmful-data", str(probe), "--output", str(out)]) == 0


def test_recipes_in_configs_parse_and_validate():
    from tvaccine.commands.align import resolve_config

    import yaml

    from tvaccine.methods import METHODS

    covered, attack_recipes = set(), set()
    for recipe in sorted((REPO / "configs").glob("*.yaml")):
        method = yaml.safe_load(recipe.read_text()).get("method")
        if method is None:  # an attack recipe (attack.yaml, lisa.yaml)
            from tvaccine.commands.attack import resolve_config as attack_config

            attack_config(str(recipe), [])
            attack_recipes.add(recipe.stem)
            continue
        assert method in METHODS, f"{recipe.name}: unknown method {method}"
        config = resolve_config(method, str(recipe), [])
        assert type(config).method == method
        covered.add(method)
    assert covered == set(METHODS), f"methods without a recipe: {set(METHODS) - covered}"
    assert attack_recipes == {"attack", "lisa"}


def test_recipe_overrides_and_unknown_keys(tmp_path):
    from tvaccine.commands.align import resolve_config
    from tvaccine.errors import UserError

    recipe = tmp_path / "r.yaml"
    recipe.write_text("method: tvaccine\nrho: 2.0\nnum_active_layers: 4\n")
    config = resolve_config("tvaccine", str(recipe), ["--rho", "1.5"])
    assert (config.rho, config.num_active_layers) == (1.5, 4)
    with pytest.raises(UserError, match="command line: unknown setting 'num_active_layer' .*num_active_layers"):
        resolve_config("tvaccine", str(recipe), ["--num-active-layer", "3"])
    recipe.write_text("method: tvaccine\nrho: [1\n")
    with pytest.raises(UserError, match=r"r.yaml:\d+: invalid YAML"):
        resolve_config("tvaccine", str(recipe), [])


@pytest.mark.parametrize("args,message", [
    (["--rho", "-1"], "rho: must be non-negative"),
    (["--data", "MISSING"], "MISSING: no such file"),
    (["--model", "./no/such/model"], "no such model folder"),
])
def test_bad_input_is_one_line_and_exit_code_2(args, message, tiny_model_dir, align_files, tmp_path):
    align, probe = align_files
    base = {"--method": "tvaccine", "--model": str(tiny_model_dir), "--data": str(align),
            "--harmful-data": str(probe), "--output": str(tmp_path / "out")}
    extra = []
    for key, value in zip(args[::2], args[1::2]):
        if key in base:
            base[key] = str(tmp_path / value) if value == "MISSING" else value
        else:
            extra += [key, value]
    argv = [sys.executable, "-m", "tvaccine", "align"] + [x for kv in base.items() for x in kv] + extra
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=REPO,
                          env={"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("tvaccine: error:")]
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out" / "adapter_model.safetensors").exists()


def test_malformed_alignment_file_names_the_line(tiny_model_dir, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "c"}\n')
    rc = main(["align", "--method", "sft", "--model", str(tiny_model_dir), "--data", str(bad),
               "--output", str(tmp_path / "o")])
    assert rc == 2
    assert f"{bad}:2: missing field 'output'" in capsys.readouterr().err


def test_cli_lists_every_method_and_starts_without_transformers():
    from tvaccine.commands.align import METHOD_NAMES
    from tvaccine.methods import METHODS

    assert METHOD_NAMES == sorted(METHODS)
    code = "import sys, tvaccine.cli as c; c.build_parser(); print('transformers' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"})
    assert proc.stdout.strip() == "False", proc.stderr
