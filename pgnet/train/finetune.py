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
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch

from pgnet.checkpoint import MissingWeightsError, read_model_weights
from pgnet.config import Config
from pgnet.errors import UserError
from pgnet.models.official import convert_official_state_dict
from pgnet.models.pgnet import ModelConfig, PGNet
from pgnet.models.weights import CheckpointNotFoundError, LoadReport, account_weights, load_weights_with_report

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


def config_differences(theirs: Mapping, ours: ModelConfig) -> list[str]:
    """``key: theirs -> ours`` for each model setting that differs (backbone files aside)."""
    mine = ours.to_dict()
    return [
        f"{key}: {theirs[key]!r} -> {mine[key]!r}"
        for key in mine
        if key in theirs and key not in BACKBONE_FILE_KEYS and theirs[key] != mine[key]
    ]


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
        self._differences: list[str] = []
        if self.init_from and not resume:
            self._state, self._source, trained_with = read_starting_weights(self.init_from, train.init_weights)
            self._differences = config_differences(trained_with, self.model_config)
        if self._state is not None or self.freeze_names:
            with torch.device("meta"):
                skeleton = PGNet(self.model_config)
            if self._state is not None:
                account_weights(skeleton.state_dict(), self._state, self._source)
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
                log(f"  model settings differ from the checkpoint's: {'; '.join(self._differences)}")
        if self.freeze_names:
            freeze(model, self.freeze_names)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
        log(
            f"{trainable / 1e6:.2f}M of {total / 1e6:.2f}M parameters train"
            + (f"; frozen (eval mode): {', '.join(model.frozen_modules)}" if self.freeze_names else "")
        )
        return report

