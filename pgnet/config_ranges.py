"""Allowed ranges of every numeric config value, and the checks that need the whole config.

:mod:`pgnet.config` checks types; this module checks values: each numeric field of the schema has an
entry in :data:`RANGES` (a test keeps it that way), keyed ``"DataclassName.field"``; for a list field
the range applies to each item. Errors name the key and the allowed range.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pgnet.errors import UserError


class ConfigError(UserError):
    """A config that does not fit the schema; the message names the key."""


@dataclass(frozen=True)
class Range:
    """``low <= value <= high`` (``<`` where ``*_open``); None: unbounded on that side."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def contains(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return not (self.high is not None and (value >= self.high if self.high_open else value > self.high))

    def __str__(self) -> str:
        parts = []
        if self.low is not None:
            parts.append(f"{'>' if self.low_open else '>='} {self.low:g}")
        if self.high is not None:
            parts.append(f"{'<' if self.high_open else '<='} {self.high:g}")
        return " and ".join(parts) or "any number"


AT_LEAST_0 = Range(0)
AT_LEAST_1 = Range(1)
POSITIVE = Range(0, low_open=True)
FRACTION = Range(0, 1)
PIXELS = Range(32)  # image sides: the network downsamples by 32

RANGES: dict[str, Range] = {
    # model
    "ModelConfig.swin_input_size": PIXELS,
    "ModelConfig.width": AT_LEAST_1,
    "ModelConfig.num_heads": AT_LEAST_1,
    "ModelConfig.token_budget": AT_LEAST_1,
    "ModelConfig.drop_path_rate": Range(0, 1, high_open=True),
    "ModelConfig.window_size": AT_LEAST_1,
    # data
    "DatasetEntry.repeat": AT_LEAST_0,
    "DatasetEntry.n": AT_LEAST_1,
    "DatasetEntry.size": PIXELS,
    "DatasetEntry.seed": AT_LEAST_0,
    "DatasetEntry.val_fraction": Range(0, 1, low_open=True, high_open=True),
    "DatasetEntry.split_seed": AT_LEAST_0,
    "AugmentConfig.hflip": FRACTION,
    "AugmentConfig.border_crop": Range(0, 0.5, high_open=True),
    "AugmentConfig.color_jitter": AT_LEAST_0,
    "AugmentConfig.rotate": Range(0, 180),
    "AugmentConfig.scale_crop": FRACTION,
    "DataConfig.size": PIXELS,
    "DataConfig.multiscale": PIXELS,
    "DataConfig.eval_size": PIXELS,
    "DataConfig.batch_size": AT_LEAST_1,
    "DataConfig.num_workers": AT_LEAST_0,
    "DataConfig.mean": Range(0, 255),
    "DataConfig.std": POSITIVE,
    # optimiser and schedule
    "OptimConfig.lr": POSITIVE,
    "OptimConfig.swin_lr_scale": AT_LEAST_0,
    "OptimConfig.momentum": Range(0, 1, high_open=True),
    "OptimConfig.betas": Range(0, 1, high_open=True),
    "OptimConfig.weight_decay": AT_LEAST_0,
    "ScheduleConfig.warmup_epochs": AT_LEAST_0,
    "ScheduleConfig.min_lr_ratio": FRACTION,
    "ScheduleConfig.power": POSITIVE,
    # loss weights
    "LossConfig.pred": AT_LEAST_0,
    "LossConfig.side_cnn": AT_LEAST_0,
    "LossConfig.side_swin": AT_LEAST_0,
    "LossConfig.attention": AT_LEAST_0,
    "LossConfig.attention_points": AT_LEAST_0,  # the weight of each named point
    # training
    "TrainConfig.epochs": AT_LEAST_1,
    "TrainConfig.seed": AT_LEAST_0,
    "TrainConfig.grad_accum": AT_LEAST_1,
    "TrainConfig.clip_grad": POSITIVE,
    "TrainConfig.ema_decay": Range(0, 1, low_open=True, high_open=True),
    "TrainConfig.max_nonfinite_steps": AT_LEAST_0,
    "TrainConfig.val_every": AT_LEAST_1,
    "TrainConfig.checkpoint_every_steps": AT_LEAST_0,
    "TrainConfig.keep_recent": AT_LEAST_0,
    "TrainConfig.log_every": AT_LEAST_0,
    "TrainConfig.image_every": AT_LEAST_0,
    "TrainConfig.max_steps_per_epoch": AT_LEAST_1,
}

LIST_LENGTHS: dict[str, tuple[int, int | None]] = {  # (fewest, most) items
    "DataConfig.multiscale": (1, None),
    "DataConfig.mean": (3, 3),
    "DataConfig.std": (3, 3),
    "OptimConfig.betas": (2, 2),
}

DEVICE_PATTERN = re.compile(r"^(?:auto|cpu|mps|cuda(?::\d+)?)$")


def _kind(value: Any) -> str:
    return "an integer" if isinstance(value, int) else "a number"


def check_value(cls: type, name: str, value: Any, key: str) -> None:
    """Raise ConfigError naming ``key`` when ``value`` (of field ``name`` of ``cls``) is out of range."""
    qualified = f"{cls.__name__}.{name}"
    if qualified in LIST_LENGTHS and value is not None:
        fewest, most = LIST_LENGTHS[qualified]
        if len(value) < fewest or (most is not None and len(value) > most):
            wanted = f"{fewest}" if fewest == most else f"at least {fewest}"
            raise ConfigError(f"{key}: expected {wanted} values, got {len(value)}")
    allowed = RANGES.get(qualified)
    if allowed is None or value is None:
        return
    items = list(value.values()) if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else [value]
    for index, item in enumerate(items):
        if not allowed.contains(item):
            where = f"{key}[{index}]" if isinstance(value, (list, tuple)) else key
            raise ConfigError(f"{where}: {item!r} is out of range (allowed: {_kind(item)} {allowed})")


def evaluator_metric_names() -> list[str]:
    """The result keys the validation evaluator produces (``train.best_metric`` must be one)."""
    from pgnet.metrics.suite import ALL_METRICS, METRIC_GROUPS

    return [key for group in ALL_METRICS for key in METRIC_GROUPS[group]]


def check_config(config: Any) -> None:
    """Checks across fields: device syntax, ``best_metric``, unique validation labels."""
    train = config.train
    if not DEVICE_PATTERN.match(train.device):
        raise ConfigError(f"train.device: {train.device!r} is not a device (auto, cpu, cuda, cuda:N or mps)")
    metrics = evaluator_metric_names()
    if train.best_metric not in metrics:
        raise ConfigError(f"train.best_metric: {train.best_metric!r} is not a validation metric ({', '.join(metrics)})")
    labels = [entry.label for entry in config.data.val if entry.label is not None]
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise ConfigError(f"data.val: label {repeated[0]!r} is given to more than one validation set")
