"""PGNet: the Pyramid Grafting Network (Xie et al., CVPR 2022).

A Swin transformer sees the image at low resolution (224) for global context, a ResNet sees it at
full resolution for detail, and the Cross-Model Grafting Module grafts the first onto the second.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields

import torch
import torch.nn.functional as F
from torch import nn

from pgnet.errors import UnknownNameError
from pgnet.models.backbones import ResNetBranch, SwinBranch, load_pretrained
from pgnet.models.decoder import Decoder
from pgnet.models.layers import init_decoder_weights
from pgnet.models.window_cmgm import WindowLayout


@dataclass
class ModelConfig:
    """Everything that defines a PGNet; the defaults are the official model.

    ``graft_points`` lists the CMGM grafting points, each optionally with its kind, e.g.
    ``["r5-s2", "r3-s1:window"]`` (see ``pgnet.models.grafting``); ``window_size`` and ``window_shift``
    shape the windowed ones.
    ``swin_pretrained`` / ``resnet_pretrained`` are local weight files loaded at construction; they
    are not needed to load a full checkpoint.
    """

    swin: str = "swin_base_patch4_window7_224"
    resnet: str = "resnet18"
    swin_input_size: int = 224
    width: int = 64
    num_heads: int = 8
    graft_points: tuple[str, ...] = ("r5-s2",)
    token_budget: int = 2048
    window_size: int = 8
    window_shift: bool = True
    drop_path_rate: float = 0.5
    swin_grad_checkpointing: bool = False
    swin_pretrained: str | None = None
    resnet_pretrained: str | None = None

    def __post_init__(self) -> None:
        self.graft_points = tuple(self.graft_points)

    @classmethod
    def from_dict(cls, values: dict) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UnknownNameError(f"unknown model config keys {unknown}; valid keys: {sorted(known)}")
        return cls(**values)

    def to_dict(self) -> dict:
        values = asdict(self)
        values["graft_points"] = list(self.graft_points)
        return values


@dataclass
class PGNetOutput:
    """Network outputs, all logits.

    pred: B×1×H×W at the input size (or the requested output size).
    side_cnn, side_swin: B×1×h×w side predictions on the graft grid (28×28 officially).
    attention: one map per grafting point, empty unless requested (training does by default): B×1×N×N
        for a global point (N = h·w of its graft grid), B×n×w²×w² for a windowed one (n windows of
        w×w per image, see ``pgnet.models.window_cmgm``).
    attention_grids: the (h, w) grid of each attention map.
    attention_windows: the window layout of each point (None: global); empty means all global.
    attention_points: the name of each point (``pgnet.models.grafting.GRAFT_POINTS``).
    """

    pred: torch.Tensor
    side_cnn: torch.Tensor
    side_swin: torch.Tensor
    attention: list[torch.Tensor] = field(default_factory=list)
    attention_grids: list[tuple[int, int]] = field(default_factory=list)
    attention_windows: list[WindowLayout | None] = field(default_factory=list)
    attention_points: list[str] = field(default_factory=list)  # the grafting point of each map


class PGNet(nn.Module):
    """The Pyramid Grafting Network.

    Takes a normalised image of any size (B×3×H×W; official statistics in ``pgnet.data``).
    """

    frozen_modules: tuple[str, ...] = ()  # dotted names of modules kept in eval mode (see ``train``)

    def __init__(self, config: ModelConfig | None = None):
        super().__init__()
        config = config or ModelConfig()
        self.config = config
        self.swin = SwinBranch(
            config.swin,
            input_size=config.swin_input_size,
            drop_path_rate=config.drop_path_rate,
            grad_checkpointing=config.swin_grad_checkpointing,
        )
        self.resnet = ResNetBranch(config.resnet)
        self.decoder = Decoder(
            self.swin.channels,
            self.resnet.channels,
            width=config.width,
            num_heads=config.num_heads,
            graft_points=config.graft_points,
            token_budget=config.token_budget,
            window_size=config.window_size,
            window_shift=config.window_shift,
        )
        self.head_pred = nn.Conv2d(config.width, 1, kernel_size=3, padding=1)
        self.head_side_cnn = nn.Conv2d(config.width, 1, kernel_size=3, padding=1)
        self.head_side_swin = nn.Conv2d(config.width, 1, kernel_size=3, padding=1)
        # One head per grafting point turns its per-head attention map into attention logits.
        self.attention_heads = nn.ModuleList(
            nn.Conv2d(config.num_heads, 1, kernel_size=3, padding=1) for _ in self.decoder.graft_points
        )
        for module in (self.decoder, self.head_pred, self.head_side_cnn, self.head_side_swin, self.attention_heads):
            init_decoder_weights(module)
        self.decoder.reset_new_grafts()

    def train(self, mode: bool = True) -> PGNet:
        """``nn.Module.train``, except that the modules named in ``frozen_modules`` (set by
        ``pgnet.train.finetune``) always stay in eval mode: fixed BatchNorm statistics, no drop-path."""
        super().train(mode)
        for name in self.frozen_modules:
            self.get_submodule(name).eval()
        return self

    def forward(
        self,
        image: torch.Tensor,
        output_size: tuple[int, int] | None = None,
        need_attention: bool | None = None,
    ) -> PGNetOutput:
        """Predict saliency logits.

        Args:
            image: B×3×H×W normalised image, any H and W.
            output_size: size of ``pred``; the input size by default.
            need_attention: compute the CMGM attention logits (needed by the attention-guided loss);
                defaults to ``self.training``. Without them no N×N matrix is formed.
        """
        if need_attention is None:
            need_attention = self.training
        swin_features = self.swin(image)
        cnn_features = self.resnet(image)
        decoded = self.decoder(swin_features, cnn_features, need_attention)
        size = tuple(output_size) if output_size is not None else tuple(image.shape[-2:])
        pred = F.interpolate(self.head_pred(decoded.top), size=size, mode="bilinear", align_corners=False)
        attention = []
        for head, maps, window in zip(self.attention_heads, decoded.attention_maps, decoded.attention_windows):
            logits = head(maps)  # B×1×N×N, or (B·n)×1×w²×w² windowed
            attention.append(logits if window is None else logits.reshape(image.shape[0], -1, *logits.shape[-2:]))
        return PGNetOutput(
            pred=pred,
            side_cnn=self.head_side_cnn(decoded.cnn_on_grid),
            side_swin=self.head_side_swin(decoded.swin_on_grid),
            attention=attention,
            attention_grids=decoded.attention_grids,
            attention_windows=decoded.attention_windows,
            attention_points=list(self.decoder.graft_points),
        )

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters split into the Swin branch and the rest (the official recipe trains Swin at 0.1×)."""
        groups: dict[str, list[nn.Parameter]] = {"swin": [], "rest": []}
        for name, param in self.named_parameters():
            groups["swin" if name.startswith("swin.") else "rest"].append(param)
        return groups


