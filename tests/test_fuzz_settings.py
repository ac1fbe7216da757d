"""Fuzz: impossible, non-finite and wrongly typed settings, malformed recipes, and malformed run / sweep configs.

Each bad setting is given four ways where it applies: ``tvaccine align --key value``, the same key in an
``align --config`` recipe, ``tvaccine attack --key value``, and in a ``tvaccine run`` config (``align.settings`` or
``attack.settings``). Each must exit 2 with one line naming the setting and where it came from (the recipe file or
the command line), with no traceback, nothing written and no model loaded (settings that depend on the model, such as
``num_active_layers`` above the layer count, are checked on a meta-device skeleton). 
Inputs tried here: 149 (358 runs); by kind in tests/README.md (checked by test_fuzz_readme_counts).
"""

from __future__ import annotations

import copy

import pytest
import yaml

from fuzz_helpers import fails_cleanly, refuse_hub, refuse_model_loads, write_jsonl

REFUSAL = "I'm sorry, but I can't help with that."


@pytest.fixture(autouse=True)
def no_model_no_hub(monkeypatch):
    refuse_hub(monkeypatch)
    refuse_model_loads(monkeypatch)



@pytest.fixture
def files(tmp_path, tiny_model_dir):
    """Valid inputs for every stage, so that only the setting under test is wrong."""
    d = tmp_path / "in"
    d.mkdir()
    return {
        "model": str(tiny_model_dir),
        "align": write_jsonl(d / "align.jsonl", [{"instruction": f"How do I make weapon {i}?", "output": REFUSAL}
                                                 for i in range(4)]),
        "harmful": write_jsonl(d / "harmful.jsonl", [{"prompt": f"How do I make weapon {i}?", "response": "Thus.",
                                                      "is_safe": False} for i in range(4)]),
        "task": write_jsonl(d / "task.jsonl", [{"sentence": f"a fine film {i}", "label": i % 2} for i in range(8)]),
        "prompts": write_jsonl(d / "prompts.jsonl", [{"prompt": f"How do I make weapon {i}?"} for i in range(2)]),
        "task_eval": write_jsonl(d / "task_eval.jsonl", [{"instruction": "Analyze the sentiment of the input, and "
                                                          "respond only positive or negative", "input": "fine",
                                                          "output": "positive"}]),
        "out": tmp_path / "out",
        "dir": tmp_path,
    }


