"""The training loop: run a config from start (or a checkpoint) to the end, in the run folder
described in :mod:`pgnet.train.run_dir`.

What the loop runs on is set up elsewhere: device, processes, run folder and log in
:mod:`pgnet.train.run_setup`; data in :mod:`pgnet.train.data_setup`; the model and what trains it
in :mod:`pgnet.train.model_setup`; where the run stands, and its checkpoints, in
:mod:`pgnet.train.run_state`. The loop runs the steps, validates and saves; everything around it
(the EMA, progress, TensorBoard, checkpoint links, the non-finite loss guard, and any callback given)
is a callback, in :mod:`pgnet.train.callbacks`.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pgnet import distributed
from pgnet.checkpoint import save_checkpoint
from pgnet.config import Config, save_config
from pgnet.train import run_log, run_state
from pgnet.train.callbacks import Callback, StepResult, ValidationResult, check_callbacks, is_due
from pgnet.train.data_setup import TrainingData
from pgnet.train.ema import EMA, ModelEma
from pgnet.train.finetune import FineTuning
from pgnet.train.interrupt import TrainingInterrupted, stop_signals_to
from pgnet.train.model_setup import build_training_parts
from pgnet.train.progress import Progress
from pgnet.train.run_dir import CheckpointLinks
from pgnet.train.run_setup import start_run
from pgnet.train.run_state import NonFiniteGuard, NonFiniteLossError
from pgnet.train.tensorboard import TensorBoard
from pgnet.writing import write_text

__all__ = ["NonFiniteLossError", "Trainer", "TrainingInterrupted", "default_callbacks"]


def default_callbacks(config: Config) -> list[Callback]:
    """The callbacks every run has, from ``config.train``: the non-finite loss guard, the EMA (when
    ``ema_decay`` is set), progress, TensorBoard and the best/epoch checkpoint links, in that order."""
    train = config.train
    return [NonFiniteGuard(train.max_nonfinite_steps), *([EMA(train.ema_decay)] if train.ema_decay else []),
            Progress(), TensorBoard(train.image_every), CheckpointLinks(train.keep_recent)]


class Throughput:
    """Images per second since the last :meth:`restart`."""

    def __init__(self) -> None:
        self.restart()

    def restart(self) -> None:
        self.images, self.since = 0, time.perf_counter()

    def add(self, images: int) -> float:
        """Count ``images`` more; returns the rate so far."""
        self.images += images
        elapsed = time.perf_counter() - self.since
        return self.images / elapsed if elapsed > 0 else 0.0


class Trainer:
    """Train PGNet as ``config`` says, writing to ``run_dir``.

    Without ``run_dir`` a new folder ``output_dir/name-YYYYmmdd-HHMMSS`` is made. With
    ``resume=True`` the run continues from ``run_dir/checkpoints/last.pth``. ``callbacks`` run after
    the config's own (:func:`default_callbacks`). :meth:`fit` trains, then releases what the run holds
    (:meth:`close`), however it ends.
    """

    def __init__(self, config: Config, run_dir: str | Path | None = None, resume: bool = False,
                 callbacks: Sequence[Callback] = ()):
        self.config, self.resumed = config, resume
        self.callbacks = [*default_callbacks(config), *callbacks]
        check_callbacks(self.callbacks)
        self._running: list[Callback] = []  # the callbacks set up, torn down by close()
        self._stop: TrainingInterrupted | None = None  # the stop requested, raised at the next step boundary
        # Starting weights, frozen parts and the data are checked before the run folder is made.
        self.finetuning = FineTuning(config, resume=resume)
        self.run = start_run(config, run_dir, resume, f"pgnet.train.{id(self)}")
        self.device, self.dist, self.run_dir, self.logger = (self.run.device, self.run.dist, self.run.run_dir,
                                                             self.run.logger)
        try:
            self._set_up(resume)
        except BaseException as error:
            run_log.record_failure(self.logger, error)
            self.close()
            raise

    def _set_up(self, resume: bool) -> None:
        config, train = self.config, self.config.train
        # Data first: a dataset with no valid sample, a split or a batch that cannot be made, fail
        # before the run folder exists and before any model is built.
        with run_log.data_warnings_logged(self.logger):
            self.data = TrainingData(config.data, seed=train.seed, micro_batch=self.run.micro_batch, dist=self.dist,
                                     logger=self.logger)
        self.steps_per_epoch = self.data.steps_per_epoch(train.grad_accum, train.max_steps_per_epoch)
        self.run.open_folder()
        if self.dist.is_main:
            self.data.record_held_out(self.run_dir)
        parts = build_training_parts(config, self.finetuning, self.device, self.dist, self.steps_per_epoch,
                                     self.logger.info)
        self.parts, self.model, self.network = parts, parts.model, parts.network
        self.optimizer, self.scheduler, self.criterion = parts.optimizer, parts.scheduler, parts.criterion
        self.train_step = parts.train_step
        self.best_rule = run_state.BestRule(train.best_metric, train.best_mode, len(self.data.validation_labels))
        self.state, checkpoint = (run_state.resume_run(self.run, self.parts, config, self.steps_per_epoch) if resume
                                  else (run_state.RunState(), None))
        if self.dist.is_main:  # on resume: the changes accepted by pgnet.train.resume recorded
            save_config(config, self.run_dir / "config.yaml")
        for callback in self.callbacks:
            self._running.append(callback)
            callback.setup(self)
        if checkpoint is not None:
            run_state.finish_resume(self.run, checkpoint, self.ema, self.callbacks)

    @property
    def position(self) -> run_state.Position:
        """Where training stands (``state.position``)."""
        return self.state.position

    @property
    def ema(self) -> ModelEma | None:
        """The moving average the :class:`~pgnet.train.ema.EMA` callback keeps (None without one):
        validation evaluates it and checkpoints hold it as ``ema``."""
        return next((callback.average for callback in self.callbacks if isinstance(callback, EMA)), None)

    @property
    def validation_model(self) -> nn.Module:
        """What validation evaluates: the EMA weights when kept, else the model."""
        return self.ema.module if self.ema is not None else self.model

    def _call(self, hook: str, *args: Any) -> None:
        """Call ``hook`` of every callback, in order."""
        for callback in self.callbacks:
            getattr(callback, hook)(self, *args)

    # ------------------------------------------------------------------ checkpoints

    def save(self, name: str = "last") -> Path | None:
        """Write ``checkpoints/{name}.pth`` atomically (rank 0 only), with the callbacks' states."""
        if not self.dist.is_main:
            return None
        self._call("on_save", name)
        checkpoint = run_state.training_checkpoint(self.config, self.parts, self.data.preprocessing, self.state,
                                                   self.ema, self.callbacks)
        return save_checkpoint(checkpoint, self.run.checkpoint_dir / f"{name}.pth")

    # ------------------------------------------------------------------ training

    def request_stop(self, reason: str = "a callback") -> None:
        """Stop at the next step boundary, as for Ctrl-C: ``last.pth`` is saved and :meth:`fit` raises
        TrainingInterrupted (exit status 130, its message ``reason``); ``resume=True`` continues the run."""
        if self._stop is None:
            self._stop = TrainingInterrupted(reason=reason)

    def _on_stop_signal(self, signum: int, frame: Any) -> None:
        """First Ctrl-C or SIGTERM: finish the current step, save, stop. A second one: stop at once."""
        if self._stop is not None:
            raise KeyboardInterrupt
        self._stop = TrainingInterrupted(signum)
        self.logger.warning("%s: saving last.pth after this step (send it again to stop at once)", self._stop)

    def fit(self) -> dict[str, Any]:
        """Train to ``train.epochs``; returns the summary (also written to ``summary.json``)."""
        train = self.config.train
        self.logger.info(
            "training %s: %d epochs × %d steps, batch %d (%d per process × %d accumulation × %d processes), "
            "device %s, amp %s, %d train samples",
            self.run_dir, train.epochs, self.steps_per_epoch, self.config.data.batch_size, self.run.micro_batch,
            train.grad_accum, self.dist.world_size, self.device, self.train_step.autocast_dtype or "off",
            self.data.num_samples,
        )
        if self.data.has_validation:
            self.logger.info("validation sets: %s; best.pth: the %s %s", ", ".join(self.data.validation_labels),
                             "highest" if train.best_mode == "max" else "lowest", self.best_rule)
        started = time.perf_counter()
        try:
            with stop_signals_to(self._on_stop_signal), run_log.data_warnings_logged(self.logger):
                self._call("on_run_start")
                self._train_all_epochs()
            summary = self._summary(time.perf_counter() - started)
            self._call("on_run_end", summary)
        except BaseException as error:
            if not isinstance(error, TrainingInterrupted):  # a stop is logged where it is handled
                run_log.record_failure(self.logger, error)
            raise
        finally:
            self.close()  # the run folder is free for the next writer (e.g. a resume), however fit ends
        return summary

    def _train_all_epochs(self) -> None:
        train = self.config.train
        while self.position.epoch < train.epochs:
            epoch = self.position.epoch
            self._train_epoch(epoch)
            if self._stop is not None:
                self.save("last")
                self.logger.warning("stopped by %s; resume with --resume %s", self._stop, self.run_dir)
                raise self._stop
            if self.data.has_validation and ((epoch + 1) % train.val_every == 0 or epoch + 1 == train.epochs):
                self._update_best(self.validate(epoch), epoch)
            self.position.epoch, self.position.step_in_epoch = epoch + 1, 0
            self.save("last")
            self._call("on_epoch_end", epoch)
            distributed.barrier(self.dist)

    def _train_epoch(self, epoch: int) -> None:
        train = self.config.train
        self.network.train()
        self._call("on_epoch_start", epoch)
        throughput = Throughput()  # since the last logged step
        # unreadable samples of this epoch before this process's first step (those of a stopped process)
        skipped_before = self.state.skipped_in_epoch if self.position.step_in_epoch else 0
        for micro_batches in self.data.epoch_steps(epoch, self.position.step_in_epoch, train.grad_accum):
            step = self.position.global_step + 1
            # DDP needs every process in the backward pass: a step runs when all have a sample.
            if distributed.every_rank(bool(micro_batches), self.dist):
                losses, nonfinite = self._optimizer_step(step, micro_batches)
            else:  # nothing to learn from: the step is skipped, the schedule moves on
                self.logger.warning("step %d skipped: its batches had no readable sample", step)
                self.scheduler.step()
                losses, nonfinite = None, False
            self.position.step_in_epoch += 1
            self.position.global_step = step
            images = sum(b["image"].shape[0] for b in micro_batches) * self.dist.world_size
            log = losses is not None and not nonfinite and is_due(step, train.log_every)
            self._call("on_step_end", StepResult(step, losses, nonfinite, images, throughput.add(images), log))
            if log:
                throughput.restart()
            if is_due(step, train.checkpoint_every_steps):
                self._count_skipped(skipped_before)
                self.save("last")
            if self._stop is not None or self.position.step_in_epoch >= self.steps_per_epoch:
                break
        self._call("on_train_epoch_end", epoch, self._count_skipped(skipped_before))

    def _count_skipped(self, before: int) -> int:
        """The unreadable samples of the epoch so far, all processes (a collective call), kept in the
        run's state for the next checkpoint: ``before`` those of the steps before this process's first."""
        skipped = distributed.all_reduce_sum(torch.tensor(self.data.skipped, device=self.device), self.dist)
        self.state.skipped_in_epoch = before + int(skipped.item())
        return self.state.skipped_in_epoch

    def _optimizer_step(self, step: int, micro_batches: list[dict[str, Any]]) -> tuple[dict[str, float], bool]:
        """Forward/backward every micro-batch, then one optimiser step (discarded for a non-finite loss).
        Returns the mean loss terms and whether a loss was non-finite."""
        totals: dict[str, torch.Tensor] = {}
        nonfinite = torch.zeros((), device=self.device)
        for index, batch in enumerate(micro_batches):
            image = batch["image"].to(self.device, non_blocking=True)
            mask = batch["mask"].to(self.device, non_blocking=True)
            last = index == len(micro_batches) - 1
            sync = contextlib.nullcontext() if last or not self.dist.enabled else self.network.no_sync()
            self._call("on_micro_batch_start", step, index, batch)
            with sync:
                result = self.train_step.forward_backward(image, mask, len(micro_batches))
            self._call("on_micro_batch_end", step, index, batch, result.output)
            nonfinite += result.nonfinite
            for name, value in {"total": result.loss, **result.terms}.items():
                totals[name] = totals.get(name, 0) + value.float() / len(micro_batches)
        skip = distributed.all_reduce_sum(nonfinite, self.dist).item() > 0
        if skip:
            self.train_step.discard()
        else:
            self.train_step.apply()
        self.scheduler.step()
        return {name: distributed.all_reduce_mean(value, self.dist).item() for name, value in totals.items()}, skip

    # ------------------------------------------------------------------ validation

    @torch.no_grad()
    def validate(self, epoch: int) -> dict[str, dict[str, float]]:
        """Evaluate :attr:`validation_model` on every validation set after epoch ``epoch``: ``{label: metrics}``."""
        model = self.validation_model
        step = self.position.global_step
        results: dict[str, dict[str, float]] = {}
        curves: dict[str, dict[str, Any] | None] = {}
        if self.dist.is_main:
            model.eval()
            for name, evaluation in self.data.validation_sets():
                results[name], curves[name] = evaluation.run(model, self.device, self.train_step.autocast)
                self.logger.info("epoch %d %s: %s", epoch + 1, name,
                                 ", ".join(f"{k} {v:.4f}" for k, v in results[name].items()))
            self.state.history.append({"epoch": epoch + 1, "step": step, "metrics": results})
        self._call("on_validation_end", ValidationResult(epoch, step, results, curves))
        distributed.barrier(self.dist)
        return results

    def _update_best(self, results: dict[str, dict[str, float]], epoch: int) -> None:
        """Record ``results`` as the best so far when they beat it (``best.pth`` then becomes this
        epoch's ``last.pth``)."""
        score = self.best_rule.score(results)
        if score is None or not self.best_rule.beats(score, self.state.best):
            return
        self.state.best, self.state.best_step = score, self.position.global_step
        self.logger.info("new best %s %.4f at epoch %d", self.best_rule, score, epoch + 1)

    # ------------------------------------------------------------------ the end

    def _summary(self, seconds: float) -> dict[str, Any]:
        checks = distributed.self_checks(self.model, self.data.shard(max(self.position.epoch - 1, 0)), self.dist)
        summary = run_state.run_summary(self.run, self.state, self.best_rule, self.data.validation_labels, seconds,
                                        checks)
        if self.dist.is_main:
            write_text(self.run_dir / "summary.json", json.dumps(summary, indent=2))
            self.logger.info("done in %.0f s: %s", seconds, json.dumps(summary))
        return summary

    def close(self) -> None:
        """Tear the callbacks down (closing the TensorBoard files), close the log, release the run
        folder and leave the DDP process group (what ending the process does); calling it again does
        nothing more."""
        try:
            while self._running:
                self._running.pop().teardown(self)
        finally:
            self.run.close(getattr(self, "network", None))
