"""Checkpoint files: atomic saving, loading, and ``load_model`` for project and official checkpoints.

A project checkpoint is a dict ``{"format": "pgnet", "version": 1, "model_config": {...},
"model": state_dict, "preprocessing": {"mean", "std", "eval_size"}, ...}``; the trainer adds its
own states beside. Files without ``preprocessing`` (older ones, official ones) get the official one.
It holds only tensors, numbers, strings and containers of them, so it loads with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch

from pgnet.data.preprocessing import Preprocessing
from pgnet.models.official import convert_official_state_dict, is_official_state_dict
from pgnet.models.pgnet import ModelConfig, PGNet
from pgnet.models.weights import CheckpointError, first_line, read_weights_file
from pgnet.writing import atomic_write

CHECKPOINT_FORMAT = "pgnet"
CHECKPOINT_VERSION = 1
_SHOWN_KEYS = 8
def save_checkpoint(state: Mapping[str, Any], path: str | Path) -> Path:
    """Write ``state`` to ``path`` atomically (``pgnet.writing.atomic_write``).

    The file is written beside the target, flushed to disk, then renamed over it, so a kill at any
    moment leaves either the old file or the new one, never a truncated one; a full disk is a
    ``NoSpaceError`` naming the file.
    """
    return atomic_write(path, lambda stream: torch.save(dict(state), stream))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint file (tensors and plain data only); every error is a one-line
    :class:`CheckpointError` naming the file."""
    state = read_weights_file(path, map_location)
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path}: expected a dict, found {type(state).__name__}")
    return state


def require_fields(state: Mapping[str, Any], source: str | Path, names: Sequence[str]) -> None:
    """Raise :class:`CheckpointError` naming every field of ``names`` missing from ``state``."""
    missing = [name for name in names if name not in state]
    if missing:
        raise CheckpointError(
            f"checkpoint {source}: missing field{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
            f"(it has: {', '.join(sorted(map(str, state)))})"
        )


def _shown(items: Sequence[str]) -> str:
    more = f", ... ({len(items) - _SHOWN_KEYS} more)" if len(items) > _SHOWN_KEYS else ""
    return ", ".join(items[:_SHOWN_KEYS]) + more


def weight_entries(state: Mapping[str, Any]) -> list[str]:
    """Entries of a project checkpoint that hold network weights (a non-empty dict of tensors)."""
    return sorted(
        key for key, value in state.items()
        if isinstance(value, Mapping) and value and all(isinstance(v, torch.Tensor) for v in value.values())
    )


def _check_type(name: str, value: Any, default: Any) -> str | None:
    """Why ``value`` cannot stand for a ModelConfig field whose default is ``default`` (None if it can)."""
    if default is None:
        ok = value is None or isinstance(value, str)
        expected = "a string or null"
    elif isinstance(default, bool):
        ok, expected = isinstance(value, bool), "true or false"
    elif isinstance(default, int):
        ok, expected = isinstance(value, int) and not isinstance(value, bool), "an integer"
    elif isinstance(default, float):
        ok, expected = isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
    elif isinstance(default, str):
        ok, expected = isinstance(value, str), "a string"
    elif isinstance(default, (tuple, list)):
        ok = isinstance(value, (tuple, list)) and all(isinstance(item, str) for item in value)
        expected = "a list of strings"
    else:
        return None
    return None if ok else f"{name} = {value!r} ({type(value).__name__}), expected {expected}"


def model_config_from_checkpoint(values: Any, source: str) -> ModelConfig:
    """The ModelConfig stored in a checkpoint, checked key by key and type by type."""
    if not isinstance(values, Mapping):
        raise CheckpointError(f"checkpoint {source}: model_config is a {type(values).__name__}, expected a mapping")
    defaults = {f.name: getattr(ModelConfig(), f.name) for f in fields(ModelConfig)}
    unknown = sorted(set(map(str, values)) - set(defaults))
    if unknown:
        raise CheckpointError(f"checkpoint {source}: unknown model_config keys {', '.join(unknown)}")
    problems = [p for name, value in values.items() if (p := _check_type(name, value, defaults[name]))]
    if problems:
        raise CheckpointError(f"checkpoint {source}: wrongly typed model_config values: {'; '.join(problems)}")
    try:
        return ModelConfig.from_dict(dict(values))
    except (TypeError, ValueError, KeyError) as error:
        raise CheckpointError(f"checkpoint {source}: invalid model_config: {first_line(error)}") from None


