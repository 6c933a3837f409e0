"""Inference fast paths: the network prepared, compiled, or replayed from CUDA graphs.

Each keeps the official computation, so the outputs agree with the plain float32 network up to float
rounding (``pgnet-benchmark`` measures by how much, and how much faster each is):

- ``prepare_for_inference``: a copy with BatchNorm folded into the convolutions, Swin's window
  attention through ``scaled_dot_product_attention`` and channels_last weights, and optionally its
  weights and activations in bfloat16 (``LowPrecisionNetwork``: the prediction head, its logits and
  what follows stay float32), the CPU's bfloat16 path;
- ``compile_for_inference``: ``torch.compile`` with Inductor's freezing (weights folded into the graph
  as constants), static shapes;
- ``CUDAGraphRunner``: one CUDA graph captured per input shape and replayed. At batch 1 a forward pass
  launches about 760 kernels and, on a fast GPU, their launch cost exceeds their run time; a replay
  launches them all at once.

The model's CMGM always skips the N×N attention matrix at inference (``need_attention=False``).
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections import OrderedDict
from typing import Any

import torch
from torch import nn

from pgnet.models.layers import fold_batchnorm
from pgnet.models.pgnet import PGNet, PGNetOutput
from pgnet.predict.int8 import Int8Calibration, int8_modules


class Float32Head(nn.Module):
    """A convolution kept in float32 that takes lower-precision features: the prediction head of a
    bfloat16 network, so that its logits (and their resize to the picture) are computed in float32."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.conv = conv.float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x.float())


class LowPrecisionNetwork(nn.Module):
    """A PGNet whose weights and activations are in ``dtype`` (bfloat16) but for its prediction head:
    called like the network with a float32 image, which it casts; ``pred`` comes out float32, the side
    outputs in ``dtype``. Made by ``prepare_for_inference(model, dtype=...)``."""

    def __init__(self, model: PGNet, dtype: torch.dtype):
        super().__init__()
        head = copy.deepcopy(model.head_pred)  # float32, before the cast
        self.model = model.to(dtype)
        self.model.head_pred = Float32Head(head)
        self.dtype = dtype

    def forward(self, image: torch.Tensor, output_size: tuple[int, int] | None = None,
                need_attention: bool | None = None) -> PGNetOutput:
        return self.model(image.to(self.dtype), output_size=output_size, need_attention=need_attention)


def prepare_for_inference(
    model: PGNet, fold_bn: bool = True, swin_sdpa: bool = True, channels_last: bool = True,
    dtype: torch.dtype | None = None,
    int8: Int8Calibration | None = None,
    image_range: tuple[float, float] | None = None,
) -> PGNet | LowPrecisionNetwork:
    """An eval-mode copy of ``model`` (left as it is) with the chosen fast paths applied.

    fold_bn: fold every BatchNorm into the convolution before it (running statistics; eval only).
    swin_sdpa: let timm's window attention call ``scaled_dot_product_attention``.
    channels_last: weights in channels_last; fed a channels_last image, every feature stays
        channels_last, the layout cuDNN and oneDNN convolutions run fastest in.
    dtype: weights and activations in this dtype (bfloat16), BatchNorm folded before the cast; the
        prediction head stays float32 (a ``LowPrecisionNetwork``).
    int8: with ``dtype``, run the ResNet branch and the finest decoder block in int8 with this
        calibration (``pgnet.predict.int8``); ``image_range`` is the range of the normalised image
        (``pgnet.predict.int8.input_range``).
    """
    prepared = copy.deepcopy(model).eval()
    if fold_bn:
        fold_batchnorm(prepared)
    if swin_sdpa:
        prepared.swin.set_fused_attention(True)
    if channels_last:
        prepared = prepared.to(memory_format=torch.channels_last)
    if int8 is not None and (dtype is None or dtype == torch.float32 or not fold_bn or image_range is None):
        raise ValueError("int8 needs a lower dtype for the rest of the network, fold_bn and image_range")
    quantized = int8_modules(prepared, int8, image_range, dtype) if int8 is not None else {}
    if dtype is not None and dtype != torch.float32:
        network = LowPrecisionNetwork(prepared, dtype)
        for name, module in quantized.items():
            network.model.set_submodule(name, module)
        return network
    return prepared


def compile_for_inference(model: nn.Module, mode: str | None = None) -> nn.Module:
    """``torch.compile(model)`` for inference with static shapes (one compilation per input size).

    Without ``mode`` Inductor's freezing folds the weights into the graph (constant folding, BatchNorm
    and weight layouts included); a ``mode`` such as "reduce-overhead" replaces it, since
    ``torch.compile`` takes a mode or options, not both. The first call of each size compiles
    (Inductor's C++ code generation on a CPU), which is slow with an empty compile cache and far
    faster once its kernels are cached.
    """
    options = None if mode else {"freezing": True}
    return torch.compile(model, dynamic=False, mode=mode, options=options)


class _Graph:
    """A captured forward pass: its static input and the static outputs a replay overwrites."""

    def __init__(self, graph: torch.cuda.CUDAGraph, image: torch.Tensor, output: PGNetOutput):
        self.graph, self.image, self.output = graph, image, output


