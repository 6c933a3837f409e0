"""Exponential moving average of a model's weights."""

from __future__ import annotations

import copy

import torch
from torch import nn


class ModelEma(nn.Module):
    """Keeps ``ema = decay·ema + (1−decay)·weights`` after every optimiser step (buffers are copied)."""

    def __init__(self, model: nn.Module, decay: float):
        super().__init__()
        if not 0.0 < decay < 1.0:
            raise ValueError(f"train.ema_decay must be in (0, 1), got {decay}")
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