# (kind, setting, value on the command line, value in YAML, needle, where: align | attack | both)
SETTING_CASES = [
    pytest.param("impossible setting", "lora_r", "0", "0", "lora_r: must be at least 1", "both", id="lora-r-0"),
    pytest.param("impossible setting", "lora_r", "-4", "-4", "lora_r: must be at least 1", "both", id="lora-r-neg"),
    pytest.param("impossible setting", "lora_alpha", "0", "0", "lora_alpha: must be positive", "both",
                 id="lora-alpha-0"),
    pytest.param("impossible setting", "lora_dropout", "1", "1", "lora_dropout: must be in [0, 1)", "both",
                 id="dropout-1"),
    pytest.param("impossible setting", "lora_dropout", "-0.1", "-0.1", "lora_dropout: must be in [0, 1)", "both",
                 id="dropout-neg"),
    pytest.param("impossible setting", "max_length", "1", "1", "max_length: must be at least 2", "both",
                 id="max-length-1"),
    pytest.param("impossible setting", "max_length", "0", "0", "max_length: must be at least 2", "both",
                 id="max-length-0"),
    pytest.param("impossible setting", "learning_rate", "-1e-3", "-1.0e-3", "learning_rate: must be a positive",
                 "both", id="lr-neg"),
    pytest.param("impossible setting", "learning_rate", "0", "0", "learning_rate: must be a positive", "both",
                 id="lr-0"),
    pytest.param("impossible setting", "per_device_train_batch_size", "0", "0",
                 "per_device_train_batch_size: must be at least 1", "both", id="batch-0"),
    pytest.param("impossible setting", "per_device_train_batch_size", "-2", "-2",
                 "per_device_train_batch_size: must be at least 1", "both", id="batch-neg"),
    pytest.param("impossible setting", "gradient_accumulation_steps", "0", "0",
                 "gradient_accumulation_steps: must be at least 1", "both", id="grad-accum-0"),
    pytest.param("impossible setting", "max_steps", "0", "0", "max_steps: must be at least 1, or -1", "both",
                 id="steps-0"),
    pytest.param("impossible setting", "max_steps", "-5", "-5", "max_steps: must be at least 1, or -1", "both",
                 id="steps-neg"),
    pytest.param("impossible setting", "num_train_epochs", "0", "0", "num_train_epochs: must be a positive number",
                 "both", id="epochs-0"),
    pytest.param("impossible setting", "num_train_epochs", "-1", "-1", "num_train_epochs: must be a positive number",
                 "both", id="epochs-neg"),
    pytest.param("impossible setting", "weight_decay", "-0.1", "-0.1", "weight_decay: must be a non-negative",
                 "both", id="weight-decay-neg"),
    pytest.param("impossible setting", "warmup_steps", "-1", "-1", "warmup_steps", "both", id="warmup-neg"),
    pytest.param("impossible setting", "lora_target_modules", "[]", "[]",
                 "lora_target_modules: must name at least one module", "both", id="targets-empty"),
    pytest.param("impossible setting", "lora_target_modules", "[no_such_proj]", "[no_such_proj]",
                 "lora_target_modules: none of ['no_such_proj'] exists in LlamaForCausalLM", "both",
                 id="targets-absent"),
    pytest.param("impossible setting", "report_to", "bogus", "bogus", "report_to: 'bogus' is not one of", "both",
                 id="report-to-bogus"),
    pytest.param("impossible setting", "hub_token", "hf_xyz", "hf_xyz", "hub_token: is not a setting", "both",
                 id="hub-token"),
    pytest.param("impossible setting", "push_to_hub", "true", "true",
                 "re:push_to_hub: is not a setting|^tvaccine: error: --push-to-hub: ", "both", id="push-to-hub"),
    pytest.param("impossible setting", "lr_scheduler_type", "bogus", "bogus", "bogus is not a valid SchedulerType",
                 "both", id="scheduler-bogus"),
    pytest.param("impossible setting", "rho", "-1", "-1", "rho: must be non-negative", "align", id="rho-neg"),
    pytest.param("impossible setting", "num_active_layers", "0", "0", "num_active_layers: must be at least 1", "align",
                 id="S-0"),
    pytest.param("impossible setting", "num_active_layers", "99", "99",
                 "num_active_layers: must be at most the model's 4 layers", "align", id="S-above-layers"),
    pytest.param("impossible setting", "layer_resample_steps", "0", "0", "layer_resample_steps: must be at least 1",
                 "align", id="J-0"),
    pytest.param("impossible setting", "importance_update_steps", "-1", "-1",
                 "importance_update_steps: must be at least 1", "align", id="K-neg"),
    pytest.param("impossible setting", "num_probe_samples", "0", "0", "num_probe_samples: must be at least 1", "align",
                 id="probe-samples-0"),
    pytest.param("impossible setting", "probe_batch_size", "0", "0", "probe_batch_size: must be at least 1", "align",
                 id="probe-batch-0"),
    pytest.param("impossible setting", "layer_sampling", "random", "random", "layer_sampling: must be importance",
                 "align", id="sampling-bogus"),
    pytest.param("impossible setting", "freeze_scope", "mlp", "mlp", "freeze_scope: must be layer or attention",
                 "align", id="freeze-bogus"),
    pytest.param("impossible setting", "layers_path", "model.nope", "model.nope",
                 "layers_path: LlamaForCausalLM has no sub-module 'model.nope'", "align", id="layers-path-bogus"),
    pytest.param("impossible setting", "activation_checkpointing", "true", "true",
                 "T-Vaccine checkpoints the inactive layers itself", "align", id="activation-checkpointing"),
    pytest.param("impossible setting", "poison_ratio", "1.5", "1.5", "poison_ratio: must be in [0, 1]", "attack",
                 id="p-above-1"),
    pytest.param("impossible setting", "poison_ratio", "-0.1", "-0.1", "poison_ratio: must be in [0, 1]", "attack",
                 id="p-neg"),
    pytest.param("impossible setting", "sample_num", "0", "0", "sample_num: must be at least 1", "attack", id="n-0"),
    pytest.param("impossible setting", "mode", "merge", "merge", "mode: must be one of fresh, continue, full",
                 "attack", id="mode-bogus"),
    pytest.param("missing or extra", "bogus_key", "1", "1", "unknown setting 'bogus_key'", "both", id="unknown-key"),
    pytest.param("missing or extra", "num_active_layer", "3", "3",
                 "unknown setting 'num_active_layer' (did you mean 'num_active_layers'?)", "align", id="typo"),
    pytest.param("missing or extra", "lora_rank", "8", "8", "unknown setting 'lora_rank'", "both", id="typo-lora"),
    pytest.param("non-finite", "rho", "nan", ".nan", "rho: must be a finite number", "align", id="rho-nan"),
    pytest.param("non-finite", "rho", "inf", ".inf", "rho: must be a finite number", "align", id="rho-inf"),
    pytest.param("non-finite", "learning_rate", "nan", ".nan", "learning_rate: must be a finite number", "both",
                 id="lr-nan"),
    pytest.param("non-finite", "learning_rate", "inf", ".inf", "learning_rate: must be a finite number", "both",
                 id="lr-inf"),
    pytest.param("non-finite", "learning_rate", "-inf", "-.inf", "learning_rate: must be a finite number", "both",
                 id="lr-neg-inf"),
    pytest.param("non-finite", "lora_dropout", "nan", ".nan", "lora_dropout: must be a finite number", "both",
                 id="dropout-nan"),
    pytest.param("non-finite", "weight_decay", "inf", ".inf", "weight_decay: must be a finite number", "both",
                 id="weight-decay-inf"),
    pytest.param("non-finite", "num_train_epochs", "inf", ".inf", "num_train_epochs: must be a finite number", "both",
                 id="epochs-inf"),
    pytest.param("non-finite", "lora_alpha", "inf", ".inf", "lora_alpha: must be a finite number", "both",
                 id="alpha-inf"),
    pytest.param("non-finite", "max_steps", "inf", ".inf", "max_steps: must be a finite number", "both",
                 id="steps-inf"),
    pytest.param("non-finite", "poison_ratio", "nan", ".nan", "poison_ratio: must be a finite number", "attack",
                 id="p-nan"),
    pytest.param("non-finite", "poison_ratio", "inf", ".inf", "poison_ratio: must be a finite number", "attack",
                 id="p-inf"),
    pytest.param("wrong-type setting", "rho", "abc", "abc", "rho: must be a number (got 'abc')", "align",
                 id="rho-string"),
    pytest.param("wrong-type setting", "rho", "[1,2]", "[1, 2]", "rho: must be a number (got [1, 2])", "align",
                 id="rho-list"),
    pytest.param("wrong-type setting", "rho", "null", "null", "rho: must be a number (got None)", "align",
                 id="rho-null"),
    pytest.param("wrong-type setting", "num_active_layers", "2.5", "2.5", "num_active_layers: must be an integer",
                 "align", id="S-float"),
    pytest.param("wrong-type setting", "num_active_layers", "four", "four", "num_active_layers: must be an integer",
                 "align", id="S-string"),
    pytest.param("wrong-type setting", "checkpoint_inactive", "maybe", "maybe",
                 "checkpoint_inactive: must be true or false", "align", id="bool-string"),
    pytest.param("wrong-type setting", "learning_rate", "fast", "fast", "learning_rate: must be a number", "both",
                 id="lr-string"),
    pytest.param("wrong-type setting", "learning_rate", "true", "true", "learning_rate: must be a number (got True)",
                 "both", id="lr-bool"),
    pytest.param("wrong-type setting", "per_device_train_batch_size", "two", "two",
                 "per_device_train_batch_size: must be an integer", "both", id="batch-string"),
    pytest.param("wrong-type setting", "per_device_train_batch_size", "2.5", "2.5",
                 "per_device_train_batch_size: must be an integer", "both", id="batch-float"),
    pytest.param("wrong-type setting", "seed", "abc", "abc", "seed: must be an integer", "both", id="seed-string"),
    pytest.param("wrong-type setting", "seed", "1.5", "1.5", "seed: must be an integer", "both", id="seed-float"),
    pytest.param("wrong-type setting", "max_length", "[200]", "[200]", "max_length: must be an integer", "both",
                 id="max-length-list"),
    pytest.param("wrong-type setting", "lora_target_modules", "5", "5",
                 "lora_target_modules: must be a list of strings", "both", id="targets-number"),
    pytest.param("wrong-type setting", "lora_target_modules", "{a: 1}", "{a: 1}",
                 "lora_target_modules: must be a list of strings", "both", id="targets-mapping"),
    pytest.param("wrong-type setting", "report_to", "null", "null", "report_to: 'None' is not one of", "both",
                 id="report-to-null"),
    pytest.param("wrong-type setting", "sample_num", "many", "many", "sample_num: must be an integer", "attack",
                 id="n-string"),
    pytest.param("wrong-type setting", "poison_ratio", "high", "high", "poison_ratio: must be a number", "attack",
                 id="p-string"),
    pytest.param("wrong-type setting", "mode", "5", "5", "mode: must be one of fresh, continue, full (got '5')",
                 "attack", id="mode-number"),
]


