"""The run folder: its layout and its integrity (one writer at a time, no leftovers of a killed
save, checkpoints that share storage).

Layout::

    RUN/config.yaml            the resolved config (a resume takes its recipe from last.pth, which holds it too)
    RUN/log.txt                text log
    RUN/split.json             the pictures of each validation set (those held out of a training folder)
    RUN/tb/                    TensorBoard events
    RUN/checkpoints/last.pth   written every epoch (and every ``checkpoint_every_steps``)
    RUN/checkpoints/best.pth   best validation ``best_metric``
    RUN/checkpoints/epoch_NNNN.pth   the ``keep_recent`` most recent epochs
    RUN/summary.json           final figures
    RUN/.lock                  held by the live trainer

``last.pth`` holds everything needed to continue exactly where it was written (see
:mod:`pgnet.train.run_state`). ``best`` and ``epoch_NNNN`` are hard links to the ``last.pth`` of
their epoch's end (no extra disk).

- :class:`RunFolderLock`: an advisory ``flock`` on ``RUN/.lock``, held for the life of the process.
  The kernel drops it when the process ends, however it ends (a SIGKILL leaves no stale lock); a
  second trainer on the same folder stops at once, naming the folder and the holder's PID.
- :func:`remove_temporaries`: the ``.NAME.*.tmp`` files of atomic saves a kill interrupted.
- :func:`link_checkpoint`: ``best.pth`` and ``epoch_NNNN.pth`` as hard links to ``last.pth`` when
  they hold the same state (a copy where the file system has no hard links), replaced atomically.
- :func:`rotate_epoch_checkpoints`: ``epoch_NNNN.pth`` for a finished epoch, and only the
  ``keep_recent`` most recent kept; :func:`link_epoch_end_checkpoints` adds ``best.pth``, and the
  :class:`CheckpointLinks` callback calls it at every epoch end (and on resume, to finish what a kill
  left).
- :func:`new_run_dir`: the name of a new run's folder.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import time
from pathlib import Path
from typing import Any

from pgnet.errors import UserError
from pgnet.train.callbacks import Callback, Trainer
from pgnet.writing import atomic_create

LOCK_NAME = ".lock"
TEMPORARY_PATTERN = ".*.*.tmp"  # what the atomic writers write before their rename (".last.pth.x8f3.tmp")


def new_run_dir(config: Any) -> Path:
    """``output_dir/name-YYYYmmdd-HHMMSS`` (with a suffix if that exists already)."""
    base = Path(config.output_dir) / f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    candidate, suffix = base, 1
    while candidate.exists():
        suffix += 1
        candidate = base.with_name(f"{base.name}-{suffix}")
    return candidate


class RunFolderBusyError(UserError):
    """Another live process writes this run folder."""


class RunFolderLock:
    """Exclusive advisory lock on ``run_dir/.lock`` (creates ``run_dir``); :meth:`release` or process
    exit frees it. The file keeps the PID of the process that last held it."""

    def __init__(self, run_dir: str | Path):
        self._descriptor: int | None = None
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / LOCK_NAME
        descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        _lock_or_raise(descriptor, self.run_dir)
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"{os.getpid()}\n".encode(), 0)
        self._descriptor = descriptor

    def release(self) -> None:
        if self._descriptor is not None:
            os.close(self._descriptor)  # closing the descriptor drops the flock
            self._descriptor = None

    def __del__(self) -> None:
        self.release()


def _lock_or_raise(descriptor: int, run_dir: Path) -> None:
    """Take the lock on ``descriptor``, or close it and raise RunFolderBusyError naming the holder."""
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(descriptor, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(descriptor)
        raise RunFolderBusyError(
            f"{run_dir} is in use by another training (process {holder}); wait for it to end or stop it first"
        ) from None


def check_not_busy(run_dir: str | Path) -> None:
    """Raise RunFolderBusyError when a live process holds ``run_dir``'s lock; writes nothing."""
    path = Path(run_dir) / LOCK_NAME
    if path.is_file():
        descriptor = os.open(path, os.O_RDONLY)
        _lock_or_raise(descriptor, Path(run_dir))
        os.close(descriptor)


