"""The ``tvaccine`` command. Each sub-command lives in ``tvaccine.commands.<name>`` with ``register`` and ``run``.

Heavy imports (torch, transformers) happen inside ``run`` so that ``tvaccine --help`` answers at once.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import sys

from tvaccine import __version__
from tvaccine.errors import UserError

COMMANDS = ["align", "data", "attack", "eval", "push", "judge", "run", "demo", "plan"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tvaccine", description="Safety alignment against harmful fine-tuning: align, attack, evaluate."
    )
    parser.add_argument("--version", action="version", version=f"tvaccine {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"tvaccine.commands.{name}").register(sub)
    for command in sub.choices.values():  # `--mode` must never be read as an abbreviation of `--model`
        command.allow_abbrev = False
    return parser


# Failures of the file system that the user fixes (a read-only or full disk, a missing permission), not bugs.
USER_OS_ERRORS = {errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.ENAMETOOLONG}
MAX_ERROR_CHARS = 1000


def one_line(message: str) -> str:
    """An error as one bounded line: messages can quote data (a 5 MB field, a value with newlines)."""
    message = "\\n".join(message.splitlines())  # every line break str.splitlines knows, U+2028 included
    return message if len(message) <= MAX_ERROR_CHARS else message[: MAX_ERROR_CHARS - 1] + "…"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # what `tvaccine.launch` re-runs on every process
    if extra and not getattr(args, "accepts_overrides", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return int(args.run(args, extra) or 0)
    except UserError as err:
        print(f"tvaccine: error: {one_line(str(err))}", file=sys.stderr)
        return 2
    except OSError as err:
        if err.errno not in USER_OS_ERRORS:
            raise
        print(f"tvaccine: error: {one_line(f'{err.filename}: {err.strerror}')}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tvaccine: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