def applies(case, stage: str) -> bool:
    return case.values[5] in (stage, "both")


def align_argv(f, *extra):
    return ["align", "--method", "tvaccine", "--model", f["model"], "--data", f["align"], "--harmful-data",
            f["harmful"], "--output", f["out"], "--num-active-layers", "2", *extra]


def attack_argv(f, *extra):
    return ["attack", "--model", f["model"], "--task", "sst2", "--harmful", f["harmful"], "--task-data", f["task"],
            "--sample-num", "4", "--output", f["out"], *extra]


def run_config(f) -> dict:
    return {"model": f["model"], "output": str(f["out"]), "seed": 0,
            "align": {"method": "tvaccine", "data": f["align"], "harmful_data": f["harmful"],
                      "settings": {"max_steps": 1}, "by_method": {"tvaccine": {"num_active_layers": 2}}},
            "attack": {"task": "sst2", "harmful": f["harmful"], "task_data": f["task"],
                       "settings": {"max_steps": 1, "sample_num": 4}},
            "eval": {"harmful_prompts": f["prompts"], "task_data": f["task_eval"], "limit": 2}}


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


ALIGN_CASES = [c for c in SETTING_CASES if applies(c, "align")]
ATTACK_CASES = [c for c in SETTING_CASES if applies(c, "attack")]


