"""TensorBoard events of a resumed run: equal, point for point, to those of a run never stopped.

A run resumed from a checkpoint at global step S recomputes every step after S, with any change
the resume accepted (a longer schedule changes the learning rates from S on). So the points the
stopped process logged after S are replaced: the resumed writer purges them (TensorBoard's
``purge_step`` S + 1 hides every earlier event from step S + 1 on). The points up to S stay, and
the resumed writer skips a (tag, step) already there: a resume at an epoch's end validates again at
S what the stopped process may have logged at S. Events the stopped process had not flushed yet are
not on disk and are written again by the resumed run.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from torch.utils.tensorboard import SummaryWriter

logger = logging.getLogger(__name__)


def logged_steps(log_dir: str | Path) -> dict[str, set[int]]:
    """The steps TensorBoard shows for each tag in the event files of ``log_dir``, earlier resumes'
    purges applied (truncated files: what is readable)."""
    steps: dict[str, set[int]] = {}
    for path in sorted(Path(log_dir).glob("events.out.tfevents.*")):
        try:
            for event in EventFileLoader(str(path)).Load():
                if event.HasField("session_log") and event.session_log.status == event.session_log.START:
                    for logged in steps.values():  # a purge: what came before from this step on is hidden
                        logged.difference_update({step for step in logged if step >= event.step})
                for value in event.summary.value:
                    steps.setdefault(value.tag, set()).add(event.step)
        except Exception as error:  # a damaged file: keep what was read, log the rest again
            logger.warning("TensorBoard events %s: read up to an error (%s)", path, error)
    return steps


def open_summary_writer(log_dir: str | Path, resume_step: int | None = None) -> Any:
    """A SummaryWriter for ``log_dir``; for a run resumed at global step ``resume_step``, one that
    hides the points logged after that step and skips the (tag, step) pairs up to it already there."""
    if resume_step is None:
        return SummaryWriter(str(log_dir))
    already = {tag: {step for step in steps if step <= resume_step} for tag, steps in logged_steps(log_dir).items()}
    writer = SummaryWriter(str(log_dir), purge_step=resume_step + 1)
    if any(already.values()):
        file_writer = writer.file_writer
        add_summary = file_writer.add_summary

        def add_new_summary(summary, global_step=None, walltime=None):
            if global_step is not None:
                new = [value for value in summary.value if global_step not in already.get(value.tag, ())]
                if not new:
                    return
                if len(new) < len(summary.value):
                    del summary.value[:]
                    summary.value.extend(new)
            add_summary(summary, global_step, walltime)

        file_writer.add_summary = add_new_summary
    return writer
