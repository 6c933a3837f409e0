"""The run's text log: ``RUN/log.txt`` (rank 0) and the console, and data warnings routed to both.

The log starts before the run folder exists (the data is checked first, so that a bad dataset
leaves no folder behind): until :func:`attach_log_file` what is logged goes to the console and is
kept, then written at the top of ``log.txt``. :func:`record_failure` writes the error that ends a
run to ``log.txt`` only (the command prints it on the console).
"""

from __future__ import annotations

import contextlib
import logging
import logging.handlers
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path

from pgnet.errors import UserError

DATA_LOGGER = "pgnet.data"  # where datasets warn about the files they leave out or skip


_FORMATTER = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")


class _Pending(logging.handlers.MemoryHandler):
    """What is logged before ``log.txt`` exists, kept for it (never flushed on its own)."""

    def __init__(self) -> None:
        super().__init__(capacity=1 << 30, flushLevel=logging.CRITICAL + 1)

    def shouldFlush(self, record: logging.LogRecord) -> bool:
        return False


def start_run_log(name: str, is_main: bool) -> logging.Logger:
    """Logger ``name`` writing to stderr and keeping its records for ``log.txt`` (main process only)."""
    logger = logging.getLogger(name)
    logger.setLevel(logging.INFO if is_main else logging.WARNING)
    logger.propagate = False
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(_FORMATTER)
    logger.addHandler(console)
    if is_main:
        logger.addHandler(_Pending())
    return logger


def attach_log_file(logger: logging.Logger, run_dir: Path) -> None:
    """Start ``run_dir/log.txt`` with what ``logger`` kept since :func:`start_run_log`, then log to it."""
    for pending in [handler for handler in logger.handlers if isinstance(handler, _Pending)]:
        run_dir.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(run_dir / "log.txt")
        file_handler.setFormatter(_FORMATTER)
        pending.setTarget(file_handler)
        pending.flush()
        logger.removeHandler(pending)
        pending.close()
        logger.addHandler(file_handler)


def record_failure(logger: logging.Logger, error: BaseException) -> None:
    """Write the error that ends a run to ``logger``'s files (``log.txt``), not to the console: a
    user error as its message, anything else with its traceback."""
    if isinstance(error, UserError):
        message = f"stopped: {type(error).__name__}: {error}"
    else:
        message = "stopped by an error:\n" + "".join(traceback.format_exception(error)).rstrip()
    record = logger.makeRecord(logger.name, logging.ERROR, __file__, 0, message, None, None)
    for handler in logger.handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


@contextlib.contextmanager
def data_warnings_logged(logger: logging.Logger) -> Iterator[None]:
    """Warnings of ``pgnet.data`` (skipped files, unpaired images) also go to ``logger``'s handlers,
    log.txt included (DataLoader workers forked meanwhile inherit them)."""
    data_logger = logging.getLogger(DATA_LOGGER)
    added = [handler for handler in logger.handlers if handler not in data_logger.handlers]
    for handler in added:
        data_logger.addHandler(handler)
    try:
        yield
    finally:
        for handler in added:
            data_logger.removeHandler(handler)