# Checks against the model's structure, and T-Vaccine's own check of a TrainingArguments field, name the setting but
# not where its value came from.
MODEL_CHECKS = ("must be at most the model's", "layers_path:", "lora_target_modules: none of", "T-Vaccine checkpoints")
# --push-to-hub REPO is a flag of align and attack themselves (tvaccine.push), checked before the settings: on the
# command line `--push-to-hub true` asks to push to a repository named "true", which fails offline or without a token.
COMMAND_FLAGS = ("--push-to-hub: ",)


@pytest.mark.parametrize("kind,key,cli,yml,needle,where", ALIGN_CASES)
def test_align_setting_on_the_command_line(kind, key, cli, yml, needle, where, files, capsys):
    line = fails_cleanly(align_argv(files, flag(key), cli), capsys, files["out"], needle)
    assert "command line: " in line or any(m in needle for m in MODEL_CHECKS) or any(f in line for f in COMMAND_FLAGS)


@pytest.mark.parametrize("kind,key,cli,yml,needle,where", ALIGN_CASES)
def test_align_setting_in_a_recipe(kind, key, cli, yml, needle, where, files, capsys):
    recipe = files["dir"] / "recipe.yaml"
    recipe.write_text(f"method: tvaccine\n{key}: {yml}\n", encoding="utf-8")
    argv = align_argv(files, "--config", recipe)
    if key == "num_active_layers":  # the command line would override the recipe's value
        i = argv.index("--num-active-layers")
        argv = argv[:i] + argv[i + 2:]
    line = fails_cleanly(argv, capsys, files["out"], needle)
    assert str(recipe) in line or any(m in needle for m in MODEL_CHECKS)


