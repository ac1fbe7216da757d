"""What the attack trains on: the user's data (a ready file, or task rows with a harmful fraction p of n rows), and
for Lisa the provider's alignment rows."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tvaccine.errors import UserError
from tvaccine.outputs import ATTACK_SET, AlignedAdapter

BEAVERTAILS_TRAIN = "PKU-Alignment/BeaverTails:30k_train"


@dataclass
class AttackData:
    """The attack's inputs. ``data``: a ready attack set; else ``task`` rows from ``task_data`` (default: the task's
    hub split) mixed with ``harmful`` rows (default: BeaverTails' training split). ``alignment_data``: the
    provider's harmful prompt → refusal rows, which Lisa interleaves. ``disjoint_from``: files whose prompts must
    not appear in the attack set (the aligned adapter's own files are added); ``strict_disjoint`` refuses any."""

    task: str | None = None
    data: str | None = None
    harmful: str | None = None
    task_data: str | None = None
    alignment_data: str | None = None
    disjoint_from: list[str] = field(default_factory=list)
    strict_disjoint: bool = False

    def __post_init__(self):
        self.task = self.task.lower().replace("_", "") if self.task else None


def build_attack_set(config, data: AttackData, read):
    """The task rows of ``data.task`` mixed with a share ``config.poison_ratio`` of harmful rows, ``config.sample_num``
    in all; ``read(ref, view)`` reads each source (``load_source``, or the pipeline's cached reader)."""
    from tvaccine.data.sets import attack_set
    from tvaccine.data.tasks import get_task

    task = get_task(data.task)
    return attack_set(read(data.harmful or BEAVERTAILS_TRAIN, "harmful"),
                      read(data.task_data or f"{task.hub_id}:{task.train_split}", f"task:{task.name}"),
                      config.poison_ratio, config.sample_num, config.seed)


def build_attack_rows(output: Path, config, data: AttackData, aligned: str | None, encode) -> tuple[object, dict]:
    """The encoded attack rows and a description of where they came from; a built set is written with its manifest.

    ``encode(rows, where)`` runs on the rows before anything is written, and its result is returned in place of the
    rows: a set that cannot be trained on (every answer cut off by max_length) leaves no file behind.
    """
    from tvaccine.data.files import file_sha256
    from tvaccine.data.overlap import check_disjoint, file_prompts, write_checked
    from tvaccine.data.sets import manifest_path, manifest_summary
    from tvaccine.data.sources import load_instruction_file, load_source
    from tvaccine.data.tasks import TASKS

    recorded = AlignedAdapter.read_if_recorded(aligned)
    others = list(data.disjoint_from) + (recorded.data_files() if recorded else [])
    if data.data:
        rows = encode(load_instruction_file(data.data), str(data.data))
        if data.disjoint_from:  # a ready set is not written here, but the prompt-leak check still applies
            check_disjoint({str(data.data): file_prompts(data.data), **{str(f): file_prompts(f) for f in others}},
                           data.strict_disjoint)
        info = {"data": str(data.data), "sha256": file_sha256(data.data)}
        if manifest_path(data.data).is_file():  # a set written by `tvaccine data attack`
            info["manifest"] = str(manifest_path(data.data))
        return rows, info
    if data.task is None:
        raise UserError(f"--task: name the task ({', '.join(TASKS)}) or pass a ready attack set with --data")

    dataset = build_attack_set(config, data, load_source)
    rows = encode(dataset.records, str(output / ATTACK_SET))
    manifest = write_checked(dataset, str(output / ATTACK_SET), others, data.strict_disjoint)
    print(manifest_summary(output / ATTACK_SET, manifest))
    return rows, {"data": str(output / ATTACK_SET), "sha256": manifest["sha256"],
                  "manifest": str(manifest_path(output / ATTACK_SET))}
