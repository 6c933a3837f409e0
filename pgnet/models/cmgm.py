"""The Cross-Model Grafting Module (CMGM).

CMGM grafts the transformer's global view onto the CNN's detail: queries and values come from the
CNN feature, keys from the transformer feature, so every CNN position gathers CNN content at the
places the transformer finds related. It also returns a symmetrised per-head map of its attention,
which the attention-guided loss supervises.

At the official grafting point (a 28×28 grid) it computes exactly what the official module does. On
larger grids, when H×W exceeds ``token_budget``, both inputs are average-pooled by the smallest
power-of-two stride whose grid fits, attention runs on that pooled grid, and its output is
upsampled back before the residual; the CNN detail therefore passes at full resolution.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from pgnet.models.layers import double_conv_bn_relu, memory_format_of


def pooling_stride(height: int, width: int, token_budget: int) -> int:
    """Smallest power-of-two stride s with ceil(H/s)·ceil(W/s) ≤ token_budget (1 when it already fits)."""
    if token_budget < 1:
        raise ValueError(f"token_budget must be positive, got {token_budget}")
    stride = 1
    while math.ceil(height / stride) * math.ceil(width / stride) > token_budget:
        stride *= 2
    return stride


class CMGM(nn.Module):
    """Cross-Model Grafting Module.

    Args:
        dim: channels of both inputs (the decoder width, 64 in the official model).
        num_heads: attention heads; ``dim`` must be divisible by it.
        qkv_bias: bias in the key and query/value projections.
        token_budget: the most tokens attention runs on; larger grids are pooled (see module doc).
    """

    def __init__(self, dim: int = 64, num_heads: int = 8, qkv_bias: bool = True, token_budget: int = 2048):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.dim = dim
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.token_budget = token_budget
        self.norm_cnn = nn.LayerNorm(dim)
        self.norm_swin = nn.LayerNorm(dim)
        self.key = nn.Linear(dim, dim, bias=qkv_bias)
        self.query_value = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        # A module (no parameters) so that hooks can read the per-head attention for visualisation.
        self.softmax = nn.Softmax(dim=-1)
        self.refine = double_conv_bn_relu(dim, dim)
        # The attention map branch: the N×N attention of each head treated as one image channel.
        self.attention_conv = nn.Conv2d(num_heads, num_heads, kernel_size=3, padding=1)
        self.attention_norm = nn.BatchNorm2d(num_heads)

    def graft_grid(self, height: int, width: int) -> tuple[int, int]:
        """The (h, w) grid attention runs on for an H×W input."""
        stride = pooling_stride(height, width, self.token_budget)
        return math.ceil(height / stride), math.ceil(width / stride)

    def forward(
        self, cnn_feature: torch.Tensor, swin_feature: torch.Tensor, need_attention: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Graft ``swin_feature`` onto ``cnn_feature`` (both B×C×H×W, same size).

        Returns the grafted feature (B×C×H×W) and, when ``need_attention``, the attention map
        (B×heads×N×N, N = h·w of the graft grid); otherwise None, and the N×N matrix is never formed.
        """
        if cnn_feature.shape != swin_feature.shape:
            raise ValueError(
                f"CMGM inputs must have the same shape, got {tuple(cnn_feature.shape)} "
                f"and {tuple(swin_feature.shape)}"
            )
        batch, channels, height, width = cnn_feature.shape
        stride = pooling_stride(height, width, self.token_budget)
        if stride > 1:
            cnn_pooled = F.avg_pool2d(cnn_feature, stride, stride, ceil_mode=True, count_include_pad=False)
            swin_pooled = F.avg_pool2d(swin_feature, stride, stride, ceil_mode=True, count_include_pad=False)
        else:
            cnn_pooled, swin_pooled = cnn_feature, swin_feature
        grid_h, grid_w = cnn_pooled.shape[-2:]
        tokens = grid_h * grid_w
        head_dim = channels // self.num_heads

        cnn_tokens = self.norm_cnn(cnn_pooled.flatten(2).transpose(1, 2))  # B×N×C
        swin_tokens = self.norm_swin(swin_pooled.flatten(2).transpose(1, 2))  # B×N×C
        key = self.key(swin_tokens).reshape(batch, tokens, self.num_heads, head_dim).transpose(1, 2)
        query, value = (
            self.query_value(cnn_tokens)
            .reshape(batch, tokens, 2, self.num_heads, head_dim)
            .permute(2, 0, 3, 1, 4)  # 2×B×heads×N×head_dim
            .unbind(0)
        )

        attention = None
        if need_attention:
            attention = self.softmax(query @ key.transpose(-2, -1) * self.scale)  # B×heads×N×N
            grafted = attention @ value
        else:
            grafted = F.scaled_dot_product_attention(query, key, value, scale=self.scale)
        grafted = self.proj(grafted.transpose(1, 2).reshape(batch, tokens, channels))  # B×N×C
        # B×C×h×w as a view of the token memory (channels_last strides), as the official module has it.
        grafted = grafted.transpose(1, 2).reshape(batch, channels, grid_h, grid_w)
        if stride > 1:
            grafted = F.interpolate(grafted, size=(height, width), mode="bilinear", align_corners=False)
        if memory_format_of(cnn_feature) == torch.channels_last:  # a channels_last model stays channels_last
            grafted = grafted.contiguous(memory_format=torch.channels_last)
        fused = grafted + cnn_feature
        fused = self.refine(fused) + fused

        attention_map = None
        if attention is not None:
            symmetric = attention + attention.transpose(-1, -2)
            attention_map = F.relu(self.attention_norm(self.attention_conv(symmetric)))
        return fused, attention_map


def _print_example_shapes() -> None:
    module = CMGM(64).eval()
    with torch.no_grad():
        for size in (28, 352):
            x = torch.randn(1, 64, size, size)
            fused, attention_map = module(x, torch.randn_like(x))
            grid = module.graft_grid(size, size)
            print(
                f"x, y {list(x.shape)} -> feature {list(fused.shape)}, "
                f"attention map {list(attention_map.shape)} (a {grid[0]}×{grid[1]} grid)"
            )


if __name__ == "__main__":
    _print_example_shapes()
