"""What every command shares: its parser's epilog with the exit statuses, and the error-to-exit mapping.

A command module has ``build_parser()`` and ``main(argv) -> int``; ``main`` parses, then hands its body
to :func:`run_command`, which turns the errors a user can fix into one plain line on stderr and an
exit status:

- 0: done;
- 1: nothing (or not everything) done, for a reason met while working (a full disk, an unreadable
  video, no input found);
- 2: usage error, found before any work: a bad option, file, folder or value (argparse's own errors
  exit 2 too).

Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from pgnet.errors import UserError

EXIT_DONE = 0
EXIT_NOT_DONE = 1
EXIT_USAGE = 2

EXIT_STATUS_HELP = (
    "exit status: 0 done; 1 nothing (or not everything) done, for a reason met while working "
    "(a full disk, an unreadable file, no input found); 2 usage error (a bad option, file or value)"
)

# Errors that mean "the input is wrong": usage errors unless they say otherwise (``exit_status``).
# Library code raises UserError subclasses; plain ValueError/KeyError stay here for third-party code
# (torch, timm, yaml) that reports bad input that way.
_USAGE_ERRORS = (UserError, ValueError, KeyError, FileNotFoundError, FileExistsError, NotADirectoryError,
                 IsADirectoryError, PermissionError)


class NothingDoneError(UserError):
    """The command found nothing to do or could not finish; it exits 1."""

    exit_status = EXIT_NOT_DONE


def build_command_parser(prog: str, description: str, example: str | None = None,
                         exit_statuses: str = EXIT_STATUS_HELP) -> argparse.ArgumentParser:
    """An ``ArgumentParser`` whose epilog gives an example (optional) and the exit statuses."""
    epilog = "\n\n".join(part for part in (example, exit_statuses) if part)
    return argparse.ArgumentParser(prog=prog, description=description, epilog=epilog,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def error_message(error: BaseException) -> str:
    """The one line printed for ``error``: its message, without the quotes ``KeyError`` adds."""
    if isinstance(error, OSError) and error.strerror and error.filename and not isinstance(error, UserError):
        return f"{error.filename}: {error.strerror}"
    return str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)


def exit_status_of(error: BaseException) -> int:
    """``error.exit_status`` when it declares one, 2 for usage errors, 1 for other OS errors."""
    status = getattr(error, "exit_status", None)
    if isinstance(status, int):
        return status
    return EXIT_USAGE if isinstance(error, _USAGE_ERRORS) else EXIT_NOT_DONE


def run_command(prog: str, body: Callable[[], int | None]) -> int:
    """Run ``body`` and map the errors a user can fix to a message on stderr and an exit status.

    An exception with an integer ``exit_status`` attribute (``TrainingInterrupted``, ...) exits with
    it, printing its message if it has one. Ctrl-C exits 130.
    """
    try:
        status = body()
    except KeyboardInterrupt as error:
        status = getattr(error, "exit_status", 130)
        if str(error):
            print(f"{prog}: {error}", file=sys.stderr)
        return status
    except (*_USAGE_ERRORS, OSError) as error:
        print(f"{prog}: error: {error_message(error)}", file=sys.stderr)
        return exit_status_of(error)
    except Exception as error:
        if not isinstance(getattr(error, "exit_status", None), int):
            raise
        print(f"{prog}: error: {error_message(error)}", file=sys.stderr)
        return error.exit_status
    return EXIT_DONE if status is None else status
