"""Weights files, and whether their tensors fit a model.

``read_weights_file`` reads a ``.pth``/``.pt`` file with ``torch.load(weights_only=True)`` (a file that
holds code is refused) and turns every failure into one :class:`CheckpointError` line naming the file;
``read_state_dict`` adds ``.safetensors`` and unwraps a state dict. Checkpoints, pretrained backbones
and ``init_from`` all read through them.

:func:`compare_weights` answers "do these weights fit this model?" for every loader: which tensors
load, which the model has and the file lacks (missing), which the file has and the model lacks
(unexpected), which differ in shape, and which the caller leaves out on purpose (dropped). Each
loader keeps its own rule on top, through :meth:`WeightsFit.check`: a checkpoint must fit exactly
(``pgnet.checkpoint.load_weights``), a backbone file may also hold what PGNet drops
(``pgnet.models.backbones.load_pretrained``), an official file is renamed first
(``pgnet.models.official``), and ``train.init_from`` loads what fits and accounts for the rest
(:func:`load_weights_with_report`): a tensor only the model has keeps the model's initialisation and
is listed as new, one only the checkpoint has is listed as unused, and a tensor whose shape differs
is an error naming it and both shapes (then nothing is loaded).
"""

from __future__ import annotations

import pickle
import re
import struct
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pgnet.errors import UserError, format_list

# Leading bytes of files people pass by mistake, and what they are.
_FOREIGN_SIGNATURES = (
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"\x89PNG", "a PNG image"),
    (b"GIF8", "a GIF image"),
    (b"RIFF", "a RIFF file (WebP, WAV, AVI)"),
    (b"\x08\x01\x12", "an ONNX model"),
    (b"{", "a JSON or text file"),
)

# How torch's weights-only unpickler names a global it refuses, in every wording it has used:
# "Unsupported global: GLOBAL os.system was not an allowed global by default",
# "Trying to load unsupported GLOBAL posix.system whose module posix is blocked".
_REFUSED_GLOBAL = re.compile(r"(?:unsupported global:\s*(?:GLOBAL\s+)?|unsupported GLOBAL\s+)([\w.]+)", re.IGNORECASE)


class CheckpointError(UserError):
    """A checkpoint or weights file that cannot be used; the one-line message names it and says why."""


class CheckpointNotFoundError(FileNotFoundError, CheckpointError):
    """A checkpoint or weights path where there is no file."""


