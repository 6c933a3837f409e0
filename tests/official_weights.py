"""Rebuild the official PGNet weights from the reference manifest with its fill rule (version 1).

See ../shared/reference/README.md: walk the manifest in order; row i draws from a generator seeded
1000 + i; integer buffers and shifted-window masks keep the official model's values (stored in
pgnet_official_buffers.pt).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import torch

REFERENCE_DIR = Path(__file__).resolve().parents[2] / "shared" / "reference"


def reference_file(name: str) -> Path:
    return REFERENCE_DIR / name


def _shape(text: str) -> tuple[int, ...]:
    return () if text == "scalar" else tuple(int(n) for n in text.split("x"))


def _fill(rule: str, shape: tuple[int, ...], index: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1000 + index)
    if rule == "running_var":
        return 0.5 + torch.rand(shape, generator=generator)
    if rule == "running_mean":
        return 0.1 * torch.randn(shape, generator=generator)
    if rule == "one_plus":
        return 1.0 + 0.1 * torch.randn(shape, generator=generator)
    if rule == "bias":
        return 0.1 * torch.randn(shape, generator=generator)
    if rule == "fan_in":
        return torch.randn(shape, generator=generator) / math.sqrt(math.prod(shape) // shape[0])
    raise ValueError(f"unknown fill rule {rule!r}")


def build_state_dict(manifest: str, buffers: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The state dict the manifest describes, filled by the rule ('keep' rows from ``buffers``)."""
    state = {}
    with open(reference_file(manifest), newline="") as handle:
        for row in csv.DictReader(handle, delimiter="\t"):
            key, index, rule = row["key"], int(row["index"]), row["fill"]
            if rule == "keep":
                if buffers is None or key not in buffers:
                    continue
                state[key] = buffers[key]
            else:
                state[key] = _fill(rule, _shape(row["shape"]), index)
    return state


def official_pgnet_state_dict() -> dict[str, torch.Tensor]:
    """Every key of a released checkpoint, with the ``module.`` prefix DDP saved it with."""
    buffers = torch.load(reference_file("pgnet_official_buffers.pt"), weights_only=True)
    return {f"module.{k}": v for k, v in build_state_dict("pgnet_official_keys.tsv", buffers).items()}
