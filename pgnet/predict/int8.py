"""The CPU's int8 path: the ResNet branch and the finest decoder block in int8, inside a bfloat16
network.

``Int8ResNet`` and ``Int8FusionBlock`` run a BatchNorm-folded ``ResNetBranch`` and the decoder's
``cnn2_block`` (the 1/4-scale ``FusionBlock``, the decoder's costliest) through oneDNN's int8
convolutions, the kernels PyTorch's x86 quantisation lowers to (``torch.ops.onednn.qconv2d_pointwise``),
which use AVX-512 VNNI or AMX where the processor has them:

- weights: int8, symmetric, one scale per output channel;
- activations: uint8, one static scale (and zero point) per tensor, set by a calibration
  (``Int8Calibration``: the range each activation reached on calibration pictures). The normalised
  image is quantised with the exact range its normalisation can give; the ResNet downsample outputs,
  which have no ReLU, take zero point 128; the decoder block's signed inputs their calibrated range;
- every ReLU and each residual block's sum run inside the convolution (oneDNN post-ops), so the
  ResNet's activations stay uint8 from the image to its four outputs. The stem's max-pool runs on
  the uint8 values (the maximum commutes with the quantisation).
Outputs leave in bfloat16. Everything else (the Swin branch, the rest of the decoder, the float32
prediction head) runs as ``LowPrecisionNetwork`` runs it. Weights are quantised when the modules are
built; ``calibrate`` runs the float32 prepared network.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import re
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pgnet.checkpoint import PACKAGE_INT8_CALIBRATION
from pgnet.errors import UserError
from pgnet.models.backbones import ResNetBranch
from pgnet.models.layers import resize_to
from pgnet.models.pgnet import PGNet
from pgnet.writing import write_text

CALIBRATION_FORMAT = "pgnet-int8-calibration"
CALIBRATION_VERSION = 1
DECODER_BLOCK = "decoder.cnn2_block"  # the decoder block run in int8
_UNSIGNED_KEY = re.compile(r"stem|layer[1-4]\.\d+\.(conv[1-3]|out|downsample)|decoder\.cnn2_block\.(merge|refine)")
_SIGNED_KEY = re.compile(r"decoder\.cnn2_block\.(input|merged)")


class Int8CalibrationError(UserError):
    """A calibration file that cannot be read, or one that does not fit the model."""


class Int8UnavailableError(UserError):
    """int8 asked for where it cannot run (no oneDNN int8 kernels, a non-CPU device)."""


def int8_available() -> bool:
    """Whether this torch has the oneDNN int8 convolution kernels (x86 CPU builds)."""
    return hasattr(torch.ops.onednn, "qconv2d_pointwise") and torch.backends.mkldnn.is_available()


@dataclass
class Int8Calibration:
    """The range of each activation the int8 path quantises, seen on calibration pictures.

    ranges: activation name → its largest value: the stem's ReLU output "stem"; for each ResNet block
        "layerL.B.convK" after each inner ReLU, "layerL.B.out" after the block's ReLU, and
        "layerL.B.downsample" (the largest absolute value of the shortcut); for the decoder block
        "decoder.cnn2_block.merge" and ".refine" after the first ReLU of each double conv. Signed
        activations hold [smallest, largest]: "decoder.cnn2_block.input" (the concatenated lateral and
        resized top-down features) and ".merged" (what the refining convolutions take).
    pictures: how many pictures were seen; size: the network input side they were seen at.
    check: the comparison with float32 made when it was calibrated (``pgnet-calibrate``), if any.
    """

    ranges: dict[str, Any]  # float, or [low, high] for the signed activations
    pictures: int
    size: int
    check: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"format": CALIBRATION_FORMAT, "version": CALIBRATION_VERSION, "pictures": self.pictures,
                "size": self.size, "ranges": dict(self.ranges), "check": dict(self.check)}

    @classmethod
    def from_dict(cls, values: Any, source: str = "calibration") -> Int8Calibration:
        if not isinstance(values, dict) or values.get("format") != CALIBRATION_FORMAT:
            raise Int8CalibrationError(f"{source}: not a pgnet int8 calibration (no 'format: {CALIBRATION_FORMAT}')")
        if values.get("version") != CALIBRATION_VERSION:
            raise Int8CalibrationError(f"{source}: calibration version {values.get('version')!r} is not "
                                       f"{CALIBRATION_VERSION}, the one this pgnet reads")
        ranges = values.get("ranges")
        if not isinstance(ranges, dict) or "stem" not in ranges:
            raise Int8CalibrationError(f"{source}: 'ranges' must map activation names to numbers, with 'stem'")
        checked: dict[str, Any] = {}
        for name, value in ranges.items():
            name = str(name)
            if _SIGNED_KEY.fullmatch(name):
                if not (isinstance(value, list) and len(value) == 2 and all(_finite(v) for v in value)
                        and value[0] <= 0 <= value[1]):
                    raise Int8CalibrationError(f"{source}: ranges.{name} must be [low ≤ 0, high ≥ 0], got {value!r}")
                checked[name] = [float(value[0]), float(value[1])]
            elif _UNSIGNED_KEY.fullmatch(name):
                if not _finite(value) or value < 0:
                    raise Int8CalibrationError(f"{source}: ranges.{name} must be a finite number ≥ 0, got {value!r}")
                checked[name] = float(value)
            else:
                raise Int8CalibrationError(f"{source}: ranges: unknown activation {name!r}")
        try:
            pictures, size = int(values["pictures"]), int(values["size"])
        except (KeyError, TypeError, ValueError):
            raise Int8CalibrationError(f"{source}: 'pictures' and 'size' must be integers") from None
        check = values.get("check") or {}
        if not isinstance(check, dict):
            raise Int8CalibrationError(f"{source}: 'check' must be a mapping")
        return cls(checked, pictures, size, check)

    def save(self, path: str | Path) -> None:
        """Write it as JSON (atomically)."""
        write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def read(cls, source: Int8Calibration | str | Path | None) -> Int8Calibration | None:
        """``source`` itself when a calibration, read from its file when a path, None for None."""
        return source if source is None or isinstance(source, Int8Calibration) else cls.load(source)

    @classmethod
    def load(cls, path: str | Path) -> Int8Calibration:
        path = Path(path)
        try:
            values = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise Int8CalibrationError(f"int8 calibration file not found: {path}") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise Int8CalibrationError(f"{path}: not a readable JSON calibration ({error})") from None
        return cls.from_dict(values, str(path))


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def find_calibration(model: str | Path, given: str | Path | Int8Calibration | None = None
                     ) -> str | Path | Int8Calibration | None:
    """``given``, else the calibration a model package folder ``model`` ships (``int8_calibration.json``),
    else None."""
    if given is not None:
        return given
    packaged = Path(model) / PACKAGE_INT8_CALIBRATION
    return packaged if packaged.is_file() else None


def _block_convs(block: nn.Module) -> list[tuple[nn.Conv2d, nn.Module]]:
    """The convolutions of a timm BasicBlock/Bottleneck in order, each with the activation after it
    (the last one's activation follows the residual sum)."""
    names = [name for name in ("conv1", "conv2", "conv3") if hasattr(block, name)]
    return [(getattr(block, name), getattr(block, f"act{index + 1}")) for index, name in enumerate(names)]


def _resnet_activations(resnet: ResNetBranch) -> Iterator[tuple[str, nn.Module]]:
    """Each ResNet activation a calibration names, with the module whose output it is: the stem's
    ReLU, each block's inner ReLUs, the block itself (after its last ReLU) and its downsample."""
    yield "stem", resnet.act1
    for layer_index in range(1, 5):
        for block_index, block in enumerate(getattr(resnet, f"layer{layer_index}")):
            prefix = f"layer{layer_index}.{block_index}"
            for conv_index, (_, activation) in enumerate(_block_convs(block)[:-1]):
                yield f"{prefix}.conv{conv_index + 1}", activation
            yield f"{prefix}.out", block
            if block.downsample is not None:
                yield f"{prefix}.downsample", block.downsample


def _check_foldable_resnet(resnet: ResNetBranch) -> None:
    """Int8ResNet computes conv → ReLU chains: every BatchNorm must be folded and nothing else may
    sit between the convolutions (timm's optional attention, blur pooling or drop-block)."""
    for name, module in resnet.named_modules():
        if isinstance(module, nn.BatchNorm2d):
            raise ValueError(f"Int8ResNet needs a ResNet with its BatchNorms folded ({name} is not)")
        if name.rsplit(".", 1)[-1] in ("se", "aa", "drop_block") and module is not None \
                and not isinstance(module, nn.Identity):
            raise Int8UnavailableError(f"int8: the ResNet module {name} ({type(module).__name__}) is not supported")


def _conv_relu_pair(sequence: nn.Sequential, where: str) -> tuple[nn.Conv2d, nn.Conv2d]:
    """The two convolutions of a folded ``double_conv_bn_relu`` (conv, Identity, ReLU twice)."""
    kinds = [type(module) for module in sequence]
    if kinds != [nn.Conv2d, nn.Identity, nn.ReLU] * 2:
        raise ValueError(f"int8: {where} is not a BatchNorm-folded double conv+ReLU ({[k.__name__ for k in kinds]})")
    return sequence[0], sequence[3]


def calibrate(network: PGNet, images: Iterable[torch.Tensor], size: int) -> Int8Calibration:
    """Record the range of each activation int8 quantises (see ``Int8Calibration``), running a
    float32, BatchNorm-folded, eval-mode ``network`` (``prepare_for_inference(model)``) over
    ``images`` (normalised B×3×S×S tensors at network input size ``size``)."""
    resnet, block = network.resnet, network.decoder.cnn2_block
    _check_foldable_resnet(resnet)
    _conv_relu_pair(block.merge, DECODER_BLOCK + ".merge")
    ranges: dict[str, Any] = {}

    def widen(name: str, tensor: torch.Tensor, signed: bool = False, absolute: bool = False) -> None:
        tensor = tensor.detach()
        if signed:
            low, high = ranges.get(name, (0.0, 0.0))
            ranges[name] = [min(low, float(tensor.min())), max(high, float(tensor.max()))]
        else:
            ranges[name] = max(ranges.get(name, 0.0), float((tensor.abs() if absolute else tensor).max()))

    def record(name: str, absolute: bool = False):
        return lambda module, inputs, output: widen(name, output, absolute=absolute)

    def record_block_input(module: nn.Module, inputs: tuple) -> None:
        x, top = inputs
        widen(f"{DECODER_BLOCK}.input", torch.cat((x, resize_to(top, x.shape[-2:])), dim=1), signed=True)

    hooks = [module.register_forward_hook(record(name, name.endswith(".downsample")))
             for name, module in _resnet_activations(resnet)]
    hooks += [
        block.register_forward_pre_hook(record_block_input),
        block.merge[2].register_forward_hook(record(f"{DECODER_BLOCK}.merge")),
        block.refine.register_forward_pre_hook(lambda module, inputs: widen(f"{DECODER_BLOCK}.merged", inputs[0],
                                                                            signed=True)),
        block.refine[2].register_forward_hook(record(f"{DECODER_BLOCK}.refine")),
    ]
    pictures = 0
    try:
        with torch.no_grad():
            for batch in images:
                head_size = (-(-batch.shape[-2] // 4), -(-batch.shape[-1] // 4))
                network(batch, output_size=head_size, need_attention=False)
                pictures += batch.shape[0]
    finally:
        for hook in hooks:
            hook.remove()
    if pictures == 0:
        raise Int8CalibrationError("int8 calibration needs at least one picture")
    return Int8Calibration(ranges, pictures, size)


def input_range(mean: Sequence[float], std: Sequence[float]) -> tuple[float, float]:
    """The smallest and largest value a picture normalised as (x − mean)/std (0–255 scale) can take."""
    low = min((0.0 - m) / s for m, s in zip(mean, std))
    high = max((255.0 - m) / s for m, s in zip(mean, std))
    return low, high


def _unsigned(largest: float, levels: float = 255.0) -> float:
    """The scale of an activation in [0, largest]."""
    return max(largest, 1e-6) / levels


def _signed(low: float, high: float) -> tuple[float, int]:
    """The scale and zero point of an activation in [low, high] (low ≤ 0 ≤ high)."""
    scale = max(high - low, 1e-6) / 255.0
    return scale, min(255, max(0, round(-low / scale)))


@contextlib.contextmanager
def _quantized_dtypes() -> Iterator[None]:
    """Silences the deprecation warning of PyTorch's quantized dtypes, nothing a user can act on."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        yield


def quantize(x: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor:
    """``x`` as uint8 (round(x / scale) + zero_point, clamped), its layout kept, through PyTorch's
    vectorised quantisation kernel."""
    with _quantized_dtypes():
        return torch.quantize_per_tensor(x.float(), scale, zero_point, torch.quint8).int_repr()


class _QuantizedConv:
    """One convolution in int8: uint8 in (``input_scale``, ``input_zero_point``), int8 weights per
    output channel, a float32 bias; uint8 out (``output_scale``, ``output_zero_point``) or, called with
    an ``output_dtype``, that dtype."""

    def __init__(self, conv: nn.Conv2d, input_scale: float, input_zero_point: int, output_scale: float = 1.0,
                 output_zero_point: int = 0, relu: bool = True):
        weight = conv.weight.detach().float()
        self.weight_scales = (weight.abs().amax(dim=(1, 2, 3)) / 127).clamp(min=1e-12)
        quantized = torch.round(weight / self.weight_scales[:, None, None, None]).clamp(-127, 127).to(torch.int8)
        self.geometry = (list(conv.stride), list(conv.padding), list(conv.dilation), conv.groups)
        self.weight_zero_points = torch.zeros(weight.shape[0], dtype=torch.long)
        self.weight = torch.ops.onednn.qconv_prepack(quantized, self.weight_scales, input_scale, input_zero_point,
                                                     *self.geometry, None)
        self.bias = conv.bias.detach().float() if conv.bias is not None else torch.zeros(weight.shape[0])
        self.input_scale, self.input_zero_point = input_scale, input_zero_point
        self.output_scale, self.output_zero_point = output_scale, output_zero_point
        self.unary = "relu" if relu else "none"

    def __deepcopy__(self, memo: dict) -> _QuantizedConv:
        # Read-only once built, and its prepacked weight (an opaque oneDNN tensor) cannot be copied:
        # a copied network shares it.
        return self

    def __call__(self, x: torch.Tensor, output_dtype: torch.dtype | None = None) -> torch.Tensor:
        scale, zero_point = (self.output_scale, self.output_zero_point) if output_dtype is None else (1.0, 0)
        return torch.ops.onednn.qconv2d_pointwise(
            x, self.input_scale, self.input_zero_point, self.weight, self.weight_scales, self.weight_zero_points,
            self.bias, *self.geometry, scale, zero_point, output_dtype, self.unary, [], "")

    def add_relu(self, x: torch.Tensor, shortcut: torch.Tensor, shortcut_scale: float,
                 shortcut_zero_point: int) -> torch.Tensor:
        """relu(conv(x) + shortcut), the shortcut uint8 with its own scale; it is overwritten."""
        return torch.ops.onednn.qconv2d_pointwise.binary(
            x, self.input_scale, self.input_zero_point, self.weight, self.weight_scales, self.weight_zero_points,
            shortcut, self.bias, *self.geometry, self.output_scale, self.output_zero_point, None,
            shortcut_scale, shortcut_zero_point, "sum", 1.0, "relu", [], "")


class _QuantizedBlock:
    """A residual block: its convolutions, the shortcut's (when it downsamples), and its output scale."""

    def __init__(self, block: nn.Module, prefix: str, input_scale: float, ranges: dict[str, Any]):
        convs = _block_convs(block)
        scale = input_scale
        self.convs = []
        for index, (conv, _) in enumerate(convs[:-1]):
            next_scale = _unsigned(ranges[f"{prefix}.conv{index + 1}"])
            self.convs.append(_QuantizedConv(conv, scale, 0, next_scale))
            scale = next_scale
        self.output_scale = _unsigned(ranges[f"{prefix}.out"])
        self.last = _QuantizedConv(convs[-1][0], scale, 0, self.output_scale)
        self.downsample = None
        self.input_scale = input_scale
        if block.downsample is not None:
            conv = block.downsample[0]
            if len(block.downsample) > 1 and not all(isinstance(m, nn.Identity) for m in block.downsample[1:]):
                raise Int8UnavailableError(f"int8: the downsample of {prefix} is not a lone convolution")
            self.downsample = _QuantizedConv(conv, input_scale, 0, _unsigned(ranges[f"{prefix}.downsample"], 127.0),
                                             128, relu=False)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.downsample is not None:
            shortcut, shortcut_scale, shortcut_zero_point = self.downsample(x), self.downsample.output_scale, 128
        else:  # the post-op sums into its shortcut: a copy, x is not ours to overwrite
            shortcut, shortcut_scale, shortcut_zero_point = x.clone(), self.input_scale, 0
        y = x
        for conv in self.convs:
            y = conv(y)
        return self.last.add_relu(y, shortcut, shortcut_scale, shortcut_zero_point)


class Int8ResNet(nn.Module):
    """A BatchNorm-folded, eval-mode ``ResNetBranch`` run in int8 (see the module doc); called like it
    (a normalised image, bfloat16 or float32), it returns r2..r5 in ``output_dtype``."""

    def __init__(self, resnet: ResNetBranch, ranges: dict[str, Any], image_range: tuple[float, float],
                 output_dtype: torch.dtype = torch.bfloat16):
        super().__init__()
        _check_foldable_resnet(resnet)
        self.output_dtype = output_dtype
        self.image_scale, self.image_zero_point = _signed(*image_range)
        self.stem_scale = _unsigned(ranges["stem"])
        self.stem = _QuantizedConv(resnet.conv1, self.image_scale, self.image_zero_point, self.stem_scale)
        self.maxpool = resnet.maxpool
        self.layers: list[list[_QuantizedBlock]] = []
        scale = self.stem_scale
        for layer_index in range(1, 5):
            blocks = []
            for block_index, block in enumerate(getattr(resnet, f"layer{layer_index}")):
                blocks.append(_QuantizedBlock(block, f"layer{layer_index}.{block_index}", scale, ranges))
                scale = blocks[-1].output_scale
            self.layers.append(blocks)

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(quantize(image, self.image_scale, self.image_zero_point))  # uint8, B×C×H/2×W/2
        # The max-pool on the uint8 values through PyTorch's quantized max-pool (the plain one has no
        # fast uint8 path).
        with _quantized_dtypes():
            quantized = torch._make_per_tensor_quantized_tensor(x, self.stem_scale, 0)
        x = self.maxpool(quantized).int_repr()
        outputs = []
        for blocks in self.layers:
            for block in blocks:
                x = block(x)
            outputs.append(x.to(self.output_dtype).mul_(blocks[-1].output_scale))
        return outputs


class Int8FusionBlock(nn.Module):
    """A BatchNorm-folded decoder ``FusionBlock`` (``pgnet.models.decoder``) with its four 3×3
    convolutions in int8; called like it, ``(x, top)`` in ``output_dtype``, the same out.

    merged = relu(conv(relu(conv(quantized [x, resize(top)])))) + shortcut(resize(top)), and the
    block returns merged + relu(conv(relu(conv(quantized merged)))); the 1×1 shortcut and the sums
    stay in ``output_dtype``.
    """

    def __init__(self, block: nn.Module, ranges: dict[str, Any], prefix: str = DECODER_BLOCK,
                 output_dtype: torch.dtype = torch.bfloat16):
        super().__init__()
        merge_first, merge_second = _conv_relu_pair(block.merge, f"{prefix}.merge")
        refine_first, refine_second = _conv_relu_pair(block.refine, f"{prefix}.refine")
        self.output_dtype = output_dtype
        self.input_scale, self.input_zero_point = _signed(*ranges[f"{prefix}.input"])
        self.merged_scale, self.merged_zero_point = _signed(*ranges[f"{prefix}.merged"])
        merge_scale, refine_scale = _unsigned(ranges[f"{prefix}.merge"]), _unsigned(ranges[f"{prefix}.refine"])
        self.merge = (_QuantizedConv(merge_first, self.input_scale, self.input_zero_point, merge_scale),
                      _QuantizedConv(merge_second, merge_scale, 0))
        self.refine = (_QuantizedConv(refine_first, self.merged_scale, self.merged_zero_point, refine_scale),
                       _QuantizedConv(refine_second, refine_scale, 0))
        self.shortcut = copy.deepcopy(block.shortcut).to(output_dtype)

    def forward(self, x: torch.Tensor, top: torch.Tensor) -> torch.Tensor:
        top = resize_to(top, x.shape[-2:])
        joined = quantize(torch.cat((x, top), dim=1), self.input_scale, self.input_zero_point)
        merged = self.merge[1](self.merge[0](joined), self.output_dtype) + self.shortcut(top)
        refined = self.refine[0](quantize(merged, self.merged_scale, self.merged_zero_point))
        return merged + self.refine[1](refined, self.output_dtype)


def int8_modules(network: PGNet, calibration: Int8Calibration, image_range: tuple[float, float],
                 output_dtype: torch.dtype = torch.bfloat16, source: str = "calibration") -> dict[str, nn.Module]:
    """The int8 replacements of a float32, BatchNorm-folded ``network``'s modules, by dotted name
    ("resnet", "decoder.cnn2_block"), to be set into its lower-precision copy."""
    if not int8_available():
        raise Int8UnavailableError("int8 needs PyTorch's oneDNN int8 kernels (an x86 CPU build of torch)")
    check_calibration_fits(calibration, network, source)
    return {"resnet": Int8ResNet(network.resnet, calibration.ranges, image_range, output_dtype),
            DECODER_BLOCK: Int8FusionBlock(network.decoder.cnn2_block, calibration.ranges, DECODER_BLOCK,
                                           output_dtype)}


def check_calibration_fits(calibration: Int8Calibration, network: PGNet, source: str = "calibration") -> None:
    """Refuse a calibration whose activations are not exactly those of ``network``."""
    expected = set(calibration_names(network))
    if set(calibration.ranges) != expected:
        missing, extra = sorted(expected - set(calibration.ranges)), sorted(set(calibration.ranges) - expected)
        raise Int8CalibrationError(f"the int8 {source} does not fit this network (ResNet {network.resnet.variant}): "
                                   f"missing {missing}, unknown {extra}")


def calibration_names(network: PGNet) -> list[str]:
    """The activation names a calibration of ``network`` holds (see ``Int8Calibration``)."""
    names = [name for name, _ in _resnet_activations(network.resnet)]
    return names + [f"{DECODER_BLOCK}.{name}" for name in ("input", "merge", "merged", "refine")]
