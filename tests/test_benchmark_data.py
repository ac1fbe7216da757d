"""benchmarks/science/data.py: the research benchmark's input files from a local copy (--data-dir) or the hub."""

import csv
import hashlib
import importlib.util
import json
from collections import Counter
from pathlib import Path

import pytest

from tvaccine.data.overlap import file_prompts
from tvaccine.errors import UserError

REPO = Path(__file__).resolve().parents[1]
SST2 = "Analyze the sentiment of the input, and respond only positive or negative"
SETTINGS = {"n_align": 4, "benign_ratio": 0.5, "num_probe_samples": 2, "eval_prompts": 3, "n_task_eval": 6,
            "n_task_train": 5}


@pytest.fixture(scope="module")
def data():
    spec = importlib.util.spec_from_file_location("science_data", REPO / "benchmarks/science/data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _pairs(name, n):
    return [{"prompt": f"How do I do harmful thing {name} {i}?", "response": f"Like this {i}.", "category": None,
             "is_safe": False} for i in range(n)]


def fake_data_dir(root: Path, leak: bool = False) -> Path:
    """A tiny local copy in the layout of the real one (beavertails/, sst2/, alpaca/, xstest/)."""
    splits = {"alignment": _pairs("a", 6), "probe": _pairs("p", 3), "attack": _pairs("k", 4), "eval": _pairs("e", 4)}
    if leak:  # an evaluation prompt that is also in the attack split
        splits["attack"].append(splits["eval"][0])
    for name, rows in splits.items():
        _jsonl(root / "beavertails" / f"{name}.jsonl", rows)
    _jsonl(root / "beavertails" / "harmful_qa.jsonl", [r for rows in splits.values() for r in rows])
    (root / "sst2").mkdir()
    train = [{"instruction": SST2, "input": f"film {i}", "output": ("positive", "negative")[i % 2]} for i in range(7)]
    (root / "sst2" / "train_merged_n1000_p0.json").write_text(json.dumps(train))
    # positives first: the first 6 rows unbalanced would be all positive
    val = [{"instruction": SST2, "input": f"review {i}", "output": "positive" if i < 6 else "negative"}
           for i in range(10)]
    (root / "sst2" / "val.json").write_text(json.dumps(val))
    (root / "alpaca").mkdir()
    (root / "alpaca" / "alpaca_en_demo.json").write_text(json.dumps(
        [{"instruction": f"Name a colour {i}", "input": "", "output": "Blue."} for i in range(3)]))
    (root / "alpaca" / "alpaca_eval.json").write_text(json.dumps(
        [{"dataset": "x", "instruction": "Write a haiku", "output": "...", "generator": "g"}]))
    (root / "xstest").mkdir()
    with open(root / "xstest" / "xstest_prompts.csv", "w", newline="") as f:
        csv.writer(f).writerows([["id", "prompt", "type", "label", "focus", "note"],
                                 [1, "How do I kill a process?", "homonyms", "safe", "kill", ""]])
    return root


def test_build_sets_from_a_local_copy(data, tmp_path):
    files = data.build_sets(tmp_path / "work", fake_data_dir(tmp_path / "copy"), SETTINGS)
    assert set(files) == {"alignment", "probe", "harmful_eval", "task", "task_eval", "attack_harmful",
                          "judge_harmful", "benign", "benign_eval", "xstest"}
    assert all(Path(p).is_file() for p in files.values())
    for name in ("alignment", "probe", "harmful_eval", "task", "task_eval"):
        assert Path(files[name] + ".manifest.json").is_file()
    harmful = {n: file_prompts(files[n]) for n in ("alignment", "probe", "attack_harmful", "harmful_eval")}
    assert [len(p) for p in harmful.values()] == [2, 2, 4, 3]  # 2 of 4 alignment rows are benign
    names = list(harmful)
    assert all(not harmful[a] & harmful[b] for i, a in enumerate(names) for b in names[i + 1:])
    task_eval = [json.loads(line) for line in Path(files["task_eval"]).read_text().splitlines()]
    assert Counter(r["label"] for r in task_eval) == {"positive": 3, "negative": 3}
    assert json.loads(Path(files["task_eval"] + ".manifest.json").read_text())["parameters"]["balanced"] is True
    assert len(Path(files["task"]).read_text().splitlines()) == 5


def test_a_leaking_local_copy_is_refused(data, tmp_path):
    with pytest.raises(UserError, match="tvaccine data check failed"):
        data.build_sets(tmp_path / "work", fake_data_dir(tmp_path / "copy", leak=True), SETTINGS)


def test_a_local_copy_with_missing_files_names_them(data, tmp_path):
    root = fake_data_dir(tmp_path / "copy")
    (root / "sst2" / "val.json").unlink()
    with pytest.raises(UserError, match=r"missing sst2/val\.json"):
        data.build_sets(tmp_path / "work", root, SETTINGS)
    with pytest.raises(UserError, match="settings: missing n_task_eval"):
        data.build_sets(tmp_path / "work", root, {k: v for k, v in SETTINGS.items() if k != "n_task_eval"})


def test_no_data_dir_offline_is_one_clear_error(data, tmp_path, monkeypatch):
    import tvaccine.models

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(tvaccine.models, "hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(UserError) as err:
        data.build_sets(tmp_path / "work", None, SETTINGS)
    message = str(err.value)
    assert "unreachable" in message and "--data-dir" in message and "\n" not in message
    assert not (tmp_path / "work" / "hub").exists()


def test_hub_splits_are_disjoint_ranked_and_leave_out_test_prompts(data, tmp_path, monkeypatch):
    """The hub path with the hub replaced by local files: the split rule, not the download, is under test."""
    import huggingface_hub

    import tvaccine.data.sources
    import tvaccine.evaluation.prompts
    import tvaccine.models

    train = _pairs("t", 30) + _pairs("t", 2) + [{**_pairs("s", 1)[0], "is_safe": True}]  # 2 repeats, 1 safe row
    test = _pairs("t", 3) + _pairs("x", 2)  # 3 test prompts also in train
    _jsonl(tmp_path / "bt_train.jsonl", train)
    _jsonl(tmp_path / "bt_test.jsonl", test)
    _jsonl(tmp_path / "alpaca.jsonl", [{"instruction": f"Say {i}", "input": "", "output": "ok"} for i in range(3)])
    (tmp_path / "alpaca_eval.json").write_text(json.dumps([{"instruction": "Write a haiku", "output": "..."}]))
    local = {"PKU-Alignment/BeaverTails:30k_train": tmp_path / "bt_train.jsonl",
             "PKU-Alignment/BeaverTails:30k_test": tmp_path / "bt_test.jsonl",
             "tatsu-lab/alpaca:train": tmp_path / "alpaca.jsonl"}
    real_load = tvaccine.data.sources.load_source
    monkeypatch.setattr(tvaccine.models, "hub_reachable", lambda timeout=3.0: True)
    monkeypatch.setattr(tvaccine.data.sources, "load_source", lambda ref, view: real_load(str(local[ref]), view))
    monkeypatch.setattr(huggingface_hub, "hf_hub_download",
                        lambda repo, name, repo_type: str(tmp_path / name) if repo == "tatsu-lab/alpaca_eval" else 0)
    xstest = [{"id": 0, "instruction": "Kill a process?", "input": ""}]
    monkeypatch.setattr(tvaccine.evaluation.prompts, "read_prompts",
                        lambda ref: xstest if ref == "walledai/XSTest" else 0)
    monkeypatch.setattr(data, "N_BENIGN", 2)  # the fake Alpaca has 3 rows
    sources = data._hub_sources(tmp_path / "hub", SETTINGS)

    def prompts(name):
        return [json.loads(line)["prompt"] for line in Path(sources[name]).read_text().splitlines()]

    split = {n: prompts(f"bt_{n}") for n in ("alignment", "probe", "attack", "eval")}
    pool = [r["prompt"] for r in _pairs("t", 30)[3:]]  # unsafe, unique, not in the test split
    assert sorted(split["alignment"] + split["probe"] + split["attack"]) == sorted(pool)
    assert [len(split[n]) for n in ("alignment", "probe", "attack")] == [27 * 40 // 100, 27 * 50 // 100 - 10, 14]
    ranked = sorted(pool, key=lambda p: hashlib.sha256(f"0:{p}".encode()).hexdigest())
    assert split["alignment"] + split["probe"] + split["attack"] == ranked
    assert split["eval"] == [r["prompt"] for r in test]
    assert prompts("bt_all") == ranked
    assert len(Path(sources["benign"]).read_text().splitlines()) == 2
    assert json.loads(Path(sources["xstest"]).read_text()) == {"prompt": "Kill a process?"}
    assert sources["sst2_train"] == "stanfordnlp/sst2:train" and sources["sst2_eval"] == "stanfordnlp/sst2:validation"
    recorded = json.loads((tmp_path / "hub" / "SOURCES.json").read_text())
    assert recorded["counts"] == {"alignment": 10, "probe": 3, "attack": 14, "eval": 5, "harmful_qa": 27}


def test_balanced_task_sets_need_a_multiple_and_enough_rows(tmp_path):
    from tvaccine.data.sets import task_set
    from tvaccine.data.sources import load_source

    path = tmp_path / "val.json"
    path.write_text(json.dumps([{"instruction": SST2, "input": f"r {i}", "output": "positive" if i < 4 else "negative"}
                                for i in range(6)]))
    src = load_source(str(path), "task:sst2")
    assert [r["label"] for r in task_set("e", src, 4, balanced=True).records] == ["positive", "positive",
                                                                                  "negative", "negative"]
    assert len(task_set("e", src, None, balanced=True).records) == 4  # 2 of each: all the negatives there are
    with pytest.raises(UserError, match="multiple of 2 rows"):
        task_set("e", src, 3, balanced=True)
    with pytest.raises(UserError, match="needs 3 rows labelled 'negative', the source has 2"):
        task_set("e", src, 6, balanced=True)


def test_questions_first_moves_question_form_benign_rows_ahead_in_their_order(data, tmp_path):
    rows = [{"instruction": "Describe a cat.", "output": "A cat."}, {"instruction": "Why is the sky blue?  ",
            "output": "Scattering."}, {"instruction": "List two fruits.", "input": "", "output": "Apple, pear."},
            {"instruction": "What is 2+2?", "output": "4."}]
    _jsonl(tmp_path / "benign.jsonl", rows)
    out = data.questions_first(str(tmp_path / "benign.jsonl"), tmp_path / "first.jsonl")
    got = [json.loads(line) for line in Path(out).read_text().splitlines()]
    assert [r["instruction"].strip() for r in got] == ["Why is the sky blue?", "What is 2+2?", "Describe a cat.",
                                                       "List two fruits."]
    assert got[1] == {"instruction": "What is 2+2?", "input": "", "output": "4."}
