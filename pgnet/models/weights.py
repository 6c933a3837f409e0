"""Weights files and what loads from them: the one safe reader, and loading with full accounting.

``read_weights_file`` reads a ``.pth``/``.pt`` file with ``torch.load(weights_only=True)`` (a file that
holds code is refused) and turns every failure into one :class:`CheckpointError` line naming the file;
``read_state_dict`` adds ``.safetensors`` and unwraps a state dict. Checkpoints, pretrained backbones
and ``init_from`` all read through them.


Used to start a run from released or trained weights (``train.init_from``) and to start a model with
more modules (another grafting point, another head) from one with fewer. A tensor both have is
loaded; a tensor only the model has keeps the model's initialisation and is listed as new; a tensor
only the checkpoint has is listed as unused. A tensor whose shape differs is an error naming it and
both shapes, and then nothing is loaded.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pgnet.errors import UserError

MAX_LISTED_MISMATCHES = 20
# Leading bytes of files people pass by mistake, and what they are.
_FOREIGN_SIGNATURES = (
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"\x89PNG", "a PNG image"),
    (b"GIF8", "a GIF image"),
    (b"RIFF", "a RIFF file (WebP, WAV, AVI)"),
    (b"\x08\x01\x12", "an ONNX model"),
    (b"{", "a JSON or text file"),
)


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
        found = re.search(r"Unsupported global: ([^\s]+)", str(error))
        if found:
            raise CheckpointError(
                f"{what} {path}: holds objects other than tensors and plain data ({found[1]}); refused, "
                "because loading it could run code"
            ) from None
        raise CheckpointError(f"{what} {path}: corrupt (not a readable pickle)") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as error:
        raise CheckpointError(f"{what} {path}: truncated or corrupt ({first_line(error)})") from None


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from a ``.pth``/``.pt``/``.bin`` or ``.safetensors`` file.

    A dict wrapping the weights under ``model``, ``state_dict`` or ``model_state`` is unwrapped.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as error:  # safetensors raises its own error types
            reason = str(error).strip() or "corrupt"
            raise CheckpointError(f"pretrained weights {path}: cannot read ({reason})") from None
    state = read_weights_file(path, what="pretrained weights")
    for wrapper in ("model", "state_dict", "model_state"):
        if isinstance(state, Mapping) and isinstance(state.get(wrapper), Mapping):
            state = state[wrapper]
    if not isinstance(state, Mapping):
        raise CheckpointError(f"pretrained weights {path}: expected a state dict, found {type(state).__name__}")
    return dict(state)


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
    mismatched = [
        f"{key}: checkpoint {_shape(value)}, model {_shape(target[key])}"
        for key, value in state_dict.items()
        if key in target and tuple(value.shape) != tuple(target[key].shape)
    ]
    if mismatched:
        shown = "\n  ".join(mismatched[:MAX_LISTED_MISMATCHES])
        more = len(mismatched) - MAX_LISTED_MISMATCHES
        raise WeightsMismatchError(
            f"{source} does not fit the model ({len(mismatched)} tensors of another shape):\n  {shown}"
            + (f"\n  ... and {more} more" if more > 0 else "")
        )
    report = LoadReport(
        source=source,
        loaded=[key for key in target if key in state_dict],
        new=[key for key in target if key not in state_dict],
        unused=[key for key in state_dict if key not in target],
    )
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


def _shape(tensor: torch.Tensor) -> str:
    return "×".join(str(size) for size in tensor.shape) or "scalar"
