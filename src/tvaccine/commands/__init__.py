"""One module per subcommand; what align and attack share before they train."""

from __future__ import annotations


def before_training(args, finished: bool, settings_file: str, what: str) -> int | None:
    """Skip a finished OUTPUT (unless --overwrite, which clears it for a fresh run), or re-run the command under
    ``accelerate launch``; returns the exit status when the command is done here, None when it should train."""
    from pathlib import Path

    from tvaccine import launch

    if finished and not args.overwrite:
        print(f"{args.output} already holds a finished {what}; pass --overwrite to train again")
        return 0
    if args.overwrite:
        import shutil

        shutil.rmtree(Path(args.output) / "checkpoints", ignore_errors=True)
        (Path(args.output) / settings_file).unlink(missing_ok=True)  # no longer a finished run
    if launch.requested(args):
        return launch.relaunch(args)
    return None
