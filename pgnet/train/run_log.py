"""The run's text log: ``RUN/log.txt`` (rank 0) and the console, and data warnings routed to both."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

DATA_LOGGER = "pgnet.data"  # where datasets warn about the files they leave out or skip


def open_run_log(run_dir: Path, name: str, is_main: bool) -> logging.Logger:
    """Logger ``name`` writing to ``run_dir/log.txt`` (main process only) and to stderr."""
    logger = logging.getLogger(name)
    logger.setLevel(logging.INFO if is_main else logging.WARNING)
    logger.propagate = False
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(run_dir / "log.txt")
        file_handler.setFormatter(formatter)
        logger.addHandler(file_handler)
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(formatter)
    logger.addHandler(console)
    return logger


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