def remove_temporaries(run_dir: str | Path) -> list[Path]:
    """Delete the temporary files of interrupted saves in ``run_dir`` and its ``checkpoints``;
    returns what was deleted.

    Call only while holding the run's :class:`RunFolderLock` (no save can be in progress then)."""
    run_dir = Path(run_dir)
    removed = sorted([*run_dir.glob(TEMPORARY_PATTERN), *(run_dir / "checkpoints").glob(TEMPORARY_PATTERN)])
    for path in removed:
        path.unlink(missing_ok=True)
    return removed


def link_checkpoint(source: str | Path, destination: str | Path) -> Path:
    """Make ``destination`` the same file as ``source`` (a hard link; a copy where links are not
    possible), atomically: a kill leaves the old ``destination`` or the new one."""
    return atomic_create(destination, lambda temporary: _link_or_copy(Path(source), temporary))


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:  # no hard links here (some network and FAT file systems)
        shutil.copyfile(source, target)


def epoch_checkpoint_name(epoch: int) -> str:
    """``epoch_NNNN.pth`` for the ``epoch``-th finished epoch (1-based)."""
    return f"epoch_{epoch:04d}.pth"


def rotate_epoch_checkpoints(checkpoint_dir: str | Path, finished_epochs: int, keep_recent: int) -> None:
    """Link ``last.pth`` (written at the end of epoch ``finished_epochs``) as its epoch checkpoint
    unless present, and delete all but the ``keep_recent`` most recent epoch checkpoints.

    Also completes a rotation a kill interrupted, when called again on resume."""
    checkpoint_dir = Path(checkpoint_dir)
    if keep_recent <= 0 or finished_epochs <= 0:
        return
    current = checkpoint_dir / epoch_checkpoint_name(finished_epochs)
    if not current.exists():
        link_checkpoint(checkpoint_dir / "last.pth", current)
    recent = sorted(checkpoint_dir.glob("epoch_*.pth"))
    for old in recent[:-keep_recent]:
        old.unlink()


def link_epoch_end_checkpoints(checkpoint_dir: str | Path, finished_epochs: int, keep_recent: int,
                               is_best: bool) -> None:
    """After ``last.pth`` of epoch ``finished_epochs``: ``best.pth`` (when ``is_best``) and
    ``epoch_NNNN.pth`` as links to it; called again on resume, it completes what a kill left."""
    checkpoint_dir = Path(checkpoint_dir)
    last, best = checkpoint_dir / "last.pth", checkpoint_dir / "best.pth"
    if is_best and not (best.exists() and best.samefile(last)):
        link_checkpoint(last, best)
    rotate_epoch_checkpoints(checkpoint_dir, finished_epochs, keep_recent)


class CheckpointLinks(Callback):
    """``best.pth`` and ``epoch_NNNN.pth`` (the ``keep_recent`` most recent) as links to the
    ``last.pth`` of each epoch's end (rank 0). On resume at an epoch's end, it completes the links a
    kill between ``last.pth`` and them left undone."""

    def __init__(self, keep_recent: int):
        self.keep_recent = keep_recent

    def setup(self, trainer: Trainer) -> None:
        if trainer.resumed and trainer.position.step_in_epoch == 0:
            self.on_epoch_end(trainer, trainer.position.epoch - 1)

    def on_epoch_end(self, trainer: Trainer, epoch: int) -> None:
        if trainer.dist.is_main:
            is_best = trainer.state.best_step == trainer.position.global_step  # validated best at this epoch end
            link_epoch_end_checkpoints(trainer.run.checkpoint_dir, epoch + 1, self.keep_recent, is_best)