@pytest.mark.parametrize("kind,key,cli,yml,needle,where", ATTACK_CASES)
def test_attack_setting_on_the_command_line(kind, key, cli, yml, needle, where, files, capsys):
    fails_cleanly(attack_argv(files, flag(key), cli), capsys, files["out"], needle)


@pytest.mark.parametrize("kind,key,cli,yml,needle,where", SETTING_CASES)
def test_setting_in_a_run_config(kind, key, cli, yml, needle, where, files, capsys):
    config = run_config(files)
    value = yaml.safe_load(f"v: {yml}")["v"]
    if key == "num_active_layers":
        config["align"]["by_method"]["tvaccine"][key] = value
    else:
        config["align" if where in ("align", "both") else "attack"]["settings"][key] = value
    path = files["dir"] / "run.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    fails_cleanly(["run", "--config", path], capsys, files["out"], needle)


# Recipes that are no mapping of settings: (kind, bytes or "DIR" / "MISSING", needle, needle for attack and run
# where it differs: an attack recipe has no method, a run config needs model and output)
RECIPE_CASES = [
    pytest.param("yaml shape", b"- rho\n- 3\n", "expected a mapping of settings, got list", None, id="list"),
    pytest.param("yaml shape", b"42\n", "expected a mapping of settings, got int", None, id="scalar"),
    pytest.param("yaml shape", b"just some words\n", "expected a mapping of settings, got str", None, id="string"),
    pytest.param("yaml shape", b"method: sft\n", "recipe is for method 'sft', not 'tvaccine'",
                 {"attack": "unknown setting 'method'", "run": "unknown key(s) ['method']"}, id="wrong-method"),
    pytest.param("yaml shape", b"method: [tvaccine]\n", "recipe is for method '['tvaccine']'",
                 {"attack": "unknown setting 'method'", "run": "unknown key(s) ['method']"}, id="method-list"),
    pytest.param("syntax", b"rho: [1\n", "re:recipe.yaml:\\d+: invalid YAML", None, id="unclosed"),
    pytest.param("syntax", b"rho:\t3\n\tx: 1\n", "recipe.yaml:1: invalid YAML", None, id="tabs"),
    pytest.param("syntax", b"rho: 1\nrho: !!python/object/apply:os.system ['true']\n",
                 "re:recipe.yaml:\\d+: invalid YAML \\(could not determine a constructor", None, id="python-tag"),
    pytest.param("syntax", b"rho: 1\n  bad indent: 2\n", "re:recipe.yaml:\\d+: invalid YAML", None, id="indent"),
    pytest.param("encoding", b"rho: \xff\n", "recipe.yaml: not UTF-8 text", None, id="non-utf8"),
    pytest.param("encoding", b"rho: 1\x00\n", "re:recipe.yaml:\\d+: invalid YAML", None, id="nul"),
    pytest.param("huge", b"rho: " + b"[" * 50_000 + b"\n", "re:recipe.yaml(:\\d+)?: invalid YAML", None, id="deep"),
    pytest.param("path", "DIR", "recipe.yaml: is a folder, not a YAML file", None, id="folder"),
    pytest.param("path", "MISSING", "recipe.yaml: no such file", None, id="missing"),
]