def first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def read_weights_file(path: str | Path, map_location: str | torch.device = "cpu", what: str = "checkpoint") -> Any:
    """``torch.load(path, weights_only=True)`` with every failure as one :class:`CheckpointError` line.

    Tells apart a missing file, an empty one, a file of another kind (a JPEG, ...), a truncated or
    corrupt one, and one holding objects other than tensors and plain data (refused: loading it
    could run code). Used for checkpoints and pretrained backbone files alike.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointNotFoundError(f"{what} {path}: no such file")
    if not path.is_file():
        raise CheckpointError(f"{what} {path}: not a file")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{what} {path}: empty file (0 bytes)")
    with open(path, "rb") as stream:
        head = stream.read(16)
    for signature, kind in _FOREIGN_SIGNATURES:
        if head.startswith(signature):
            raise CheckpointError(f"{what} {path}: not a PyTorch file, it is {kind}")
    is_zip = head.startswith(b"PK\x03\x04")
    if not is_zip and not head.startswith(b"\x80"):
        raise CheckpointError(f"{what} {path}: not a PyTorch file (neither a zip archive nor a pickle)")
    if is_zip and not zipfile.is_zipfile(path):
        raise CheckpointError(f"{what} {path}: truncated or corrupt ({size} bytes; the zip directory is missing)")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        found = _REFUSED_GLOBAL.search(str(error))
        if found:
            raise CheckpointError(
                f"{what} {path}: holds objects other than tensors and plain data ({found[1]}); refused, "
                "because loading it could run code"
            ) from None
        raise CheckpointError(f"{what} {path}: corrupt (not a readable pickle)") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, struct.error) as error:
        raise CheckpointError(f"{what} {path}: truncated or corrupt ({first_line(error)})") from None


def read_safetensors(path: str | Path, what: str = "weights") -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` file (no code can run); an unreadable file is a one-line
    CheckpointError naming ``what`` and the path."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise CheckpointError(f"{what} {path}: truncated or corrupt ({first_line(error) or 'corrupt'})") from None


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from a ``.pth``/``.pt``/``.bin`` or ``.safetensors`` file.

    A dict wrapping the weights under ``model``, ``state_dict`` or ``model_state`` is unwrapped.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        return read_safetensors(path, what="pretrained weights")
    state = read_weights_file(path, what="pretrained weights")
    for wrapper in ("model", "state_dict", "model_state"):
        if isinstance(state, Mapping) and isinstance(state.get(wrapper), Mapping):
            state = state[wrapper]
    if not isinstance(state, Mapping):
        raise CheckpointError(f"pretrained weights {path}: expected a state dict, found {type(state).__name__}")
    return dict(state)


@dataclass
class WeightsFit:
    """How the tensors of a file fit a model's state dict, as :func:`compare_weights` found.

    Keys are the model's names, in the model's order (``loaded``, ``missing``, ``mismatched``) or
    the file's (``unexpected``, ``dropped``).
    """

    loaded: list[str] = field(default_factory=list)  # in both, of the same shape
    missing: list[str] = field(default_factory=list)  # the model's, not in the file (or dropped)
    unexpected: list[str] = field(default_factory=list)  # the file's, not in the model
    mismatched: dict[str, tuple[str, str]] = field(default_factory=dict)  # in both: key -> (file, model) shape
    dropped: list[str] = field(default_factory=list)  # the file's, left out on purpose by the caller
    file_names: Mapping[str, str] = field(default_factory=dict)  # the file's own name of a renamed key

    def problems(self, missing: bool = True, unexpected: bool = True) -> list[str]:
        """What keeps the file from fitting, one entry per kind (shapes, then missing and unexpected
        keys unless told to tolerate them), each listing at most ten keys."""
        kinds = (
            ("wrong shapes: ", [f"{self._named(k)} (file {f}, model {m})" for k, (f, m) in self.mismatched.items()]),
            ("missing ", self.missing if missing else []),
            ("unexpected ", [self._named(key) for key in self.unexpected] if unexpected else []),
        )
        return [label + format_list(keys) for label, keys in kinds if keys]

    def check(
        self,
        subject: str,
        target: str = "the model",
        *,
        missing: bool = True,
        unexpected: bool = True,
        notes: Sequence[str] = (),
        error: type[UserError] = CheckpointError,
    ) -> None:
        """Raise ``error``, one line "``subject`` does not fit ``target``: ...", when :meth:`problems`
        or the caller's own ``notes`` (problems found before comparing, listed first) say so."""
        problems = ([format_list(notes, separator="; ")] if notes else []) + self.problems(missing, unexpected)
        if problems:
            raise error(f"{subject} does not fit {target}: {'; '.join(problems)}")

    def _named(self, key: str) -> str:
        name = self.file_names.get(key, key)
        return key if name == key else f"{name} as {key}"


def compare_weights(
    weights: Mapping[str, Any],
    target: Mapping[str, torch.Tensor],
    *,
    drop: Callable[[str], Any] | None = None,
    file_names: Mapping[str, str] | None = None,
) -> WeightsFit:
    """How ``weights`` (a file's state dict, in the model's names) fit ``target`` (a model's state dict).

    ``target`` may hold meta tensors: only names and shapes are read. Keys of ``weights`` for which
    ``drop`` is true are left out on purpose. ``file_names`` gives the file's own name of keys that
    were renamed, so that messages name both (``decoder.d3.conv.0.weight as decoder.graft_block...``).
    Nothing is raised here: :meth:`WeightsFit.check` applies the caller's rule.
    """
    usable = {key for key in weights if drop is None or not drop(key)}
    fit = WeightsFit(file_names=file_names or {})
    for key, value in target.items():
        if key not in usable:
            fit.missing.append(key)
        elif _shape(weights[key]) == _shape(value):
            fit.loaded.append(key)
        else:
            fit.mismatched[key] = (_shape(weights[key]), _shape(value))
    for key in weights:
        if key not in usable:
            fit.dropped.append(key)
        elif key not in target:
            fit.unexpected.append(key)
    return fit


def _shape(value: Any) -> str:
    """``(64, 3, 3, 3)`` for a tensor; the type's name for anything else."""
    return str(tuple(value.shape)) if isinstance(value, torch.Tensor) else type(value).__name__


class WeightsMismatchError(UserError):
    """Checkpoint tensors whose shapes differ from the model's; the message names each one."""


