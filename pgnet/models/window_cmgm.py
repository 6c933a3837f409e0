"""The windowed Cross-Model Grafting Module: CMGM attention restricted to local windows.

At the fine pyramid levels (1/8 and 1/4 of the input) the grid is too large for global attention
(128² and 256² tokens at 1024²) and pooling it to the CMGM's token budget throws its detail away.
``WindowCMGM`` keeps the CMGM's projections, norms, refine block and residual, but every CNN
position attends only to the positions of its own non-overlapping ``window``×``window`` window, at
the level's own resolution, so the cost grows linearly with the number of pixels.

Any H×W: the token grid is zero-padded to whole windows (after ``offset`` extra rows and columns at
the top and left when the window grid is shifted, as Swin's alternate blocks are) and cropped back;
padded keys are masked out of every softmax, and every window holds at least one real position.
The attention-map branch runs on each window's heads×w²×w² attention, so the attention-guided loss
costs O(H·W·w²), not O((H·W)²).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from pgnet.models.cmgm import CMGM
from pgnet.models.layers import memory_format_of


class WindowLayout(NamedTuple):
    """How an H×W grid is cut into windows: ``size``×``size`` windows whose grid starts ``offset``
    positions above and left of the feature (0: unshifted)."""

    size: int
    offset: int


def padding_for(height: int, width: int, layout: WindowLayout) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) zero padding that makes H×W whole windows of ``layout``."""
    size, offset = layout
    rows = (height + offset + size - 1) // size
    columns = (width + offset + size - 1) // size
    return offset, rows * size - height - offset, offset, columns * size - width - offset


def partition_windows(tokens: torch.Tensor, layout: WindowLayout) -> torch.Tensor:
    """B×H×W×C tokens → (B·n)×w²×C windows (zero-padded per ``layout``; n windows per image, row-major)."""
    batch, height, width, channels = tokens.shape
    top, bottom, left, right = padding_for(height, width, layout)
    padded = F.pad(tokens, (0, 0, left, right, top, bottom))  # B×Hp×Wp×C
    size = layout.size
    rows, columns = padded.shape[1] // size, padded.shape[2] // size
    windows = padded.reshape(batch, rows, size, columns, size, channels).permute(0, 1, 3, 2, 4, 5)
    return windows.reshape(batch * rows * columns, size * size, channels)


def merge_windows(windows: torch.Tensor, batch: int, height: int, width: int, layout: WindowLayout) -> torch.Tensor:
    """Inverse of ``partition_windows``: (B·n)×w²×C → B×H×W×C, padding cropped."""
    top, bottom, left, right = padding_for(height, width, layout)
    size = layout.size
    rows, columns = (height + top + bottom) // size, (width + left + right) // size
    channels = windows.shape[-1]
    grid = windows.reshape(batch, rows, columns, size, size, channels).permute(0, 1, 3, 2, 4, 5)
    grid = grid.reshape(batch, rows * size, columns * size, channels)
    return grid[:, top : top + height, left : left + width]


def window_validity(batch: int, height: int, width: int, layout: WindowLayout, device: torch.device) -> torch.Tensor:
    """(B·n)×w² booleans: True where a window position is a real (not padded) grid position."""
    ones = torch.ones(batch, height, width, 1, device=device)
    return partition_windows(ones, layout)[..., 0] > 0.5


class WindowCMGM(CMGM):
    """CMGM with attention inside ``window_size``×``window_size`` windows (same parameters as ``CMGM``).

    Args:
        dim, num_heads, qkv_bias: as ``CMGM``.
        window_size: side of a window, in grid positions.
        shifted: start the window grid ``window_size // 2`` positions above and left of the feature.
    """

    def __init__(self, dim: int = 64, num_heads: int = 8, qkv_bias: bool = True, window_size: int = 8,
                 shifted: bool = False):
        super().__init__(dim, num_heads=num_heads, qkv_bias=qkv_bias)
        if window_size < 1:
            raise ValueError(f"window_size must be positive, got {window_size}")
        self.layout = WindowLayout(window_size, window_size // 2 if shifted else 0)

    def graft_grid(self, height: int, width: int) -> tuple[int, int]:
        """Attention runs on the full H×W grid (in windows)."""
        return height, width

    def forward(
        self, cnn_feature: torch.Tensor, swin_feature: torch.Tensor, need_attention: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Graft ``swin_feature`` onto ``cnn_feature`` (both B×C×H×W) window by window.

        Returns the grafted feature (B×C×H×W) and, when ``need_attention``, the attention map
        ((B·n)×heads×w²×w², n windows per image, see ``partition_windows``); otherwise None, and the
        attention runs through ``scaled_dot_product_attention`` without forming any matrix.
        """
        if cnn_feature.shape != swin_feature.shape:
            raise ValueError(
                f"WindowCMGM inputs must have the same shape, got {tuple(cnn_feature.shape)} "
                f"and {tuple(swin_feature.shape)}"
            )
        batch, channels, height, width = cnn_feature.shape
        head_dim = channels // self.num_heads
        cnn_tokens = self.norm_cnn(cnn_feature.permute(0, 2, 3, 1))  # B×H×W×C
        swin_tokens = self.norm_swin(swin_feature.permute(0, 2, 3, 1))
        key = partition_windows(self.key(swin_tokens), self.layout)  # (B·n)×w²×C
        query_value = partition_windows(self.query_value(cnn_tokens), self.layout)  # (B·n)×w²×2C
        windows, tokens = key.shape[:2]
        key = key.reshape(windows, tokens, self.num_heads, head_dim).transpose(1, 2)  # (B·n)×heads×w²×d
        query, value = (
            query_value.reshape(windows, tokens, 2, self.num_heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        )
        valid_keys = window_validity(batch, height, width, self.layout, cnn_feature.device)[:, None, None, :]

        attention = None
        if need_attention:
            scores = (query @ key.transpose(-2, -1) * self.scale).masked_fill(~valid_keys, float("-inf"))
            attention = self.softmax(scores)  # (B·n)×heads×w²×w²
            grafted = attention @ value
        else:
            grafted = F.scaled_dot_product_attention(query, key, value, attn_mask=valid_keys, scale=self.scale)
        grafted = self.proj(grafted.transpose(1, 2).reshape(windows, tokens, channels))  # (B·n)×w²×C
        grafted = merge_windows(grafted, batch, height, width, self.layout).permute(0, 3, 1, 2)  # B×C×H×W
        memory_format = memory_format_of(cnn_feature)
        grafted = grafted.contiguous(memory_format=memory_format)
        fused = grafted + cnn_feature
        fused = self.refine(fused) + fused

        attention_map = None
        if attention is not None:
            # Padded positions neither attend nor are attended to: their rows and columns are zero.
            attention = attention.masked_fill(~valid_keys.transpose(-1, -2), 0.0)
            symmetric = attention + attention.transpose(-1, -2)
            attention_map = F.relu(self.attention_norm(self.attention_conv(symmetric)))
        return fused, attention_map
