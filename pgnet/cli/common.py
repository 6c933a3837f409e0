"""What every command shares: its parser's epilog with the exit statuses, and the error-to-exit mapping.

A command module has ``build_parser()`` and ``main(argv) -> int``; ``main`` parses, then hands its body
to :func:`run_command`, which turns the errors a user can fix into one plain line on stderr
(``error: MESSAGE``) and an exit status:

- 0: done;
- 1: nothing (or not everything) done, for a reason met while working (a full disk, an unreadable
  video, no input found);
- 2: usage error, found before any work: a bad option, file, folder or value (argparse's own errors
  exit 2 too).

The errors a user can fix are :class:`~pgnet.errors.UserError` subclasses; library code raises one
naming the file, key or value at fault. An error may declare its own status as an integer
``exit_status`` attribute (``NoSpaceError`` 1, the trainer's ``NonFiniteLossError`` 3,
``TrainingInterrupted`` 128 + the signal). Anything else is a bug: it keeps its traceback and the
program exits 1. A command turns the third-party errors it expects (``open()``'s ``FileNotFoundError``
on a file the user named, torch's ``RuntimeError`` on an unloadable checkpoint) into user errors on
purpose, with :func:`errors_as` or an ``except`` of its own.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from pgnet.errors import UserError

EXIT_DONE = 0
EXIT_NOT_DONE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports Ctrl-C

EXIT_STATUS_HELP = (
    "exit status: 0 done; 1 nothing (or not everything) done, for a reason met while working "
    "(a full disk, an unreadable file, no input found); 2 usage error (a bad option, file or value)"
)


class NothingDoneError(UserError):
    """The command found nothing to do or could not finish; it exits 1."""

    exit_status = EXIT_NOT_DONE


def build_command_parser(prog: str | None, description: str, example: str | None = None,
                         exit_statuses: str = EXIT_STATUS_HELP) -> argparse.ArgumentParser:
    """An ``ArgumentParser`` whose epilog gives an example (optional) and the exit statuses.

    ``prog`` None: the name the program was started by (a script's file name).
    """
    epilog = "\n\n".join(part for part in (example, exit_statuses) if part)
    return argparse.ArgumentParser(prog=prog, description=description, epilog=epilog,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def add_reading_options(group: argparse._ActionsContainer, workers: int, workers_help: str) -> None:
    """``--workers``, ``--max-pixels`` and ``--no-progress``: how a command that reads many pictures reads them."""
    group.add_argument("--workers", type=int, default=workers, help=f"{workers_help} (default {workers})")
    group.add_argument("--max-pixels", type=float, metavar="N",
                       help="skip pictures over N pixels without decoding them (default 100e6; 0: no limit)")
    group.add_argument("--no-progress", action="store_true", help="no progress bars")


def check_output_folder(parser: argparse.ArgumentParser, folder: str | None, option: str = "-o/--output") -> None:
    """A usage error, before any work, when an option that takes an output folder names a file."""
    if folder is not None and Path(folder).exists() and not Path(folder).is_dir():
        parser.error(f"{option} names the file {folder}: it takes a folder (created if missing)")


def error_message(error: BaseException) -> str:
    """The one line printed for ``error``: its message, without the quotes ``KeyError`` adds."""
    if isinstance(error, OSError) and error.strerror and error.filename and not isinstance(error, UserError):
        return f"{error.filename}: {error.strerror}"
    return str(error.args[0]) if type(error) is KeyError and error.args else str(error)


def exit_status_of(error: BaseException) -> int | None:
    """``error.exit_status`` when it declares one, else 2 for a :class:`UserError`; None for a bug."""
    status = getattr(error, "exit_status", None)
    if isinstance(status, int):
        return status
    return EXIT_USAGE if isinstance(error, UserError) else None


@contextmanager
def errors_as(error_class: type[UserError], *types: type[BaseException]) -> Iterator[None]:
    """Re-raise the ``types`` raised inside as ``error_class``, same message, e.g. torch's
    ``RuntimeError`` on an unloadable checkpoint as a usage error, or a user error met halfway through
    the work as :class:`NothingDoneError`."""
    try:
        yield
    except types as error:
        raise error_class(error_message(error)) from error


def run_command(prog: str | None, body: Callable[[], int | None]) -> int:
    """Run ``body`` and map the errors a user can fix to ``error: MESSAGE`` on stderr and an exit status.

    ``body`` returns the status (None: 0). A :class:`UserError` exits 2, or with its integer
    ``exit_status`` attribute, printing its message; so does any exception declaring an ``exit_status``.
    Any other exception is a bug and propagates with its traceback (the interpreter exits 1). An
    interruption that declares its status (``TrainingInterrupted``, which has logged its own line) exits
    with it silently; a plain Ctrl-C prints ``PROG: interrupted`` (``prog`` None: the program's file
    name) instead of a traceback and exits 130.
    """
    try:
        status = body()
    except KeyboardInterrupt as error:
        status = getattr(error, "exit_status", None)
        if isinstance(status, int):
            return status
        print(f"{prog or Path(sys.argv[0]).name}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:
        status = exit_status_of(error)
        if status is None:
            raise
        print(f"error: {error_message(error)}", file=sys.stderr)
        return status
    return EXIT_DONE if status is None else status