@dataclass
class LoadReport:
    """What a partial load did: keys loaded, new (the model's own initialisation kept) and unused."""

    source: str
    loaded: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)
    loaded_values: int = 0  # elements of the loaded tensors
    new_groups: list[tuple[str, int]] = field(default_factory=list)  # (module, tensors) covering ``new``
    unused_groups: list[tuple[str, int]] = field(default_factory=list)  # the same for ``unused``

    @property
    def complete(self) -> bool:
        """Every tensor of the model came from the checkpoint."""
        return not self.new

    def lines(self) -> list[str]:
        """The accounting as printed to the log, one line per category."""
        total = len(self.loaded) + len(self.new)

        def groups(items: list[tuple[str, int]]) -> str:
            return ", ".join(f"{name} ({count})" for name, count in items) if items else "none"

        return [
            f"weights from {self.source}:",
            f"  loaded: {len(self.loaded)} of {total} model tensors ({self.loaded_values / 1e6:.2f}M values)",
            f"  new (initialised here, not in the checkpoint): {len(self.new)} tensors: {groups(self.new_groups)}",
            f"  unused (in the checkpoint, not in the model): {len(self.unused)} tensors: "
            f"{groups(self.unused_groups)}",
        ]

    def __str__(self) -> str:
        return "\n".join(self.lines())


def load_weights_with_report(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str = "checkpoint"
) -> LoadReport:
    """Load the tensors of ``state_dict`` that ``model`` has (same names), and report the rest.

    Raises ``WeightsMismatchError`` naming every shared key whose shape differs (nothing is loaded
    then); see :func:`account_weights` for the report.
    """
    report = account_weights(model.state_dict(), state_dict, source)
    missing, unexpected = model.load_state_dict({key: state_dict[key] for key in report.loaded}, strict=False)
    # BatchNorm fills in its own num_batches_tracked when absent, so it is new without being missing.
    if unexpected or not set(missing) <= set(report.new):
        raise RuntimeError(f"load_state_dict disagrees with the accounting: missing {missing}, unexpected {unexpected}")
    return report


def account_weights(
    target: Mapping[str, torch.Tensor], state_dict: Mapping[str, torch.Tensor], source: str = "checkpoint"
) -> LoadReport:
    """What loading ``state_dict`` into a model whose state dict is ``target`` would do (nothing is loaded).

    ``target`` may hold meta tensors: only names and shapes are read. Raises ``WeightsMismatchError``
    naming every shared key whose shape differs. New and unused keys are grouped by the largest
    module they fill entirely, e.g. ``decoder.cnn4_block.cmgm (14)``; repeated blocks are shown once
    with ``*`` for the index.
    """
    fit = compare_weights(state_dict, target)
    fit.check(source, missing=False, unexpected=False, error=WeightsMismatchError)
    report = LoadReport(source=source, loaded=fit.loaded, new=fit.missing, unused=fit.unexpected)
    report.loaded_values = sum(state_dict[key].numel() for key in report.loaded)
    report.new_groups = group_by_module(report.new, target)
    report.unused_groups = group_by_module(report.unused, state_dict)
    return report


def group_by_module(keys: Iterable[str], all_keys: Iterable[str]) -> list[tuple[str, int]]:
    """Cover ``keys`` by the largest module prefixes whose every key (among ``all_keys``) is in ``keys``.

    Returns (prefix, number of keys) in first-seen order; prefixes that differ only in numeric indices
    are merged, with ``*`` for the index (``swin.layers.*.blocks.*.attn.relative_position_index (16)``).
    """
    keys = list(keys)
    chosen = set(keys)
    if not chosen:
        return []
    # For every module prefix, whether all of its keys are chosen.
    complete: dict[str, bool] = {}
    for key in all_keys:
        parts = key.split(".")
        for depth in range(1, len(parts) + 1):
            prefix = ".".join(parts[:depth])
            complete[prefix] = complete.get(prefix, True) and key in chosen
    counts: dict[str, int] = {}
    for key in keys:
        parts = key.split(".")
        prefix = next(
            ".".join(parts[:depth]) for depth in range(1, len(parts) + 1) if complete.get(".".join(parts[:depth]), True)
        )
        counts[prefix] = counts.get(prefix, 0) + 1
    merged: dict[str, list[tuple[str, int]]] = {}
    for prefix, count in counts.items():
        merged.setdefault(re.sub(r"(?<=\.)\d+(?=\.|$)", "*", prefix), []).append((prefix, count))
    return [
        (pattern if len(found) > 1 else found[0][0], sum(count for _, count in found))
        for pattern, found in merged.items()
    ]

