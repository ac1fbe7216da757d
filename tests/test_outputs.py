"""Stage folders read back through tvaccine.outputs: the layouts earlier versions wrote still load, a settings file
that lacks what a reader needs is refused with how to rerun, and the attacked model's parts follow the mode."""

import json

import pytest

from tvaccine.errors import UserError
from tvaccine.outputs import AlignedAdapter, AttackOutput, check_adapter_folder, is_adapter_folder


def adapter_folder(path, settings_name=None, settings=None):
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text("{}")
    (path / "adapter_model.safetensors").write_bytes(b"")
    if settings_name:
        (path / settings_name).write_text(json.dumps(settings))
    return path


def test_alignment_folders_of_every_version_load(tmp_path):
    data, harmful = tmp_path / "align.jsonl", tmp_path / "harmful.jsonl"
    data.write_text("{}\n")
    harmful.write_text("{}\n")
    # 0.1: the harmful file was the probe file, and no attack mode was recorded
    old = adapter_folder(tmp_path / "old", "tvaccine_config.json",
                         {"method": "tvaccine", "model": "m", "data": str(data), "probe_data": str(harmful),
                          "config": {}})
    read = AlignedAdapter.read(old)
    assert (read.method, read.harmful_data, read.attack_mode) == ("tvaccine", str(harmful), "fresh")
    assert read.data_files() == [str(data), str(harmful)] and AlignedAdapter.is_finished(old)
    new = adapter_folder(tmp_path / "new", "tvaccine_config.json",
                         {"method": "booster", "model": "m", "data": str(data), "harmful_data": None,
                          "attack_mode": "continue", "config": {}})
    assert AlignedAdapter.read(new).attack_mode == "continue" and AlignedAdapter.read(new).data_files() == [str(data)]
    # an adapter trained elsewhere has no settings: attacked as a plain adapter
    foreign = adapter_folder(tmp_path / "foreign")
    assert AlignedAdapter.read_if_recorded(foreign) is None and not AlignedAdapter.is_finished(foreign)


def test_a_settings_file_without_what_a_reader_needs_is_refused_with_how_to_rerun(tmp_path):
    broken = adapter_folder(tmp_path / "a", "tvaccine_config.json", {"model": "m"})
    with pytest.raises(UserError, match=r"tvaccine_config.json: no method .*rerun the alignment"):
        AlignedAdapter.read(broken)
    torn = tmp_path / "b"
    torn.mkdir()
    (torn / "tvaccine_attack.json").write_text('{"mode": "fre')
    with pytest.raises(UserError, match=r"tvaccine_attack.json: unreadable .*rerun the attack"):
        AttackOutput.read(torn)
    with pytest.raises(UserError, match="no finished attack"):
        AttackOutput.read(tmp_path / "nothing")


def test_the_attacked_model_is_made_of_the_parts_its_mode_says(tmp_path):
    def attack(name, mode, aligned):
        folder = adapter_folder(tmp_path / name, "tvaccine_attack.json",
                                {"stage": "attack", "mode": mode, "model": "base", "aligned": aligned, "config": {}})
        return AttackOutput.read(folder)

    assert attack("fresh", "fresh", "A").model_parts() == (None, ["A", str(tmp_path / "fresh")])
    assert attack("base", "fresh", None).model_parts() == (None, [str(tmp_path / "base")])
    assert attack("cont", "continue", "A").model_parts() == (None, [str(tmp_path / "cont")])
    assert attack("full", "full", "A").model_parts() == (str(tmp_path / "full"), [])
    step = adapter_folder(tmp_path / "fresh" / "checkpoints" / "checkpoint-5")
    assert AttackOutput.read(tmp_path / "fresh").model_parts(5) == (None, ["A", str(step)])
    with pytest.raises(UserError, match="has no checkpoint at step 7"):
        AttackOutput.read(tmp_path / "fresh").model_parts(7)


def test_the_adapter_folder_check_names_the_folder_and_the_field(tmp_path):
    assert not is_adapter_folder(tmp_path)
    with pytest.raises(UserError, match=rf"^--aligned: {tmp_path}: not a LoRA adapter folder"):
        check_adapter_folder(tmp_path, "--aligned")
    check_adapter_folder(adapter_folder(tmp_path / "ok"))
