"""Sets: exact poison counts, seeded order, manifests that round-trip, overlap detection, refusal writer."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from tvaccine.cli import main
from tvaccine.data import sets
from tvaccine.data.overlap import check_disjoint, file_prompts, harmful_prompts
from tvaccine.data.refusals import REFUSALS, write_refusal
from tvaccine.data.sources import load_source
from tvaccine.errors import UserError


@pytest.fixture
def sources(tmp_path):
    harmful = tmp_path / "harmful.jsonl"
    harmful.write_text("".join(json.dumps({"prompt": f"harmful prompt {i}", "response": f"bad {i}",
                                           "is_safe": False}) + "\n" for i in range(1000)))
    task = tmp_path / "sst2.jsonl"
    task.write_text("".join(json.dumps({"sentence": f"sentence {i}", "label": i % 2}) + "\n" for i in range(1000)))
    return str(harmful), str(task)


@pytest.mark.parametrize("p", [0, 0.05, 0.1, 1])
@pytest.mark.parametrize("n", [100, 1000])
def test_attack_set_has_exactly_round_pn_harmful_rows(sources, p, n):
    ds = sets.attack_set(load_source(sources[0], "harmful"), load_source(sources[1], "task:sst2"), p, n, seed=1)
    kinds = Counter(r["kind"] for r in ds.records)
    assert kinds["harmful"] == round(p * n) and kinds["task"] == n - round(p * n)
    assert sum(r["instruction"].startswith("harmful prompt") for r in ds.records) == round(p * n)


def test_poison_count_rounds_half_up_on_the_decimal_value():
    assert sets.poison_count(0.05, 50) == 3  # 2.5 → 3 (Python's round would give 2)
    assert sets.poison_count(0.07, 100) == 7  # 0.07 · 100 is 7.000000000000001 in floating point
    assert sets.poison_count(0.1, 1000) == 100


def test_same_seed_same_mix_other_seed_other_order(sources):
    h, t = load_source(sources[0], "harmful"), load_source(sources[1], "task:sst2")
    a = sets.attack_set(h, t, 0.1, 100, seed=7).records
    assert sets.attack_set(h, t, 0.1, 100, seed=7).records == a
    b = sets.attack_set(h, t, 0.1, 100, seed=8).records
    assert b != a
    key = lambda r: json.dumps(r, sort_keys=True)  # noqa: E731
    assert sorted(map(key, a)) == sorted(map(key, b))  # same rows, different order
    assert [r["kind"] for r in a[:20]].count("harmful") < 20  # shuffled, not harmful rows first


def test_too_few_rows_says_how_many_exist(sources):
    with pytest.raises(UserError, match="needs 300 rows but the source has only 223"):
        h = load_source(sources[0], "harmful")
        h.rows = h.rows[:223]
        sets.attack_set(h, load_source(sources[1], "task:sst2"), 0.3, 1000)


def test_manifest_round_trips_and_detects_changed_sources(sources, tmp_path):
    ds = sets.attack_set(load_source(sources[0], "harmful"), load_source(sources[1], "task:sst2"), 0.1, 50, seed=3)
    out = tmp_path / "sets" / "attack.jsonl"
    manifest = ds.write(out)
    assert sets.read_manifest(out) == json.loads(json.dumps(manifest))
    assert manifest["counts"] == {"harmful": 5, "task": 45}
    assert manifest["seed"] == 3 and len(manifest["picks"]) == 50
    assert {s["view"] for s in manifest["sources"]} == {"harmful", "task:sst2"}
    rebuilt = sets.rebuild(sets.read_manifest(out))
    assert rebuilt.records == [json.loads(line) for line in out.read_text().splitlines()]
    assert sets.verify(out) == {"file": str(out), "manifest_sha256": manifest["sha256"], "file_matches": True,
                                "rebuild_matches": True}
    with open(sources[0], "a") as f:  # the harmful source changes after the set was written
        f.write(json.dumps({"prompt": "new", "response": "r", "is_safe": False}) + "\n")
    with pytest.raises(UserError, match="content changed since the manifest was written"):
        sets.verify(out)


def test_alignment_set_mixes_refusals_and_benign_rows(sources, tmp_path):
    benign = tmp_path / "alpaca.json"
    benign.write_text(json.dumps([{"instruction": f"benign {i}", "output": f"ok {i}"} for i in range(50)]))
    ds = sets.alignment_set(load_source(sources[0], "refusal"), 40, load_source(str(benign), "benign"), 0.25, seed=0)
    kinds = Counter(r["kind"] for r in ds.records)
    assert kinds == {"refusal": 30, "benign": 10}
    assert ds.counts()["written_refusals"] == 30
    for r in ds.records:
        if r["kind"] == "refusal":
            assert r["output"] == write_refusal(r["instruction"]) and r["output"] in REFUSALS


def test_refusal_writer_is_deterministic_and_varied():
    prompts = [f"harmful request number {i}" for i in range(50)]
    first = [write_refusal(p) for p in prompts]
    assert first == [write_refusal(p) for p in prompts]
    assert len(set(first)) >= 5
    assert [write_refusal(p, seed=1) for p in prompts] != first


def test_probe_and_eval_sets_take_the_first_rows(sources):
    probe = sets.probe_set(load_source(sources[0], "harmful"), 3).records
    assert [r["instruction"] for r in probe] == ["harmful prompt 0", "harmful prompt 1", "harmful prompt 2"]
    ev = sets.eval_set(load_source(sources[0], "harmful"), 2).records
    assert all(r["output"] == "" and r["kind"] == "prompt" for r in ev)


def test_overlap_is_reported_by_default_and_an_error_when_strict(sources, tmp_path, capsys):
    h = load_source(sources[0], "harmful")
    probe = sets.probe_set(h, 10)
    evaluation = sets.eval_set(h, 5)  # the same first rows: 5 prompts shared
    named = {"probe": harmful_prompts(probe.records), "eval": harmful_prompts(evaluation.records)}
    report = check_disjoint(named)
    assert report == [{"sets": ["probe", "eval"], "shared_prompts": 5, "examples": report[0]["examples"]}]
    assert "5 harmful prompts are in both probe and eval" in capsys.readouterr().out
    with pytest.raises(UserError, match="--strict-disjoint: probe and eval share 5"):
        check_disjoint(named, strict=True)
    assert check_disjoint({"probe": named["probe"], "other": {"unrelated"}}, strict=True) == []

    probe.write(tmp_path / "probe.jsonl")
    assert file_prompts(tmp_path / "probe.jsonl") == named["probe"]
    out = tmp_path / "eval.jsonl"
    assert main(["data", "eval", "--source", sources[0], "--num-prompts", "5", "--output", str(out),
                 "--disjoint-from", str(tmp_path / "probe.jsonl"), "--strict-disjoint"]) == 2
    assert not out.exists()  # nothing written
    assert main(["data", "eval", "--source", sources[0], "--num-prompts", "5", "--output", str(out),
                 "--disjoint-from", str(tmp_path / "probe.jsonl")]) == 0
    assert sets.read_manifest(out)["overlap"][0]["shared_prompts"] == 5


def test_data_build_cli_writes_train_and_eval_files(shared_data, tmp_path, capsys):
    out = tmp_path / "sst2.jsonl"
    assert main(["data", "build", "--task", "sst2", "--source", str(shared_data / "sst2/train_merged_n1000_p0.1.json"),
                 "--eval-source", str(shared_data / "sst2/val.json"), "--output", str(out)]) == 0
    train = [json.loads(line) for line in out.read_text().splitlines()]
    evaluation = [json.loads(line) for line in (tmp_path / "sst2.eval.jsonl").read_text().splitlines()]
    assert len(train) == 900 and len(evaluation) == 872
    assert set(train[0]) == {"instruction", "input", "output", "kind", "label"}
    assert {r["output"] for r in train} == {"positive", "negative"}
    assert "skipped 100 non-task rows" in capsys.readouterr().out
    assert main(["data", "verify", str(tmp_path / "sst2.eval.jsonl")]) == 0


def test_attack_set_from_the_shared_splits(shared_data, tmp_path):
    out = tmp_path / "attack.jsonl"
    assert main(["data", "attack", "--harmful", str(shared_data / "beavertails/attack.jsonl"), "--task", "gsm8k",
                 "--task-data", str(shared_data / "gsm8k/train.jsonl"), "--poison-ratio", "0.05",
                 "--sample-num", "200", "--output", str(out),
                 "--disjoint-from", str(shared_data / "beavertails/eval.jsonl"), "--strict-disjoint"]) == 0
    manifest = sets.read_manifest(out)
    assert manifest["counts"]["harmful"] == 10 and manifest["counts"]["task"] == 190
    assert manifest["overlap"] == []


def test_set_files_read_back_by_kind(sources, tmp_path):
    benign = tmp_path / "alpaca.json"
    benign.write_text(json.dumps([{"instruction": f"benign {i}", "output": f"ok {i}"} for i in range(5)]))
    sets.alignment_set(load_source(sources[0], "refusal"), 10, load_source(str(benign), "benign"), 0.2,
                       seed=0).write(tmp_path / "align.jsonl")
    path = str(tmp_path / "align.jsonl")
    assert len(load_source(path, "refusal").rows) == 8 and load_source(path, "refusal").counts["written_refusals"] == 0
    assert len(load_source(path, "benign").rows) == 2
    assert load_source(path, "harmful").rows == []  # refusals are not harmful answers
