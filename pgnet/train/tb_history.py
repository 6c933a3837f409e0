"""TensorBoard events of a resumed run: history kept, nothing logged twice.

A resumed run never purges (TensorBoard's ``purge_step`` would hide every event from the
checkpoint's step on, including the last finished epoch's validation). Instead the resumed writer
reads what the event files already hold and skips a (tag, step) that is there: exact resume
recomputes those values identically, so the killed process's points stay and the new process
adds only the ones after them, tag by tag. Events the killed process had not flushed yet are not
on disk and are written again by the resumed run.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from torch.utils.tensorboard import SummaryWriter

logger = logging.getLogger(__name__)


def logged_steps(log_dir: str | Path) -> dict[str, int]:
    """The last step logged for each tag in the event files of ``log_dir`` (truncated files: what
    is readable)."""
    last: dict[str, int] = {}
    for path in sorted(Path(log_dir).glob("events.out.tfevents.*")):
        try:
            for event in EventFileLoader(str(path)).Load():
                for value in event.summary.value:
                    last[value.tag] = max(last.get(value.tag, -1), event.step)
        except Exception as error:  # a damaged file: keep what was read, log the rest again
            logger.warning("TensorBoard events %s: read up to an error (%s)", path, error)
    return last


def open_summary_writer(log_dir: str | Path, resume: bool) -> Any:
    """A SummaryWriter for ``log_dir``; when resuming, one that skips the (tag, step) pairs the
    folder already holds."""
    already = logged_steps(log_dir) if resume else {}
    writer = SummaryWriter(str(log_dir))
    if already:
        file_writer = writer.file_writer
        add_summary = file_writer.add_summary

        def add_new_summary(summary, global_step=None, walltime=None):
            if global_step is not None:
                new = [value for value in summary.value if global_step > already.get(value.tag, -1)]
                if not new:
                    return
                if len(new) < len(summary.value):
                    del summary.value[:]
                    summary.value.extend(new)
            add_summary(summary, global_step, walltime)

        file_writer.add_summary = add_new_summary
    return writer
