"""The ``pyrovae`` command: ``train``, ``evaluate``, ``sample`` and ``plot`` subcommands (:mod:`.commands`),
parsed by :mod:`.parser`."""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import sys
from collections.abc import Sequence

import torch

from pyrovae.cli.commands import COMMANDS
from pyrovae.cli.parser import build_parser
from pyrovae.files import CannotWrite
from pyrovae.memory import OutOfMemory
from pyrovae.settings import check_positive, in_flags
from pyrovae.training.stopping import TrainingInterrupted

__all__ = ["build_parser", "main"]

INTERRUPTED = 130
"""Exit status after Ctrl-C, as shells report a process ended by SIGINT (128 + 2)."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; bad input ends with a one-line message (naming flags) and exit status 2, Ctrl-C with 130."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, rank 0 alone reports
        sys.stdout = open(os.devnull, "w")  # for the life of the process
    notes = _NotesInFlags(args.command, parser.flags, logging.ERROR if args.quiet else logging.WARNING)
    logging.getLogger("pyrovae").addHandler(notes)
    args.no_progress = getattr(args, "no_progress", False) or args.quiet
    try:
        if args.threads is not None:
            check_positive(args, "threads")
            torch.set_num_threads(args.threads)
        with contextlib.redirect_stdout(io.StringIO()) if args.quiet else contextlib.nullcontext() as said:
            COMMANDS[args.command](args)
        if said is not None:  # --quiet: the last line alone
            print(said.getvalue().rstrip("\n").rpartition("\n")[2])
    except (ValueError, FileNotFoundError, FloatingPointError, CannotWrite, OutOfMemory) as error:
        message = in_flags(str(error), parser.flags, getattr(error, "settings", ()))
        print(f"pyrovae {args.command}: error: {message}", file=sys.stderr)
        return 2
    except TrainingInterrupted as stopped:
        print(f"pyrovae {args.command}: {in_flags(str(stopped), parser.flags)}", file=sys.stderr)
        return INTERRUPTED
    finally:
        logging.getLogger("pyrovae").removeHandler(notes)
    return 0


class _NotesInFlags(logging.StreamHandler):
    """The library's notes (warnings logged under ``pyrovae``) on stderr, one line each, naming flags."""

    def __init__(self, command: str, flags: dict[str, argparse.Action], level: int):
        super().__init__(sys.stderr)
        self.command, self.flags = command, flags
        self.setLevel(level)

    def format(self, record: logging.LogRecord) -> str:
        return f"pyrovae {self.command}: note: {in_flags(record.getMessage(), self.flags)}"
