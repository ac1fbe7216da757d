"""One module per subcommand; what align and attack share before they train."""

from __future__ import annotations


def before_training(args, finished: bool, settings_file: str, what: str) -> int | None:
    """Skip a finished OUTPUT (unless --overwrite, which clears it for a fresh run), or re-run the command under
    ``accelerate launch``; returns the exit status when the command is done here, None when it should train."""
    from pathlib import Path

    from tvaccine import launch

    if getattr(args, "push_to_hub", None):  # fail before training, not after it
        from tvaccine.push import check_push

        check_push(args.push_to_hub, args.output, args.hub_private_repo)
    if finished and not args.overwrite:
        print(f"{args.output} already holds a finished {what}; pass --overwrite to train again")
        push_if_asked(args, what)  # a finished folder is pushed as it is
        return 0
    if args.overwrite:
        import shutil

        shutil.rmtree(Path(args.output) / "checkpoints", ignore_errors=True)
        (Path(args.output) / settings_file).unlink(missing_ok=True)  # no longer a finished run
    if launch.requested(args):
        return launch.relaunch(args)
    return None


def add_push_arguments(p) -> None:
    p.add_argument("--push-to-hub", metavar="REPO", help="upload the finished folder (without checkpoints) with its "
                                                         "model card to this hub repository (needs a network and a "
                                                         "token; checked before training)")
    p.add_argument("--hub-private-repo", action="store_true", help="with --push-to-hub: create the repository "
                                                                    "private")


def push_if_asked(args, what: str) -> None:
    """``--push-to-hub``: upload OUTPUT once it is finished (tvaccine.push)."""
    if not getattr(args, "push_to_hub", None):
        return
    from tvaccine.push import push_folder

    url = push_folder(args.output, args.push_to_hub, args.hub_private_repo, what)
    print(f"pushed {args.output} to {url}")
