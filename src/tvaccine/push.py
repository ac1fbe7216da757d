"""Uploading a finished alignment or attack folder, with its model card, as a model repository: at the end of the
stage (``--push-to-hub REPO``) or later, with evaluation scores (``tvaccine push FOLDER REPO --results FILE``).

The folder is what ``PeftModel.from_pretrained`` loads (adapter, config, tokenizer where written) plus our model
card and settings. It is uploaded with ``huggingface_hub``'s ``upload_folder``: the call the Trainer's own
``push_to_hub`` makes. The Trainer's switch is not used: it would create the repository when training starts, push
``OUTPUT/checkpoints`` at every save, and replace our model card with its own.

Everything that can fail without uploading is checked first: the repository id, a token, and whether the hub is
reachable. An offline machine gets one line that says how to push the folder later.

``tvaccine push`` renders the card again from the folder's settings file (as the stage did), with an Evaluation
section from a results file (``tvaccine.evaluation.card``), writes it into the folder and uploads the folder, so
that the local copy and the hub's agree. What it checks of the results file:

- an evaluation's ``results.json`` (``tvaccine eval``) records the model and adapters it evaluated: one of the
  adapters must be FOLDER (or, with none, the model must be: an attack in mode ``full`` is a whole model). Paths
  are compared resolved from the current folder, as the evaluation resolved them.
- a pipeline run's or a sweep cell's ``results.json`` names the folders of its stages: FOLDER must be its
  alignment (the card shows the adapter's scores before the attack, where measured, and after the run's attack) or
  its attack (after the attack, and the aligned model it started from). The judges' notes and the evaluation's
  settings come from the evaluation folder the file names, when it is still there and holds the same scores;
  otherwise the settings are the run's ``eval`` section and there are no notes.
- a file written by hand that records neither is taken as it is: the card says it does not say what it evaluated.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from tvaccine.errors import UserError
from tvaccine.evaluation.card import Evaluated, evaluation_section, has_scores
from tvaccine.outputs import (ALIGN_SETTINGS, ATTACK_SET, ATTACK_SETTINGS, EVAL_RESULTS, MODEL_CARD, AlignedAdapter,
                              AttackOutput, check_adapter_folder, is_adapter_folder)

# Not uploaded: the Trainer's checkpoints (optimizer state, several GB for a 7B LoRA run), lock files, our
# measurement record, the Trainer's temporary files, and the attack's training rows: harmful answers and the
# user's own task data do not belong in a public model repository (their manifest, with hashes and sources, stays).
IGNORED = ["checkpoints/*", "*.lock", "stage.json", "_*", ATTACK_SET]


def push_command(folder: str | Path, repo: str, results: str | Path | None = None, private: bool = False) -> str:
    """The ``tvaccine push`` command line that uploads ``folder`` (what the messages tell the user to run)."""
    return shlex.join(["tvaccine", "push", str(folder), repo, *(["--results", str(results)] if results else []),
                       *(["--private"] if private else [])])


def check_push(repo: str, output: str | Path = "OUTPUT", private: bool = False, flag: str = "--push-to-hub",
               offline: str | None = None) -> None:
    """Fail now, before any training or writing, if ``repo`` cannot be pushed to from here. ``flag``: what the
    messages name; ``offline``: what to do where the hub is out of reach (default: push ``output`` later)."""
    from huggingface_hub import get_token
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    from tvaccine.models import hub_reachable

    try:
        validate_repo_id(repo)
    except HFValidationError as err:
        raise UserError(f"{flag}: {repo!r} is not a repository id (NAME or NAMESPACE/NAME): {err}") from err
    if not hub_reachable():
        offline = offline or (f"run without it and push the finished folder later with "
                              f"`{push_command(output, repo, private=private)}` (it renders the model card again "
                              f"and leaves out the checkpoints)")
        raise UserError(f"{flag}: the Hugging Face hub is unreachable from this machine; {offline}")
    if get_token() is None:
        raise UserError(f"{flag}: no Hugging Face token; log in with `hf auth login` or set HF_TOKEN")


def push_folder(folder: str | Path, repo: str, private: bool = False, what: str = "adapter",
                results: str | Path | None = None) -> str:
    """Create ``repo`` if needed and upload ``folder`` (without checkpoints) to it; returns the repository's URL.
    ``results``: the results file its card was rendered with (the retry the failure message gives names it)."""
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        url = api.create_repo(repo, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(repo_id=url.repo_id, folder_path=str(folder), repo_type="model",
                          commit_message=f"tvaccine: upload the {what}", ignore_patterns=IGNORED)
    except Exception as err:  # huggingface_hub raises HTTP, connection and permission errors of many types
        raise UserError(f"pushing {folder} to {repo}: the upload failed ({type(err).__name__}: "
                        f"{str(err).splitlines()[0] if str(err) else ''}); {folder} is complete, push it later with "
                        f"`{push_command(folder, repo, results, private)}`") from err
    return str(url)


def read_stage(folder: str | Path) -> AlignedAdapter | AttackOutput:
    """The finished alignment or attack in ``folder``; a checkpoint, an unfinished stage or any other folder is
    refused, naming it."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: no such folder")
    if folder.name.startswith("checkpoint-") or (folder / "trainer_state.json").is_file():
        raise UserError(f"{folder}: a Trainer checkpoint, not a finished stage; push the stage's folder (OUTPUT, not "
                        f"OUTPUT/checkpoints/checkpoint-N) once the stage has finished")
    if AttackOutput.is_finished(folder):
        attack = AttackOutput.read(folder)
        if attack.mode != "full":  # mode full leaves a whole model, not an adapter
            check_adapter_folder(folder, "tvaccine push")
        return attack
    if AlignedAdapter.is_finished(folder):
        check_adapter_folder(folder, "tvaccine push")
        return AlignedAdapter.read(folder)
    if is_adapter_folder(folder) or (folder / "checkpoints").is_dir():
        raise UserError(f"{folder}: not a finished alignment or attack (a stage writes {ALIGN_SETTINGS} or "
                        f"{ATTACK_SETTINGS} last, when it has finished); rerun the command that trains it to finish "
                        f"it, then push")
    raise UserError(f"{folder}: not an alignment or attack folder (no {ALIGN_SETTINGS} or {ATTACK_SETTINGS})")


