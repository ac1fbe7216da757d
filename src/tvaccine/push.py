"""``--push-to-hub REPO``: upload a finished alignment or attack folder, with its model card, as a model repository.

The folder is what ``PeftModel.from_pretrained`` loads (adapter, config, tokenizer where written) plus our model
card and settings. It is uploaded once, when the stage has finished, with ``huggingface_hub``'s ``upload_folder``:
the call the Trainer's own ``push_to_hub`` makes. The Trainer's switch is not used: it would create the repository
when training starts, push ``OUTPUT/checkpoints`` at every save, and replace our model card with its own.

Everything that can fail without uploading is checked before training starts: the repository id, a token, and
whether the hub is reachable. An offline machine gets one line that says how to push the folder later.
"""

from __future__ import annotations

from pathlib import Path

from tvaccine.errors import UserError

# Not uploaded: the Trainer's checkpoints (optimizer state, several GB for a 7B LoRA run), lock files, our
# measurement record, and the Trainer's temporary files.
IGNORED = ["checkpoints/*", "*.lock", "stage.json", "_*"]


def check_push(repo: str) -> None:
    """Fail now, before any training, if ``repo`` cannot be pushed to from here."""
    from huggingface_hub import get_token
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    from tvaccine.models import hub_reachable

    try:
        validate_repo_id(repo)
    except HFValidationError as err:
        raise UserError(f"--push-to-hub: {repo!r} is not a repository id (NAME or NAMESPACE/NAME): {err}") from err
    if not hub_reachable():
        raise UserError("--push-to-hub: the Hugging Face hub is unreachable from this machine; run without it and "
                        "upload the output folder later with `hf upload REPO OUTPUT --exclude 'checkpoints/*'`")
    if get_token() is None:
        raise UserError("--push-to-hub: no Hugging Face token; log in with `hf auth login` or set HF_TOKEN")


def push_folder(folder: str | Path, repo: str, private: bool = False, what: str = "adapter") -> str:
    """Create ``repo`` if needed and upload ``folder`` (without checkpoints) to it; returns the repository's URL."""
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        url = api.create_repo(repo, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(repo_id=url.repo_id, folder_path=str(folder), repo_type="model",
                          commit_message=f"tvaccine: upload the {what}", ignore_patterns=IGNORED)
    except Exception as err:  # huggingface_hub raises HTTP, connection and permission errors of many types
        raise UserError(f"--push-to-hub {repo}: the upload failed ({type(err).__name__}: "
                        f"{str(err).splitlines()[0] if str(err) else ''}); {folder} is complete, push it later with "
                        f"`hf upload {repo} {folder} --exclude 'checkpoints/*'`") from err
    return str(url)
