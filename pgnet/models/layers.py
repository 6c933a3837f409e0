"""Small building blocks shared by the PGNet modules."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int = 3, dilation: int = 1) -> nn.Sequential:
    """Conv (with bias, as the official model) + BatchNorm + ReLU, 'same' padding."""
    padding = dilation * (kernel_size - 1) // 2
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, dilation=dilation),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def double_conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    """Two 3×3 conv+BN+ReLU in one Sequential (state-dict indices 0, 1, 3, 4 as the official model)."""
    return nn.Sequential(*conv_bn_relu(in_channels, out_channels), *conv_bn_relu(out_channels, out_channels))


def resize_to(x: torch.Tensor, size: tuple[int, int] | torch.Size, align_corners: bool = True) -> torch.Tensor:
    """Bilinear resize of a B×C×H×W tensor; a no-op when it already has that size."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=align_corners)


def init_decoder_weights(module: nn.Module) -> None:
    """The official initialisation of the decoder and heads.

    Kaiming-normal (fan-in, ReLU) for convolutions and linear layers with zero bias; ones and zeros
    for the affine parameters of BatchNorm and LayerNorm.
    """
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.LayerNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
