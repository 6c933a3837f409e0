"""The two backbones: Swin at a fixed low resolution, ResNet at the full input resolution.

Both are built by timm offline (``pretrained=False``); pretrained weights come from local files only
(see ``load_pretrained``). Only the modules PGNet runs are kept: Swin's first three stages without
its final norm and head, ResNet's stem and four stages without its classifier.
"""

from __future__ import annotations

import re
from pathlib import Path

import pgnet._compat  # noqa: F401  # isort: skip  (first: makes torchvision, hence timm, importable)
import timm
import torch
import torch.nn.functional as F
from timm.layers import to_2tuple
from torch import nn
from torch.utils.checkpoint import checkpoint

from pgnet.errors import UnknownNameError
from pgnet.models.hub import check_known_file
from pgnet.models.layers import memory_format_of
from pgnet.models.weights import CheckpointNotFoundError, compare_weights, read_state_dict

# Full stage depths of each Swin variant: the drop-path rates are spread over all of them, as in the
# official model, although only the first three stages are built.
SWIN_FULL_DEPTHS = {
    "swin_tiny_patch4_window7_224": (2, 2, 6, 2),
    "swin_small_patch4_window7_224": (2, 2, 18, 2),
    "swin_base_patch4_window7_224": (2, 2, 18, 2),
}
SWIN_HEADS = {
    "swin_tiny_patch4_window7_224": (3, 6, 12),
    "swin_small_patch4_window7_224": (3, 6, 12),
    "swin_base_patch4_window7_224": (4, 8, 16),
}
RESNET_VARIANTS = ("resnet18", "resnet34", "resnet50")

# Buffers timm recomputes; released checkpoints may carry them.
RECOMPUTED_BUFFER_SUFFIXES = ("relative_position_index", "attn_mask", "atten_mask")
# Keys of a backbone file that PGNet drops on purpose: classifiers, Swin's final norm and fourth
# stage, recomputed buffers. Any other key the branch lacks means the file is for another variant.
DROPPED_BACKBONE_KEYS = re.compile(r"^(fc|head|norm|layers\.[3-9])\.|(relative_position_index|attn_mask)$")


def _nchw(x: torch.Tensor, memory_format: torch.memory_format) -> torch.Tensor:
    """B×H×W×C tokens as a B×C×H×W feature laid out as ``memory_format`` (channels_last: no copy)."""
    return x.permute(0, 3, 1, 2).contiguous(memory_format=memory_format)


