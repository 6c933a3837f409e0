"""Loading weights into a model that differs from the checkpoint's, with full accounting.

Used to start a run from released or trained weights (``train.init_from``) and to start a model with
more modules (another grafting point, another head) from one with fewer. A tensor both have is
loaded; a tensor only the model has keeps the model's initialisation and is listed as new; a tensor
only the checkpoint has is listed as unused. A tensor whose shape differs is an error naming it and
both shapes, and then nothing is loaded.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from pgnet.errors import UserError

MAX_LISTED_MISMATCHES = 20


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
