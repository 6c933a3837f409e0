"""Grafting points: which CNN level meets which Swin tap, and with which kind of CMGM.

A grafting point is named ``<cnn level>-<swin tap>``, optionally followed by ``:<kind>``:

============  ========================================  =============  =============================
point         joins                                     default kind   the decoder block it feeds
============  ========================================  =============  =============================
``r5-s2``     r5 resized to s2's grid (official)        ``global``     graft_block (official DB3)
``r4-s1``     r4 and s1 resized to r4 (1/16)            ``global``     cnn4_block: replaces the sum
``r3-s1``     r3 and s1 resized to r3 (1/8)             ``window``     cnn3_block: added to r3
``r2-s1``     r2 and s1 resized to r2 (1/4)             ``window``     cnn2_block: added to r2
============  ========================================  =============  =============================

s1 is the finest Swin tap (stride 4 of the Swin input, 56×56 officially), so it serves every level
finer than s2. Kinds: ``global`` is the official ``CMGM`` (pooled to the token budget on larger
grids), ``window`` the ``WindowCMGM``. The ``r3-s1`` and ``r2-s1`` points graft through a
``LateralGraft`` whose output projection starts at zero: a model with only those points added
computes exactly what the model without them does until training moves it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn

from pgnet.errors import UserError
from pgnet.models.cmgm import CMGM
from pgnet.models.layers import conv_bn_relu, resize_to
from pgnet.models.window_cmgm import WindowCMGM, WindowLayout

GRAFT_POINTS = ("r5-s2", "r4-s1", "r3-s1", "r2-s1")  # in the decoder's order, coarse to fine
GRAFT_KINDS = ("global", "window")
DEFAULT_KINDS = {"r5-s2": "global", "r4-s1": "global", "r3-s1": "window", "r2-s1": "window"}


class GraftSpec(NamedTuple):
    point: str  # one of GRAFT_POINTS
    kind: str  # one of GRAFT_KINDS


class GraftPointError(UserError):
    """A ``graft_points`` entry that names no grafting point or kind."""


def parse_graft_points(entries: Sequence[str]) -> tuple[GraftSpec, ...]:
    """``["r5-s2", "r3-s1:window"]`` → GraftSpecs in the decoder's order (coarse to fine).

    "r5-s2" is required; a point may appear once.
    """
    specs: dict[str, GraftSpec] = {}
    for entry in entries:
        point, _, kind = str(entry).partition(":")
        kind = kind or DEFAULT_KINDS.get(point, "")
        if point not in GRAFT_POINTS or kind not in GRAFT_KINDS:
            raise GraftPointError(
                f"graft_points: {entry!r} is not a grafting point; use one of {list(GRAFT_POINTS)}, "
                f"optionally with ':global' or ':window' (e.g. 'r3-s1:window')"
            )
        if point in specs:
            raise GraftPointError(f"graft_points: {point!r} is listed twice in {list(entries)}")
        specs[point] = GraftSpec(point, kind)
    if "r5-s2" not in specs:
        raise GraftPointError(f"graft_points must contain 'r5-s2' (the official point), got {list(entries)}")
    return tuple(specs[p] for p in GRAFT_POINTS if p in specs)


def make_cmgm(kind: str, width: int, num_heads: int, token_budget: int, window_size: int, shifted: bool) -> CMGM:
    """A ``CMGM`` (kind "global") or ``WindowCMGM`` (kind "window")."""
    if kind == "window":
        return WindowCMGM(width, num_heads=num_heads, window_size=window_size, shifted=shifted)
    return CMGM(width, num_heads=num_heads, token_budget=token_budget)


def window_layout_of(cmgm: CMGM) -> WindowLayout | None:
    """The window layout of a windowed CMGM; None for a global one."""
    return cmgm.layout if isinstance(cmgm, WindowCMGM) else None


class LateralGraft(nn.Module):
    """Graft a Swin tap onto a CNN level that the official decoder uses as it is (r3, r2).

    Both are reduced to ``width`` channels (the Swin tap resized to the CNN grid), grafted by
    ``cmgm``, and the result, projected back to the CNN's channels by a 1×1 convolution initialised
    to zero (``reset_expand``), is added to the CNN feature: B×C×H×W in, the same shape out.
    """

    def __init__(self, cnn_channels: int, swin_channels: int, width: int, cmgm: CMGM):
        super().__init__()
        self.reduce_cnn = conv_bn_relu(cnn_channels, width)
        self.reduce_swin = conv_bn_relu(swin_channels, width)
        self.cmgm = cmgm
        self.expand = nn.Conv2d(width, cnn_channels, kernel_size=1)

    def reset_expand(self) -> None:
        nn.init.zeros_(self.expand.weight)
        nn.init.zeros_(self.expand.bias)

    def forward(
        self, cnn_feature: torch.Tensor, swin_feature: torch.Tensor, need_attention: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        swin_reduced = self.reduce_swin(resize_to(swin_feature, cnn_feature.shape[-2:]))
        grafted, attention_map = self.cmgm(self.reduce_cnn(cnn_feature), swin_reduced, need_attention)
        return cnn_feature + self.expand(grafted), attention_map
