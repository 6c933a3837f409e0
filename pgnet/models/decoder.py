"""The PGNet decoder: a top-down path over the Swin taps, grafted onto the ResNet pyramid.

Feature names follow the paper: ``s1..s4`` are the Swin taps (strides 4, 8, 16, 16 of the 224 input),
``r2..r5`` the ResNet stages (strides 4, 8, 16, 32 of the full-resolution input). The path runs
s4 → s3 → graft(r5, s2) → r4 (+ s1) → r3 → r2, every block ``width`` channels wide. Optional grafting
points at r4, r3 and r2 (``pgnet.models.grafting``) graft s1 onto those levels too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn

from pgnet.models.cmgm import CMGM
from pgnet.models.grafting import GRAFT_POINTS, LateralGraft, make_cmgm, parse_graft_points, window_layout_of
from pgnet.models.layers import conv_bn_relu, double_conv_bn_relu, resize_to
from pgnet.models.window_cmgm import WindowLayout

__all__ = ["GRAFT_POINTS", "Decoder", "DecoderFeatures"]


class DecoderFeatures(NamedTuple):
    top: torch.Tensor  # B×width×H/4×W/4, the finest decoder feature
    attention_maps: list[torch.Tensor]  # per grafting point B×heads×N×N, windowed (B·n)×heads×w²×w²
    attention_grids: list[tuple[int, int]]  # per grafting point, the (h, w) grid with h·w = N
    attention_windows: list[WindowLayout | None]  # per grafting point, its windows (None: global)
    cnn_on_grid: torch.Tensor  # B×width×h×w: reduced r5 on the official graft grid (28×28)
    swin_on_grid: torch.Tensor  # B×width×h×w: reduced s2


class DilatedBlock(nn.Module):
    """Entry of the top-down path (official DB1): 1×1 reduction, then a 3×3 dilation-2 conv."""

    def __init__(self, in_channels: int, width: int):
        super().__init__()
        self.reduce = conv_bn_relu(in_channels, width, kernel_size=1)
        self.dilated = conv_bn_relu(width, width, kernel_size=3, dilation=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dilated(self.reduce(x))


class FusionBlock(nn.Module):
    """Merge a lateral feature with the upsampled top-down feature (official DB2).

    ``x`` (B×in_channels×H×W) is concatenated with ``top`` resized to H×W; two 3×3 convs plus a 1×1
    shortcut of ``top`` give p, and the block returns p + refine(p).
    """

    def __init__(self, in_channels: int, width: int):
        super().__init__()
        self.shortcut = nn.Conv2d(width, width, kernel_size=1)
        self.merge = double_conv_bn_relu(in_channels + width, width)
        self.refine = double_conv_bn_relu(width, width)

    def forward(self, x: torch.Tensor, top: torch.Tensor) -> torch.Tensor:
        top = resize_to(top, x.shape[-2:])
        merged = self.merge(torch.cat((x, top), dim=1)) + self.shortcut(top)
        return merged + self.refine(merged)


class CrossLevelBlock(nn.Module):
    """The 1/16 level (official DB3): join r4 with s1 (resized to r4), then fuse the top-down feature.

    Officially the two reduced features are summed; with ``cmgm`` set they are grafted instead.
    """

    def __init__(self, cnn_channels: int, swin_channels: int, width: int, cmgm: CMGM | None = None):
        super().__init__()
        self.reduce_cnn = conv_bn_relu(cnn_channels, width)
        self.reduce_swin = conv_bn_relu(swin_channels, width)
        self.cmgm = cmgm
        self.mix = conv_bn_relu(width, width)
        self.fuse = FusionBlock(width, width)

    def forward(
        self, swin_feature: torch.Tensor, cnn_feature: torch.Tensor, top: torch.Tensor, need_attention: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        swin_reduced = self.reduce_swin(swin_feature)
        cnn_reduced = self.reduce_cnn(cnn_feature)
        attention_map = None
        if self.cmgm is None:
            joined = swin_reduced + cnn_reduced
        else:
            joined, attention_map = self.cmgm(cnn_reduced, swin_reduced, need_attention)
        return self.fuse(self.mix(joined), top), attention_map


class GraftPoint(nn.Module):
    """The official grafting point: reduce r5 and s2 to ``width`` channels and graft them with a CMGM."""

    def __init__(self, cnn_channels: int, swin_channels: int, width: int, cmgm: CMGM):
        super().__init__()
        self.reduce_cnn = conv_bn_relu(cnn_channels, width)
        self.reduce_swin = conv_bn_relu(swin_channels, width)
        self.cmgm = cmgm

    def forward(
        self, cnn_feature: torch.Tensor, swin_feature: torch.Tensor, need_attention: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """Returns the grafted feature, the attention map (or None), and the two reduced inputs."""
        cnn_reduced = self.reduce_cnn(resize_to(cnn_feature, swin_feature.shape[-2:]))
        swin_reduced = self.reduce_swin(swin_feature)
        grafted, attention_map = self.cmgm(cnn_reduced, swin_reduced, need_attention)
        return grafted, attention_map, cnn_reduced, swin_reduced


class Decoder(nn.Module):
    """PGNet decoder.

    Args:
        swin_channels: channels of s1, s2, s3, s4.
        cnn_channels: channels of r2, r3, r4, r5.
        width: channels of every decoder block (64 officially).
        num_heads: CMGM heads (8 officially).
        graft_points: grafting points, ``GRAFT_POINTS`` names with an optional ":global"/":window"
            kind (see ``pgnet.models.grafting``); must include "r5-s2".
        token_budget: CMGM token budget (see ``CMGM``).
        window_size: window side of the windowed CMGMs.
        window_shift: shift the windows of every second windowed point (in decoder order) by half a window.
    """

    def __init__(
        self,
        swin_channels: Sequence[int],
        cnn_channels: Sequence[int],
        width: int = 64,
        num_heads: int = 8,
        graft_points: Sequence[str] = ("r5-s2",),
        token_budget: int = 2048,
        window_size: int = 8,
        window_shift: bool = True,
    ):
        super().__init__()
        specs = parse_graft_points(graft_points)
        s1, s2, s3, s4 = swin_channels
        r2, r3, r4, r5 = cnn_channels
        self.graft_points = tuple(spec.point for spec in specs)
        self.graft_kinds = {spec.point: spec.kind for spec in specs}
        cmgms: dict[str, CMGM] = {}
        windowed = 0
        for spec in specs:
            shifted = spec.kind == "window" and window_shift and windowed % 2 == 1
            windowed += spec.kind == "window"
            cmgms[spec.point] = make_cmgm(spec.kind, width, num_heads, token_budget, window_size, shifted)

        self.swin4_block = DilatedBlock(s4, width)
        self.swin3_block = FusionBlock(s3, width)
        self.graft = GraftPoint(r5, s2, width, cmgms["r5-s2"])
        self.graft_block = FusionBlock(width, width)
        self.cnn4_block = CrossLevelBlock(r4, s1, width, cmgms.get("r4-s1"))
        # New modules (not in the official model) only when asked, so the official keys stay as they are.
        self.cnn3_graft = LateralGraft(r3, s1, width, cmgms["r3-s1"]) if "r3-s1" in cmgms else None
        self.cnn3_block = FusionBlock(r3, width)
        self.cnn2_graft = LateralGraft(r2, s1, width, cmgms["r2-s1"]) if "r2-s1" in cmgms else None
        self.cnn2_block = FusionBlock(r2, width)

    def graft_modules(self) -> dict[str, nn.Module]:
        """The modules that exist for each grafting point, by point name (what ``train.freeze`` names)."""
        modules: dict[str, nn.Module] = {"r5-s2": self.graft}
        if self.cnn4_block.cmgm is not None:
            modules["r4-s1"] = self.cnn4_block.cmgm
        for point, graft in (("r3-s1", self.cnn3_graft), ("r2-s1", self.cnn2_graft)):
            if graft is not None:
                modules[point] = graft
        return modules

    def cmgms(self) -> list[CMGM]:
        """The CMGM of every grafting point, in ``graft_points`` order."""
        modules = [self.graft.cmgm, self.cnn4_block.cmgm]
        modules += [g.cmgm for g in (self.cnn3_graft, self.cnn2_graft) if g is not None]
        return [m for m in modules if m is not None]

    def reset_new_grafts(self) -> None:
        """Zero the output projections of the r3/r2 grafts (their start: the decoder without them)."""
        for graft in (self.cnn3_graft, self.cnn2_graft):
            if graft is not None:
                graft.reset_expand()

    def forward(
        self,
        swin_features: Sequence[torch.Tensor],
        cnn_features: Sequence[torch.Tensor],
        need_attention: bool = True,
    ) -> DecoderFeatures:
        """Run the top-down path; attention maps are computed only when ``need_attention``."""
        s1, s2, s3, s4 = swin_features
        r2, r3, r4, r5 = cnn_features

        top = self.swin4_block(s4)
        top = self.swin3_block(s3, top)

        # r5 is resized to s2's grid (28×28 officially) and grafted there.
        grafted, attention_map, cnn_on_grid, swin_on_grid = self.graft(r5, s2, need_attention)
        attention_maps = [attention_map]
        attention_grids = [self.graft.cmgm.graft_grid(*s2.shape[-2:])]

        top = self.graft_block(grafted, top)
        top, attention_map = self.cnn4_block(resize_to(s1, r4.shape[-2:]), r4, top, need_attention)
        if self.cnn4_block.cmgm is not None:
            attention_maps.append(attention_map)
            attention_grids.append(self.cnn4_block.cmgm.graft_grid(*r4.shape[-2:]))
        if self.cnn3_graft is not None:
            r3, attention_map = self.cnn3_graft(r3, s1, need_attention)
            attention_maps.append(attention_map)
            attention_grids.append(self.cnn3_graft.cmgm.graft_grid(*r3.shape[-2:]))
        top = self.cnn3_block(r3, top)
        if self.cnn2_graft is not None:
            r2, attention_map = self.cnn2_graft(r2, s1, need_attention)
            attention_maps.append(attention_map)
            attention_grids.append(self.cnn2_graft.cmgm.graft_grid(*r2.shape[-2:]))
        top = self.cnn2_block(r2, top)
        if not need_attention:
            attention_maps = []
        windows = [window_layout_of(m) for m in self.cmgms()]
        return DecoderFeatures(top, attention_maps, attention_grids, windows, cnn_on_grid, swin_on_grid)
