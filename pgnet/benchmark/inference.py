"""Inference benchmarks: the ways of running the network (variants), each timed against the straightforward
one on the same input, and the largest batch a variant runs at on a CUDA device.

The straightforward path is the official one, eager float32 with the CMGM's N×N attention materialised
and its attention-map branch run (``need_attention=True``). The fast paths drop that branch (the CMGM
then calls ``scaled_dot_product_attention``) and run under ``torch.inference_mode``; the ``fast_*``
ones run the copy ``pgnet.predict.acceleration.prepare_for_inference`` makes (Swin's window attention through
``scaled_dot_product_attention``, BatchNorm folded into the convolutions, channels_last), on CUDA under
bf16 autocast with cuDNN autotuning and also replayed from CUDA graphs, on a CPU with native bfloat16
also as a bfloat16 copy (``fast_bf16``, its head in float32), and ``torch.compile``'d (unless
``compile`` is off). The paths are timed interleaved, call by call, so that load on a shared
machine affects all alike, and each path's prediction is compared with the straightforward one.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pgnet.benchmark.memory import MIB, PeakMemory, find_largest_batch, release_memory, tensor_mib
from pgnet.benchmark.record import dtype_name, figure, variant_record
from pgnet.benchmark.timing import cudnn_benchmark, timed, timing_details, write_profile
from pgnet.device import cpu_native_bf16, synchronize
from pgnet.models.pgnet import PGNet, PGNetOutput
from pgnet.predict.acceleration import CUDAGraphRunner, compile_for_inference, prepare_for_inference
from pgnet.predict.runtime import autocast_for


@dataclass(frozen=True)
class InferenceVariant:
    """One way of running the network for inference."""

    name: str
    attention: bool = False  # the official path: N×N attention materialised, attention-map branch run
    autocast_dtype: torch.dtype | None = None  # autocast dtype; None: float32
    weights_dtype: torch.dtype | None = None  # the prepared copy's own dtype (bfloat16 on a CPU); None: float32
    channels_last: bool = False
    fold_batchnorm: bool = False  # BatchNorm folded into the convolutions
    swin_sdpa: bool = False  # Swin's window attention through scaled_dot_product_attention
    compile: bool = False
    cuda_graphs: bool = False  # replayed from a CUDA graph (pgnet.predict.acceleration.CUDAGraphRunner)
    cudnn_benchmark: bool = False
    inference_mode: bool = True  # torch.inference_mode, else torch.no_grad

    @property
    def dtype(self) -> str:
        if self.weights_dtype is not None:
            return str(self.weights_dtype).removeprefix("torch.")
        return dtype_name(self.autocast_dtype)


STRAIGHTFORWARD_INFERENCE = InferenceVariant("eager_fp32_official", attention=True, inference_mode=False)


def default_inference_variants(device: torch.device, compile: bool = False) -> list[InferenceVariant]:
    """The straightforward path first, then the fast paths worth measuring on ``device``."""
    fast = dict(channels_last=True, fold_batchnorm=True, swin_sdpa=True)
    variants = [STRAIGHTFORWARD_INFERENCE, InferenceVariant("no_attention_branch_fp32")]
    if device.type == "cuda":
        variants.append(InferenceVariant("no_attention_branch_bf16", autocast_dtype=torch.bfloat16))
        fast = InferenceVariant("fast_bf16", autocast_dtype=torch.bfloat16, cudnn_benchmark=True, **fast)
    else:
        if device.type == "cpu" and cpu_native_bf16():
            variants.append(InferenceVariant("fast_bf16", weights_dtype=torch.bfloat16, **fast))
        fast = InferenceVariant("fast_fp32", **fast)
    variants.append(fast)
    if device.type == "cuda":
        variants.append(replace(fast, name=f"{fast.name}_cuda_graphs", cuda_graphs=True))
    if compile:
        variants.append(replace(fast, name=f"{fast.name}_compiled", compile=True))
    return variants


def prepare_for_variant(
    model: PGNet,
    channels_last: bool = False,
    fold_bn: bool = False,
    swin_sdpa: bool = False,
    compile: bool = False,
    cuda_graphs: bool = False,
    autocast_dtype: torch.dtype | None = None,
    weights_dtype: torch.dtype | None = None,
    compile_mode: str | None = None,
) -> nn.Module | CUDAGraphRunner:
    """``model`` as a variant runs it (``model`` itself is left as it is): a copy prepared by
    ``pgnet.predict.acceleration.prepare_for_inference`` (in ``weights_dtype``), compiled, or replayed
    from CUDA graphs under ``autocast_dtype`` autocast. Compiled and graphed for inference only."""
    prepared: nn.Module = model
    if channels_last or fold_bn or swin_sdpa or weights_dtype is not None:
        prepared = prepare_for_inference(model, fold_bn=fold_bn, swin_sdpa=swin_sdpa, channels_last=channels_last,
                                         dtype=weights_dtype)
    if compile:
        return compile_for_inference(prepared, compile_mode)
    if cuda_graphs:
        return CUDAGraphRunner(prepared, autocast_dtype=autocast_dtype)
    return prepared


def infer(model: nn.Module, image: torch.Tensor, variant: InferenceVariant, device: torch.device) -> PGNetOutput:
    """One forward pass as ``variant`` says (``image`` is converted to channels_last inside when asked)."""
    grad_mode = torch.inference_mode() if variant.inference_mode else torch.no_grad()
    with grad_mode, cudnn_benchmark(variant.cudnn_benchmark), autocast_for(model, device, variant.autocast_dtype)():
        if variant.channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        return model(image, need_attention=variant.attention)


def output_difference(output: PGNetOutput, reference: PGNetOutput) -> dict[str, float]:
    """Largest absolute differences of the prediction (logits and probabilities) and side outputs."""
    pred, ref = output.pred.float(), reference.pred.float()
    sides = max(
        (output.side_cnn.float() - reference.side_cnn.float()).abs().max().item(),
        (output.side_swin.float() - reference.side_swin.float()).abs().max().item(),
    )
    return {
        "max_abs_diff_logits": (pred - ref).abs().max().item(),
        "max_abs_diff_probability": (pred.sigmoid() - ref.sigmoid()).abs().max().item(),
        "max_abs_diff_side_logits": sides,
        "reference_logit_range": ref.abs().max().item(),
    }


def measure_inference(
    model: PGNet,
    device: torch.device,
    variants: Sequence[InferenceVariant],
    size: int = 1024,
    batch: int = 1,
    iterations: int = 10,
    warmup: int = 3,
    compile_mode: str | None = None,
    seed: int = 0,
    profile_dir: Path | None = None,
) -> list[dict[str, Any]]:
    """Images/s of each variant at ``batch``×3×``size``×``size``, timed interleaved.

    With ``profile_dir`` one more call of each variant is profiled into
    ``profile_dir/inference_b<batch>_<variant>.txt``.

    The first variant is the reference: every figure has its speedup over it and how far its outputs
    are from it. ``peak_memory_mib`` is what a process running only that variant would need on CUDA:
    its weights, the input and the call's own peak.
    """
    model = model.eval().to(device)
    image = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed)).to(device)
    prepared: dict[tuple[Any, ...], nn.Module | CUDAGraphRunner] = {}
    for variant in variants:
        if _model_key(variant) not in prepared:
            prepared[_model_key(variant)] = prepare_for_variant(model, *_model_key(variant), compile_mode=compile_mode)

    def run(variant: InferenceVariant) -> PGNetOutput:
        return infer(prepared[_model_key(variant)], image, variant, device)

    first_call_s, differences, reference = {}, {}, None
    for variant in variants:  # warm-up: compilation, cuDNN autotuning, caches; the outputs are compared
        first_call_s[variant.name] = timed(lambda v=variant: run(v), device)
        for _ in range(warmup - 1):
            run(variant)
        output = run(variant)
        reference = reference or output
        differences[variant.name] = output_difference(output, reference)
        del output
    reference = None

    seconds: dict[str, list[float]] = {v.name: [] for v in variants}
    peak_mib: dict[str, float | None] = dict.fromkeys(seconds)
    for _ in range(iterations):
        for variant in variants:
            with PeakMemory(device) as memory:
                seconds[variant.name].append(timed(lambda v=variant: run(v), device))
            if memory.extra_mib is not None:
                network = prepared[_model_key(variant)]
                weights = tensor_mib(network.model if isinstance(network, CUDAGraphRunner) else network)
                total = weights + tensor_mib(image) + memory.extra_mib
                peak_mib[variant.name] = max(peak_mib[variant.name] or 0.0, total)

    profiles: dict[str, dict[str, Any]] = {v.name: {} for v in variants}
    if profile_dir is not None:
        for variant in variants:
            profiles[variant.name] = write_profile(
                lambda v=variant: run(v), device, Path(profile_dir) / f"inference_b{batch}_{variant.name}.txt"
            )
    baseline = statistics.median(seconds[variants[0].name])
    figures = []
    for variant in variants:
        median = statistics.median(seconds[variant.name])
        figures.append(
            figure(
                "inference", variant.name, batch / median, "images/s", device, variant.dtype,
                size=size, batch=batch, **timing_details(seconds[variant.name]),
                speedup=baseline / median, peak_memory_mib=peak_mib[variant.name],
                first_call_s=first_call_s[variant.name], **differences[variant.name],
                variant=variant_record(variant), **profiles[variant.name],
            )
        )
    return figures


def _model_key(variant: InferenceVariant) -> tuple[Any, ...]:
    graphed = variant.cuda_graphs
    return (variant.channels_last, variant.fold_batchnorm, variant.swin_sdpa, variant.compile, graphed,
            variant.autocast_dtype if graphed else None, variant.weights_dtype)


def measure_largest_batch(model: PGNet, device: torch.device, variant: InferenceVariant, size: int = 1024,
                          limit: int = 1024, iterations: int = 5, tolerance: float = 0.0, seed: int = 0
                          ) -> dict[str, Any]:
    """Images/s of ``variant`` at the largest batch that runs on the CUDA device (≤ ``limit``).

    A batch "fits" when a forward pass completes. Batch 1 must; a larger batch that raises (out of
    memory, or a kernel's 32-bit indexing limit) does not fit, and the first such error is recorded
    (``first_failure``). The throughput is then timed at that batch. Not for the CPU, which swaps.
    """
    if device.type != "cuda":
        raise ValueError("the largest-batch search needs a CUDA device")
    if variant.compile or variant.cuda_graphs:
        raise ValueError("the largest-batch search compiles or captures every batch: use an eager variant")
    model = model.eval().to(device)
    network = prepare_for_variant(model, *_model_key(variant))
    generator = torch.Generator(device).manual_seed(seed)
    failures: list[str] = []
    searching = replace(variant, cudnn_benchmark=False)  # no autotuning at every batch tried

    def forward(batch: int) -> None:
        image = torch.randn(batch, 3, size, size, device=device, generator=generator)
        infer(network, image, searching, device)

    def fits(batch: int) -> bool:
        too_large = False
        try:
            forward(batch)
            synchronize(device)
        except RuntimeError as error:
            if batch == 1:
                raise
            failures.append(f"batch {batch}: {str(error).splitlines()[0][:200]}")
            too_large = True
        if too_large:  # outside the handler: the traceback no longer holds the batch's tensors
            release_memory(device)
        return not too_large

    release_memory(device)
    search_start = time.perf_counter()
    largest = find_largest_batch(fits, limit, tolerance)
    search_s = time.perf_counter() - search_start
    memory = PeakMemory(device, release_cache=True)

    def time_batch(batch: int) -> list[float]:
        image = torch.randn(batch, 3, size, size, device=device, generator=generator)
        infer(network, image, variant, device)  # warm-up: cuDNN autotuning at this batch
        with memory:
            return [timed(lambda: infer(network, image, variant, device), device) for _ in range(iterations)]

    seconds: list[float] = []
    while largest >= 1 and not seconds:  # a batch at the edge may fail once fragmentation changes
        release_memory(device)
        try:
            seconds = time_batch(largest)
        except RuntimeError as error:
            failures.append(f"timing at batch {largest}: {str(error).splitlines()[0][:200]}")
            largest = largest * 7 // 8
    # What a process running only this path needs: weights, the input and the call's own peak.
    fixed_mib = tensor_mib(network) + largest * 3 * size * size * 4 / MIB
    network = None
    release_memory(device)
    value = largest / statistics.median(seconds) if seconds else None
    return figure(
        "inference_largest_batch", variant.name, value, "images/s", device, variant.dtype,
        size=size, batch=largest, limit=limit, limit_reached=largest >= limit, search_s=search_s,
        first_failure=failures[0] if failures else None, **(timing_details(seconds) if seconds else {}),
        peak_memory_mib=None if memory.extra_mib is None else fixed_mib + memory.extra_mib,
        peak_reserved_mib=memory.reserved_mib, variant=variant_record(variant),
    )