class CUDAGraphRunner:
    """Runs an eval-mode PGNet through CUDA graphs, one captured per (input shape, output size).

    Call it like the model (``runner(image, output_size=None)``); ``need_attention`` must stay False.
    The first call of a shape warms the model up (cuDNN autotuning included) on a side stream, then
    captures the forward pass under ``autocast_dtype`` (autocast's weight cache off, as graphs need);
    later calls copy the input into the graph's buffer and replay it. Outputs are cloned, so they
    stay valid after the next call. At most ``max_graphs`` graphs are kept (least recently used
    dropped first; each holds its own activation memory).

    Inputs that are not on a CUDA device, or shapes whose capture fails, run the model eagerly (a
    failed capture warns once).
    """

    def __init__(self, model: nn.Module, autocast_dtype: torch.dtype | None = None, max_graphs: int = 4,
                 warmup: int = 2):
        if model.training:
            raise ValueError("CUDAGraphRunner runs inference only: put the model in eval mode")
        if max_graphs < 1:
            raise ValueError(f"max_graphs must be positive, got {max_graphs}")
        self.model = model
        self.autocast_dtype = autocast_dtype
        self.max_graphs = max_graphs
        self.warmup = warmup
        self.graphs: OrderedDict[tuple, _Graph] = OrderedDict()
        self.uncapturable: set[tuple] = set()

    def _autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.autocast_dtype, cache_enabled=False)

    def _eager(self, image: torch.Tensor, output_size: tuple[int, int] | None) -> PGNetOutput:
        with torch.inference_mode(), self._autocast(image.device):
            return self.model(image, output_size=output_size, need_attention=False)

    def _capture(self, image: torch.Tensor, output_size: tuple[int, int] | None) -> _Graph:
        with torch.inference_mode():
            static_image = image.clone()  # same strides as ``image``
        side = torch.cuda.Stream(image.device)
        side.wait_stream(torch.cuda.current_stream(image.device))
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                self._eager(static_image, output_size)
        torch.cuda.current_stream(image.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(graph), self._autocast(image.device):
            output = self.model(static_image, output_size=output_size, need_attention=False)
        return _Graph(graph, static_image, output)

    def __call__(
        self, image: torch.Tensor, output_size: tuple[int, int] | None = None, need_attention: bool = False
    ) -> PGNetOutput:
        if need_attention:
            raise ValueError("CUDAGraphRunner runs inference only: need_attention must be False")
        output_size = None if output_size is None else (int(output_size[0]), int(output_size[1]))
        key = (tuple(image.shape), image.dtype, image.stride(), str(image.device), output_size)
        if image.device.type != "cuda" or key in self.uncapturable:
            return self._eager(image, output_size)
        with torch.cuda.device(image.device):
            return self._replay(key, image, output_size)

    def _replay(self, key: tuple, image: torch.Tensor, output_size: tuple[int, int] | None) -> PGNetOutput:
        graph = self.graphs.get(key)
        if graph is None:
            try:
                graph = self._capture(image, output_size)
            except RuntimeError as error:
                self.uncapturable.add(key)
                warnings.warn(f"CUDA graph capture failed for input {tuple(image.shape)}, running eagerly: {error}",
                              RuntimeWarning, stacklevel=3)
                return self._eager(image, output_size)
            self.graphs[key] = graph
            while len(self.graphs) > self.max_graphs:
                self.graphs.popitem(last=False)
        self.graphs.move_to_end(key)
        with torch.inference_mode():
            graph.image.copy_(image)
            graph.graph.replay()
        return PGNetOutput(  # clones: the next replay overwrites the graph's own outputs
            pred=graph.output.pred.clone(),
            side_cnn=graph.output.side_cnn.clone(),
            side_swin=graph.output.side_swin.clone(),
        )

    def __repr__(self) -> str:
        return f"CUDAGraphRunner(graphs={len(self.graphs)}, autocast_dtype={self.autocast_dtype})"


def inference_network(
    model: PGNet,
    device: torch.device,
    optimize: bool = True,
    compile: bool = False,
    cuda_graphs: bool | None = None,
    autocast_dtype: torch.dtype | None = None,
    dtype: torch.dtype | None = None,
    int8: Int8Calibration | None = None,
    image_range: tuple[float, float] | None = None,
) -> Any:
    """What to call for inference on ``device``: ``model`` itself (moved there, in eval mode) or its
    prepared copy (made where ``model`` is, then moved: the device holds one set of weights; in
    ``dtype`` when given), compiled or replayed from CUDA graphs.

    ``cuda_graphs`` None means: on when ``device`` is CUDA and the network isn't compiled. A
    ``CUDAGraphRunner`` applies ``autocast_dtype`` itself; the other forms leave autocast to the caller.
    """
    if cuda_graphs and device.type != "cuda":
        raise ValueError(f"CUDA graphs need a CUDA device, not {device}")
    if cuda_graphs and compile:
        raise ValueError("choose CUDA graphs or torch.compile, not both")
    if dtype is not None and not optimize:
        raise ValueError("a network in another dtype is a prepared copy: dtype needs optimize")
    if int8 is not None and not optimize:
        raise ValueError("int8 runs a prepared copy: it needs optimize")
    network: Any = (prepare_for_inference(model, dtype=dtype, int8=int8, image_range=image_range)
                    if optimize else model.eval()).to(device)
    if compile:
        return compile_for_inference(network)
    if cuda_graphs or (cuda_graphs is None and device.type == "cuda"):
        return CUDAGraphRunner(network, autocast_dtype=autocast_dtype)
    return network

