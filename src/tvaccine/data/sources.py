"""Data sources: a local file (JSON, JSONL, CSV, Parquet) or a Hugging Face hub data set, read in a *view*.

A source reference is a path, or a hub id with an optional split: ``PKU-Alignment/BeaverTails:30k_test``.
A view says what the rows are used as:

- ``auto``: every row as it is; a row with a refusal gives harmful prompt → refusal (what ``align`` reads);
- ``harmful``: harmful prompt → harmful answer; rows the source marks safe are skipped;
- ``refusal``: harmful prompt → refusal, the source's own refusal if it has one, else ``write_refusal``'s;
- ``benign``: rows the source does not mark harmful (Alpaca-style benign instructions);
- ``task:<sst2|agnews|gsm8k>``: task rows in the authors' format with ``label``; harmful rows are skipped.

Every row keeps ``_index``, its position in the file or split, which manifests record.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from tvaccine.data.files import SUFFIXES, file_sha256, read_records
from tvaccine.data.formats import normalize
from tvaccine.data.refusals import write_refusal
from tvaccine.data.tasks import TASKS, get_task, hub_task
from tvaccine.errors import UserError

BEAVERTAILS = "PKU-Alignment/BeaverTails"
_DEFAULT_SPLITS = {BEAVERTAILS.lower(): "30k_train"}
VIEWS = ("auto", "harmful", "refusal", "benign", *(f"task:{name}" for name in TASKS))


@dataclass
class Source:
    ref: str  # local path or hub id
    split: str | None
    view: str
    rows: list[dict]  # normalized rows of this view, each with _index
    rows_total: int  # records in the file or split before the view filtered them
    sha256: str | None = None  # of a local file's bytes
    fingerprint: str | None = None  # of a hub split (datasets' own content fingerprint)
    refusal_seed: int = 0
    counts: dict = field(default_factory=dict)

    def describe(self) -> dict:
        """What a manifest records to find and check this source again."""
        out = {"ref": self.ref, "split": self.split, "view": self.view, "rows_total": self.rows_total,
               "rows_in_view": len(self.rows)}
        out.update({"sha256": self.sha256} if self.sha256 else {"fingerprint": self.fingerprint})
        if self.view == "refusal":
            out["refusal_seed"] = self.refusal_seed
        return out

    def take(self, k: int, what: str) -> list[dict]:
        """The first ``k`` rows, or an error that says how many exist."""
        if k > len(self.rows):
            raise UserError(f"{self.label}: {what} needs {k} rows but the source has only {len(self.rows)} "
                            f"usable rows in view '{self.view}' ({self.rows_total} in all)")
        return self.rows[:k]

    @property
    def label(self) -> str:
        return f"{self.ref}:{self.split}" if self.split else self.ref


def is_local(ref: str) -> bool:
    return os.path.exists(ref) or ref.startswith((".", "/", "~")) or ref.lower().endswith(SUFFIXES)


def parse_ref(ref: str, split: str | None = None) -> tuple[str, str | None]:
    head, sep, tail = ref.rpartition(":")
    if sep and not os.path.exists(ref) and os.path.exists(head):
        raise UserError(f"{head}: a local file has no splits (got split '{tail}')")
    if is_local(ref):
        if split:
            raise UserError(f"{ref}: a local file has no splits (got split '{split}')")
        if not os.path.exists(ref):
            raise UserError(f"{ref}: no such file")
        return ref, None
    if ":" in ref and split is None:
        ref, split = ref.rsplit(":", 1)
    return ref, split


def hub_records(hub_id: str, split: str | None, config: str | None = None) -> tuple[list[dict], str, str]:
    """Records of one split of a hub data set (``config``: its configuration, where it has several); a clear error
    offline, for an unknown id or an unknown split."""
    task = hub_task(hub_id)
    split = split or (task.train_split if task else _DEFAULT_SPLITS.get(hub_id.lower()))
    if split is None:
        raise UserError(f"{hub_id}: name a split, e.g. {hub_id}:train")
    from tvaccine.models import hub_reachable

    if os.environ.get("HF_HUB_OFFLINE") != "1" and not hub_reachable():
        raise UserError(f"data set '{hub_id}' (split '{split}') needs the Hugging Face hub, which is unreachable "
                        f"from this machine; pass a local file (JSON, JSONL, CSV or Parquet) instead, or set "
                        f"HF_HUB_OFFLINE=1 to use a cached copy")
    import datasets

    try:
        ds = datasets.load_dataset(hub_id, config or (task.hub_config if task else None), split=split)
    except ValueError as err:
        if "split" in str(err).lower():
            raise UserError(f"{hub_id}: unknown split '{split}' ({str(err).splitlines()[0]})") from err
        raise UserError(f"could not load data set '{hub_id}': {str(err).splitlines()[0]}") from err
    except Exception as err:  # network, missing repository, gated data set: all user-fixable
        raise UserError(f"could not load data set '{hub_id}' (split '{split}') from the Hugging Face hub "
                        f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from err
    records = [{**r, "_where": f"{hub_id}[{split}] row {i}"} for i, r in enumerate(ds)]
    if not records:
        raise UserError(f"{hub_id}[{split}]: no rows")
    return records, split, ds._fingerprint


def _apply_view(rows: list[dict], view: str, refusal_seed: int) -> tuple[list[dict], dict]:
    counts = {"skipped": 0}
    if view == "auto":
        return [{**r, "output": r["refusal"]} if r["refusal"] is not None else r for r in rows], counts
    if view in ("harmful", "refusal"):
        # A harmful pair needs an answer other than a refusal (rows of an alignment set have only the refusal).
        out = [r for r in rows if r["harmful"] is not False and (view == "refusal" or r["output"] != r["refusal"])]
        if view == "refusal":
            counts["written_refusals"] = sum(r["refusal"] is None for r in out)
            out = [{**r, "output": r["refusal"] if r["refusal"] is not None
                    else write_refusal(r["instruction"] + r["input"], refusal_seed)} for r in out]
        counts["skipped"] = len(rows) - len(out)
        return out, counts
    if view == "benign":
        # Unmarked rows count as benign unless they carry a refusal (then their prompt is a harmful one).
        out = [r for r in rows if r["harmful"] is False or (r["harmful"] is None and r["refusal"] is None)]
        counts["skipped"] = len(rows) - len(out)
        return out, counts
    if view.startswith("task:"):
        task = get_task(view[5:])
        # Rows without the task's instruction are skipped: the poison rows of a merged or SBR mix.
        out = [{**r, **f} for r in rows if r["harmful"] is not True and (f := task.recognize(r)) is not None]
        if not out:
            raise UserError(f"{rows[0]['_where']}: field 'instruction' is not a {task.name} instruction "
                            f"({rows[0]['instruction'][:60]!r}), nor is any other row's")
        counts["skipped"] = len(rows) - len(out)
        return out, counts
    raise UserError(f"view: unknown view '{view}' (choose from {', '.join(VIEWS)})")


def load_source(ref: str, view: str = "auto", split: str | None = None, refusal_seed: int = 0) -> Source:
    """Read and normalize a source in ``view``; errors name the file or id, the line or row, and the field."""
    ref, split = parse_ref(str(ref), split)
    sha = fingerprint = None
    if split is None and is_local(ref):
        records, sha = read_records(ref), file_sha256(ref)
    else:
        records, split, fingerprint = hub_records(ref, split)
    rows = []
    for i, raw in enumerate(records):
        row = normalize(raw)
        row["_index"] = i
        rows.append(row)
    viewed, counts = _apply_view(rows, view, refusal_seed)
    return Source(os.path.abspath(ref) if sha else ref, split, view, viewed, len(records), sha, fingerprint,
                  refusal_seed, counts)


def load_instruction_file(path: str | os.PathLike) -> list[dict]:
    """Any supported local file as ``{instruction, input, output}`` rows (see ``tvaccine.data.formats``).

    Rows with a refusal (the BeaverTails and DecodingTrust refusal formats) give harmful prompt → refusal.
    """
    return [{k: r[k] for k in ("instruction", "input", "output")} for r in load_source(str(path)).rows]