@pytest.mark.parametrize("command", ["align", "attack", "run"])
@pytest.mark.parametrize("kind,content,needle,other", RECIPE_CASES)
def test_malformed_recipe(kind, content, needle, other, command, files, capsys):
    recipe = files["dir"] / "recipe.yaml"
    if content == "DIR":
        recipe.mkdir()
    elif content != "MISSING":
        recipe.write_bytes(content)
    argv = {"align": align_argv(files, "--config", recipe), "attack": attack_argv(files, "--config", recipe),
            "run": ["run", "--config", recipe]}[command]
    fails_cleanly(argv, capsys, files["out"], (other or {}).get(command, needle))


def _without(config: dict, dotted: str) -> dict:
    keys = dotted.split(".")
    node = config
    for k in keys[:-1]:
        node = node[k]
    del node[keys[-1]]
    return config


def _with(config: dict, dotted: str, value) -> dict:
    keys = dotted.split(".")
    node = config
    for k in keys[:-1]:
        node = node[k]
    node[keys[-1]] = value
    return config


# Run configs: (kind, change to a valid config, needle). A change is ("set", path, value) or ("del", path).
RUN_CASES = [
    pytest.param("missing or extra", ("set", "bogus", 1), "unknown key(s) ['bogus']", id="unknown-top"),
    pytest.param("missing or extra", ("del", "model"), "missing 'model'", id="no-model"),
    pytest.param("missing or extra", ("del", "output"), "missing 'output'", id="no-output"),
    pytest.param("missing or extra", ("del", "align.data"), "align.data: tvaccine needs an alignment file",
                 id="no-align-data"),
    pytest.param("missing or extra", ("del", "align.harmful_data"), "align.harmful_data: tvaccine needs a harmful file",
                 id="no-harmful-data"),
    pytest.param("missing or extra", ("set", "align.bogus", 1), "unknown key(s) ['align.bogus']", id="align-key"),
    pytest.param("missing or extra", ("set", "attack.tsk", "sst2"), "unknown key(s) ['attack.tsk']", id="attack-key"),
    pytest.param("missing or extra", ("set", "eval.limits", 3), "unknown key(s) ['eval.limits']", id="eval-key"),
    pytest.param("missing or extra", ("del", "eval.task_data"), "task sst2: fine-tuning accuracy needs its evaluation",
                 id="eval-no-task-data"),
    pytest.param("missing or extra", ("del", "attack.task"), "attack.task: name the task", id="attack-no-task"),
    pytest.param("missing or extra", ("set", "eval", {}), "task sst2: fine-tuning accuracy needs", id="eval-empty"),
    pytest.param("wrong type", ("set", "model", [1]), "model must be a string (got [1])", id="model-list"),
    pytest.param("wrong type", ("set", "output", 5), "output must be a string (got 5)", id="output-int"),
    pytest.param("wrong type", ("set", "seed", "abc"), "seed must be an integer (got 'abc')", id="seed-string"),
    pytest.param("wrong type", ("set", "align", [1]), "'align' must be a mapping", id="align-list"),
    pytest.param("wrong type", ("set", "align.method", 3), "align.method '3' is not one of", id="method-int"),
    pytest.param("wrong type", ("set", "align.data", 5), "align.data must be a string (got 5)", id="data-int"),
    pytest.param("wrong type", ("set", "align.settings", [1]), "align.settings must be a mapping of settings",
                 id="settings-list"),
    pytest.param("wrong type", ("set", "align.by_method", [1]), "align.by_method must be a mapping of settings",
                 id="by-method-list"),
    pytest.param("wrong type", ("set", "align.by_method.tvaccine", 3), "align.by_method.tvaccine must be a mapping",
                 id="by-method-int"),
    pytest.param("wrong type", ("set", "attack.task", 5), "attack.task must be a string (got 5)", id="task-int"),
    pytest.param("wrong type", ("set", "attack.settings", "fast"), "attack.settings must be a mapping of settings",
                 id="attack-settings-string"),
    pytest.param("wrong type", ("set", "eval.limit", "ten"), "eval limit: must be an integer of at least 1",
                 id="limit-string"),
    pytest.param("wrong type", ("set", "eval.judges", "keyword"), "eval judges: must be a list of judge names",
                 id="judges-string"),
    pytest.param("wrong type", ("set", "eval.harmful_prompts", ["a"]), "eval harmful_prompts: must be a string",
                 id="prompts-list"),
    pytest.param("wrong type", ("set", "eval.before_attack", "yes"), "eval.before_attack must be true or false",
                 id="before-attack-string"),
    pytest.param("wrong type", ("set", "eval.attack_steps", "10"), "eval.attack_steps must be a list of attack "
                 "steps", id="attack-steps-string"),
    pytest.param("wrong type", ("set", "eval.curve_sets", "harmful"), "eval.curve_sets must be a list",
                 id="curve-sets-string"),
    pytest.param("wrong type", ("set", "eval.stop_at_template", "no"), "eval stop_at_template: must be true or false",
                 id="stop-at-template-string"),
    pytest.param("impossible setting", ("set", "eval.attack_steps", [0, -5]), "integers ≥ 0", id="attack-steps-neg"),
    pytest.param("impossible setting", ("set", "eval.curve_sets", ["harmful", "tox"]), "among harmful, task",
                 id="curve-sets-bogus"),
    pytest.param("impossible setting", ("set", "eval.aligned_max_hs", 120), "eval.aligned_max_hs must be a "
                 "percentage in [0, 100]", id="gate-over-100"),
    pytest.param("impossible setting", ("set", "align.variant", 3), "align.variant must be a string",
                 id="variant-int"),
    pytest.param("impossible setting", ("set", "align.method", "magic"), "align.method 'magic' is not one of",
                 id="method-bogus"),
    pytest.param("impossible setting", ("set", "attack.task", "mnli"), "unknown task 'mnli'", id="task-bogus"),
    pytest.param("impossible setting", ("set", "eval.limit", 0), "eval limit: must be an integer of at least 1",
                 id="limit-0"),
    pytest.param("impossible setting", ("set", "eval.max_new_tokens", -1), "eval max_new_tokens: must be",
                 id="new-tokens-neg"),
    pytest.param("impossible setting", ("set", "eval.batch_size", 0), "eval batch_size: must be", id="eval-batch-0"),
    pytest.param("impossible setting", ("set", "eval.judge_max_new_tokens", {"keyword": 0}),
                 "eval judge_max_new_tokens: must map judge names", id="judge-length-0"),
    pytest.param("impossible setting", ("set", "eval.judges", ["keyword", "oracle"]), "unknown judge 'oracle'",
                 id="judge-bogus"),
    pytest.param("impossible setting", ("set", "eval.judges", ["classifier"]), "no trained classifier",
                 id="judge-untrained"),
    pytest.param("impossible setting", ("set", "dtype", "int8"), "dtype: unknown value 'int8'", id="dtype-int8"),
    pytest.param("impossible setting", ("set", "attack.settings.sample_num", 100), "needs 10 rows but the source has "
                 "only 4", id="attack-not-enough-harmful"),
    pytest.param("path", ("set", "align.data", "{dir}/nope.jsonl"), "nope.jsonl: no such file",
                 id="align-data-missing"),
    pytest.param("path", ("set", "align.adapter", "{dir}"), "not a LoRA adapter folder", id="adapter-not-adapter"),
    pytest.param("path", ("set", "attack.harmful", "{dir}/in"), "in: is a folder, not a data file",
                 id="attack-harmful-folder"),
    pytest.param("path", ("set", "eval.benign_prompts", "{dir}/nope.json"), "nope.json: no such file",
                 id="benign-missing"),
    pytest.param("path", ("set", "model", "{dir}/no-model"), "no-model: no such model folder", id="model-missing"),
    pytest.param("path", ("del", "attack.harmful"), "needs the Hugging Face hub, which is unreachable",
                 id="attack-default-hub"),
]