def read_results(path: str | Path) -> dict:
    """A results file that holds evaluation scores: an evaluation's, a pipeline run's or a sweep cell's."""
    path = Path(path)
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise UserError(f"--results {path}: unreadable ({err.strerror or err})") from err
    except ValueError as err:
        raise UserError(f"--results {path}: not JSON ({err})") from err
    if not isinstance(results, dict) or not any(has_scores(results.get(k)) for k in ("scores", "scores_before_attack")):
        raise UserError(f"--results {path}: no evaluation scores in it; give the results.json that `tvaccine eval` "
                        f"writes, or that of a pipeline run or sweep cell")
    return results


def same_path(a, b: str | Path) -> bool:
    """Whether ``a`` (a path as a results file recorded it, or anything else) names the folder ``b``."""
    if not isinstance(a, str) or not a:
        return False
    try:
        return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()
    except (OSError, RuntimeError):  # a hub id too long to be a path, a symlink loop
        return False


def evaluated(folder: Path, results: dict, path: Path) -> list[Evaluated]:
    """The blocks of the card's Evaluation section: the scores in ``results`` that are of ``folder``; refused when
    the file says they are of another model."""
    if isinstance(results.get("stages"), dict):
        return _from_run(folder, results, path)
    return [_from_eval(folder, results, path)]


def _from_eval(folder: Path, results: dict, path: Path) -> Evaluated:
    settings = results.get("settings") if isinstance(results.get("settings"), dict) else {}
    model, adapters = settings.get("model"), settings.get("adapters") or []
    if not isinstance(adapters, list):
        raise UserError(f"--results {path}: settings.adapters: expected a list of adapter folders, got {adapters!r}")
    if adapters and not any(same_path(a, folder) for a in adapters):
        raise UserError(f"--results {path}: these scores are for the adapters {', '.join(map(str, adapters))} "
                        f"on {model}, not {folder}")
    if not adapters and model is not None and not same_path(model, folder):
        raise UserError(f"--results {path}: these scores are for the model {model} without adapters, not {folder}")
    if not has_scores(results.get("scores")):
        raise UserError(f"--results {path}: no evaluation scores in its 'scores'")
    notes = results.get("judges") if isinstance(results.get("judges"), dict) else {}
    return Evaluated("", _about(settings, folder) or f"not recorded in `{path.name}`", results["scores"], notes,
                     settings)