class SwinBranch(nn.Module):
    """Swin transformer on the input resized to ``input_size``, tapped as the official PGNet.

    Taps (Swin-B at 224): s1 = patch embedding (128×56×56, before any block); s2 = stage-1 blocks then
    the following patch merging (256×28×28); s3 = stage-2 blocks then the next merging (512×14×14);
    s4 = the stage-3 blocks (512×14×14). timm merges at the *start* of a stage, so its
    ``features_only`` outputs are not these taps: they are assembled here from its modules.
    """

    def __init__(
        self,
        variant: str = "swin_base_patch4_window7_224",
        input_size: int = 224,
        drop_path_rate: float = 0.5,
        grad_checkpointing: bool = False,
    ):
        super().__init__()
        if variant not in SWIN_FULL_DEPTHS:
            raise UnknownNameError(f"unknown Swin variant {variant!r}; choose one of {sorted(SWIN_FULL_DEPTHS)}")
        full_depths = SWIN_FULL_DEPTHS[variant]
        built = sum(full_depths[:3])
        # linspace(0, rate, all blocks)[:built] == linspace(0, rate * (built-1)/(all-1), built)
        built_rate = drop_path_rate * (built - 1) / (sum(full_depths) - 1)
        model = timm.create_model(
            variant,
            pretrained=False,
            num_classes=0,
            img_size=input_size,
            depths=full_depths[:3],
            num_heads=SWIN_HEADS[variant],
            drop_path_rate=built_rate,
        )
        self.variant = variant
        self.input_size = to_2tuple(input_size)
        self.grad_checkpointing = grad_checkpointing
        self.patch_embed = model.patch_embed
        self.layers = model.layers  # timm stages 0..2; layers[i>0].downsample is the merge before stage i
        embed = model.embed_dim
        self.channels = (embed, 2 * embed, 4 * embed, 4 * embed)

    def set_fused_attention(self, enabled: bool = True) -> int:
        """Let timm's window attention call ``scaled_dot_product_attention`` (timm leaves it off for Swin);
        the results agree up to float rounding. Returns the number of attention modules switched."""
        modules = [m for m in self.modules() if hasattr(m, "fused_attn")]
        for module in modules:
            module.fused_attn = enabled
        return len(modules)

    def _blocks(self, stage: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if not (self.grad_checkpointing and self.training and torch.is_grad_enabled()):
            return stage.blocks(x)
        for block in stage.blocks:
            x = checkpoint(block, x, use_reentrant=False)
        return x

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        """image B×3×H×W (normalised, any size) → [s1, s2, s3, s4], each B×C×h×w in the image's layout
        (NCHW, or channels_last for a channels_last image)."""
        memory_format = memory_format_of(image)
        x = F.interpolate(image, size=self.input_size, mode="bilinear", align_corners=True)
        x = self.patch_embed(x)  # B×h×w×C (NHWC)
        s1 = x
        x = self._blocks(self.layers[0], x)
        s2 = x = self.layers[1].downsample(x)
        x = self._blocks(self.layers[1], x)
        s3 = x = self.layers[2].downsample(x)
        s4 = self._blocks(self.layers[2], x)
        return [_nchw(s, memory_format) for s in (s1, s2, s3, s4)]


class ResNetBranch(nn.Module):
    """ResNet on the full-resolution input; returns r2..r5 = layer1..layer4 (strides 4..32)."""

    def __init__(self, variant: str = "resnet18"):
        super().__init__()
        if variant not in RESNET_VARIANTS:
            raise UnknownNameError(f"unknown ResNet variant {variant!r}; choose one of {list(RESNET_VARIANTS)}")
        model = timm.create_model(variant, pretrained=False, num_classes=0)
        self.variant = variant
        self.conv1, self.bn1, self.act1, self.maxpool = model.conv1, model.bn1, model.act1, model.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = model.layer1, model.layer2, model.layer3, model.layer4
        self.channels = tuple(info["num_chs"] for info in model.feature_info[1:])

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        x = self.maxpool(self.act1(self.bn1(self.conv1(image))))
        r2 = self.layer1(x)
        r3 = self.layer2(r2)
        r4 = self.layer3(r3)
        r5 = self.layer4(r4)
        return [r2, r3, r4, r5]


def swin_official_to_timm_key(key: str) -> str:
    """Rename a key of Microsoft's Swin layout (merging at the end of a stage) to timm's (at the start)."""
    return re.sub(r"layers\.(\d+)\.downsample\.", lambda m: f"layers.{int(m[1]) + 1}.downsample.", key)


def load_pretrained(branch: SwinBranch | ResNetBranch, path: str | Path, config_key: str) -> list[str]:
    """Load backbone weights from a local file into ``branch``; returns the file's unused keys.

    Accepts timm ``.pth``/``.safetensors`` files, Microsoft's Swin release (``{'model': ...}``, merging
    at the end of a stage) and torchvision's ResNet files. Every parameter of the branch must be in
    the file with the right shape, and the file may hold nothing else than what PGNet drops on
    purpose (``DROPPED_BACKBONE_KEYS``); the error names the file, the config key and the keys.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointNotFoundError(f"{config_key}: pretrained weights file not found: {path}")
    check_known_file(path, f"{config_key}:")  # a released file's name with other contents is refused
    source = read_state_dict(path)
    if isinstance(branch, SwinBranch) and "layers.0.downsample.reduction.weight" in source:
        source = {swin_official_to_timm_key(k): v for k, v in source.items()}
    fit = compare_weights(source, branch.state_dict(), drop=DROPPED_BACKBONE_KEYS.search)
    fit.check(f"{config_key}: {path}", branch.variant)
    branch.load_state_dict({key: source[key] for key in fit.loaded}, strict=True)
    return fit.dropped
