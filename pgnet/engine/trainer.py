"""The trainer: one class that runs a config from start (or a checkpoint) to the end.

Run folder layout::

    RUN/config.yaml            the resolved config
    RUN/log.txt                text log
    RUN/tb/                    TensorBoard events
    RUN/checkpoints/last.pth   written every epoch (and every ``checkpoint_every_steps``)
    RUN/checkpoints/best.pth   best validation ``best_metric``
    RUN/checkpoints/epoch_NNNN.pth   the ``keep_recent`` most recent epochs
    RUN/summary.json           final figures
    RUN/.lock                  held by the live trainer (see pgnet.engine.run_dir)

``last.pth`` holds everything needed to continue exactly where it was written: model, optimiser,
scheduler, scaler, EMA, epoch, step, the position inside the epoch and every RNG state. ``best`` and
``epoch_NNNN`` are hard links to the ``last.pth`` of their epoch's end (no extra disk).
"""

from __future__ import annotations

import contextlib
import json
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from pgnet.checkpoint import load_checkpoint, model_checkpoint, require_fields, save_checkpoint
from pgnet.config import Config, ConfigError, save_config
from pgnet.engine import distributed, run_log
from pgnet.engine import run_dir as run_folder
from pgnet.engine.ema import ModelEma
from pgnet.engine.finetune import FineTuning
from pgnet.engine.optim import build_optimizer, build_scheduler
from pgnet.engine.rng import restore_rng_state, rng_state, seed_everything
from pgnet.engine.step import TrainStep
from pgnet.losses import PGNetLoss
from pgnet.models.pgnet import PGNet, create_model
from pgnet.outputs import write_text


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss more often than allowed."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM: the run saved ``last.pth`` and stopped; ``exit_status`` is 128 + the signal."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signal.Signals(signum).name)
        self.exit_status = 128 + int(signum)


