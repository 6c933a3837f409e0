"""Holding out part of a dataset for validation by a fraction and a seed, with no file moved.

A dataset entry with ``split: train`` or ``split: val`` keeps its training or held-out part. The
held-out part is the ``round(val_fraction × n)`` pairs (at least one) whose file names rank lowest
under a hash of (``split_seed``, name): a function of the names only, so it is the same on every
machine, for any listing order and any number of loader workers, and the two parts are disjoint.
Adding pictures later moves few others between the parts.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from pathlib import Path

from pgnet.errors import UserError

SPLITS = ("all", "train", "val")


class SplitError(UserError):
    """A split that cannot be made; the message names the dataset and the setting."""


def held_out_count(total: int, val_fraction: float) -> int:
    """How many of ``total`` pairs a fraction holds out (at least one)."""
    return max(1, round(val_fraction * total))


def _rank(seed: int, name: str) -> str:
    return hashlib.sha256(f"{seed}\0{name}".encode()).hexdigest()


def split_pairs(
    pairs: Sequence[tuple[Path, Path]], split: str, val_fraction: float, seed: int, dataset: str = "dataset"
) -> list[tuple[Path, Path]]:
    """The ``split`` part ("all", "train" or "val") of (image, mask) pairs, in their given order.

    Pairs are told apart by the image's file stem (the pairing key). Raises ``SplitError`` for an
    unknown split, a fraction outside (0, 1), or a split that leaves no training pair.
    """
    if split not in SPLITS:
        raise SplitError(f"dataset {dataset}: split {split!r} is not one of {list(SPLITS)}")
    if split == "all":
        return list(pairs)
    if not 0 < val_fraction < 1:
        raise SplitError(f"dataset {dataset}: val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    held_out = held_out_count(len(pairs), val_fraction)
    if held_out >= len(pairs):
        raise SplitError(
            f"dataset {dataset}: val_fraction {val_fraction} of {len(pairs)} pairs holds out {held_out}, "
            "leaving no training picture; add pictures or lower val_fraction"
        )
    ranked = sorted(range(len(pairs)), key=lambda index: _rank(seed, pairs[index][0].stem))
    validation = set(ranked[:held_out])
    return [pair for index, pair in enumerate(pairs) if (index in validation) == (split == "val")]


def shared_images(first: Iterable[Sequence[tuple[Path, Path]]], second: Iterable[Sequence[tuple[Path, Path]]]) -> list[Path]:
    """Image files that appear in both groups of pair lists (resolved paths), sorted."""
    def images(groups: Iterable[Sequence[tuple[Path, Path]]]) -> set[Path]:
        return {Path(image).resolve() for pairs in groups for image, _ in pairs}

    return sorted(images(first) & images(second))