def load_weights(model: torch.nn.Module, weights: Mapping[str, torch.Tensor], source: str) -> None:
    """``model.load_state_dict(weights, strict=True)``; a misfit names the missing, unexpected and
    mis-shaped keys in one line."""
    target = model.state_dict()
    missing = sorted(set(target) - set(weights))
    unexpected = sorted(set(weights) - set(target))
    shapes = [
        f"{key} (file {tuple(weights[key].shape)}, model {tuple(target[key].shape)})"
        for key in sorted(set(target) & set(weights))
        if isinstance(weights[key], torch.Tensor) and weights[key].shape != target[key].shape
    ]
    problems = []
    if shapes:
        problems.append(f"wrong shapes: {_shown(shapes)}")
    if missing:
        problems.append(f"missing keys: {_shown(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_shown(unexpected)}")
    if problems:
        raise CheckpointError(f"{source}: the weights do not fit the model; {'; '.join(problems)}")
    model.load_state_dict(weights, strict=True)


def model_checkpoint(model: PGNet, preprocessing: Preprocessing | None = None, **extra: Any) -> dict[str, Any]:
    """A project checkpoint holding ``model``'s config, weights and input ``preprocessing`` (the
    official one when None), plus ``extra`` entries."""
    model = getattr(model, "module", model)  # unwrap DDP
    return {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "model_config": model.config.to_dict(),
        "model": model.state_dict(),
        "preprocessing": (preprocessing or Preprocessing()).to_dict(),
        **extra,
    }


def model_from_checkpoint(state: Mapping[str, Any], source: str = "checkpoint", weights: str = "model") -> PGNet:
    """Build the network a checkpoint dict describes (project format or an official state dict).

    Every problem is a one-line :class:`CheckpointError` naming ``source``: missing fields, wrongly
    typed config values, absent weights (listing the weights it has), keys or shapes that do not fit.
    """
    if state.get("format") == CHECKPOINT_FORMAT:
        require_fields(state, source, ("model_config",))
        config = model_config_from_checkpoint(state["model_config"], source)
        # Backbone files are only for initialisation: a full checkpoint needs none of them.
        config.swin_pretrained = config.resnet_pretrained = None
        if state.get(weights) is None:
            available = weight_entries(state)
            raise CheckpointError(
                f"checkpoint {source}: no {weights!r} weights (it has: {', '.join(available) or 'none'})"
            )
        try:
            model = PGNet(config)
        except (TypeError, ValueError, KeyError, RuntimeError) as error:
            raise CheckpointError(f"checkpoint {source}: cannot build its model_config: {first_line(error)}") from None
        load_weights(model, state[weights], f"checkpoint {source} ({weights!r} weights)")
        return model
    if is_official_state_dict(state):
        model = PGNet()
        converted, _ = convert_official_state_dict(state, model)
        model.load_state_dict(converted, strict=True)
        return model
    raise CheckpointError(f"{source}: neither a pgnet checkpoint nor an official PGNet state dict")


def load_model(
    path: str | Path, device: str | torch.device | None = None, weights: str = "model"
) -> PGNet:
    """Load a network from a project checkpoint or a released official one, in eval mode.

    ``weights`` picks which weights of a project checkpoint to load (``"model"``, or ``"ema"`` where
    the trainer kept an EMA). ``load_model_and_preprocessing`` also returns how to feed it.
    """
    return load_model_and_preprocessing(path, device, weights)[0]


def load_model_and_preprocessing(
    path: str | Path, device: str | torch.device | None = None, weights: str = "model"
) -> tuple[PGNet, Preprocessing]:
    """``load_model``, with the input preprocessing the checkpoint records (official when none)."""
    state = load_checkpoint(path)
    preprocessing = Preprocessing.from_checkpoint(state, source=str(path))
    model = model_from_checkpoint(state, source=str(path), weights=weights)
    return model.to(device or "cpu").eval(), preprocessing


def convert_official_checkpoint(source: str | Path, destination: str | Path) -> list[str]:
    """Convert a released official checkpoint to a project checkpoint; returns the unused keys."""
    state = load_checkpoint(source)
    if state.get("format") == CHECKPOINT_FORMAT:
        raise CheckpointError(f"{source}: already a pgnet checkpoint; nothing to convert (use it as it is)")
    if not is_official_state_dict(state):
        raise CheckpointError(f"{source}: not an official PGNet state dict (keys such as {_shown(sorted(state)[:3])})")
    model = PGNet()
    converted, unused = convert_official_state_dict(state, model)
    model.load_state_dict(converted, strict=True)
    save_checkpoint(model_checkpoint(model, converted_from=str(source)), destination)
    return unused
