"""Experiment tracking (``report_to``): our own metrics reach TensorBoard as scalars, per layer for T-Vaccine, while
``log_history.json`` keeps its entries as they were; the pipeline names each run after its cell."""

import json
from pathlib import Path

import pytest
from conftest import write_jsonl

from tvaccine.cli import main

TRAIN_ARGS = ["--per-device-train-batch-size", "2", "--max-length", "64", "--disable-tqdm", "true", "--use-cpu", "true"]


def scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar tag in the TensorBoard event files under ``folder``: (step, value) pairs in step order."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, list] = {}
    for events in sorted({p.parent for p in folder.rglob("events.out.tfevents.*")}):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return {tag: sorted(values) for tag, values in out.items()}


def align(method: str, model: Path, files, out: Path, *extra: str) -> int:
    align_file, probe = files
    return main(["align", "--method", method, "--model", str(model), "--data", str(align_file),
                 "--harmful-data", str(probe), "--output", str(out), "--max-steps", "3", *TRAIN_ARGS, *extra])


def test_tvaccine_reports_layer_probabilities_and_drawn_layers(tiny_model_dir, align_files, tmp_path):
    out = tmp_path / "tv"
    assert align("tvaccine", tiny_model_dir, align_files, out, "--num-active-layers", "2",
                 "--importance-update-steps", "2", "--layer-resample-steps", "1", "--report-to", "tensorboard") == 0
    events = list((out / "runs").rglob("events.out.tfevents.*"))
    assert events and not list((out / "checkpoints").rglob("events.out.tfevents.*"))
    tags = scalars(out / "runs")
    history = json.loads((out / "log_history.json").read_text())
    probs = [(h["step"], h["tvaccine/layer_probs"]) for h in history if "tvaccine/layer_probs" in h]
    drawn = [(h["step"], h["tvaccine/active_layers"]) for h in history if "tvaccine/active_layers" in h]
    assert [s for s, _ in probs] == [0, 2] and [s for s, _ in drawn] == [0, 1, 2]
    layers = len(probs[0][1])
    for i in range(layers):
        logged = tags[f"train/tvaccine/layer_prob/{i}"]  # float32 in the event file
        assert [s for s, _ in logged] == [s for s, _ in probs]
        assert [v for _, v in logged] == pytest.approx([p[i] for _, p in probs], rel=1e-6)
        assert tags[f"train/tvaccine/active/{i}"] == [(s, float(i in a)) for s, a in drawn]
    assert f"train/tvaccine/layer_prob/{layers}" not in tags
    assert "train/loss" in tags
    # log_history.json keeps the lists, and only them, under the T-Vaccine keys (the report reads them)
    assert not any(k.startswith(("tvaccine/layer_prob/", "tvaccine/active/")) for h in history for k in h)


def without_timing(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if "runtime" not in k and "per_second" not in k} for h in history]


def test_reporting_changes_no_training_and_none_writes_no_event_files(tiny_model_dir, align_files, tmp_path):
    from safetensors.torch import load_file

    runs = {}
    for report in ("tensorboard", "none"):
        out = tmp_path / report
        assert align("tvaccine", tiny_model_dir, align_files, out, "--num-active-layers", "2",
                     "--report-to", report) == 0
        runs[report] = out
    assert list((runs["tensorboard"] / "runs").rglob("events.out.tfevents.*"))
    assert not list(runs["none"].rglob("events.out.tfevents.*")) and not (runs["none"] / "runs").exists()
    # the same updates, bit for bit, and the same log_history.json (but for the timings)
    weights = [load_file(runs[r] / "adapter_model.safetensors") for r in ("tensorboard", "none")]
    assert weights[0].keys() == weights[1].keys()
    assert all(weights[0][k].equal(weights[1][k]) for k in weights[0])
    histories = [json.loads((runs[r] / "log_history.json").read_text()) for r in ("tensorboard", "none")]
    assert without_timing(histories[0]) == without_timing(histories[1])


@pytest.mark.parametrize("method,prefix", [("booster", "booster/"), ("tar", "tar/"), ("repnoise", "repnoise/")])
def test_method_terms_reach_tensorboard(method, prefix, tiny_model_dir, align_files, tmp_path):
    out = tmp_path / method
    assert align(method, tiny_model_dir, align_files, out, "--report-to", "tensorboard") == 0
    tags = scalars(out / "runs")
    history = json.loads((out / "log_history.json").read_text())
    terms = sorted({k for h in history for k in h if k.startswith(prefix)})
    assert terms
    for term in terms:
        expected = [(h["step"], h[term]) for h in history if term in h and "loss" in h]  # the training logs
        logged = tags[f"train/{term}"]
        assert [s for s, _ in logged][:len(expected)] == [s for s, _ in expected]
        assert [v for _, v in logged][:len(expected)] == pytest.approx([v for _, v in expected], rel=1e-5)


