"""Bad input: an error that names the file, the line or row and the field; exit code 2; nothing written."""

from __future__ import annotations

import argparse
import json

import pytest

from tvaccine.cli import build_parser, main
from tvaccine.data.sources import load_instruction_file, load_source
from tvaccine.data.tasks import TASKS
from tvaccine.errors import UserError


def run_cli(argv, capsys) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().err


@pytest.mark.parametrize("text,expected", [
    ('{"instruction": "a", "output": "b"}\n{"instruction": "c", "output": "d"}\n{"instruction": oops}\n',
     r"bad.jsonl:3: invalid JSON"),
    ('{"instruction": "a", "output": "b"}\n{"instruction": "c"}\n', r"bad.jsonl:2: missing field 'output'"),
    ('{"instruction": "a", "output": 5}\n', r"bad.jsonl:1: field 'output' must be a string"),
    ("  \n", r"bad.jsonl: the file is empty"),
    ('{"foo": 1}\n', r"bad.jsonl:1: unknown row format \(fields: foo\)"),
    ('{"conversations": [{"role": "user", "content": "hi"}]}\n',
     r"bad.jsonl:1: field 'conversations' needs a user turn followed by an assistant turn"),
    ('{"prompt": "p", "response": "r", "is_safe": "maybe"}\n', r"bad.jsonl:1: field 'is_safe' must be true or false"),
    ('{"refusal": "no question here"}\n', r"bad.jsonl:1: field 'refusal' must read 'Question"),
])
def test_malformed_jsonl_names_file_line_field(tmp_path, text, expected):
    path = tmp_path / "bad.jsonl"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(UserError, match=expected):
        load_instruction_file(path)


def test_json_array_errors_name_the_row(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps([{"instruction": "a", "output": "b"}, {"instruction": "c"}]))
    with pytest.raises(UserError, match=r"bad.json: row 1: missing field 'output'"):
        load_instruction_file(path)


def test_csv_errors_name_the_line(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text('goal,target\nfine,ok\n"multi\nline",ok\ntoo,many,cells\n', encoding="utf-8")
    with pytest.raises(UserError, match=r"bad.csv:5: 3 cells for 2 header fields"):
        load_source(str(path))


def test_task_rows_with_a_bad_label(tmp_path):
    path = tmp_path / "sst2.jsonl"
    path.write_text(json.dumps({"sentence": "s", "label": 1}) + "\n" + json.dumps({"sentence": "t", "label": 7}) + "\n")
    with pytest.raises(UserError, match=r"sst2.jsonl:2: field 'label' must be an integer 0..1"):
        load_source(str(path))


def test_unknown_view_split_and_missing_file(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text(json.dumps({"instruction": "a", "output": "b"}) + "\n")
    with pytest.raises(UserError, match="unknown view 'poison'"):
        load_source(str(path), "poison")
    with pytest.raises(UserError, match=r"a.jsonl: a local file has no splits \(got split 'train'\)"):
        load_source(f"{path}:train")
    with pytest.raises(UserError, match="nope.jsonl: no such file"):
        load_source(str(tmp_path / "nope.jsonl"))
    with pytest.raises(UserError, match="unknown task 'mnli'"):
        load_source(str(path), "task:mnli")


def test_cli_errors_exit_2_with_file_line_and_field(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "p", "response": "r"}\n{"prompt": "q"}\n', encoding="utf-8")
    out = tmp_path / "probe.jsonl"
    code, err = run_cli(["data", "probe", "--source", str(bad), "--num-probe-samples", "1", "--output", str(out)],
                        capsys)
    assert code == 2 and f"{bad}:2: unknown row format (fields: prompt)" in err
    assert len(err.strip().splitlines()) == 1 and not out.exists()


def test_data_build_writes_nothing_when_the_eval_source_is_bad(tmp_path, capsys):
    train = tmp_path / "train.jsonl"
    train.write_text(json.dumps({"sentence": "s", "label": 1}) + "\n")
    bad_eval = tmp_path / "eval.jsonl"
    bad_eval.write_text("")
    code, err = run_cli(["data", "build", "--task", "sst2", "--source", str(train), "--eval-source", str(bad_eval),
                         "--output", str(tmp_path / "out.jsonl")], capsys)
    assert code == 2 and "eval.jsonl: the file is empty" in err
    assert set(tmp_path.iterdir()) == {train, bad_eval}  # the training file was not written either


def test_unknown_task_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["data", "build", "--task", "mnli", "--output", "x.jsonl"])
    assert exc.value.code == 2 and "invalid choice: 'mnli'" in capsys.readouterr().err



def _subcommands(parser: argparse.ArgumentParser) -> dict:
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def test_every_task_option_offers_the_tasks_of_the_task_module():
    parser = build_parser()
    commands, data = _subcommands(parser), _subcommands(_subcommands(parser)["data"])
    for command in (commands["eval"], commands["attack"], data["build"], data["attack"]):
        task = next(a for a in command._actions if "--task" in a.option_strings)
        assert sorted(task.choices) == sorted(TASKS), command.prog
    # eval has always taken the hub's spelling too
    assert parser.parse_args(["eval", "--model", "m", "--output", "o", "--task", "ag_news"]).task == "agnews"
