"""What ``--resume RUN [key=value ...]`` may change, decided before anything runs.

A resumed run continues the recipe its ``last.pth`` holds (the whole config, saved with every
checkpoint), never a file a user can edit: a ``config.yaml`` that differs from it is refused, naming
the keys (checkpoints written before the recipe was saved fall back to ``config.yaml``). Overrides
may change only the keys in :data:`RESUMABLE_KEYS`: the length of the run, logging and checkpoint
cadence, and where and how fast it executes. Each accepted change is recorded in the recipe (and the
run's ``config.yaml``) under ``resume_changes`` with the global step it took effect at. Any other
change (the model, the data, the optimiser, the schedule, the loss...) would make the run something
its checkpoint is not, and is refused naming the key. A run that has done all its epochs is reported
finished.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pgnet.checkpoint import CheckpointError, load_checkpoint
from pgnet.config import Config, ConfigError, apply_overrides, build_config, load_config
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


def _last_checkpoint(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "checkpoints" / "last.pth"
    if not path.is_file():
        raise CheckpointNotFoundError(f"{run_dir} has no checkpoints/last.pth to resume from")
    state = load_checkpoint(path)
    if "position" not in state:
        raise CheckpointError(f"{path} is not a training checkpoint (no position): start a new run instead")
    return state


def _edited_keys(recipe: Config, on_disk: Config, step: int) -> list[str]:
    """The keys where ``config.yaml`` differs from the checkpoint's recipe, less those a resume at
    ``step`` recorded before it was stopped short of its first save (its ``resume_changes``)."""
    stored = recipe.resume_changes
    recorded = on_disk.resume_changes[len(stored):]
    explained = {change.get("key"): change.get("new") for change in recorded if change.get("step") == step}
    edited = [key for key, (_, new) in changed_keys(recipe, on_disk).items()
              if key != "resume_changes" and not (key in explained and explained[key] == new)]
    if on_disk.resume_changes[: len(stored)] != stored or len(explained) != len(recorded):
        edited.append("resume_changes")
    return edited


def plan_resume(run_dir: str | Path, overrides: Sequence[str] = ()) -> ResumePlan:
    """Check ``overrides`` against the policy and return the config to resume ``run_dir`` with.

    The recipe is the one ``last.pth`` holds; raises ResumeOverrideError when ``config.yaml`` was
    edited away from it, or naming the first override key that may not change; reads, never writes."""
    run_dir = Path(run_dir)
    check_not_busy(run_dir)
    config_path = run_dir / "config.yaml"
    if not config_path.is_file() and not (run_dir / "checkpoints" / "last.pth").is_file():
        raise ConfigError(f"{run_dir} is not a run folder: no config.yaml")
    checkpoint = _last_checkpoint(run_dir)
    position = dict(checkpoint["position"])
    if checkpoint.get("config") is not None:
        recipe = build_config(checkpoint["config"])
        if config_path.is_file():
            edited = _edited_keys(recipe, load_config(config_path), position["global_step"])
            if edited:
                raise ResumeOverrideError(
                    f"{config_path} differs from the recipe its checkpoints/last.pth holds in {', '.join(edited)}; "
                    f"a run resumes with its checkpoint's recipe: undo the edit (or delete {config_path.name}), "
                    f"and give the changes a resume may make as overrides ({', '.join(RESUMABLE_KEYS)}), or start "
                    "a new run for the rest"
                )
        stored = recipe
        config = build_config(apply_overrides(checkpoint["config"], overrides))
    elif config_path.is_file():  # a checkpoint written before the recipe was saved in it
        stored = load_config(config_path)
        config = load_config(config_path, overrides)
    else:
        raise ConfigError(f"{run_dir} is not a run folder: no config.yaml")
    changes = changed_keys(stored, config)
    for key, (old, new) in changes.items():
        if key not in RESUMABLE_KEYS:
            raise ResumeOverrideError(
                f"{key} cannot change when resuming {run_dir} ({old!r} -> {new!r}); a resumed run may change only "
                f"{', '.join(RESUMABLE_KEYS)}. Start a new run for the rest: --config {config_path} {key}=..."
            )
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
