"""Run ``tvaccine align|attack`` on several processes: the same command line again, under ``accelerate launch``.

``--num-processes N`` and ``--accelerate-config NAME|PATH`` re-run the command as
``python -m accelerate.commands.launch --config_file CONFIG --num_processes N -m tvaccine <the same arguments>``.
In the launched processes (``LOCAL_RANK`` / ``WORLD_SIZE`` set) the Trainer sets itself up from accelerate's
environment (DDP, DeepSpeed ZeRO, FSDP) and the two options are ignored, so nothing is launched twice.

NAME is a config shipped in ``configs/accelerate/`` (ddp, zero2, zero3, fsdp, cpu-ddp); anything else is a path to
an accelerate config file. Why ``cpu-ddp`` is a ``MULTI_GPU`` config with ``use_cpu``: see docs/distributed.md.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

from tvaccine.errors import UserError

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "accelerate"
# Set by torchrun / accelerate launch (and by MPI launchers) in every launched process.
LAUNCHED_ENV = ("LOCAL_RANK", "WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE")
# Options that only the launching process reads; --overwrite is done by it before launching.
LAUNCH_OPTIONS = {"--num-processes": True, "--accelerate-config": True, "--overwrite": False}


def add_arguments(parser) -> None:
    group = parser.add_argument_group("distributed (re-run under `accelerate launch`; see docs/distributed.md)")
    group.add_argument("--num-processes", type=int, metavar="N",
                       help="processes to launch (default: the config's, else every visible GPU, else 2 on CPU)")
    group.add_argument("--accelerate-config", metavar="NAME|PATH",
                       help=f"accelerate config: one of {', '.join(shipped_configs()) or 'the shipped configs'} "
                            "(configs/accelerate/) or a file (default: ddp, or cpu-ddp without a GPU)")


def shipped_configs() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def in_launched_process(env=None) -> bool:
    env = os.environ if env is None else env
    return any(key in env for key in LAUNCHED_ENV)


def requested(args) -> bool:
    """Whether the command asks to be launched on several processes (and is not one of them already)."""
    asked = args.num_processes is not None or args.accelerate_config is not None
    if asked and in_launched_process():
        return False
    if args.num_processes is not None and args.num_processes < 1:
        raise UserError(f"--num-processes: must be at least 1 (got {args.num_processes})")
    return asked


def resolve_config(name: str | None) -> Path:
    if name is None:
        import torch

        name = "ddp" if torch.cuda.is_available() else "cpu-ddp"
    path = Path(name)
    if path.is_file():
        return path
    for candidate in (CONFIG_DIR / name, CONFIG_DIR / f"{name}.yaml"):
        if candidate.is_file():
            return candidate
    raise UserError(f"--accelerate-config: '{name}' is neither a file nor a shipped config "
                    f"({', '.join(shipped_configs())})")


def strip_launch_options(argv: list[str]) -> list[str]:
    """``argv`` without the options only the launching process reads (``--opt value`` and ``--opt=value``)."""
    out, skip = [], False
    for token in argv:
        if skip:
            skip = False
            continue
        name = token.split("=", 1)[0]
        if name in LAUNCH_OPTIONS:
            skip = LAUNCH_OPTIONS[name] and "=" not in token
            continue
        out.append(token)
    return out


def launch_command(program: list[str], config: Path, num_processes: int | None) -> tuple[list[str], dict]:
    """The ``accelerate launch`` command line and environment that run ``python program`` on every process
    (``program``: ``["-m", "tvaccine", ...]`` or a script and its arguments)."""
    from tvaccine.settings import read_yaml

    settings = read_yaml(config)
    env = dict(os.environ)
    if settings.get("use_cpu"):
        env["ACCELERATE_USE_CPU"] = "true"  # TrainingArguments then takes the CPU and gloo
    if num_processes is None and int(settings.get("num_processes", -1)) < 1:
        import torch

        num_processes = torch.cuda.device_count() or 2
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config)]
    if num_processes is not None:
        cmd += ["--num_processes", str(num_processes)]
    return cmd + list(program), env


def relaunch(args) -> int:
    """Re-run this command under ``accelerate launch``; returns its exit status."""
    program = ["-m", "tvaccine", *strip_launch_options(args.argv)]
    cmd, env = launch_command(program, resolve_config(args.accelerate_config), args.num_processes)
    print(f"launching: {shlex.join(cmd)}", flush=True)
    return subprocess.run(cmd, env=env).returncode
