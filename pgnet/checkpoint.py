"""Checkpoint files: atomic saving, loading, and ``load_model`` for project and official checkpoints.

A project checkpoint is a dict ``{"format": "pgnet", "version": 1, "model_config": {...},
"model": state_dict, "preprocessing": {"mean", "std", "eval_size"}, ...}``; the trainer adds its
own states beside. Files without ``preprocessing`` (older ones, official ones) get the official one.
It holds only tensors, numbers, strings and containers of them, so it loads with
``torch.load(weights_only=True)``.

:func:`read_model_weights` is the one place that tells a project checkpoint from a released official
one; ``load_model``, ``convert_official_checkpoint`` and ``train.init_from`` all read through it.

A model package is the released form of a model: a folder holding ``config.json`` (the model config
and the preprocessing), ``model.safetensors`` (the weights only, float32 or float16) and a
``README.md`` model card, and optionally ``int8_calibration.json`` (the model's int8 calibration, see
``pgnet.predict.int8``). Nothing in it is a pickle. :func:`read_model_weights` reads a package folder
as one more kind of input, so every command and ``Predictor`` accepts it where it accepts a checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pgnet.config import ConfigError, model_config_from_dict
from pgnet.data.preprocessing import Preprocessing
from pgnet.errors import format_list
from pgnet.models.hub import check_known_file
from pgnet.models.official import convert_official_state_dict, is_official_state_dict
from pgnet.models.pgnet import ModelConfig, PGNet
from pgnet.models.weights import CheckpointError, compare_weights, first_line, read_safetensors, read_weights_file
from pgnet.writing import atomic_write, write_bytes, write_text

CHECKPOINT_FORMAT = "pgnet"
CHECKPOINT_VERSION = 1
PACKAGE_FORMAT = "pgnet-package"
PACKAGE_VERSION = 1
PACKAGE_CONFIG = "config.json"
PACKAGE_WEIGHTS = "model.safetensors"
PACKAGE_CARD = "README.md"
PACKAGE_INT8_CALIBRATION = "int8_calibration.json"  # optional: read by ``pgnet.predict`` (see ``pgnet.predict.int8``)
# Entries of a training checkpoint that describe the run (kept in ``ModelWeights.info`` for model cards).
RUN_INFO_FIELDS = ("best", "best_step", "history", "position", "converted_from")


class MissingWeightsError(CheckpointError):
    """A project checkpoint without the weights asked for (``ema`` where the trainer kept none)."""


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


def weight_entries(state: Mapping[str, Any]) -> list[str]:
    """Entries of a project checkpoint that hold network weights (a non-empty dict of tensors)."""
    return sorted(
        key for key, value in state.items()
        if isinstance(value, Mapping) and value and all(isinstance(v, torch.Tensor) for v in value.values())
    )


def load_weights(model: torch.nn.Module, weights: Mapping[str, torch.Tensor], source: str) -> None:
    """``model.load_state_dict(weights, strict=True)``; a misfit is one :class:`CheckpointError` line
    naming ``source`` and the mis-shaped, missing and unexpected keys."""
    compare_weights(weights, model.state_dict()).check(source)
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


@dataclass
class ModelWeights:
    """The network weights of a checkpoint file, and what builds and feeds the network they fit."""

    path: Path
    weights: str  # which weights of a project checkpoint were read ("model", "ema")
    state_dict: dict[str, torch.Tensor]  # a project checkpoint's; an official file's as released
    config: ModelConfig  # the checkpoint's (backbone files left out); the default one for an official file
    preprocessing: Preprocessing  # the checkpoint's; the official one where it records none
    official: bool  # a released official checkpoint: its keys go through ``convert_official_state_dict``
    info: dict[str, Any] = field(default_factory=dict)  # the run's record (RUN_INFO_FIELDS) when the file has it

    @property
    def description(self) -> str:
        """The file and which of its weights, as logs and messages name them."""
        kind = "official PGNet checkpoint, converted" if self.official else f"{self.weights} weights"
        return f"{self.path} ({kind})"


def read_model_weights(path: str | Path, weights: str = "model") -> ModelWeights:
    """Read the network weights of a project checkpoint (its ``weights`` entry) or an official one.

    Every problem is a one-line :class:`CheckpointError` naming the file: unreadable, neither kind,
    a missing field, a stored ``model_config`` that the config schema refuses (the message names the
    key, as for a config file), absent weights (:class:`MissingWeightsError`, listing those it has).
    A folder is read as a model package (:func:`read_model_package`).
    """
    path = Path(path)
    if path.is_dir():
        if weights != "model":
            raise MissingWeightsError(f"model package {path}: holds one set of weights; {weights!r} cannot be chosen")
        return read_model_package(path)
    if path.is_file():
        check_known_file(path, "checkpoint")  # a released file's name with other contents is refused
    state = load_checkpoint(path)
    preprocessing = Preprocessing.from_checkpoint(state, source=str(path))
    if state.get("format") == CHECKPOINT_FORMAT:
        require_fields(state, path, ("model_config",))
        try:
            config = model_config_from_dict(state["model_config"], "model_config")
        except ConfigError as error:
            raise CheckpointError(f"checkpoint {path}: {error}") from None
        # Backbone files are only for initialisation: a full checkpoint needs none of them.
        config = dataclasses.replace(config, swin_pretrained=None, resnet_pretrained=None)
        if not isinstance(state.get(weights), Mapping):
            available = weight_entries(state)
            raise MissingWeightsError(
                f"checkpoint {path}: no {weights!r} weights (it has: {', '.join(available) or 'none'})"
            )
        info = {key: state[key] for key in RUN_INFO_FIELDS if state.get(key) is not None}
        return ModelWeights(path, weights, dict(state[weights]), config, preprocessing, official=False, info=info)
    if is_official_state_dict(state):
        return ModelWeights(path, weights, state, ModelConfig(), preprocessing, official=True)
    raise CheckpointError(
        f"{path}: neither a pgnet checkpoint nor an official PGNet state dict "
        f"(it has: {format_list(sorted(map(str, state)), 3) or 'nothing'})"
    )


def build_model(found: ModelWeights) -> PGNet:
    """The network ``found`` describes, holding its weights (training mode, on the CPU)."""
    try:
        model = PGNet(found.config)
    except (TypeError, ValueError, KeyError, RuntimeError) as error:
        raise CheckpointError(f"checkpoint {found.path}: cannot build its model_config: {first_line(error)}") from None
    weights = found.state_dict
    if found.official:
        weights, _ = convert_official_state_dict(weights, model, source=f"official checkpoint {found.path}")
    load_weights(model, weights, f"checkpoint {found.description}")
    return model


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
    found = read_model_weights(path, weights)
    return build_model(found).to(device or "cpu").eval(), found.preprocessing


def convert_official_checkpoint(source: str | Path, destination: str | Path) -> list[str]:
    """Convert a released official checkpoint to a project checkpoint; returns the unused keys."""
    found = read_model_weights(source)
    if not found.official:
        raise CheckpointError(f"{source}: already a pgnet checkpoint; nothing to convert (use it as it is)")
    model = PGNet()
    converted, unused = convert_official_state_dict(found.state_dict, model, source=f"official checkpoint {source}")
    model.load_state_dict(converted, strict=True)
    save_checkpoint(model_checkpoint(model, converted_from=str(source)), destination)
    return unused


def write_model_package(
    found: ModelWeights, folder: str | Path, *, half: bool = False, card: str = "", overwrite: bool = False,
    int8_calibration: str | None = None,
) -> Path:
    """Write the model ``found`` describes as a package folder (see the module docstring).

    ``half`` stores floating-point weights as float16 (half the size; read back as float32). ``card``
    is the text of ``README.md``; ``int8_calibration`` the text of ``int8_calibration.json`` (without
    it, an overwritten package's old calibration is removed: it was made for other weights). An
    existing package is refused unless ``overwrite``. Each file is written atomically; an official
    checkpoint's keys are converted first.
    """
    from safetensors.torch import save  # lazy: only exporting a package needs it

    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise CheckpointError(f"model package {folder}: exists and is not a folder")
    if (folder / PACKAGE_CONFIG).exists() and not overwrite:
        raise CheckpointError(f"model package {folder}: already holds a {PACKAGE_CONFIG} "
                              "(overwrite it with --overwrite)")
    weights = build_model(found).state_dict()  # converted, checked against the network it builds
    dtype = torch.float16 if half else torch.float32
    tensors = {key: (value.to(dtype) if value.is_floating_point() else value).detach().contiguous().clone()
               for key, value in weights.items()}  # cloned: safetensors refuses tensors sharing memory
    config = {
        "format": PACKAGE_FORMAT,
        "version": PACKAGE_VERSION,
        "model_config": found.config.to_dict(),
        "preprocessing": found.preprocessing.to_dict(),
        "dtype": str(dtype).removeprefix("torch."),
        "source": found.description,
    }
    folder.mkdir(parents=True, exist_ok=True)
    write_bytes(folder / PACKAGE_WEIGHTS, save(tensors, metadata={"format": "pt"}))
    write_text(folder / PACKAGE_CARD, card)
    if int8_calibration is not None:
        write_text(folder / PACKAGE_INT8_CALIBRATION, int8_calibration)
    else:
        (folder / PACKAGE_INT8_CALIBRATION).unlink(missing_ok=True)
    write_text(folder / PACKAGE_CONFIG, json.dumps(config, indent=2) + "\n")  # last: its presence marks a whole package
    return folder


def read_model_package(folder: str | Path, dtype: torch.dtype = torch.float32) -> ModelWeights:
    """Read a model package folder: its config, preprocessing and weights (floating point as ``dtype``).

    Every problem is a one-line :class:`CheckpointError` naming the folder or file.
    """
    folder = Path(folder)
    config_path, weights_path = folder / PACKAGE_CONFIG, folder / PACKAGE_WEIGHTS
    for path in (config_path, weights_path):
        if not path.is_file():
            raise CheckpointError(f"model package {folder}: no {path.name} (a package holds {PACKAGE_CONFIG} and "
                                  f"{PACKAGE_WEIGHTS})")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"model package {config_path}: unreadable ({first_line(error)})") from None
    if not isinstance(config, dict) or config.get("format") != PACKAGE_FORMAT:
        raise CheckpointError(f"model package {config_path}: not a pgnet package config (no format {PACKAGE_FORMAT!r})")
    require_fields(config, config_path, ("model_config", "preprocessing"))
    try:
        model_config = model_config_from_dict(config["model_config"], "model_config")
    except ConfigError as error:
        raise CheckpointError(f"model package {config_path}: {error}") from None
    model_config = dataclasses.replace(model_config, swin_pretrained=None, resnet_pretrained=None)
    preprocessing = Preprocessing.from_checkpoint(config, source=str(config_path))
    tensors = read_safetensors(weights_path, what="model package")
    tensors = {key: value.to(dtype) if value.is_floating_point() else value for key, value in tensors.items()}
    return ModelWeights(folder, "model", tensors, model_config, preprocessing, official=False,
                        info={"source": config.get("source")})
