"""Optimiser and per-iteration learning-rate schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

from pgnet.config import OptimConfig, ScheduleConfig


def build_optimizer(model: nn.Module, config: OptimConfig) -> torch.optim.Optimizer:
    """SGD (official: momentum 0.9, Nesterov, wd 5e-4) or AdamW over up to four parameter groups.

    Parameters whose name contains ``swin`` train at ``lr × swin_lr_scale``; with
    ``no_decay_norm_bias`` the 1-D parameters (norms, biases) get no weight decay.
    Each group records its ``lr_scale`` so the schedule can rescale it.
    """
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        is_swin = "swin" in name
        no_decay = config.no_decay_norm_bias and param.ndim <= 1
        groups.setdefault((is_swin, no_decay), []).append(param)
    param_groups = []
    for (is_swin, no_decay), params in sorted(groups.items()):
        scale = config.swin_lr_scale if is_swin else 1.0
        param_groups.append(
            {
                "params": params,
                "name": ("swin" if is_swin else "rest") + ("_no_decay" if no_decay else ""),
                "lr": config.lr * scale,
                "lr_scale": scale,
                "weight_decay": 0.0 if no_decay else config.weight_decay,
            }
        )
    if config.name == "sgd":
        return torch.optim.SGD(param_groups, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov)
    return torch.optim.AdamW(param_groups, lr=config.lr, betas=tuple(config.betas))


def lr_factor(step: int, total_steps: int, warmup_steps: int, config: ScheduleConfig) -> float:
    """Multiplier of the base LR at optimiser step ``step`` (0-based)."""
    if config.name == "constant":
        return 1.0
    if step < warmup_steps:
        return step / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    if config.name == "warmup_cosine":
        shape = 0.5 * (1 + math.cos(math.pi * progress))
    else:  # warmup_poly
        shape = (1 - progress) ** config.power
    return config.min_lr_ratio + (1 - config.min_lr_ratio) * shape


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: ScheduleConfig, steps_per_epoch: int, epochs: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-iteration schedule: linear warm-up from 0 over ``warmup_epochs``, then the decay."""
    total = steps_per_epoch * epochs
    warmup = round(config.warmup_epochs * steps_per_epoch)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total, warmup, config))