def create_model(config: ModelConfig | dict | None = None, **overrides) -> PGNet:
    """Build a PGNet from a config (a ``ModelConfig``, a dict of its fields, or keyword overrides).

    Local pretrained backbone files named in the config are loaded; nothing is downloaded.
    """
    if isinstance(config, dict):
        config = ModelConfig.from_dict(config)
    config = config or ModelConfig()
    if overrides:
        config = ModelConfig.from_dict({**config.to_dict(), **overrides})
    model = PGNet(config)
    if config.swin_pretrained:
        load_pretrained(model.swin, config.swin_pretrained, "model.swin_pretrained")
    if config.resnet_pretrained:
        load_pretrained(model.resnet, config.resnet_pretrained, "model.resnet_pretrained")
    return model


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@torch.no_grad()
def predict_probabilities(
    model: nn.Module,
    images: torch.Tensor,
    sizes: Sequence[tuple[int, int]],
    flip: bool = False,
    autocast: Callable[[], contextlib.AbstractContextManager] | None = None,
    channels_last: bool = False,
) -> list[torch.Tensor]:
    """Saliency probabilities of normalised ``images`` (B×3×S×S on the model's device), one H×W
    float32 tensor per image at its ``sizes`` entry.

    The head runs at stride 4 (the ResNet's r2 grid): asking for that size keeps the network from
    resizing, so each map is resized once, straight to its target size, before the sigmoid (as the
    official test code does). ``flip`` averages with the mirrored image's probabilities; ``autocast``
    wraps the forward pass; ``channels_last`` feeds the network channels_last images (what a network
    prepared by ``pgnet.predict.acceleration`` runs fastest on). Used by the predictor and the evaluator alike.
    """
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    batch_size = images.shape[0]
    if flip:
        images = torch.cat((images, images.flip(-1)))  # 2B×3×S×S
    head_size = (-(-images.shape[-2] // 4), -(-images.shape[-1] // 4))
    with autocast() if autocast is not None else contextlib.nullcontext():
        logits = model(images, output_size=head_size, need_attention=False).pred  # (2)B×1×h×w
    logits = logits.float()
    probabilities = []
    for index, size in enumerate(sizes):
        views = logits[index : index + 1]
        if flip:
            views = torch.cat((views, logits[batch_size + index : batch_size + index + 1].flip(-1)))
        resized = F.interpolate(views, size=tuple(size), mode="bilinear", align_corners=False)
        probabilities.append(torch.sigmoid(resized).mean(0)[0])  # H×W
    return probabilities