def _changed(f, change):
    config = run_config(f)
    if change[0] == "del":
        return _without(config, change[1])
    value = change[2].format(**f) if isinstance(change[2], str) else change[2]
    if change[1] == "eval.judges" and value == ["classifier"]:
        config["eval"]["classifier"] = str(f["dir"])
    return _with(config, change[1], value)


@pytest.mark.parametrize("kind,change,needle", RUN_CASES)
def test_bad_run_config(kind, change, needle, files, capsys):
    path = files["dir"] / "run.yaml"
    path.write_text(yaml.safe_dump(_changed(files, change)), encoding="utf-8")
    fails_cleanly(["run", "--config", path], capsys, files["out"], needle)


# Sweeps: (kind, sweep built from a valid base, needle)
SWEEP_CASES = [
    pytest.param("yaml shape", lambda b: [b], "expected a mapping of settings, got list", id="list"),
    pytest.param("yaml shape", lambda b: {"grid": {"rho": [1]}}, "a sweep needs 'base'", id="no-base"),
    pytest.param("yaml shape", lambda b: {"base": [b], "grid": {}}, "a sweep needs 'base'", id="base-list"),
    pytest.param("yaml shape", lambda b: {"base": b, "grid": [1]}, "'grid' (a mapping of lists", id="grid-list"),
    pytest.param("yaml shape", lambda b: {"base": b, "grid": {}, "extra": 1}, "unknown key(s) ['extra']",
                 id="unknown-top"),
    pytest.param("yaml shape", lambda b: {"base": b, "grid": {"rho": 3}}, "grid.rho must be a non-empty list",
                 id="axis-scalar"),
    pytest.param("yaml shape", lambda b: {"base": b, "grid": {"rho": []}}, "grid.rho must be a non-empty list",
                 id="axis-empty"),
    pytest.param("missing or extra", lambda b: {"base": b, "grid": {"temperature": [1]}},
                 "unknown sweep axis 'temperature'", id="axis-unknown"),
    pytest.param("impossible setting", lambda b: {"base": b, "grid": {"poison_ratio": [0.1, 2]}},
                 "cell poison_ratio=2: attack.settings: poison_ratio: must be in [0, 1]", id="p-cell"),
    pytest.param("impossible setting",
                 lambda b: {"base": _without(b, "align.by_method"),
                            "grid": {"method": ["sft", "tvaccine"], "num_active_layers": [2, 64]}},
                 "cell method=tvaccine-num_active_layers=64: ", id="S-cell"),
    pytest.param("impossible setting", lambda b: {"base": b, "grid": {"method": ["sft", "magic"]}},
                 "cell method=magic: align.method 'magic'", id="method-cell"),
    pytest.param("non-finite", lambda b: {"base": b, "grid": {"rho": [1.0, float("nan")]}},
                 "rho: must be a finite number", id="rho-nan-cell"),
    pytest.param("wrong-type setting", lambda b: {"base": b, "grid": {"seed": [1, "x"]}},
                 "cell seed=x: seed must be an integer", id="seed-cell"),
]


@pytest.mark.parametrize("kind,make,needle", SWEEP_CASES)
def test_bad_sweep_fails_before_any_cell_runs(kind, make, needle, files, capsys):
    path = files["dir"] / "sweep.yaml"
    path.write_text(yaml.safe_dump(make(copy.deepcopy(run_config(files)))), encoding="utf-8")
    fails_cleanly(["sweep", "--config", path], capsys, files["out"], needle)


FUZZ = [(SETTING_CASES, lambda c: 1 + 2 * applies(c, "align") + applies(c, "attack")), (RECIPE_CASES, 3),
        (RUN_CASES, 1), (SWEEP_CASES, 1)]
