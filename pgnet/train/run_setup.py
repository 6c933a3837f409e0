"""Where a training run happens, set up before any data or model: the device, the DDP process
group, the run's log, the determinism flags and the seeds (:func:`start_run`), then the run folder
(named, locked, checked; :meth:`RunContext.open_folder`).

The trainer checks the data between the two, so that a bad config or dataset fails before the run
folder exists. :meth:`RunContext.close` undoes them (log files closed, folder released, process
group left).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from pgnet import distributed
from pgnet.config import Config, ConfigError
from pgnet.device import resolve_device
from pgnet.distributed import DistInfo
from pgnet.train import run_log
from pgnet.train.rng import seed_everything
from pgnet.train.run_dir import RunFolderLock, check_not_busy, new_run_dir, remove_temporaries
from pgnet.writing import OverwriteError


@dataclass
class RunContext:
    """A run's ``device``, processes (``dist``), folder, per-process batch (``micro_batch``), the
    folder's lock (rank 0 only) and ``logger`` (``RUN/log.txt`` on rank 0, and stderr)."""

    device: torch.device
    dist: DistInfo
    run_dir: Path
    micro_batch: int
    lock: RunFolderLock | None
    logger: logging.Logger
    resume: bool = False

    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    def open_folder(self) -> None:
        """Lock the run folder (creating it), start ``log.txt`` with what was logged so far, and on
        resume remove the leftovers of an interrupted save (rank 0; the others only log to stderr)."""
        if not self.dist.is_main or self.lock is not None:
            return
        self.lock = RunFolderLock(self.run_dir)  # one writer per run folder: before anything is written there
        run_log.attach_log_file(self.logger, self.run_dir)
        if self.resume:
            for leftover in remove_temporaries(self.run_dir):
                self.logger.info("removed %s, left by an interrupted save", leftover)

    def close(self, network: torch.nn.Module | None = None) -> None:
        """Close the log files, release the run folder and leave the process group (``network``: the
        run's DDP-wrapped module, see :func:`pgnet.distributed.cleanup`); again: nothing."""
        for handler in list(self.logger.handlers):
            handler.close()
            self.logger.removeHandler(handler)
        if self.lock is not None:
            self.lock.release()
        distributed.cleanup(self.dist, network)


def peak_memory_gib(device: torch.device) -> float | None:
    """The most CUDA memory allocated on ``device`` so far, in GiB; None elsewhere."""
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def micro_batch_size(config: Config, world_size: int) -> int:
    """The batch each process computes in one forward pass: ``data.batch_size`` shared out over the
    ``train.grad_accum`` micro-batches of each of the ``world_size`` processes."""
    per_step = config.train.grad_accum * world_size
    if config.data.batch_size % per_step:
        raise ConfigError(
            f"data.batch_size ({config.data.batch_size}) must be divisible by train.grad_accum × processes "
            f"({config.train.grad_accum} × {world_size})"
        )
    return config.data.batch_size // per_step


def set_determinism(deterministic: bool, device: torch.device) -> None:
    """Deterministic kernels when asked; otherwise cuDNN picks the fastest ones on CUDA."""
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def start_run(config: Config, run_dir: str | Path | None, resume: bool, log_name: str) -> RunContext:
    """Set up the run of ``config`` without touching its folder: device, processes, the per-process
    batch, the log (the logger ``log_name``, kept for ``log.txt``), determinism and seeds.
    ``run_dir``: None for a new ``output_dir/name-DATE-TIME`` (only named here); ``resume``: the
    folder holds the run to continue. :meth:`RunContext.open_folder` then takes the folder."""
    train = config.train
    device = resolve_device(train.device, key="train.device")
    dist = distributed.init_distributed(device.type)
    try:
        device = distributed.rank_device(device, dist)  # under torchrun: the GPU of the local rank
        if run_dir is None:
            if resume:
                raise ValueError("resuming needs the run folder")
            run_dir = distributed.broadcast_object(new_run_dir(config) if dist.is_main else None, dist)
        run_dir = Path(run_dir)
        micro_batch = micro_batch_size(config, dist.world_size)
        if not resume and (run_dir / "checkpoints" / "last.pth").exists():  # every process stops
            raise OverwriteError(f"{run_dir} already holds a run: resume it with --resume, or pick another folder")
        if dist.is_main:  # a live writer: stop at once (open_folder's lock decides)
            check_not_busy(run_dir)
        logger = run_log.start_run_log(log_name, dist.is_main)
    except BaseException:
        distributed.cleanup(dist)
        raise
    set_determinism(train.deterministic, device)
    seed_everything(train.seed + dist.rank)
    return RunContext(device, dist, run_dir, micro_batch, None, logger, resume)
