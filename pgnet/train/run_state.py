"""Where a training run stands, as ``last.pth`` records it.

:class:`RunState` is what a run has done so far: its :class:`Position` (epoch, step in the epoch,
global step), its best validation score (by the :class:`BestRule`), the non-finite steps it skipped
(counted by the :class:`NonFiniteGuard` callback) and its validation history.
:func:`training_checkpoint` adds the model, optimiser, schedule and scaler
(:class:`pgnet.train.model_setup.TrainingParts`), the EMA weights, the callbacks' states and every
RNG state (:mod:`pgnet.train.rng`): everything a resumed run needs to continue exactly where it was
written, which :func:`resume_run` and :func:`finish_resume` do. :func:`run_summary`: the figures of a
finished run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pgnet.checkpoint import CheckpointError, load_checkpoint, model_checkpoint, require_fields
from pgnet.config import Config
from pgnet.data.preprocessing import Preprocessing
from pgnet.train.callbacks import Callback, StepResult, Trainer, callback_states, load_callback_states
from pgnet.train.ema import ModelEma
from pgnet.train.model_setup import TrainingParts
from pgnet.train.rng import fork_rank_stream, restore_rng_state, rng_state
from pgnet.train.run_setup import RunContext, peak_memory_gib

# What a training checkpoint holds beyond the model's config and preprocessing.
TRAINING_FIELDS = ("model", "optimizer", "scheduler", "scaler", "position", "best", "nonfinite_steps", "history",
                   "rng")


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss more often than allowed (the command exits 3)."""

    exit_status = 3


