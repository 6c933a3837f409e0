"""Optimiser and per-iteration learning-rate schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

from pgnet.config import OptimConfig, ScheduleConfig


def build_optimizer(model: nn.Module, config: OptimConfig) -> torch.optim.Optimizer:
    """SGD (official: momentum 0.9, Nesterov, wd 5e-4) or AdamW over up to four parameter groups.

    The groups follow the modules, not the names: the Swin branch (``model.swin``, the backbone that
    PGNet.param_groups() calls ``swin``) trains at ``lr × swin_lr_scale``, everything else (ResNet,
    decoder, CMGM and heads, whatever their names) at ``lr``, as the official split does. A model
    without ``param_groups`` has one branch at ``lr``. With ``no_decay_norm_bias`` the 1-D parameters
    (norms, biases) get no weight decay. Each group records its ``lr_scale`` for the schedule.
    """
    model = getattr(model, "module", model)  # unwrap DDP
    branches = model.param_groups() if hasattr(model, "param_groups") else {"rest": list(model.parameters())}
    param_groups = []
    for branch, params in branches.items():
        scale = config.swin_lr_scale if branch == "swin" else 1.0
        trainable = [p for p in params if p.requires_grad]
        for no_decay in (False, True):
            members = [p for p in trainable if (config.no_decay_norm_bias and p.ndim <= 1) == no_decay]
            if not members:
                continue
            param_groups.append(
                {
                    "params": members,
                    "name": branch + ("_no_decay" if no_decay else ""),
                    "lr": config.lr * scale,
                    "lr_scale": scale,
                    "weight_decay": 0.0 if no_decay else config.weight_decay,
                }
            )
    if config.name == "sgd":
        return torch.optim.SGD(param_groups, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov)
    return torch.optim.AdamW(param_groups, lr=config.lr, betas=tuple(config.betas))


def lr_factor(step: int, total_steps: int, warmup_steps: int, config: ScheduleConfig) -> float:
    """Multiplier of the base LR at iteration ``step`` (0-based, counted over the whole run).

    - ``official_cosine``: the official ``LR_Scheduler('cos')``. The cosine runs from the end of the
      warm-up W to the end N, ½(1 + cos(π(T − W)/(N − W))), and is evaluated from T = 0 (above 1 rad
      before W, so it rises); while T < W it is multiplied by T/W. At T = W/2 with W = N/2 this gives
      a quarter of the base LR.
    - ``warmup_cosine``: a linear ramp T/W, then the same cosine from W to N.
    - ``warmup_poly``: a linear ramp T/W, then (1 − progress)^power.
    - ``constant``: 1.

    The cosine and poly shapes decay to ``min_lr_ratio`` (0 officially).
    """
    if config.name == "constant":
        return 1.0
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)  # negative during the warm-up
    if config.name == "official_cosine":
        factor = config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
        return factor * step / warmup_steps if step < warmup_steps else factor
    if step < warmup_steps:
        return step / warmup_steps
    if config.name == "warmup_cosine":
        shape = 0.5 * (1 + math.cos(math.pi * progress))
    else:  # warmup_poly
        shape = (1 - progress) ** config.power
    return config.min_lr_ratio + (1 - config.min_lr_ratio) * shape


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: ScheduleConfig, steps_per_epoch: int, epochs: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-iteration schedule (see ``lr_factor``) over ``epochs × steps_per_epoch`` iterations.

    The warm-up lasts W = round(warmup_epochs × steps_per_epoch) iterations (officially
    ``warmup_epochs × iters_per_epoch`` with ``warmup_epochs = epochs // 2``). The LR of iteration T
    is set before its step, so the first step of a schedule with a warm-up runs at LR 0.
    """
    total = steps_per_epoch * epochs
    warmup = round(config.warmup_epochs * steps_per_epoch)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total, warmup, config))
