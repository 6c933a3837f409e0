"""What ``--resume RUN [key=value ...]`` may change, decided before anything runs.

A resumed run continues the run's own ``config.yaml``. Overrides may change only the keys in
:data:`RESUMABLE_KEYS`: the length of the run, logging and checkpoint cadence, and where and how
fast it executes. Each accepted change is recorded in the run's ``config.yaml`` under
``resume_changes`` with the global step it took effect at. Any other change (the model, the data,
the optimiser, the schedule, the loss...) would make the run something its checkpoint is not, and
is refused naming the key. A run that has done all its epochs is reported finished.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pgnet.checkpoint import CheckpointError, load_checkpoint
from pgnet.config import Config, ConfigError, load_config
from pgnet.models.weights import CheckpointNotFoundError
from pgnet.train.run_dir import check_not_busy

# train.epochs also stretches the LR schedule to the new length from the resume step on.
# train.device, train.compile and train.channels_last keep the maths but not bitwise equality.
RESUMABLE_KEYS: tuple[str, ...] = (
    "train.epochs",
    "train.val_every",
    "train.log_every",
    "train.image_every",
    "train.checkpoint_every_steps",
    "train.keep_recent",
    "train.max_nonfinite_steps",
    "train.device",
    "train.compile",
    "train.channels_last",
    "data.num_workers",
)


class ResumeOverrideError(ConfigError):
    """An override that a resumed run cannot take."""


@dataclass
class ResumePlan:
    """The config to continue with, the position of ``last.pth`` and the changes accepted."""

    config: Config
    position: dict[str, int]
    changes: list[dict[str, Any]] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.position["epoch"] >= self.config.train.epochs


def _flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def changed_keys(before: Config, after: Config) -> dict[str, tuple[Any, Any]]:
    """``{dotted key: (before, after)}`` for every value that differs (lists compared whole)."""
    old, new = _flatten(before.to_dict()), _flatten(after.to_dict())
    keys = sorted(old.keys() | new.keys())
    return {key: (old.get(key), new.get(key)) for key in keys if old.get(key) != new.get(key)}


def read_position(run_dir: Path) -> dict[str, int]:
    """``{"epoch", "step_in_epoch", "global_step"}`` of ``run_dir/checkpoints/last.pth``."""
    path = run_dir / "checkpoints" / "last.pth"
    if not path.is_file():
        raise CheckpointNotFoundError(f"{run_dir} has no checkpoints/last.pth to resume from")
    state = load_checkpoint(path)
    if "position" not in state:
        raise CheckpointError(f"{path} is not a training checkpoint (no position): start a new run instead")
    return dict(state["position"])


def plan_resume(run_dir: str | Path, overrides: Sequence[str] = ()) -> ResumePlan:
    """Check ``overrides`` against the policy and return the config to resume ``run_dir`` with.

    Raises ResumeOverrideError naming the first key that may not change; reads, never writes."""
    run_dir = Path(run_dir)
    check_not_busy(run_dir)
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise ConfigError(f"{run_dir} is not a run folder: no config.yaml")
    stored = load_config(config_path)
    config = load_config(config_path, overrides)
    changes = changed_keys(stored, config)
    for key, (old, new) in changes.items():
        if key not in RESUMABLE_KEYS:
            raise ResumeOverrideError(
                f"{key} cannot change when resuming {run_dir} ({old!r} -> {new!r}); a resumed run may change only "
                f"{', '.join(RESUMABLE_KEYS)}. Start a new run for the rest: --config {config_path} {key}=..."
            )
    position = read_position(run_dir)
    if config.train.epochs < position["epoch"]:
        raise ResumeOverrideError(
            f"train.epochs: {config.train.epochs} is fewer than the {position['epoch']} epochs {run_dir} has done"
        )
    records = [
        {"step": position["global_step"], "epoch": position["epoch"], "key": key, "old": old, "new": new}
        for key, (old, new) in changes.items()
    ]
    config.resume_changes = [*stored.resume_changes, *records]
    return ResumePlan(config=config, position=position, changes=records)