@dataclass
class Position:
    """Where training stands: ``epoch`` in progress and optimiser steps already done in it."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0


@dataclass
class RunState:
    """What a run has done: its position, best score (and the global step of ``best.pth``), the
    non-finite steps it skipped, one history entry per validation, and the unreadable samples the
    epoch in progress left out so far (all processes)."""

    position: Position = field(default_factory=Position)
    best: float | None = None
    best_step: int | None = None
    nonfinite_steps: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    skipped_in_epoch: int = 0

    def count_nonfinite(self, message: str, allowed: int) -> None:
        """Count a step skipped for a non-finite loss (``message`` says which); beyond ``allowed``
        such steps, raise NonFiniteLossError."""
        self.nonfinite_steps += 1
        if self.nonfinite_steps > allowed:
            raise NonFiniteLossError(message + "; stopping, last.pth is the last good checkpoint")

    def checkpoint_fields(self) -> dict[str, Any]:
        """The checkpoint entries of this state (plain values only)."""
        return {"position": vars(self.position).copy(), "best": self.best, "best_step": self.best_step,
                "nonfinite_steps": self.nonfinite_steps, "history": self.history,
                "skipped_in_epoch": self.skipped_in_epoch}

    @classmethod
    def from_checkpoint(cls, state: Mapping[str, Any]) -> RunState:
        """The state ``checkpoint_fields`` wrote (``best_step`` and ``skipped_in_epoch`` may be missing
        in older checkpoints)."""
        return cls(Position(**state["position"]), state["best"], state.get("best_step"), state["nonfinite_steps"],
                   list(state["history"]), state.get("skipped_in_epoch", 0))


@dataclass(frozen=True)
class BestRule:
    """What ``best.pth`` is the best of: ``metric`` averaged over the ``sets`` validation sets,
    highest (``mode`` "max") or lowest ("min")."""

    metric: str
    mode: str
    sets: int

    def __str__(self) -> str:
        """E.g. "mean Sm over 2 sets", or just "Sm" for one set."""
        return f"mean {self.metric} over {self.sets} sets" if self.sets > 1 else self.metric

    def score(self, results: Mapping[str, Mapping[str, float]]) -> float | None:
        """The mean ``metric`` over ``{set: metrics}``; None when no set has it."""
        values = [metrics[self.metric] for metrics in results.values() if self.metric in metrics]
        return float(np.mean(values)) if values else None

    def beats(self, score: float, best: float | None) -> bool:
        """Whether ``score`` is better than ``best`` (anything beats None)."""
        return best is None or (score > best if self.mode == "max" else score < best)


class NonFiniteGuard(Callback):
    """Counts the steps skipped for a NaN or infinite loss in the run's state, with a warning naming
    the step and its loss terms; beyond ``allowed`` (``train.max_nonfinite_steps``) such steps, it stops
    the run with :class:`NonFiniteLossError` (``last.pth`` stays the last good checkpoint)."""

    def __init__(self, allowed: int):
        self.allowed = allowed

    def on_step_end(self, trainer: Trainer, result: StepResult) -> None:
        if not result.nonfinite:
            return
        described = ", ".join(f"{name}={value:.4g}" for name, value in result.losses.items())
        message = f"non-finite loss at global step {result.step} ({described})"
        trainer.state.count_nonfinite(message, self.allowed)
        trainer.logger.warning("%s: step skipped (%d of %d allowed)", message, trainer.state.nonfinite_steps,
                               self.allowed)


def training_checkpoint(config: Config, parts: TrainingParts, preprocessing: Preprocessing, state: RunState,
                        ema: ModelEma | None, callbacks: Sequence[Callback]) -> dict[str, Any]:
    """The checkpoint of a run: its recipe (``config``, what a resume continues), model,
    ``preprocessing``, ``parts``' states, ``ema``'s weights, ``state``, the ``callbacks``' states and
    every RNG state."""
    return model_checkpoint(parts.model, preprocessing=preprocessing, config=config.to_dict(),
                            **parts.checkpoint_fields(), ema=ema.module.state_dict() if ema is not None else None,
                            **state.checkpoint_fields(), callbacks=callback_states(callbacks), rng=rng_state())


def resume_run(run: RunContext, parts: TrainingParts, config: Config,
               steps_per_epoch: int) -> tuple[RunState, dict[str, Any]]:
    """Continue the run in ``run``'s folder: load its ``last.pth`` into ``parts`` and log where it
    resumes (and the overrides of ``config`` that take effect there); returns the run's state and the
    checkpoint, for :func:`finish_resume`. A CheckpointError names the fields ``last.pth`` lacks."""
    path = run.checkpoint_dir / "last.pth"
    checkpoint = load_checkpoint(path, map_location=run.device)
    require_fields(checkpoint, path, TRAINING_FIELDS)
    parts.load(checkpoint)
    state = RunState.from_checkpoint(checkpoint)
    position = state.position
    run.logger.info("resumed from %s at epoch %d, step %d of %d in the epoch (global step %d)", path,
                    position.epoch + 1, position.step_in_epoch, steps_per_epoch, position.global_step)
    for change in config.resume_changes:
        if change["step"] == position.global_step:
            run.logger.info("resume override %s: %r -> %r", change["key"], change["old"], change["new"])
    return state, checkpoint


def finish_resume(run: RunContext, checkpoint: Mapping[str, Any], ema: ModelEma | None,
                  callbacks: Sequence[Callback]) -> None:
    """Once the callbacks are set up: load the EMA weights and the callbacks' states of ``checkpoint``
    (older checkpoints have no callback states), then every RNG state, last, so that nothing drawn
    before the first step shifts the random streams."""
    if ema is not None:
        if checkpoint.get("ema") is None:
            raise CheckpointError(f"{run.checkpoint_dir / 'last.pth'}: train.ema_decay is set but the checkpoint "
                                  "has no EMA weights")
        ema.module.load_state_dict(checkpoint["ema"])
    load_callback_states(callbacks, checkpoint.get("callbacks", {}))
    restore_rng_state(checkpoint["rng"])
    if run.dist.enabled:  # each rank continues its own stream from the saved rank-0 state
        fork_rank_stream(run.dist.rank)


def run_summary(run: RunContext, state: RunState, rule: BestRule, validation_sets: Sequence[str], seconds: float,
                checks: Mapping[str, bool]) -> dict[str, Any]:
    """The final figures of a run (``summary.json``); ``checks``: :func:`pgnet.distributed.self_checks`."""
    summary = {
        "run_dir": str(run.run_dir),
        "epochs": state.position.epoch,
        "global_step": state.position.global_step,
        "seconds": round(seconds, 1),
        "best_metric": rule.metric,
        "best_rule": f"{rule.mode} of {rule}",
        "validation_sets": list(validation_sets),
        "best": state.best,
        "last_validation": state.history[-1] if state.history else None,
        "nonfinite_steps": state.nonfinite_steps,
        "world_size": run.dist.world_size,
        **checks,
    }
    peak = peak_memory_gib(run.device)
    if peak is not None:
        summary["peak_gpu_memory_gib"] = round(peak, 2)
    return summary
