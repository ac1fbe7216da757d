"""--push-to-hub: checked before training, the finished folder with its model card uploaded once (tested up to the
hub call, with huggingface_hub's two calls replaced), and one clear line when the hub is out of reach."""

import pytest

from conftest import attack_sources
from tvaccine.cli import main


def align_argv(tiny_model_dir, align_files, out):
    align, probe = align_files
    return ["align", "--method", "sft", "--model", str(tiny_model_dir), "--data", str(align),
            "--harmful-data", str(probe), "--output", str(out), "--max-steps", "2", "--per-device-train-batch-size",
            "2", "--max-length", "64", "--disable-tqdm", "true", "--use-cpu", "true", "--save-steps", "1"]


@pytest.fixture
def hub(monkeypatch):
    """A reachable hub and a token, with create_repo/upload_folder recorded instead of sent."""
    import huggingface_hub

    import tvaccine.models

    calls = []

    class Url(str):
        repo_id = "me/tv"

    def create_repo(self, repo_id, **kw):
        calls.append(("create", repo_id, kw))
        return Url(f"https://huggingface.co/{repo_id}")

    def upload_folder(self, **kw):
        calls.append(("upload", kw["repo_id"], kw))

    monkeypatch.setattr(tvaccine.models, "hub_reachable", lambda timeout=3.0: True)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_test")
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    return calls


def test_an_alignment_is_pushed_once_finished_with_its_card(tiny_model_dir, align_files, tmp_path, hub, capsys):
    out = tmp_path / "out"
    assert main(align_argv(tiny_model_dir, align_files, out) + ["--push-to-hub", "me/tv", "--hub-private-repo"]) == 0
    assert [c[0] for c in hub] == ["create", "upload"]
    assert hub[0][1] == "me/tv" and hub[0][2]["private"] is True and hub[0][2]["exist_ok"] is True
    upload = hub[1][2]
    assert upload["repo_id"] == "me/tv" and upload["folder_path"] == str(out)
    assert "checkpoints/*" in upload["ignore_patterns"] and (out / "checkpoints").is_dir()  # kept, not uploaded
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: peft\n") and "sft alignment adapter" in card and "2410.09760" in card
    assert "pushed" in capsys.readouterr().out
    # a finished folder is pushed as it is, without training again
    hub.clear()
    mtime = (out / "adapter_model.safetensors").stat().st_mtime_ns
    assert main(align_argv(tiny_model_dir, align_files, out) + ["--push-to-hub", "me/tv"]) == 0
    assert [c[0] for c in hub] == ["create", "upload"]
    assert (out / "adapter_model.safetensors").stat().st_mtime_ns == mtime


def test_the_attack_card_says_what_the_model_is(tiny_model_dir, tmp_path, hub):
    harmful, task = attack_sources(tmp_path)
    out = tmp_path / "attack"
    assert main(["attack", "--model", str(tiny_model_dir), "--task", "sst2", "--harmful", str(harmful),
                 "--task-data", str(task), "--output", str(out), "--poison-ratio", "0.2", "--sample-num", "10",
                 "--max-steps", "1", "--per-device-train-batch-size", "2", "--use-cpu", "--push-to-hub",
                 "me/tv"]) == 0
    card = (out / "README.md").read_text()
    assert "Harmful fine-tuning attack" in card and "p = 0.2" in card and "meant to answer harmful requests" in card
    assert "| `mode` | `fresh` |" in card and "| `poison_ratio` | `0.2` |" in card
    assert [c[0] for c in hub] == ["create", "upload"]


def test_without_the_hub_nothing_trains_and_one_line_says_what_to_do(tiny_model_dir, align_files, tmp_path,
                                                                      monkeypatch, capsys):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there: refused at once
    out = tmp_path / "out"
    assert main(align_argv(tiny_model_dir, align_files, out) + ["--push-to-hub", "me/tv"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--push-to-hub: the Hugging Face hub is unreachable" in err[0] and "hf upload" in err[0]
    assert not out.exists()
    assert main(align_argv(tiny_model_dir, align_files, out) + ["--push-to-hub", "a/b/c"]) == 2
    assert "is not a repository id" in capsys.readouterr().err


def test_no_token_and_a_failed_upload_are_named(tiny_model_dir, align_files, tmp_path, hub, monkeypatch, capsys):
    import huggingface_hub

    out = tmp_path / "out"
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    assert main(align_argv(tiny_model_dir, align_files, out) + ["--push-to-hub", "me/tv"]) == 2
    assert "no Hugging Face token" in capsys.readouterr().err and not out.exists()

    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_test")

    def refused(self, **kw):
        raise PermissionError("403 Forbidden: you cannot write to me/tv")

    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", refused)
    assert main(align_argv(tiny_model_dir, align_files, out) + ["--push-to-hub", "me/tv"]) == 2
    err = capsys.readouterr().err
    assert "the upload failed (PermissionError: 403 Forbidden" in err and f"{out} is complete" in err
    assert (out / "tvaccine_config.json").is_file()  # the trained folder is kept
