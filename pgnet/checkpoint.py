"""Checkpoint files: atomic saving, loading, and ``load_model`` for project and official checkpoints.

A project checkpoint is a dict ``{"format": "pgnet", "version": 1, "model_config": {...},
"model": state_dict, "preprocessing": {"mean", "std", "eval_size"}, ...}``; the trainer adds its
own states beside. Files without ``preprocessing`` (older ones, official ones) get the official one.
It holds only tensors, numbers, strings and containers of them, so it loads with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from pgnet.data.preprocessing import Preprocessing
from pgnet.models.official import convert_official_state_dict, is_official_state_dict
from pgnet.models.pgnet import ModelConfig, PGNet

CHECKPOINT_FORMAT = "pgnet"
CHECKPOINT_VERSION = 1


def save_checkpoint(state: Mapping[str, Any], path: str | Path) -> Path:
    """Write ``state`` to ``path`` atomically.

    The file is written beside the target, flushed to disk, then renamed over it, so a kill at any
    moment leaves either the old file or the new one, never a truncated one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            torch.save(dict(state), stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint file (tensors and plain data only); errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:
        raise ValueError(f"cannot read checkpoint {path}: {error}") from error
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a dict, found {type(state).__name__}")
    return state


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
    """Build the network a checkpoint dict describes (project format or an official state dict)."""
    if state.get("format") == CHECKPOINT_FORMAT:
        values = dict(state["model_config"])
        # Backbone files are only for initialisation: a full checkpoint needs none of them.
        values.update(swin_pretrained=None, resnet_pretrained=None)
        model = PGNet(ModelConfig.from_dict(values))
        if weights not in state:
            raise KeyError(f"{source}: no {weights!r} weights in this checkpoint (has {sorted(state)})")
        model.load_state_dict(state[weights], strict=True)
        return model
    if is_official_state_dict(state):
        model = PGNet()
        converted, _ = convert_official_state_dict(state, model)
        model.load_state_dict(converted, strict=True)
        return model
    raise ValueError(f"{source}: neither a pgnet checkpoint nor an official PGNet state dict")


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
    model = PGNet()
    converted, unused = convert_official_state_dict(state, model)
    model.load_state_dict(converted, strict=True)
    save_checkpoint(model_checkpoint(model, converted_from=str(source)), destination)
    return unused