def test_attack_cli_reports_loss_and_lisa_phase(tiny_model_dir, align_files, tmp_path):
    align_file, _ = align_files
    data = write_jsonl(tmp_path / "attack.jsonl", [{"instruction": f"Q {i}?", "output": f"A {i}."} for i in range(4)])
    out = tmp_path / "attack"
    assert main(["attack", "--model", str(tiny_model_dir), "--data", str(data), "--output", str(out),
                 "--max-steps", "3", *TRAIN_ARGS, "--defense", "lisa", "--lisa-alignment-steps", "1",
                 "--lisa-finetune-steps", "1", "--alignment-data", str(align_file), "--report-to", "tensorboard"]) == 0
    tags = scalars(out / "runs")
    assert [s for s, _ in tags["train/loss"]] == [1, 2, 3]
    assert tags["train/lisa/alignment_phase"] == [(0, 1.0), (1, 0.0), (2, 1.0)]
    history = json.loads((out / "log_history.json").read_text())
    assert [h["lisa/phase"] for h in history if "lisa/phase" in h] == ["alignment", "finetune", "alignment"]


def test_pipeline_names_runs_after_the_cell_and_keeps_stage_folders(tmp_path, monkeypatch):
    import tvaccine.align.run
    import tvaccine.attack.run
    from tvaccine.pipeline import run_align, run_attack

    names = []

    class Run:
        summary = {"steps": 1, "mode": "fresh", "defense": "none"}

    def fake_align(method, model, data, folder, cfg, **kw):
        names.append(cfg.run_name)
        return {"steps": 1, "s_per_step": 0.0}

    def fake_attack(model, folder, cfg, **kw):
        names.append(cfg.run_name)
        return Run()

    monkeypatch.setattr(tvaccine.align.run, "align", fake_align)
    monkeypatch.setattr(tvaccine.attack.run, "attack", fake_attack)
    monkeypatch.setattr(tvaccine.align.run.AlignedAdapter, "is_finished", staticmethod(lambda folder: False))

    def stages(cell=None, **settings):
        config = {"model": "m", "output": str(tmp_path / "out"),
                  "align": {"method": "tvaccine", "data": "a.jsonl", "harmful_data": "h.jsonl",
                            "settings": dict(settings)},
                  "attack": {"data": "d.jsonl", "settings": dict(settings)}}
        aligned = run_align(config, tmp_path, cell=cell)
        attacked = run_attack(config, tmp_path, aligned, cell=cell)
        return Path(aligned["dir"]).name, Path(attacked["dir"]).name

    plain = stages()
    assert names[-2:] == ["tvaccine-align", "tvaccine-attack"]  # a single run: the method
    assert stages("method=tvaccine-rho=2") == plain  # the run name is not in the stage hash
    assert names[-2:] == ["method=tvaccine-rho=2-align", "method=tvaccine-rho=2-attack"]
    assert stages("c", run_name="mine") == plain  # a name the settings give wins, and is not hashed either
    assert names[-2:] == ["mine", "mine"]
    # report_to is hashed, as before: a stage asked for with tracking is trained again, not reused without events
    assert stages("c", report_to="tensorboard") != plain


def test_pipeline_settings_report_to_tensorboard_under_the_cell_name(tiny_model_dir, align_files, tmp_path):
    from tvaccine.pipeline import run_align, run_attack

    align_file, probe = align_files
    data = write_jsonl(tmp_path / "attack.jsonl", [{"instruction": f"Q {i}?", "output": f"A {i}."} for i in range(4)])
    train = {"max_steps": 2, "per_device_train_batch_size": 2, "max_length": 64, "use_cpu": True,
             "disable_tqdm": True, "report_to": "tensorboard"}
    config = {"model": str(tiny_model_dir), "output": str(tmp_path / "out"), "seed": 0,
              "align": {"method": "tvaccine", "data": str(align_file), "harmful_data": str(probe),
                        "settings": {**train, "num_active_layers": 2}},
              "attack": {"data": str(data), "settings": train}}
    aligned = run_align(config, tmp_path / "out", cell="method=tvaccine")
    attacked = run_attack(config, tmp_path / "out", aligned, cell="method=tvaccine")
    align_tags = scalars(Path(aligned["dir"]) / "runs" / "method=tvaccine-align")
    assert "train/tvaccine/layer_prob/0" in align_tags and "train/tvaccine/active/3" in align_tags
    assert [s for s, _ in scalars(Path(attacked["dir"]) / "runs" / "method=tvaccine-attack")["train/loss"]] == [1, 2]
