"""Callbacks: what a training run does around its loop, in hooks the trainer calls.

The :class:`~pgnet.train.trainer.Trainer` runs the loop itself: the data, the optimiser steps,
validation and saving ``last.pth``. Everything else is a :class:`Callback`, built from the config
(:func:`pgnet.train.trainer.default_callbacks`: the non-finite loss guard, the EMA, the progress bar
and log lines, TensorBoard, the ``best``/``epoch_N`` links) or given as ``Trainer(callbacks=...)``.
Callbacks run in that order, the config's first, at every hook, on every process.

The hooks of a run, in order (``epoch`` counts from 0, ``step`` from 1)::

    setup                                   the trainer is built (resumed: its state restored)
    on_run_start                            fit() begins
      on_epoch_start(epoch)
        on_micro_batch_start(step, index, batch)    around each forward/backward pass of a step
        on_micro_batch_end(step, index, batch, output)
        on_step_end(StepResult)             after each optimiser step
        on_save(name)                       before checkpoints/{name}.pth is written (rank 0)
      on_train_epoch_end(epoch, skipped)    the epoch's steps are done (also when stopping early)
      on_validation_end(ValidationResult)   when train.val_every says so
      on_save("last"), on_epoch_end(epoch)  the epoch is saved as last.pth
    on_run_end(summary)                     fit() finished
    teardown                                the trainer is closed, however the run ended

A callback stops the run with ``trainer.request_stop()``: at the next step boundary the trainer
saves ``last.pth`` and ``fit`` raises :class:`~pgnet.train.interrupt.TrainingInterrupted`, as for
Ctrl-C; the run resumes from there. A callback's :meth:`~Callback.state_dict` is saved in every
training checkpoint (under ``callbacks``, by :attr:`~Callback.state_key`) and given back to
:meth:`~Callback.load_state_dict` on resume; a checkpoint without it leaves the callback as built.

Hooks must not draw random numbers: a resumed run is bitwise the run it continues only when nothing
around the loop changes the random streams.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# The trainer passes itself as the first argument of every hook: a pgnet.train.trainer.Trainer (not
# imported here, it imports this module). Callbacks use its public attributes: config, model,
# optimizer, position, state, dist, device, logger, run_dir, request_stop().
Trainer = Any


@dataclass(frozen=True)
class StepResult:
    """One optimiser step, as :meth:`Callback.on_step_end` sees it."""

    step: int  # the global step just done (from 1)
    losses: Mapping[str, float] | None  # mean loss terms ("total" first); None: no readable sample, no update
    nonfinite: bool  # a loss was NaN or infinite: the update was discarded
    images: int  # images the step trained on, all processes together
    images_per_second: float  # since the last logged step, or the epoch's start
    log: bool  # a logged step (train.log_every) that updated the weights

    @property
    def updated(self) -> bool:
        """Whether the optimiser updated the weights."""
        return self.losses is not None and not self.nonfinite


@dataclass(frozen=True)
class ValidationResult:
    """A validation, as :meth:`Callback.on_validation_end` sees it (empty on processes other than
    rank 0, which validate nothing)."""

    epoch: int  # the epoch just trained (from 0)
    step: int  # the global step validated
    metrics: Mapping[str, Mapping[str, float]]  # {validation set: {metric: value}}
    curves: Mapping[str, Mapping[str, np.ndarray] | None]  # {validation set: PR curves and pixel counts}


class Callback:
    """A base class whose hooks do nothing: override the ones needed (see the module docstring for
    when each runs). ``trainer`` is the :class:`~pgnet.train.trainer.Trainer` calling."""

    @property
    def state_key(self) -> str:
        """The name of this callback's state in a checkpoint (unique among a trainer's callbacks)."""
        return type(self).__qualname__

    def setup(self, trainer: Trainer) -> None:
        """The trainer is built; on resume its model, optimiser and position are already restored, and
        this callback's state is loaded right after."""

    def on_run_start(self, trainer: Trainer) -> None:
        """``fit`` begins (from ``trainer.position`` on resume)."""

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        """Epoch ``epoch`` begins (or continues, on resume, at ``trainer.position.step_in_epoch``)."""

    def on_micro_batch_start(self, trainer: Trainer, step: int, index: int, batch: Mapping[str, Any]) -> None:
        """Micro-batch ``index`` of global step ``step`` goes through its forward and backward pass."""

    def on_micro_batch_end(self, trainer: Trainer, step: int, index: int, batch: Mapping[str, Any],
                           output: Any) -> None:
        """Micro-batch ``index`` of step ``step`` went through; ``output``: the network's PGNetOutput."""

    def on_step_end(self, trainer: Trainer, result: StepResult) -> None:
        """An optimiser step is done (or skipped: ``result.updated`` is False) and counted in
        ``trainer.position``."""

    def on_train_epoch_end(self, trainer: Trainer, epoch: int, skipped: int) -> None:
        """The steps of epoch ``epoch`` are done, or cut short by a stop request; ``skipped``: the
        unreadable samples it left out, all processes together."""

    def on_validation_end(self, trainer: Trainer, result: ValidationResult) -> None:
        """The validation sets were evaluated (``trainer.validation_model``: the weights evaluated)."""

    def on_save(self, trainer: Trainer, name: str) -> None:
        """``checkpoints/{name}.pth`` is about to be written (rank 0 only), holding every
        :meth:`state_dict`."""

    def on_epoch_end(self, trainer: Trainer, epoch: int) -> None:
        """Epoch ``epoch`` is finished: validated when due and saved as ``last.pth``."""

    def on_run_end(self, trainer: Trainer, summary: Mapping[str, Any]) -> None:
        """``fit`` finished training; ``summary``: what it returns (and wrote to ``summary.json``)."""

    def teardown(self, trainer: Trainer) -> None:
        """The trainer is closed, however the run ended: release what the callback holds."""

    def state_dict(self) -> dict[str, Any]:
        """What to save in training checkpoints: tensors, numbers, strings and containers of them
        (checkpoints load with ``weights_only=True``). Nothing is saved for an empty dict."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from ``state``, as :meth:`state_dict` returned it when the checkpoint was written."""


def check_callbacks(callbacks: Sequence[Callback]) -> None:
    """Raise TypeError for an entry that is no :class:`Callback`, ValueError for a repeated state key."""
    seen: set[str] = set()
    for callback in callbacks:
        if not isinstance(callback, Callback):
            raise TypeError(f"callbacks must be pgnet.train.callbacks.Callback instances, got {callback!r}")
        if callback.state_key in seen:
            raise ValueError(f"two callbacks have the state key {callback.state_key!r}; give one a state_key "
                             "of its own (or drop the one the config already adds)")
        seen.add(callback.state_key)


def callback_states(callbacks: Sequence[Callback]) -> dict[str, dict[str, Any]]:
    """``{state_key: state}`` of the callbacks that have a state, for a checkpoint."""
    return {callback.state_key: state for callback in callbacks if (state := callback.state_dict())}


def load_callback_states(callbacks: Sequence[Callback], states: Mapping[str, Any]) -> None:
    """Give each callback its state from ``states`` (``callback_states`` of a checkpoint); callbacks
    without one there keep theirs."""
    for callback in callbacks:
        if callback.state_key in states:
            callback.load_state_dict(states[callback.state_key])


def is_due(step: int, every: int) -> bool:
    """Whether global step ``step`` is one of every ``every`` (never for 0)."""
    return bool(every) and step % every == 0