def _about(settings: dict, folder: Path) -> str:
    """Which model and adapters an evaluation's settings name, in words ("" where they name none)."""
    model, adapters = settings.get("model"), settings.get("adapters") or []
    here = lambda name: f"`{name}`" + (" (this folder)" if same_path(name, folder) else "")  # noqa: E731
    if adapters:
        return f"`{model}` with the adapters {', '.join(map(here, adapters))} merged in order"
    return f"{here(model)} without adapters" if model is not None else ""


def _from_run(folder: Path, results: dict, path: Path) -> list[Evaluated]:
    stages, config = results["stages"], results.get("settings") if isinstance(results.get("settings"), dict) else {}
    dirs = {name: (stages.get(name) or {}).get("dir") for name in ("align", "attack")}
    before = (results.get("scores_before_attack"), stages.get("eval_before"))
    after = (results.get("scores"), stages.get("eval"))
    if same_path(dirs["attack"], folder):
        blocks = [("After the attack: this model", after), ("Before the attack: the model it started from", before)]
    elif same_path(dirs["align"], folder):
        blocks = [("This adapter", after)]  # the run had no attack
        if dirs["attack"]:
            blocks = [("This adapter, before the attack", before), (_after_attack(config), after)]
    else:
        named = " and the ".join(f"{stage} {d}" for stage, d in dirs.items() if d) or "base model alone"
        raise UserError(f"--results {path}: a pipeline run's results, for the {named}, not {folder}")
    out = [Evaluated(title, *_evaluation_of(stage, scores, config, folder))
           for title, (scores, stage) in blocks if has_scores(scores)]
    if not out:
        raise UserError(f"--results {path}: no scores of {folder} in it (eval.before_attack was off?)")
    return out


def _after_attack(config: dict) -> str:
    """The heading of an aligned adapter's scores after its run's attack, with what the run config says of it."""
    attack = config.get("attack") if isinstance(config.get("attack"), dict) else {}
    settings = attack.get("settings") if isinstance(attack.get("settings"), dict) else {}
    said = [f"task {attack['task']}" if attack.get("task") else "",
            f"p = {settings['poison_ratio']!r}" if "poison_ratio" in settings else ""]
    said = ", ".join(s for s in said if s)
    return f"After the run's harmful fine-tuning attack{f' ({said})' if said else ''}"


def _evaluation_of(stage, scores: dict, config: dict, folder: Path) -> tuple[str, dict, dict, dict]:
    """(what was evaluated, the scores, the judges' notes, the settings) of the evaluation a run's scores came from:
    from its folder's results.json when it is still there and holds the same scores, else from the run's file alone
    (no notes, the run config's ``eval`` section)."""
    results = None
    if isinstance(stage, dict) and isinstance(stage.get("dir"), str):
        try:
            results = json.loads((Path(stage["dir"]) / EVAL_RESULTS).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            pass  # moved or deleted since
    if isinstance(results, dict) and results.get("scores") == scores and isinstance(results.get("settings"), dict):
        return _about(results["settings"], folder), scores, results.get("judges") or {}, results["settings"]
    return "", scores, {}, config.get("eval") if isinstance(config.get("eval"), dict) else {}


def render_card(folder: str | Path, results_path: str | Path | None = None) -> tuple[str, str]:
    """``folder``'s model card rendered again from its settings file, with an Evaluation section from the results
    file if given, and what the folder is ("alignment" or "attack"). Reads only: every local check fails here,
    before the hub is asked anything."""
    from tvaccine.align.run import model_card as alignment_card
    from tvaccine.attack.run import model_card as attack_card

    folder = Path(folder)
    stage = read_stage(folder)
    section = ""
    if results_path:
        path = Path(results_path)
        results = read_results(path)
        source = (f"Scores from `{path.name}`, written by " +
                  ("a tvaccine pipeline run." if isinstance(results.get("stages"), dict) else "`tvaccine eval`."))
        section = evaluation_section(evaluated(folder, results, path), source, f"--results {path}")
    elif "\n## Evaluation\n" in _read_text(folder / MODEL_CARD):
        print(f"note: {folder / MODEL_CARD} had an Evaluation section; without --results the card has none")
    render = attack_card if isinstance(stage, AttackOutput) else alignment_card
    return render(stage.settings, section), "attack" if isinstance(stage, AttackOutput) else "alignment"


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, ValueError):
        return ""
