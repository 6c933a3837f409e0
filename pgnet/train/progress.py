"""The progress of a training epoch: its tqdm bar, the training speed, the logged steps (a log line
and the TensorBoard loss, learning-rate, speed and memory scalars) and the unreadable samples it
skipped."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping

import torch
from tqdm import tqdm

from pgnet.train.run_setup import peak_memory_gib
from pgnet.train.tensorboard import TrainingBoard


class EpochProgress:
    """The progress of epoch ``epoch`` (0-based) of ``epochs``: ``total`` optimiser steps from
    ``initial`` on. Reports to ``logger`` and ``board`` (None: a process other than rank 0, whose
    bar is hidden and which logs no step)."""

    def __init__(self, epoch: int, epochs: int, total: int, initial: int, logger: logging.Logger,
                 board: TrainingBoard | None, device: torch.device):
        self.epoch, self.logger, self.board, self.device = epoch, logger, board, device
        self.bar = tqdm(total=total, initial=initial, desc=f"epoch {epoch + 1}/{epochs}", disable=board is None,
                        dynamic_ncols=True, leave=False)
        self._restart_window()

    def _restart_window(self) -> None:
        self.images, self.since = 0, time.perf_counter()

    def step(self, images: int) -> None:
        """One optimiser step done, over ``images`` images (all processes together)."""
        self.images += images
        self.bar.update(1)

    def show(self, step: int, terms: Mapping[str, float], optimizer: torch.optim.Optimizer, log: bool) -> None:
        """Show the loss, learning rate and speed (images/s since the last logged step) of global step
        ``step``; when ``log``, also log them."""
        elapsed = time.perf_counter() - self.since
        rate = self.images / elapsed if elapsed > 0 else 0.0
        lr = optimizer.param_groups[-1]["lr"]
        self.bar.set_postfix(loss=f"{terms['total']:.4f}", lr=f"{lr:.2e}", img_s=f"{rate:.1f}")
        if not log:
            return
        if self.board is not None:
            self.board.losses(step, terms, {group["name"]: group["lr"] for group in optimizer.param_groups}, rate,
                              peak_memory_gib(self.device))
            self.logger.info("step %d: %s, lr %.3g, %.1f img/s", step,
                             ", ".join(f"{k} {v:.4f}" for k, v in terms.items()), lr, rate)
        self._restart_window()

    def close(self, step: int, skipped: int) -> None:
        """End the epoch at global step ``step``, having left out ``skipped`` unreadable samples (all
        processes together)."""
        self.bar.close()
        if skipped:
            self.logger.warning("epoch %d: %d unreadable samples skipped (named in the warnings above)",
                                self.epoch + 1, skipped)
        if self.board is not None:
            self.board.skipped_samples(step, skipped)
