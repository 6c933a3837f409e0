"""Small building blocks shared by the PGNet modules."""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


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


def memory_format_of(x: torch.Tensor) -> torch.memory_format:
    """``torch.channels_last`` when a 4-d tensor is laid out NHWC (and not also NCHW-contiguous), else
    ``torch.contiguous_format``: the layout the features computed from ``x`` keep."""
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


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


def _foldable(conv: nn.Module, norm: nn.Module) -> bool:
    return (
        type(conv) is nn.Conv2d
        and type(norm) is nn.BatchNorm2d
        and norm.track_running_stats
        and conv.out_channels == norm.num_features
    )


def fold_batchnorm(module: nn.Module) -> int:
    """Fold each BatchNorm2d into the Conv2d it follows, in place, for inference; returns how many.

    Folded are the conv/BN neighbours of every ``nn.Sequential`` (``conv_bn_relu`` and ResNet
    downsamples) and the ``convN``/``bnN`` attribute pairs of ResNet stems and blocks; each folded
    BatchNorm becomes an ``nn.Identity``. The module must be in eval mode: the running statistics are
    what is folded, so it must not be trained afterwards.
    """
    if any(m.training for m in module.modules()):
        raise ValueError("fold_batchnorm needs a module in eval mode")
    folded = 0
    for parent in list(module.modules()):
        if isinstance(parent, nn.Sequential):
            pairs = list(zip(list(parent._modules), list(parent._modules)[1:]))
        else:
            pairs = [(name, f"bn{match[1]}") for name in parent._modules if (match := re.fullmatch(r"conv(\d*)", name))]
        for conv_name, norm_name in pairs:
            conv, norm = parent._modules[conv_name], parent._modules.get(norm_name)
            if norm is not None and _foldable(conv, norm):
                parent._modules[conv_name] = fuse_conv_bn_eval(conv, norm)
                parent._modules[norm_name] = nn.Identity()
                folded += 1
    return folded
