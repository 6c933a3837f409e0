"""The trainer: one class that runs a config from start (or a checkpoint) to the end.

Run folder layout::

    RUN/config.yaml            the resolved config
    RUN/log.txt                text log
    RUN/tb/                    TensorBoard events
    RUN/checkpoints/last.pth   written every epoch (and every ``checkpoint_every_steps``)
    RUN/checkpoints/best.pth   best validation ``best_metric``
    RUN/checkpoints/epoch_NNNN.pth   the ``keep_recent`` most recent epochs
    RUN/summary.json           final figures

``last.pth`` holds everything needed to continue exactly where it was written: model, optimiser,
scheduler, scaler, EMA, epoch, step, the position inside the epoch and every RNG state.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from pgnet.checkpoint import load_checkpoint, model_checkpoint, save_checkpoint
from pgnet.config import Config, save_config
from pgnet.engine import distributed
from pgnet.engine.ema import ModelEma
from pgnet.engine.finetune import FineTuning
from pgnet.engine.optim import build_optimizer, build_scheduler
from pgnet.engine.step import TrainStep
from pgnet.losses import PGNetLoss
from pgnet.models.pgnet import PGNet, create_model


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss more often than allowed."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C: the run saved ``last.pth`` and stopped."""


@dataclass
class Position:
    """Where training stands: ``epoch`` in progress and optimiser steps already done in it."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")
    return torch.device(name)


def rng_state() -> dict[str, Any]:
    """Every RNG state, as tensors and plain values (loads with ``weights_only=True``)."""
    name, keys, position, has_gauss, cached = np.random.get_state()  # noqa: NPY002 (the legacy global RNG is what libraries use)
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(position),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": list(random.getstate()[1]),
        "python_version": random.getstate()[0],
        "python_gauss": random.getstate()[2],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    np.random.set_state(  # noqa: NPY002
        (numpy_state["name"], numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"],
         numpy_state["has_gauss"], numpy_state["cached"])
    )
    random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def new_run_dir(config: Config) -> Path:
    """``output_dir/name-YYYYmmdd-HHMMSS`` (with a suffix if that exists already)."""
    base = Path(config.output_dir) / f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    candidate, suffix = base, 1
    while candidate.exists():
        suffix += 1
        candidate = base.with_name(f"{base.name}-{suffix}")
    return candidate


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002
    torch.manual_seed(seed)


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
            run_dir = distributed.broadcast_object(new_run_dir(config) if self.dist.is_main else None, self.dist)
        self.run_dir = Path(run_dir)
        self.checkpoint_dir = self.run_dir / "checkpoints"
        if not resume and (self.checkpoint_dir / "last.pth").exists():
            raise FileExistsError(
                f"{self.run_dir} already holds a run: resume it with --resume, or pick another folder"
            )
        self.logger = self._make_logger()
        if train.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        elif self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        seed_everything(train.seed + self.dist.rank)

        per_step = train.grad_accum * self.dist.world_size
        if config.data.batch_size % per_step:
            raise ValueError(
                f"data.batch_size ({config.data.batch_size}) must be divisible by train.grad_accum × processes "
                f"({train.grad_accum} × {self.dist.world_size})"
            )
        self.micro_batch = config.data.batch_size // per_step

        # Data first: a dataset with no valid sample fails before any model is built.
        from pgnet.engine import data_setup

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
        self.nonfinite_steps = 0
        self.history: list[dict[str, Any]] = []
        self._stop_requested = False
        if resume:
            self._resume()
        elif self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(config, self.run_dir / "config.yaml")
        self.writer = self._make_writer()

    # ------------------------------------------------------------------ set-up helpers

    def _make_logger(self) -> logging.Logger:
        logger = logging.getLogger(f"pgnet.train.{id(self)}")
        logger.setLevel(logging.INFO if self.dist.is_main else logging.WARNING)
        logger.propagate = False
        formatter = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            file_handler = logging.FileHandler(self.run_dir / "log.txt")
            file_handler.setFormatter(formatter)
            logger.addHandler(file_handler)
        console = logging.StreamHandler(sys.stderr)
        console.setFormatter(formatter)
        logger.addHandler(console)
        return logger

    def _make_writer(self):
        """The run's TensorBoard events (rank 0 only; see ``pgnet.engine.tensorboard``)."""
        if not self.dist.is_main:
            return None
        from pgnet.engine.tensorboard import TrainingBoard

        return TrainingBoard(self.run_dir / "tb", purge_step=self.position.global_step or None,
                             graft_points=self.model.decoder.graft_points, mean=self.data.mean, std=self.data.std,
                             fresh=self.position.global_step == 0)

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
            nonfinite_steps=self.nonfinite_steps,
            history=self.history,
            rng=rng_state(),
        )

    def save(self, name: str = "last") -> Path | None:
        """Write ``checkpoints/{name}.pth`` atomically (rank 0 only)."""
        if not self.dist.is_main:
            return None
        return save_checkpoint(self._state(), self.checkpoint_dir / f"{name}.pth")

    def _resume(self) -> None:
        path = self.checkpoint_dir / "last.pth"
        state = load_checkpoint(path, map_location=self.device)
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

    def _rotate_epoch_checkpoints(self, epoch: int) -> None:
        if not self.dist.is_main or self.config.train.keep_recent <= 0:
            return
        self.save(f"epoch_{epoch + 1:04d}")
        recent = sorted(self.checkpoint_dir.glob("epoch_*.pth"))
        for old in recent[: -self.config.train.keep_recent]:
            old.unlink()

    # ------------------------------------------------------------------ training

    @contextlib.contextmanager
    def _graceful_interrupt(self) -> Iterator[None]:
        """First Ctrl-C: finish the current step, save, stop. Second: stop at once."""
        if not self.dist.is_main and not self.dist.enabled:
            yield
            return

        def request_stop(signum, frame):
            if self._stop_requested:
                raise KeyboardInterrupt
            self._stop_requested = True
            self.logger.warning("interrupt: saving last.pth after this step (Ctrl-C again to stop at once)")

        try:
            previous = signal.signal(signal.SIGINT, request_stop)
        except ValueError:  # not the main thread
            yield
            return
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    def fit(self) -> dict[str, Any]:
        """Train to ``train.epochs``; returns the summary (also written to ``summary.json``)."""
        train = self.config.train
        self.logger.info(
            "training %s: %d epochs × %d steps, batch %d (%d per process × %d accumulation × %d processes), "
            "device %s, amp %s, %d train samples",
            self.run_dir, train.epochs, self.steps_per_epoch, self.config.data.batch_size, self.micro_batch,
            train.grad_accum, self.dist.world_size, self.device, self.amp_dtype or "off", self.data.num_samples,
        )
        started = time.perf_counter()
        with self._graceful_interrupt():
            while self.position.epoch < train.epochs:
                epoch = self.position.epoch
                self._train_epoch(epoch)
                if self._stop_requested:
                    self.save("last")
                    self.logger.warning("stopped by interrupt; resume with --resume %s", self.run_dir)
                    raise TrainingInterrupted
                if self.data.has_validation and ((epoch + 1) % train.val_every == 0 or epoch + 1 == train.epochs):
                    self.validate(epoch)
                self.position = Position(epoch + 1, 0, self.position.global_step)
                self.save("last")
                self._rotate_epoch_checkpoints(epoch)
                distributed.barrier(self.dist)
        summary = self._summary(time.perf_counter() - started)
        return summary

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
            if batch["image"].shape[0] == 0:
                continue
            micro_batches.append(batch)
            if len(micro_batches) < train.grad_accum:
                continue
            log_images = self._is_due(train.image_every)
            terms = self._optimizer_step(micro_batches, log_images)
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
        skipped_total = int(distributed.all_reduce_sum(torch.tensor(skipped), self.dist).item())
        if skipped_total:
            self.logger.warning("epoch %d: %d unreadable samples skipped (named in the warnings above)",
                                epoch + 1, skipped_total)
        if self.writer is not None:
            self.writer.skipped_samples(self.position.global_step, skipped_total)

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
        """Evaluate the model (the EMA when kept) on every validation set; saves ``best.pth``."""
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
            self._update_best(results, epoch)
        distributed.barrier(self.dist)
        return results

    def _update_best(self, results: dict[str, dict[str, float]], epoch: int) -> None:
        train = self.config.train
        values = [m[train.best_metric] for m in results.values() if train.best_metric in m]
        if not values:
            return
        score = float(np.mean(values))
        better = self.best is None or (score > self.best if train.best_mode == "max" else score < self.best)
        if better:
            self.best = score
            self.save("best")
            self.logger.info("new best %s %.4f at epoch %d", train.best_metric, score, epoch + 1)

    def _summary(self, seconds: float) -> dict[str, Any]:
        summary = {
            "run_dir": str(self.run_dir),
            "epochs": self.position.epoch,
            "global_step": self.position.global_step,
            "seconds": round(seconds, 1),
            "best_metric": self.config.train.best_metric,
            "best": self.best,
            "last_validation": self.history[-1] if self.history else None,
            "nonfinite_steps": self.nonfinite_steps,
            "world_size": self.dist.world_size,
            "weights_identical_across_ranks": self._weights_identical(),
            "shards_disjoint_across_ranks": self._shards_disjoint(),
        }
        if self.device.type == "cuda":
            summary["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated(self.device) / 2**30, 2)
        if self.dist.is_main:
            with open(self.run_dir / "summary.json", "w") as handle:
                json.dump(summary, handle, indent=2)
            self.logger.info("done in %.0f s: %s", seconds, json.dumps(summary))
            if self.writer is not None:
                self.writer.close()
        return summary

    def _shards_disjoint(self) -> bool:
        """Whether the ranks trained on disjoint samples in the last epoch (checks the sharding)."""
        if not self.dist.enabled:
            return True
        shard = self.data.shard(max(self.position.epoch - 1, 0))
        gathered: list[list[int] | None] = [None] * self.dist.world_size
        torch.distributed.all_gather_object(gathered, shard)
        seen: set[int] = set()
        for indices in gathered:
            if seen & set(indices):
                return False
            seen |= set(indices)
        return True

    def _weights_identical(self) -> bool:
        if not self.dist.enabled:
            return True
        checksum = torch.stack([p.detach().double().sum() for p in self.model.parameters()]).sum().cpu()
        gathered = [torch.zeros_like(checksum) for _ in range(self.dist.world_size)]
        torch.distributed.all_gather(gathered, checksum)
        return all(math.isclose(g.item(), checksum.item(), rel_tol=0, abs_tol=0) for g in gathered)
