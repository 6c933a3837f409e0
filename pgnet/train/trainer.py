"""The training loop: run a config from start (or a checkpoint) to the end, in the run folder
described in :mod:`pgnet.train.run_dir`.

What the loop runs on is set up elsewhere: device, processes, run folder and log in
:mod:`pgnet.train.run_setup`; data in :mod:`pgnet.train.data_setup`; the model and what trains it
in :mod:`pgnet.train.model_setup`; where the run stands, and its checkpoints, in
:mod:`pgnet.train.run_state`.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Any

import torch

from pgnet.checkpoint import save_checkpoint
from pgnet.config import Config, save_config
from pgnet.train import distributed, run_log, run_state
from pgnet.train.data_setup import TrainingData
from pgnet.train.finetune import FineTuning
from pgnet.train.interrupt import TrainingInterrupted, requested_signal, stop_signals_to
from pgnet.train.model_setup import build_training_parts
from pgnet.train.progress import EpochProgress
from pgnet.train.run_dir import link_epoch_end_checkpoints
from pgnet.train.run_setup import open_run
from pgnet.train.run_state import NonFiniteLossError
from pgnet.train.tensorboard import TrainingBoard
from pgnet.train.visualize import capture_cmgm_attention
from pgnet.writing import write_text

__all__ = ["NonFiniteLossError", "Trainer", "TrainingInterrupted"]


class Trainer:
    """Train PGNet as ``config`` says, writing to ``run_dir``.

    Without ``run_dir`` a new folder ``output_dir/name-YYYYmmdd-HHMMSS`` is made. With
    ``resume=True`` the run continues from ``run_dir/checkpoints/last.pth``. :meth:`fit` trains, then
    releases what the run holds (:meth:`close`), however it ends.
    """

    def __init__(self, config: Config, run_dir: str | Path | None = None, resume: bool = False):
        self.config = config
        # Starting weights and frozen parts are checked before the run folder is made.
        self.finetuning = FineTuning(config, resume=resume)
        self.run = open_run(config, run_dir, resume, f"pgnet.train.{id(self)}")
        self.device, self.dist, self.run_dir, self.logger = (self.run.device, self.run.dist, self.run.run_dir,
                                                             self.run.logger)
        self.writer: TrainingBoard | None = None
        try:
            self._set_up(resume)
        except BaseException:
            self.close()
            raise

    def _set_up(self, resume: bool) -> None:
        config, train = self.config, self.config.train
        # Data first: a dataset with no valid sample fails before any model is built.
        with run_log.data_warnings_logged(self.logger):
            self.data = TrainingData(config.data, seed=train.seed, micro_batch=self.run.micro_batch, dist=self.dist,
                                     logger=self.logger)
        self.steps_per_epoch = self.data.steps_per_epoch(train.grad_accum, train.max_steps_per_epoch)
        parts = build_training_parts(config, self.finetuning, self.device, self.dist, self.steps_per_epoch,
                                     self.logger.info)
        self.parts, self.model, self.ema, self.network = parts, parts.model, parts.ema, parts.network
        self.optimizer, self.scheduler, self.criterion = parts.optimizer, parts.scheduler, parts.criterion
        self.train_step = parts.train_step
        self.best_rule = run_state.BestRule(train.best_metric, train.best_mode, len(self.data.validation_labels))
        self._stop_requested: int | bool = 0  # the signal that asked to stop (True: SIGINT)
        self.state = (run_state.resume_run(self.run, self.parts, config, self.steps_per_epoch) if resume
                      else run_state.RunState())
        if self.dist.is_main:  # on resume: the changes accepted by pgnet.train.resume recorded
            save_config(config, self.run_dir / "config.yaml")
            self.writer = TrainingBoard(self.run_dir / "tb", resume=resume, mean=self.data.mean, std=self.data.std,
                                        graft_points=self.model.decoder.graft_points,
                                        fresh=self.position.global_step == 0)

    @property
    def position(self) -> run_state.Position:
        """Where training stands (``state.position``)."""
        return self.state.position

    # ------------------------------------------------------------------ checkpoints

    def save(self, name: str = "last") -> Path | None:
        """Write ``checkpoints/{name}.pth`` atomically (rank 0 only), with the TensorBoard events so far."""
        if not self.dist.is_main:
            return None
        if self.writer is not None:
            self.writer.flush()  # a resumed run can rewrite only the events after its checkpoint
        return save_checkpoint(run_state.training_checkpoint(self.parts, self.data.preprocessing, self.state),
                               self.run.checkpoint_dir / f"{name}.pth")

    # ------------------------------------------------------------------ training

    def _request_stop(self, signum: int, frame: Any) -> None:
        """First Ctrl-C or SIGTERM: finish the current step, save, stop. A second one: stop at once."""
        if self._stop_requested:
            raise KeyboardInterrupt
        self._stop_requested = signum
        self.logger.warning("%s: saving last.pth after this step (send it again to stop at once)",
                            requested_signal(signum).name)

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
            self._train_all_epochs()
            summary = self._summary(time.perf_counter() - started)
        finally:
            self.close()  # the run folder is free for the next writer (e.g. a resume), however fit ends
        return summary

    def _train_all_epochs(self) -> None:
        train = self.config.train
        with stop_signals_to(self._request_stop), run_log.data_warnings_logged(self.logger):
            while self.position.epoch < train.epochs:
                epoch = self.position.epoch
                self._train_epoch(epoch)
                if self._stop_requested:
                    stop = requested_signal(self._stop_requested)
                    self.save("last")
                    self.logger.warning("stopped by %s; resume with --resume %s", stop.name, self.run_dir)
                    raise TrainingInterrupted(stop)
                is_best = False
                if self.data.has_validation and ((epoch + 1) % train.val_every == 0 or epoch + 1 == train.epochs):
                    is_best = self._update_best(self.validate(epoch), epoch)
                self.position.epoch, self.position.step_in_epoch = epoch + 1, 0
                self.save("last")
                if self.dist.is_main:
                    link_epoch_end_checkpoints(self.run.checkpoint_dir, self.position.epoch, train.keep_recent, is_best)
                distributed.barrier(self.dist)

    def _train_epoch(self, epoch: int) -> None:
        train = self.config.train
        self.network.train()
        start_step = self.position.step_in_epoch
        progress = EpochProgress(epoch, train.epochs, self.steps_per_epoch, start_step, self.logger, self.writer,
                                 self.device)
        for micro_batches in self.data.epoch_steps(epoch, start_step, train.grad_accum):
            # DDP needs every process in the backward pass: a step runs when all have a sample.
            if distributed.every_rank(bool(micro_batches), self.dist, self.device):
                terms = self._optimizer_step(micro_batches, self._is_due(train.image_every))
            else:  # nothing to learn from: the step is skipped, the schedule moves on
                self.logger.warning("step %d skipped: its batches had no readable sample",
                                    self.position.global_step + 1)
                self.scheduler.step()
                terms = None
            self.position.step_in_epoch += 1
            self.position.global_step += 1
            progress.step(sum(b["image"].shape[0] for b in micro_batches) * self.dist.world_size)
            if terms is not None:
                progress.show(self.position.global_step, terms, self.optimizer, log=self._is_due(train.log_every))
            if train.checkpoint_every_steps and self.position.global_step % train.checkpoint_every_steps == 0:
                self.save("last")
            if self._stop_requested or self.position.step_in_epoch >= self.steps_per_epoch:
                break
        skipped = distributed.all_reduce_sum(torch.tensor(self.data.skipped, device=self.device), self.dist)
        progress.close(self.position.global_step, int(skipped.item()))

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
            pictures = log_images and index == 0 and self.writer is not None
            capture = capture_cmgm_attention(self.model) if pictures else contextlib.nullcontext([])
            with sync, capture as attention:
                result = self.train_step.forward_backward(image, mask, len(micro_batches))
            nonfinite += result.nonfinite
            for name, value in {"total": result.loss, **result.terms}.items():
                totals[name] = totals.get(name, 0) + value.float() / len(micro_batches)
            if pictures:  # at the step its losses are logged at
                self.writer.training_pictures(self.position.global_step + 1, batch, result.output, attention)
        nonfinite = distributed.all_reduce_sum(nonfinite, self.dist)
        if nonfinite.item() > 0:
            self.train_step.discard()
            described = ", ".join(f"{k}={v.item():.4g}" for k, v in totals.items())
            message = f"non-finite loss at global step {self.position.global_step + 1} ({described})"
            self.state.count_nonfinite(message, train.max_nonfinite_steps)
            self.logger.warning("%s: step skipped (%d of %d allowed)", message, self.state.nonfinite_steps,
                                train.max_nonfinite_steps)
            self.scheduler.step()
            return None
        self.train_step.apply()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.model)
        return {name: distributed.all_reduce_mean(value, self.dist).item() for name, value in totals.items()}

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
            self.state.history.append({"epoch": epoch + 1, "step": self.position.global_step, "metrics": results})
        distributed.barrier(self.dist)
        return results

    def _update_best(self, results: dict[str, dict[str, float]], epoch: int) -> bool:
        """Whether ``results`` beat the best so far (then ``best.pth`` becomes this epoch's ``last.pth``)."""
        score = self.best_rule.score(results)
        if score is None or not self.best_rule.beats(score, self.state.best):
            return False
        self.state.best, self.state.best_step = score, self.position.global_step
        self.logger.info("new best %s %.4f at epoch %d", self.best_rule, score, epoch + 1)
        return True

    # ------------------------------------------------------------------ the end

    def _summary(self, seconds: float) -> dict[str, Any]:
        checks = distributed.self_checks(self.model, self.data.shard(max(self.position.epoch - 1, 0)), self.dist)
        summary = run_state.run_summary(self.run, self.state, self.best_rule, self.data.validation_labels, seconds,
                                        checks)
        if self.dist.is_main:
            write_text(self.run_dir / "summary.json", json.dumps(summary, indent=2))
            self.logger.info("done in %.0f s: %s", seconds, json.dumps(summary))
            if self.writer is not None:
                self.writer.close()
        return summary

    def close(self) -> None:
        """Close the TensorBoard and log files, release the run folder and leave the DDP process group
        (what ending the process does); calling it again does nothing more."""
        if self.writer is not None:
            self.writer.close()
        self.run.close(getattr(self, "network", None))
