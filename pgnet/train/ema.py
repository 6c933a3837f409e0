"""Exponential moving average of a model's weights, and the callback that keeps it while training."""

from __future__ import annotations

import copy

import torch
from torch import nn

from pgnet.train.callbacks import Callback, StepResult, Trainer


class ModelEma(nn.Module):
    """Keeps ``ema = decay·ema + (1−decay)·weights`` after every optimiser step (buffers are copied)."""

    def __init__(self, model: nn.Module, decay: float):
        super().__init__()
        check_decay(decay)
        self.decay = decay
        self.module = copy.deepcopy(model).eval()
        for param in self.module.parameters():
            param.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        current = model.state_dict()
        for name, value in self.module.state_dict().items():
            source = current[name].detach()
            if value.dtype.is_floating_point:
                value.lerp_(source.to(value.dtype), 1.0 - self.decay)
            else:
                value.copy_(source)


def check_decay(decay: float) -> None:
    """Raise ValueError unless ``decay`` (``train.ema_decay``) is strictly between 0 and 1."""
    if not 0.0 < decay < 1.0:
        raise ValueError(f"train.ema_decay must be in (0, 1), got {decay}")


class EMA(Callback):
    """The moving average of the trained model (``train.ema_decay``), updated after every optimiser
    step that updated the weights.

    The average is a second set of weights of the run rather than callback state: validation (and so
    ``best.pth``) evaluates it, and training checkpoints hold it as their ``ema`` entry, the weights
    ``--weights ema`` loads (see ``Trainer.ema``).
    """

    def __init__(self, decay: float):
        check_decay(decay)
        self.decay = decay
        self.average: ModelEma | None = None

    def setup(self, trainer: Trainer) -> None:
        self.average = ModelEma(trainer.model, self.decay)

    def on_step_end(self, trainer: Trainer, result: StepResult) -> None:
        if result.updated:
            self.average.update(trainer.model)