@dataclass
class Position:
    """Where training stands: ``epoch`` in progress and optimiser steps already done in it."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0


def resolve_device(name: str) -> torch.device:
    """``train.device`` on this machine; a device it lacks is a ConfigError naming the key."""
    from pgnet.runtime import resolve_device as select_device

    try:
        device = select_device(name)
    except RuntimeError as error:
        raise ConfigError(f"train.device: {error}") from None
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


class Trainer:
    """Train PGNet as ``config`` says, writing to ``run_dir``.

    Without ``run_dir`` a new folder ``output_dir/name-YYYYmmdd-HHMMSS`` is made. With
    ``resume=True`` the run continues from ``run_dir/checkpoints/last.pth``.
    """

    def __init__(self, config: Config, run_dir: str | Path | None = None, resume: bool = False):
        self.config = config
        train = config.train
        # Starting weights and frozen parts are checked before the run folder is made.
        self.finetuning = FineTuning(config, resume=resume)
        self.device = resolve_device(train.device)
        self.dist = distributed.init_distributed(self.device.type)
        if self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        if run_dir is None:
            if resume:
                raise ValueError("resuming needs the run folder")
            new_dir = run_folder.new_run_dir(config) if self.dist.is_main else None
            run_dir = distributed.broadcast_object(new_dir, self.dist)
        self.run_dir = Path(run_dir)
        self.checkpoint_dir = self.run_dir / "checkpoints"
        per_step = train.grad_accum * self.dist.world_size
        if config.data.batch_size % per_step:
            raise ConfigError(
                f"data.batch_size ({config.data.batch_size}) must be divisible by train.grad_accum × processes "
                f"({train.grad_accum} × {self.dist.world_size})"
            )
        self.micro_batch = config.data.batch_size // per_step
        # One writer per run folder: the lock comes before anything is written there.
        self.lock = run_folder.RunFolderLock(self.run_dir) if self.dist.is_main else None
        if not resume and (self.checkpoint_dir / "last.pth").exists():
            raise FileExistsError(
                f"{self.run_dir} already holds a run: resume it with --resume, or pick another folder"
            )
        self.logger = run_log.open_run_log(self.run_dir, f"pgnet.train.{id(self)}", self.dist.is_main)
        if resume and self.dist.is_main:
            for leftover in run_folder.remove_temporaries(self.run_dir):
                self.logger.info("removed %s, left by an interrupted save", leftover)
        if train.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        elif self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        seed_everything(train.seed + self.dist.rank)

        # Data first: a dataset with no valid sample fails before any model is built.
        from pgnet.engine import data_setup

        with run_log.data_warnings_logged(self.logger):
            self.data = data_setup.TrainingData(config.data, seed=train.seed, micro_batch=self.micro_batch,
                                                dist=self.dist, logger=self.logger)
        self.steps_per_epoch = self.data.batches_per_epoch // train.grad_accum
        if train.max_steps_per_epoch:
            self.steps_per_epoch = min(self.steps_per_epoch, train.max_steps_per_epoch)
        if self.steps_per_epoch < 1:
            raise ValueError(
                f"an epoch has no optimiser step: {self.data.batches_per_epoch} batches of {self.micro_batch} "
                f"per process with train.grad_accum={train.grad_accum}"
            )

        self.model: PGNet = create_model(self.finetuning.model_config).to(self.device)
        self.finetuning.apply(self.model, self.logger.info)
        self.amp_dtype = self._amp_dtype()
        channels_last = train.channels_last if train.channels_last is not None else self.device.type == "cuda"
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = self.model.to(memory_format=self.memory_format)
        if self.dist.enabled and train.sync_bn and self.device.type == "cuda":  # SyncBatchNorm is CUDA-only
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.ema = ModelEma(self.model, train.ema_decay) if train.ema_decay else None
        self.optimizer = build_optimizer(self.model, config.optim)
        self.scheduler = build_scheduler(self.optimizer, config.schedule, self.steps_per_epoch, train.epochs)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.criterion = PGNetLoss(config.loss)
        self.network: nn.Module = self.model
        if self.dist.enabled:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.network = nn.parallel.DistributedDataParallel(self.model, device_ids=device_ids)
        if train.compile:
            # One static graph per multi-scale size (5 in the official recipe): symbolic shapes through
            # the CMGM's pooling-stride search compile far more slowly than these few recompilations.
            self.network = torch.compile(self.network, dynamic=False)
        self.train_step = TrainStep(
            self.model, self.criterion, self.optimizer, network=self.network, amp_dtype=self.amp_dtype,
            scaler=self.scaler, memory_format=self.memory_format, clip_grad=train.clip_grad,
        )

        self.position = Position()
        self.best: float | None = None
        self.best_step: int | None = None  # global step of best.pth
        self.nonfinite_steps = 0
        self.history: list[dict[str, Any]] = []
        self._stop_requested = 0  # the signal that asked to stop
        if resume:
            self._resume()
        if self.dist.is_main:  # on resume: the changes accepted by pgnet.engine.resume recorded
            save_config(config, self.run_dir / "config.yaml")
        self.writer = self._make_writer(resume)

    # ------------------------------------------------------------------ set-up helpers

    def _make_writer(self, resume: bool):
        """The run's TensorBoard events (rank 0 only; see ``pgnet.engine.tensorboard``)."""
        if not self.dist.is_main:
            return None
        from pgnet.engine.tensorboard import TrainingBoard

        return TrainingBoard(self.run_dir / "tb", resume=resume, graft_points=self.model.decoder.graft_points,
                             mean=self.data.mean, std=self.data.std, fresh=self.position.global_step == 0)

    def _amp_dtype(self) -> torch.dtype | None:
        amp = self.config.train.amp
        if amp == "off" or (amp == "auto" and self.device.type != "cuda"):
            return None
        if amp == "fp16":
            return torch.float16
        return torch.bfloat16

    # ------------------------------------------------------------------ checkpoints

    def _state(self) -> dict[str, Any]:
        return model_checkpoint(
            self.model,
            preprocessing=self.data.preprocessing,
            optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict(),
            scaler=self.scaler.state_dict(),
            ema=self.ema.module.state_dict() if self.ema else None,
            position=vars(self.position).copy(),
            best=self.best,
            best_step=self.best_step,
            nonfinite_steps=self.nonfinite_steps,
            history=self.history,
            rng=rng_state(),
        )

    def save(self, name: str = "last") -> Path | None:
        """Write ``checkpoints/{name}.pth`` atomically (rank 0 only), with the TensorBoard events so far."""
        if not self.dist.is_main:
            return None
        if getattr(self, "writer", None) is not None:
            self.writer.flush()  # a resumed run can rewrite only the events after its checkpoint
        return save_checkpoint(self._state(), self.checkpoint_dir / f"{name}.pth")

    def _resume(self) -> None:
        path = self.checkpoint_dir / "last.pth"
        state = load_checkpoint(path, map_location=self.device)
        require_fields(state, path, ("model", "optimizer", "scheduler", "scaler", "position", "best",
                                     "nonfinite_steps", "history", "rng"))
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None:
            if state.get("ema") is None:
                raise ValueError(f"{path}: train.ema_decay is set but the checkpoint has no EMA weights")
            self.ema.module.load_state_dict(state["ema"])
        self.position = Position(**state["position"])
        self.best = state["best"]
        self.best_step = state.get("best_step")
        self.nonfinite_steps = state["nonfinite_steps"]
        self.history = list(state["history"])
        restore_rng_state(state["rng"])
        if self.dist.enabled:  # each rank continues its own stream from the saved rank-0 state
            torch.manual_seed(int(torch.randint(0, 2**31, (1,)).item()) + self.dist.rank)
        self.logger.info(
            "resumed from %s at epoch %d, step %d of %d in the epoch (global step %d)",
            path, self.position.epoch + 1, self.position.step_in_epoch, self.steps_per_epoch,
            self.position.global_step,
        )
        for change in self.config.resume_changes:
            if change["step"] == self.position.global_step:
                self.logger.info("resume override %s: %r -> %r", change["key"], change["old"], change["new"])
        if self.dist.is_main and self.position.step_in_epoch == 0:  # finish what a kill at epoch end left
            self._link_epoch_end_checkpoints(self.best_step == self.position.global_step)

    def _link_epoch_end_checkpoints(self, is_best: bool) -> None:
        """``best.pth`` (when ``is_best``) and ``epoch_NNNN.pth`` as links to the epoch's ``last.pth``."""
        last, best = self.checkpoint_dir / "last.pth", self.checkpoint_dir / "best.pth"
        if is_best and not (best.exists() and best.samefile(last)):
            run_folder.link_checkpoint(last, best)
        run_folder.rotate_epoch_checkpoints(self.checkpoint_dir, self.position.epoch, self.config.train.keep_recent)

    # ------------------------------------------------------------------ training

    @contextlib.contextmanager
    def _graceful_interrupt(self) -> Iterator[None]:
        """First Ctrl-C or SIGTERM (schedulers, ``timeout``): finish the current step, save, stop.
        A second one: stop at once."""
        if not self.dist.is_main and not self.dist.enabled:
            yield
            return

        def request_stop(signum, frame):
            if self._stop_requested:
                raise KeyboardInterrupt
            self._stop_requested = signum
            self.logger.warning("%s: saving last.pth after this step (send it again to stop at once)",
                                signal.Signals(signum).name)

        try:
            previous = {signum: signal.signal(signum, request_stop) for signum in (signal.SIGINT, signal.SIGTERM)}
        except ValueError:  # not the main thread
            yield
            return
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def fit(self) -> dict[str, Any]:
        """Train to ``train.epochs``; returns the summary (also written to ``summary.json``)."""
        train = self.config.train
        self.logger.info(
            "training %s: %d epochs × %d steps, batch %d (%d per process × %d accumulation × %d processes), "
            "device %s, amp %s, %d train samples",
            self.run_dir, train.epochs, self.steps_per_epoch, self.config.data.batch_size, self.micro_batch,
            train.grad_accum, self.dist.world_size, self.device, self.amp_dtype or "off", self.data.num_samples,
        )
        if self.data.has_validation:
            self.logger.info("validation sets: %s; best.pth: the %s %s", ", ".join(self.data.validation_labels),
                             "highest" if train.best_mode == "max" else "lowest", self._best_rule())
        started = time.perf_counter()
        try:
            self._train_all_epochs()
            summary = self._summary(time.perf_counter() - started)
        finally:
            self.close()  # the run folder is free for the next writer (e.g. a resume), however fit ends
        return summary

    def _train_all_epochs(self) -> None:
        train = self.config.train
        with self._graceful_interrupt(), run_log.data_warnings_logged(self.logger):
            while self.position.epoch < train.epochs:
                epoch = self.position.epoch
                self._train_epoch(epoch)
                if self._stop_requested:
                    signum = signal.SIGINT if self._stop_requested is True else self._stop_requested
                    self.save("last")
                    self.logger.warning("stopped by %s; resume with --resume %s", signal.Signals(signum).name,
                                        self.run_dir)
                    raise TrainingInterrupted(signum)
                is_best = False
                if self.data.has_validation and ((epoch + 1) % train.val_every == 0 or epoch + 1 == train.epochs):
                    is_best = self._update_best(self.validate(epoch), epoch)
                self.position = Position(epoch + 1, 0, self.position.global_step)
                self.save("last")
                if self.dist.is_main:
                    self._link_epoch_end_checkpoints(is_best)
                distributed.barrier(self.dist)

    def _train_epoch(self, epoch: int) -> None:
        train = self.config.train
        self.network.train()
        start_step = self.position.step_in_epoch
        batches = self.data.epoch_batches(epoch, start_batch=start_step * train.grad_accum)
        progress = tqdm(
            total=self.steps_per_epoch, initial=start_step, desc=f"epoch {epoch + 1}/{train.epochs}",
            disable=not self.dist.is_main, dynamic_ncols=True, leave=False,
        )
        skipped = 0
        window_images, window_start = 0, time.perf_counter()
        micro_batches: list[dict[str, Any]] = []
        for batch in batches:
            skipped += int(batch.get("skipped", 0))
            # A batch whose files were all unreadable still takes its place in the step, so that
            # every step consumes train.grad_accum batches and a resume starts at the right one.
            micro_batches.append(batch)
            if len(micro_batches) < train.grad_accum:
                continue
            micro_batches = [b for b in micro_batches if b["image"].shape[0] > 0]
            if self._all_ranks_have_data(micro_batches):
                terms = self._optimizer_step(micro_batches, self._is_due(train.image_every))
            else:  # nothing to learn from: the step is skipped, the schedule moves on
                self.logger.warning("step %d skipped: its batches had no readable sample",
                                    self.position.global_step + 1)
                self.scheduler.step()
                terms = None
            window_images += sum(b["image"].shape[0] for b in micro_batches) * self.dist.world_size
            micro_batches = []
            self.position.step_in_epoch += 1
            self.position.global_step += 1
            progress.update(1)
            if terms is not None:
                elapsed = time.perf_counter() - window_start
                rate = window_images / elapsed if elapsed > 0 else 0.0
                lr = self.optimizer.param_groups[-1]["lr"]
                progress.set_postfix(loss=f"{terms['total']:.4f}", lr=f"{lr:.2e}", img_s=f"{rate:.1f}")
                if self._is_due(train.log_every):
                    self._log_step(terms, rate)
                    window_images, window_start = 0, time.perf_counter()
            if train.checkpoint_every_steps and self.position.global_step % train.checkpoint_every_steps == 0:
                self.save("last")
            if self._stop_requested or self.position.step_in_epoch >= self.steps_per_epoch:
                break
        progress.close()
        skipped_total = int(distributed.all_reduce_sum(torch.tensor(skipped, device=self.device), self.dist).item())
        if skipped_total:
            self.logger.warning("epoch %d: %d unreadable samples skipped (named in the warnings above)",
                                epoch + 1, skipped_total)
        if self.writer is not None:
            self.writer.skipped_samples(self.position.global_step, skipped_total)

    def _all_ranks_have_data(self, micro_batches: list[dict[str, Any]]) -> bool:
        """Whether every process has a sample for this step (DDP needs all of them in the backward)."""
        if not self.dist.enabled:
            return bool(micro_batches)
        missing = torch.tensor(0.0 if micro_batches else 1.0, device=self.device)
        return distributed.all_reduce_sum(missing, self.dist).item() == 0

    def _is_due(self, every: int) -> bool:
        return bool(every) and (self.position.global_step + 1) % every == 0

    def _optimizer_step(self, micro_batches: list[dict[str, Any]], log_images: bool) -> dict[str, float] | None:
        """Forward/backward every micro-batch, then one optimiser step. Returns the mean loss terms, or
        None when the step was skipped for a non-finite loss."""
        train = self.config.train
        totals: dict[str, torch.Tensor] = {}
        nonfinite = torch.zeros((), device=self.device)
        for index, batch in enumerate(micro_batches):
            image = batch["image"].to(self.device, non_blocking=True)
            mask = batch["mask"].to(self.device, non_blocking=True)
            last = index == len(micro_batches) - 1
            sync = contextlib.nullcontext() if last or not self.dist.enabled else self.network.no_sync()
            capture = contextlib.nullcontext([])
            if log_images and index == 0 and self.writer is not None:
                from pgnet.visualize import capture_cmgm_attention

                capture = capture_cmgm_attention(self.model)
            with sync, capture as attention:
                result = self.train_step.forward_backward(image, mask, len(micro_batches))
            nonfinite += result.nonfinite
            for name, value in {"total": result.loss, **result.terms}.items():
                totals[name] = totals.get(name, 0) + value.float() / len(micro_batches)
            if log_images and index == 0 and self.writer is not None:  # at the step its losses are logged at
                self.writer.training_pictures(self.position.global_step + 1, batch, result.output, attention)
        nonfinite = distributed.all_reduce_sum(nonfinite, self.dist)
        if nonfinite.item() > 0:
            self.train_step.discard()
            self.nonfinite_steps += 1
            described = ", ".join(f"{k}={v.item():.4g}" for k, v in totals.items())
            message = f"non-finite loss at global step {self.position.global_step + 1} ({described})"
            if self.nonfinite_steps > train.max_nonfinite_steps:
                raise NonFiniteLossError(message + "; stopping, last.pth is the last good checkpoint")
            self.logger.warning("%s: step skipped (%d of %d allowed)", message, self.nonfinite_steps,
                                train.max_nonfinite_steps)
            self.scheduler.step()
            return None
        self.train_step.apply()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.model)
        return {name: distributed.all_reduce_mean(value, self.dist).item() for name, value in totals.items()}

    # ------------------------------------------------------------------ logging

    def _log_step(self, terms: dict[str, float], images_per_second: float) -> None:
        if self.writer is None:
            return
        step = self.position.global_step
        peak = torch.cuda.max_memory_allocated(self.device) / 2**30 if self.device.type == "cuda" else None
        self.writer.losses(step, terms, {group["name"]: group["lr"] for group in self.optimizer.param_groups},
                           images_per_second, peak)
        self.logger.info(
            "step %d: %s, lr %.3g, %.1f img/s", step, ", ".join(f"{k} {v:.4f}" for k, v in terms.items()),
            self.optimizer.param_groups[-1]["lr"], images_per_second,
        )

    # ------------------------------------------------------------------ validation

    @torch.no_grad()
    def validate(self, epoch: int) -> dict[str, dict[str, float]]:
        """Evaluate the model (the EMA when kept) on every validation set: ``{label: metrics}``."""
        model = self.ema.module if self.ema is not None else self.model
        results: dict[str, dict[str, float]] = {}
        if self.dist.is_main:
            model.eval()
            for name, evaluation in self.data.validation_sets():
                metrics, curves = evaluation.run(model, self.device, self.train_step.autocast)
                results[name] = metrics
                self.writer.validation(self.position.global_step, name, metrics, curves)
                self.logger.info("epoch %d %s: %s", epoch + 1, name,
                                 ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
            if self.config.train.image_every:
                self.writer.validation_pictures(self.position.global_step, model,
                                                self.data.picture_samples(self.writer.picture_count), self.device,
                                                self.train_step.autocast)
            self.history.append({"epoch": epoch + 1, "step": self.position.global_step, "metrics": results})
        distributed.barrier(self.dist)
        return results

    def _best_rule(self) -> str:
        """What ``best`` is the best of, e.g. "mean Sm over 2 sets"."""
        count = len(self.data.validation_labels)
        return f"mean {self.config.train.best_metric} over {count} sets" if count > 1 else self.config.train.best_metric

    def _update_best(self, results: dict[str, dict[str, float]], epoch: int) -> bool:
        """Whether ``results`` beat the best so far (then ``best.pth`` becomes this epoch's ``last.pth``)."""
        train = self.config.train
        values = [m[train.best_metric] for m in results.values() if train.best_metric in m]
        if not values:
            return False
        score = float(np.mean(values))
        better = self.best is None or (score > self.best if train.best_mode == "max" else score < self.best)
        if better:
            self.best, self.best_step = score, self.position.global_step
            self.logger.info("new best %s %.4f at epoch %d", self._best_rule(), score, epoch + 1)
        return better

    def _summary(self, seconds: float) -> dict[str, Any]:
        summary = {
            "run_dir": str(self.run_dir),
            "epochs": self.position.epoch,
            "global_step": self.position.global_step,
            "seconds": round(seconds, 1),
            "best_metric": self.config.train.best_metric,
            "best_rule": f"{self.config.train.best_mode} of {self._best_rule()}",
            "validation_sets": self.data.validation_labels,
            "best": self.best,
            "last_validation": self.history[-1] if self.history else None,
            "nonfinite_steps": self.nonfinite_steps,
            "world_size": self.dist.world_size,
            "weights_identical_across_ranks": distributed.weights_identical(self.model, self.dist),
            "shards_disjoint_across_ranks": distributed.shards_disjoint(
                self.data.shard(max(self.position.epoch - 1, 0)), self.dist),
        }
        if self.device.type == "cuda":
            summary["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated(self.device) / 2**30, 2)
        if self.dist.is_main:
            write_text(self.run_dir / "summary.json", json.dumps(summary, indent=2))
            self.logger.info("done in %.0f s: %s", seconds, json.dumps(summary))
            if self.writer is not None:
                self.writer.close()
        return summary

    def close(self) -> None:
        """Close the TensorBoard and log files and release the run folder (what ending the process does)."""
        if getattr(self, "writer", None) is not None:
            self.writer.close()
        for handler in list(self.logger.handlers):
            handler.close()
            self.logger.removeHandler(handler)
        if self.lock is not None:
            self.lock.release()
