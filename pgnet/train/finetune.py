"""The fine-tuning side of a run: starting weights (``train.init_from``) and frozen parts (``train.freeze``).

``init_from`` names a project checkpoint (its ``model`` or ``ema`` weights, ``train.init_weights``)
or a released official one (converted on the fly). It only sets the starting weights: optimiser,
schedule and epoch start fresh, and a resumed run continues from its own checkpoint without reading
it. The load is accounted for (loaded, new, unused; see :mod:`pgnet.models.weights`) in the run's log.

``freeze`` lists parts of the model (:func:`model_parts`, or any module path) whose parameters get
no gradient and which stay in eval mode, so their BatchNorm statistics do not move either. The
optimiser only gets the parameters that train; DDP leaves out those without ``requires_grad``, so a
frozen part needs no ``find_unused_parameters``.

:class:`FineTuning` checks everything a user can get wrong before the run folder is made, on a model
built on the meta device (no memory, no initialisation): the file exists and is a checkpoint, its
tensors fit the configured model, every freeze name matches, and something is left to train.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from pgnet.checkpoint import CHECKPOINT_FORMAT, MissingWeightsError, load_checkpoint, read_model_weights
from pgnet.config import Config, build_config, model_config_from_dict
from pgnet.errors import UserError
from pgnet.models.official import convert_official_state_dict
from pgnet.models.pgnet import ModelConfig, PGNet
from pgnet.models.weights import (
    CheckpointNotFoundError,
    LoadReport,
    WeightsMismatchError,
    account_weights,
    load_weights_with_report,
)

HEAD_MODULES = ("head_pred", "head_side_cnn", "head_side_swin", "attention_heads")
BACKBONE_FILE_KEYS = ("swin_pretrained", "resnet_pretrained")


class FineTuneError(UserError):
    """A fine-tuning setting that cannot work; the message names the key and the value."""


def model_parts(model: PGNet) -> dict[str, tuple[str, ...]]:
    """Freezable part names → module paths: ``swin``, ``resnet``, ``decoder`` (grafting points included),
    ``graft`` (every grafting point), ``graft.<point>`` (one, e.g. ``graft.r5-s2``) and ``heads``."""
    paths = {id(module): name for name, module in model.named_modules()}
    grafts = {f"graft.{point}": paths[id(module)] for point, module in model.decoder.graft_modules().items()}
    return {
        "swin": ("swin",),
        "resnet": ("resnet",),
        "decoder": ("decoder",),
        "graft": tuple(grafts.values()),
        **{name: (path,) for name, path in grafts.items()},
        "heads": HEAD_MODULES,
    }


def resolve_freeze(model: PGNet, names: Sequence[str]) -> tuple[str, ...]:
    """The module paths ``names`` (part names or module paths) stand for; an unknown name is an error
    listing the valid ones."""
    parts = model_parts(model)
    modules = {name for name, _ in model.named_modules() if name}
    resolved: list[str] = []
    for name in names:
        if name in parts:
            resolved.extend(parts[name])
        elif name in modules:
            resolved.append(name)
        else:
            raise FineTuneError(
                f"train.freeze: {name!r} matches no part of the model; valid names: {', '.join(parts)}, "
                "or a module path such as decoder.swin4_block"
            )
    return tuple(dict.fromkeys(resolved))


def freeze(model: PGNet, names: Sequence[str]) -> tuple[int, int]:
    """Freeze the parts ``names``: no gradient, eval mode from now on (also after ``model.train()``).

    Returns (trainable parameters, all parameters). Raises ``FineTuneError`` for an unknown name or
    when nothing would be left to train.
    """
    paths = resolve_freeze(model, names)
    for path in paths:
        for param in model.get_submodule(path).parameters():
            param.requires_grad_(False)
    model.frozen_modules = tuple(dict.fromkeys((*model.frozen_modules, *paths)))
    model.train(model.training)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    if trainable == 0:
        raise FineTuneError(f"train.freeze {list(names)} leaves no parameter to train")
    return trainable, total


def read_starting_weights(path: str | Path, weights: str = "model") -> tuple[dict[str, torch.Tensor], str, dict]:
    """The weights of a checkpoint file in this project's names (``pgnet.checkpoint.read_model_weights``).

    Returns (state dict, a description of the source, the model config the weights were trained
    with: the checkpoint's, or the default one for an official file).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointNotFoundError(f"train.init_from: {path} does not exist")
    try:
        found = read_model_weights(path, weights)
        state = found.state_dict
        if found.official:
            state, _ = convert_official_state_dict(state, partial=True, source=f"official checkpoint {path}")
    except MissingWeightsError as error:
        raise FineTuneError(f"train.init_weights: {error}") from error
    except ValueError as error:
        raise FineTuneError(f"train.init_from: {error}") from error
    return state, found.description, found.config.to_dict()


def yaml_value(value: Any) -> str:
    """A setting as an override writes it: ``[r5-s2, r4-s1]``, ``true``, ``null``, ``swin_tiny_...``."""
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(yaml_value(item) for item in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    return "null" if value is None else str(value)


def model_overrides(settings: Mapping[str, Any]) -> str:
    """Command-line overrides that set ``settings`` (quoted where a shell needs it)."""
    words = [f"model.{key}={yaml_value(value)}" for key, value in settings.items()]
    return " ".join(f'"{word}"' if any(c in word for c in " []") else word for word in words)


def checkpoint_model_settings(path: str | Path) -> dict[str, Any] | None:
    """The model settings a project checkpoint records (backbone files left out); None for an official
    file or one that cannot be read (:class:`FineTuning` then says what is wrong with it)."""
    try:
        state = load_checkpoint(path)
        if state.get("format") != CHECKPOINT_FORMAT:
            return None
        settings = model_config_from_dict(state.get("model_config"), "model_config").to_dict()
    except UserError:
        return None
    return {key: value for key, value in settings.items() if key not in BACKBONE_FILE_KEYS}


def adopt_model_settings(config: Config, explicit: Collection[str]) -> tuple[Config, list[str]]:
    """``config`` with the model settings of its ``train.init_from`` project checkpoint, except those in
    ``explicit`` (the keys the config file or the command line set: ``pgnet.config.keys_set``).

    Returns (the config, lines saying what was adopted and what the config overrode). Nothing changes
    without ``init_from``, for an official checkpoint (its settings are the defaults) or an unreadable
    file.
    """
    if not config.train.init_from or not Path(config.train.init_from).is_file():
        return config, []
    theirs = checkpoint_model_settings(config.train.init_from)
    if theirs is None:
        return config, []
    ours = config.model.to_dict()
    adopted = {key: value for key, value in theirs.items() if key not in explicit and value != ours[key]}
    overridden = {key: value for key, value in theirs.items() if key in explicit and value != ours[key]}
    lines = []
    if adopted:
        values = config.to_dict()
        values["model"].update(adopted)
        config = build_config(values)
        lines.append(f"model settings from {config.train.init_from}: "
                     + ", ".join(f"{key}={yaml_value(value)}" for key, value in adopted.items()))
    if overridden:
        lines.append("model settings of the config or the command line, not the checkpoint's: " + ", ".join(
            f"{key}={yaml_value(ours[key])} (checkpoint: {yaml_value(value)})" for key, value in overridden.items()))
    return config, lines


def config_differences(theirs: Mapping, ours: ModelConfig) -> dict[str, tuple[Any, Any]]:
    """``key: (theirs, ours)`` for each model setting that differs (backbone files aside)."""
    mine = ours.to_dict()
    return {
        key: (theirs[key], mine[key])
        for key in mine
        if key in theirs and key not in BACKBONE_FILE_KEYS and theirs[key] != mine[key]
    }


def describe_differences(differences: Mapping[str, tuple[Any, Any]]) -> str:
    """``key: theirs -> ours; ...``."""
    return "; ".join(f"{key}: {theirs!r} -> {ours!r}" for key, (theirs, ours) in differences.items())


class FineTuning:
    """The starting weights and frozen parts of a run, checked on construction (before any folder
    is made) and applied to the built model by :meth:`apply`.

    With ``resume`` the run continues from its own checkpoint: ``init_from`` is not read (the file may
    be gone), the freeze still applies.
    """

    def __init__(self, config: Config, resume: bool = False):
        train = config.train
        self.init_from = train.init_from
        self.freeze_names = list(train.freeze)
        self.resume = resume
        # The starting weights (or the resumed checkpoint) replace the backbone files: not needed then.
        self.model_config = config.model
        if self.init_from or resume:
            self.model_config = dataclasses.replace(config.model, **dict.fromkeys(BACKBONE_FILE_KEYS))
        self._state: dict[str, torch.Tensor] | None = None
        self._source = ""
        self._differences: dict[str, tuple[Any, Any]] = {}
        if self.init_from and not resume:
            self._state, self._source, trained_with = read_starting_weights(self.init_from, train.init_weights)
            self._differences = config_differences(trained_with, self.model_config)
        if self._state is not None or self.freeze_names:
            with torch.device("meta"):
                skeleton = PGNet(self.model_config)
            if self._state is not None:
                try:
                    account_weights(skeleton.state_dict(), self._state, self._source)
                except WeightsMismatchError as error:
                    if not self._differences:
                        raise
                    fix = {key: theirs for key, (theirs, _) in self._differences.items()}
                    raise WeightsMismatchError(
                        f"{error}. The checkpoint was trained with other model settings "
                        f"({describe_differences(self._differences)}): leave them out of the config and the "
                        f"command line (pgnet-train then takes the checkpoint's), or set {model_overrides(fix)}"
                    ) from None
            if self.freeze_names:
                freeze(skeleton, self.freeze_names)

    def apply(self, model: PGNet, log: Callable[[str], object]) -> LoadReport | None:
        """Load the starting weights into ``model`` (logging the accounting), then freeze; returns the
        load report (None when nothing was loaded)."""
        report = None
        if self.init_from and self.resume:
            log(f"train.init_from {self.init_from} not read: the run continues from its own checkpoint")
        elif self._state is not None:
            report = load_weights_with_report(model, self._state, self._source)
            self._state = None
            for line in report.lines():
                log(line)
            if self._differences:
                log(f"  model settings differ from the checkpoint's: {describe_differences(self._differences)}")
        if self.freeze_names:
            freeze(model, self.freeze_names)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
        log(
            f"{trainable / 1e6:.2f}M of {total / 1e6:.2f}M parameters train"
            + (f"; frozen (eval mode): {', '.join(model.frozen_modules)}" if self.freeze_names else "")
        )
        return report

