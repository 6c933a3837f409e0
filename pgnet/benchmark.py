"""Benchmarks: inference, a training step, the data loader and the evaluator.

Every fast path is measured against the straightforward path in the same run, on the same input:

- inference: the straightforward path is the official one, eager float32 with the CMGM's N×N attention
  materialised and its attention-map branch run (``need_attention=True``). The fast paths drop that
  branch (the CMGM then calls ``scaled_dot_product_attention``) and run under ``torch.inference_mode``;
  the ``fast_*`` ones run the copy ``pgnet.acceleration.prepare_for_inference`` makes (Swin's window
  attention through ``scaled_dot_product_attention``, BatchNorm folded into the convolutions,
  channels_last), on CUDA under bf16 autocast with cuDNN autotuning and also replayed from CUDA
  graphs, and ``torch.compile``'d (unless ``compile`` is off). The paths are timed interleaved, call
  by call, so that load on a shared machine affects all alike, and each path's prediction is
  compared with the straightforward one;
- a training step (``pgnet.engine.step.TrainStep``, the trainer's: forward, PGNet loss, backward, SGD
  step) in eager float32 against bf16 autocast + channels_last + cuDNN autotuning (+ ``torch.compile``),
  and the same with activation checkpointing in the Swin branch.

Each measurement returns figures: dicts made by :func:`figure` that carry the value and its unit with
the device, the dtype and the torch/timm versions they were measured with. On CUDA every timing is
bracketed by ``torch.cuda.synchronize`` after warm-up calls (which also absorb compilation and cuDNN
autotuning), and memory is the peak the CUDA caching allocator saw.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np

import pgnet._compat  # noqa: F401  # isort: skip  (first: makes torchvision, hence timm, importable)
import timm
import torch
from torch import nn

from pgnet.acceleration import CUDAGraphRunner, autocast_for, compile_for_inference, prepare_for_inference
from pgnet.config import LossConfig, OptimConfig
from pgnet.data.cache import build_cache, find_cache
from pgnet.data.datasets import SODDataset
from pgnet.data.loader import DEFAULT_TRAIN_SIZES, build_train_loader
from pgnet.data.registry import pair_files
from pgnet.data.synthetic import make_sample, sample_seed, write_synthetic_dataset
from pgnet.data.transforms import build_train_transform
from pgnet.engine.optim import build_optimizer
from pgnet.engine.step import TrainStep
from pgnet.losses import PGNetLoss
from pgnet.metrics import ALL_METRICS, SODMetrics
from pgnet.models.layers import init_decoder_weights
from pgnet.models.pgnet import ModelConfig, PGNet, PGNetOutput, create_model
from pgnet.outputs import write_text

MIB = 2**20
# A small network for smoke runs and tests.
SMALL_MODEL = {"swin": "swin_tiny_patch4_window7_224", "resnet": "resnet18", "swin_input_size": 112}
# Errors a too large batch raises besides OutOfMemoryError (cuDNN/cuBLAS allocations, 32-bit indexing).
_TOO_LARGE_MESSAGES = ("out of memory", "ALLOC_FAILED", "NOT_ENOUGH_WORKSPACE", "INT_MAX", "32-bit")


# ---------------------------------------------------------------------------------------------- environment


def cpu_name() -> str:
    """The processor's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()


def environment(device: torch.device) -> dict[str, Any]:
    """Versions, hardware and the numeric settings that change float32 results."""
    env: dict[str, Any] = {
        "device": str(device),
        "device_name": device_name(device),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
            gpu_memory_gib=round(props.total_memory / 2**30, 2),
            tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
            tf32_cudnn=torch.backends.cudnn.allow_tf32,
        )
    return env


def figure(
    benchmark: str, name: str, value: float | None, unit: str, device: torch.device, dtype: str, **details: Any
) -> dict[str, Any]:
    """One measured figure with everything needed to quote it."""
    return {
        "benchmark": benchmark,
        "name": name,
        "value": value,
        "unit": unit,
        "device": str(device),
        "device_name": device_name(device),
        "dtype": dtype,
        "torch": torch.__version__,
        "timm": timm.__version__,
        **details,
    }


# ---------------------------------------------------------------------------------------------- timing helpers


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def release_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


@contextlib.contextmanager
def cudnn_benchmark(enabled: bool) -> Iterator[None]:
    """``torch.backends.cudnn.benchmark`` set for the block only."""
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = previous


@contextlib.contextmanager
def tf32(enabled: bool | None) -> Iterator[None]:
    """TF32 for cuDNN convolutions and matmuls set for the block (None: leave PyTorch's settings)."""
    if enabled is None:
        yield
        return
    previous = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = previous


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Torch and OpenCV use ``count`` threads in the block (what one DataLoader worker gets)."""
    previous_torch, previous_cv2 = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(count)
    cv2.setNumThreads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous_torch)
        cv2.setNumThreads(previous_cv2)


def dtype_name(dtype: torch.dtype | None) -> str:
    return "float32" if dtype is None else f"{str(dtype).removeprefix('torch.')} autocast"


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    """Seconds one call of ``fn`` takes, the device synchronised before and after."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def write_profile(fn: Callable[[], Any], device: torch.device, path: Path, row_limit: int = 30) -> dict[str, Any]:
    """Profile one call of ``fn`` (``torch.profiler``, device synchronised) and write its operator table,
    sorted by self device time on CUDA (self CPU time otherwise), to ``path``. Returns the file and,
    on CUDA, how many kernels ran and their total time."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]
    synchronize(device)
    with profile(activities=activities) as profiler:
        fn()
        synchronize(device)
    events = profiler.key_averages()
    device_time = "self_device_time_total" if hasattr(events[0], "self_device_time_total") else "self_cuda_time_total"
    table = events.table(sort_by=device_time if cuda else "self_cpu_time_total", row_limit=row_limit,
                         max_name_column_width=60)
    write_text(path, table + "\n")
    details: dict[str, Any] = {"profile": str(path)}
    if cuda:
        kernels = [e for e in events if e.device_type == DeviceType.CUDA]
        details["profile_kernels"] = sum(e.count for e in kernels)
        details["profile_kernel_ms"] = sum(getattr(e, device_time) for e in kernels) / 1000
    return details


def timing_details(seconds: Sequence[float]) -> dict[str, float | int]:
    return {
        "median_ms": 1000 * statistics.median(seconds),
        "mean_ms": 1000 * statistics.fmean(seconds),
        "min_ms": 1000 * min(seconds),
        "iterations": len(seconds),
    }


class PeakMemory:
    """Peak CUDA memory of a block, counted from what was allocated when it started.

    ``extra_mib`` is the block's own peak; ``allocated_mib``/``reserved_mib`` the process's peaks.
    All are None on the CPU. ``release_cache`` empties the allocator's cache first, so that the
    reserved peak is the block's and not what warm-up calls (cuDNN autotuning) left cached; the
    block's first allocations then take longer.
    """

    def __init__(self, device: torch.device, release_cache: bool = False):
        self.device = device
        self.release_cache = release_cache
        self.extra_mib = self.allocated_mib = self.reserved_mib = None

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            synchronize(self.device)
            if self.release_cache:
                torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if self.device.type == "cuda" and exc_info[0] is None:
            synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
            self.extra_mib = (peak - self._start) / MIB
            self.allocated_mib = peak / MIB
            self.reserved_mib = torch.cuda.max_memory_reserved(self.device) / MIB


def tensor_mib(*tensors_or_modules: torch.Tensor | nn.Module) -> float:
    """Memory of tensors and of modules' parameters and buffers, in MiB."""
    total = 0
    for item in tensors_or_modules:
        tensors = [*item.parameters(), *item.buffers()] if isinstance(item, nn.Module) else [item]
        total += sum(t.numel() * t.element_size() for t in tensors)
    return total / MIB


def is_too_large(error: BaseException) -> bool:
    """Whether ``error`` is what a batch too large for the device raises."""
    if isinstance(error, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and any(text in str(error) for text in _TOO_LARGE_MESSAGES)


def find_largest_batch(fits: Callable[[int], bool], limit: int, tolerance: float = 0.0) -> int:
    """The largest batch ≤ ``limit`` for which ``fits(batch)`` holds, 0 if not even 1 does.

    Doubles from 1, then bisects between the last batch that fit and the first that did not, until
    they are within ``tolerance`` (relative) of each other. Assumes ``fits`` is monotone.
    """
    good, bad, batch = 0, None, 1
    while bad is None and good < limit:
        if fits(batch):
            good, batch = batch, min(2 * batch, limit)
        else:
            bad = batch
    if bad is None:
        return good
    while bad - good > max(1, int(good * tolerance)):
        middle = (good + bad) // 2
        if fits(middle):
            good = middle
        else:
            bad = middle
    return good


# ---------------------------------------------------------------------------------------------- inference


@dataclass(frozen=True)
class InferenceVariant:
    """One way of running the network for inference."""

    name: str
    attention: bool = False  # the official path: N×N attention materialised, attention-map branch run
    amp_dtype: torch.dtype | None = None  # autocast dtype; None: float32
    channels_last: bool = False
    fold_batchnorm: bool = False  # BatchNorm folded into the convolutions
    swin_sdpa: bool = False  # Swin's window attention through scaled_dot_product_attention
    compile: bool = False
    cuda_graphs: bool = False  # replayed from a CUDA graph (pgnet.acceleration.CUDAGraphRunner)
    cudnn_benchmark: bool = False
    inference_mode: bool = True  # torch.inference_mode, else torch.no_grad

    @property
    def dtype(self) -> str:
        return dtype_name(self.amp_dtype)


STRAIGHTFORWARD_INFERENCE = InferenceVariant("eager_fp32_official", attention=True, inference_mode=False)


def default_inference_variants(device: torch.device, compile: bool = False) -> list[InferenceVariant]:
    """The straightforward path first, then the fast paths worth measuring on ``device``."""
    fast = dict(channels_last=True, fold_batchnorm=True, swin_sdpa=True)
    variants = [STRAIGHTFORWARD_INFERENCE, InferenceVariant("no_attention_branch_fp32")]
    if device.type == "cuda":
        variants.append(InferenceVariant("no_attention_branch_bf16", amp_dtype=torch.bfloat16))
        fast = InferenceVariant("fast_bf16", amp_dtype=torch.bfloat16, cudnn_benchmark=True, **fast)
    else:
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
    amp_dtype: torch.dtype | None = None,
    compile_mode: str | None = None,
) -> nn.Module | CUDAGraphRunner:
    """``model`` as a variant runs it (``model`` itself is left as it is): a copy prepared by
    ``pgnet.acceleration.prepare_for_inference``, compiled, or replayed from CUDA graphs under
    ``amp_dtype`` autocast. Compiled and graphed for inference only."""
    prepared: nn.Module = model
    if channels_last or fold_bn or swin_sdpa:
        prepared = prepare_for_inference(model, fold_bn=fold_bn, swin_sdpa=swin_sdpa, channels_last=channels_last)
    if compile:
        return compile_for_inference(prepared, compile_mode)
    if cuda_graphs:
        return CUDAGraphRunner(prepared, autocast_dtype=amp_dtype)
    return prepared


def infer(model: nn.Module, image: torch.Tensor, variant: InferenceVariant, device: torch.device) -> PGNetOutput:
    """One forward pass as ``variant`` says (``image`` is converted to channels_last inside when asked)."""
    grad_mode = torch.inference_mode() if variant.inference_mode else torch.no_grad()
    with grad_mode, cudnn_benchmark(variant.cudnn_benchmark), autocast_for(model, device, variant.amp_dtype)():
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
                variant=_variant_dict(variant), **profiles[variant.name],
            )
        )
    return figures


def _model_key(variant: InferenceVariant) -> tuple[Any, ...]:
    graphed = variant.cuda_graphs
    return (variant.channels_last, variant.fold_batchnorm, variant.swin_sdpa, variant.compile, graphed,
            variant.amp_dtype if graphed else None)


def _variant_dict(variant: InferenceVariant | TrainVariant) -> dict[str, Any]:
    values = asdict(variant)
    values["amp_dtype"] = None if variant.amp_dtype is None else str(variant.amp_dtype).removeprefix("torch.")
    return values


def measure_largest_batch(
    model: PGNet,
    device: torch.device,
    variant: InferenceVariant,
    size: int = 1024,
    limit: int = 1024,
    iterations: int = 5,
    tolerance: float = 0.0,
    seed: int = 0,
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
        peak_reserved_mib=memory.reserved_mib, variant=_variant_dict(variant),
    )


# ---------------------------------------------------------------------------------------------- training step


@dataclass(frozen=True)
class TrainVariant:
    """One way of running a training step."""

    name: str
    amp_dtype: torch.dtype | None = None
    channels_last: bool = False
    compile: bool = False
    cudnn_benchmark: bool = False
    swin_grad_checkpointing: bool = False

    @property
    def dtype(self) -> str:
        return dtype_name(self.amp_dtype)


STRAIGHTFORWARD_TRAIN = TrainVariant("eager_fp32")


def default_train_variants(device: torch.device, compile: bool = False) -> list[TrainVariant]:
    """The straightforward step first, then the fast ones (on the CPU: float32 with Swin checkpointing)."""
    if device.type != "cuda":
        return [STRAIGHTFORWARD_TRAIN, TrainVariant("eager_fp32_swin_checkpointing", swin_grad_checkpointing=True)]
    fast = TrainVariant("bf16_channels_last", amp_dtype=torch.bfloat16, channels_last=True, cudnn_benchmark=True)
    variants = [
        STRAIGHTFORWARD_TRAIN,
        fast,
        replace(fast, name="bf16_channels_last_swin_checkpointing", swin_grad_checkpointing=True),
    ]
    if compile:
        variants.append(replace(fast, name="bf16_channels_last_compiled", compile=True))
    return variants


def synthetic_batch(batch: int, size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A normalised-looking image batch and binary masks of blobs, B×3×S×S and B×1×S×S."""
    generator = torch.Generator().manual_seed(seed)
    image = torch.randn(batch, 3, size, size, generator=generator)
    coarse = torch.rand(batch, 1, 8, 8, generator=generator)
    mask = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    return image, (mask > 0.5).float()


def measure_train_step(
    template: PGNet,
    device: torch.device,
    variant: TrainVariant,
    size: int = 1088,
    batch: int = 8,
    iterations: int = 5,
    warmup: int = 2,
    baseline_ms: float | None = None,
    compile_mode: str | None = None,
    memory_limit_gib: float | None = None,
    seed: int = 0,
    profile_dir: Path | None = None,
) -> dict[str, Any]:
    """Time of one optimiser step of a copy of ``template`` (forward with attention, PGNet loss, backward,
    SGD as the official recipe) at ``batch``×3×``size``×``size``, and its peak memory on CUDA.

    Every variant starts from the same weights, input and RNG state, so their losses (``losses``, one per
    step) agree up to rounding. ``memory_limit_gib`` caps the CUDA caching allocator for the run (a
    smaller card). An out-of-memory error gives a figure with value None and the error. With
    ``profile_dir`` one more step is profiled into ``profile_dir/train_<variant>.txt``.
    """
    details: dict[str, Any] = {"size": size, "batch": batch, "variant": _variant_dict(variant)}
    release_memory(device)
    limited = device.type == "cuda" and memory_limit_gib is not None
    if limited:
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, memory_limit_gib * 2**30 / total), device)
        details["memory_limit_gib"] = memory_limit_gib
    try:
        details.update(
            _time_train_steps(template, device, variant, size, batch, iterations, warmup, compile_mode, seed,
                              profile_dir)
        )
        value = batch / (details["median_ms"] / 1000)
        if baseline_ms is not None:
            details["speedup"] = baseline_ms / details["median_ms"]
    except RuntimeError as error:
        if not is_too_large(error):
            raise
        value = None
        details["error"] = str(error).splitlines()[0][:300]
    finally:
        if limited:
            torch.cuda.set_per_process_memory_fraction(1.0, device)
    release_memory(device)  # the model, its gradients and the optimiser state went with the helper's frame
    return figure("train_step", variant.name, value, "images/s", device, variant.dtype, **details)


def _time_train_steps(
    template: PGNet, device: torch.device, variant: TrainVariant, size: int, batch: int, iterations: int,
    warmup: int, compile_mode: str | None, seed: int, profile_dir: Path | None = None,
) -> dict[str, Any]:
    memory_format = torch.channels_last if variant.channels_last else torch.contiguous_format
    model = copy.deepcopy(template).to(device).to(memory_format=memory_format).train()
    model.swin.grad_checkpointing = variant.swin_grad_checkpointing
    network = torch.compile(model, dynamic=False, mode=compile_mode) if variant.compile else model
    # The official SGD, at a learning rate of the warm-up's first steps: random weights stay finite.
    # The step is the trainer's own (pgnet.engine.step.TrainStep).
    train_step = TrainStep(model, PGNetLoss(LossConfig()), build_optimizer(model, OptimConfig(lr=1e-4)),
                           network=network, amp_dtype=variant.amp_dtype, memory_format=memory_format)
    image, mask = synthetic_batch(batch, size, seed)
    image, mask = image.to(device), mask.to(device)
    losses: list[torch.Tensor] = []

    def step() -> None:
        with cudnn_benchmark(variant.cudnn_benchmark):
            losses.append(train_step.forward_backward(image, mask).loss)
            train_step.apply()

    torch.manual_seed(seed)  # drop path
    first_step_s = timed(step, device)
    for _ in range(warmup - 1):
        step()
    with PeakMemory(device, release_cache=True) as memory:
        seconds = [timed(step, device) for _ in range(iterations)]
    profile = {}
    if profile_dir is not None:
        profile = write_profile(step, device, Path(profile_dir) / f"train_{variant.name}.txt")
    return {
        **timing_details(seconds),
        **profile,
        "first_step_s": first_step_s,
        "peak_memory_mib": memory.allocated_mib,
        "peak_reserved_mib": memory.reserved_mib,
        "losses": [loss.item() for loss in losses],
        "losses_finite": bool(torch.isfinite(torch.stack(losses)).all()),
    }


# ---------------------------------------------------------------------------------------------- data loader


def loader_samples_per_second(
    dataset: SODDataset, batch_size: int, passes: int, sizes: Sequence[int] = DEFAULT_TRAIN_SIZES
) -> float:
    """Training-loader throughput with num_workers=0 (one worker's work), after one warm-up pass."""
    loader = build_train_loader(
        dataset, batch_size=batch_size, num_workers=0, seed=0, sizes=sizes, pin_memory=False, drop_last=False
    )
    for _ in loader:
        pass
    count = 0
    start = time.perf_counter()
    for _ in range(passes):
        for batch in loader:
            count += batch["image"].shape[0]
    return count / (time.perf_counter() - start)


def measure_loader(
    n: int = 6,
    height: int = 2160,
    width: int = 3840,
    size: int = 1024,
    long_side: int = 1280,
    batch_size: int = 2,
    passes: int = 3,
    sizes: Sequence[int] = DEFAULT_TRAIN_SIZES,
) -> list[dict[str, Any]]:
    """Samples/s of one loader worker (one thread) on the official recipe, from synthetic JPEG/PNG files:
    full-size decode (straightforward), reduced JPEG decode, and the resized cache."""
    device = torch.device("cpu")
    transform = build_train_transform("official", size=size)
    with tempfile.TemporaryDirectory(prefix="pgnet-bench-") as folder, torch_threads(1):
        root = Path(folder)
        write_synthetic_dataset(root, n, (height, width), quality=90, prefix="bench")
        pairs = pair_files(root / "image", root / "mask").pairs
        build_cache(root, pairs, long_side)
        cache = find_cache(root, size)
        datasets = {
            "full_decode": SODDataset(pairs, transform, reduced_decode=False),
            "reduced_decode": SODDataset(pairs, transform, reduced_decode=True),
            "cached": SODDataset(pairs, transform, cache=cache),
        }
        rates = {name: loader_samples_per_second(data, batch_size, passes, sizes) for name, data in datasets.items()}
    return [
        figure(
            "loader", name, rate, "samples/s per worker", device, "uint8 -> float32",
            source=f"{width}x{height} JPEG", size=size, batch=batch_size, sizes=list(sizes), threads=1,
            speedup=rate / rates["full_decode"],
        )
        for name, rate in rates.items()
    ]


# ---------------------------------------------------------------------------------------------- evaluator


def synthetic_prediction(seed: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(prediction float32 in [0, 1], mask uint8) of ``size``×``size``: the mask blurred, shifted and noised."""
    _, mask = make_sample(seed, size)
    rng = np.random.default_rng(seed)
    pred = cv2.GaussianBlur(mask.astype(np.float32) / 255, (0, 0), float(rng.uniform(1, 8)))
    pred = np.roll(pred, tuple(int(s) for s in rng.integers(-8, 9, size=2)), axis=(0, 1))
    pred += rng.normal(0, 0.05, size=pred.shape).astype(np.float32)
    return np.clip(pred, 0, 1), mask


def measure_evaluator(
    device: torch.device,
    size: int = 1024,
    num_images: int = 50,
    metrics: Sequence[str] = ALL_METRICS,
    distinct: int = 8,
) -> dict[str, Any]:
    """Images/s of :class:`~pgnet.metrics.SODMetrics` on float predictions already on ``device``."""
    pairs = [synthetic_prediction(sample_seed(1, index), size) for index in range(min(distinct, num_images))]
    pairs = [(torch.from_numpy(pred).to(device), torch.from_numpy(gt).to(device)) for pred, gt in pairs]
    suite = SODMetrics(metrics, device=device)
    suite.update(*pairs[0])  # warm-up
    suite.reset()

    def run() -> None:
        for index in range(num_images):
            suite.update(*pairs[index % len(pairs)])

    seconds = timed(run, device)
    results = suite.compute()
    return figure(
        "evaluator", "sodmetrics", num_images / seconds, "images/s", device, "uint8 (8-bit predictions)",
        size=size, num_images=num_images, metrics=list(metrics), ms_per_image=1000 * seconds / num_images,
        maxFm=results.get("maxFm"),
    )


# ---------------------------------------------------------------------------------------------- the suite


@dataclass
class BenchmarkOptions:
    """What :func:`run_benchmarks` measures; the defaults are the official sizes."""

    device: str = "auto"
    model: dict[str, Any] = field(default_factory=dict)  # ModelConfig overrides (default: the official model)
    size: int = 1024
    batches: tuple[int, ...] = (1,)
    largest_batch: bool = True  # CUDA only: also at the largest batch that fits
    max_batch: int = 1024
    batch_tolerance: float = 0.0
    iterations: int = 10
    warmup: int = 3
    train_size: int = 1088
    train_batch: int = 8
    train_iterations: int = 5
    train_warmup: int = 2
    compile: bool = True  # also the torch.compile'd paths (a compilation per path: 16 s on a 2-core CPU)
    compile_mode: str | None = None
    tf32: bool | None = None  # None: PyTorch's settings
    # The official 11 GB cards, less ~0.5 GiB for the CUDA context: the checkpointed training step runs
    # with the allocator capped at this.
    train_memory_limit_gib: float | None = 10.5
    inference: bool = True
    train: bool = True
    loader: bool = True
    evaluator: bool = True
    loader_images: int = 6
    loader_height: int = 2160
    loader_width: int = 3840
    loader_size: int = 1024
    loader_sizes: tuple[int, ...] = DEFAULT_TRAIN_SIZES
    loader_batch: int = 2
    loader_passes: int = 3
    eval_size: int = 1024
    eval_images: int = 50
    seed: int = 0
    profile_dir: str | None = None  # write a torch.profiler table of each inference path and training step

    @classmethod
    def quick(cls, **overrides: Any) -> BenchmarkOptions:
        """Small sizes and a small network: a smoke run of every benchmark in seconds."""
        values: dict[str, Any] = dict(
            model=dict(SMALL_MODEL), size=128, max_batch=8, iterations=2, warmup=1, train_size=128,
            train_batch=2, train_iterations=2, train_warmup=1, loader_images=2, loader_height=270,
            loader_width=480, loader_size=128, loader_sizes=(128,), loader_passes=1, eval_size=128, eval_images=4,
            compile=False,
        )
        values.update(overrides)
        return cls(**values)


def calibrate_batchnorm(model: PGNet, image: torch.Tensor) -> None:
    """Set every BatchNorm's running statistics to those of ``model`` on ``image`` (then eval mode).

    With random weights and the initial statistics (mean 0, variance 1) activations grow layer after
    layer (logits in the hundreds); calibrated, they have the scale of a trained network's, so that
    the differences between paths are measured at a realistic scale.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [norm.momentum for norm in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average: one batch sets the statistics
    model.train()
    with torch.no_grad():
        model(image, need_attention=True)
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum
    model.eval()


def build_benchmark_model(overrides: dict[str, Any], seed: int = 0) -> PGNet:
    """A PGNet with random weights (``ModelConfig`` overrides; the official model by default) and
    BatchNorm statistics calibrated on a random image."""
    torch.manual_seed(seed)
    model = create_model(ModelConfig.from_dict({**ModelConfig().to_dict(), **overrides}))
    for graft in (model.decoder.cnn3_graft, model.decoder.cnn2_graft):  # they start at zero: make them count
        if graft is not None:
            init_decoder_weights(graft.expand)
    calibrate_batchnorm(model, torch.randn(2, 3, 256, 256, generator=torch.Generator().manual_seed(seed + 1)))
    return model


def run_benchmarks(
    options: BenchmarkOptions,
    log: Callable[[str], None] = print,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Every selected benchmark; returns {environment, options, model, figures, errors, summary, seconds}.

    A benchmark that raises is logged and listed in ``errors``, and the others still run;
    ``progress`` gets the report so far after each benchmark (to save partial results).
    """
    device = resolve_device(options.device)
    started = time.perf_counter()
    figures: list[dict[str, Any]] = []
    errors: list[dict[str, str]] = []

    def report() -> dict[str, Any]:
        return {
            "environment": env,
            "options": asdict(options),
            "model": {**ModelConfig().to_dict(), **options.model},
            "figures": figures,
            "errors": errors,
            "summary": summarize(figures, options, device),
            "seconds": time.perf_counter() - started,
        }

    with tf32(options.tf32):
        env = environment(device)
        model = build_benchmark_model(options.model, options.seed)
        variants = default_inference_variants(device, options.compile)
        fastest_eager = next(v for v in reversed(variants) if not (v.compile or v.cuda_graphs))
        steps: list[tuple[str, Callable[[], list[dict[str, Any]]]]] = []
        if options.inference:
            steps += [
                (f"inference: {len(variants)} paths at batch {batch}, {options.size}x{options.size}",
                 lambda batch=batch: measure_inference(
                     model, device, variants, options.size, batch, options.iterations, options.warmup,
                     options.compile_mode, options.seed, options.profile_dir,
                 ))
                for batch in options.batches
            ]
            if device.type == "cuda" and options.largest_batch:
                steps += [
                    (f"inference: largest batch of {variant.name} (up to {options.max_batch})",
                     lambda variant=variant: [measure_largest_batch(
                         model, device, variant, options.size, options.max_batch, min(options.iterations, 5),
                         options.batch_tolerance, options.seed,
                     )])
                    for variant in (variants[0], fastest_eager)
                ]
        if options.train:
            baseline: dict[str, float] = {}  # the first (straightforward) step's time

            def train_step(variant: TrainVariant) -> list[dict[str, Any]]:
                model.cpu()  # the template stays off the device; each variant trains a copy
                limit = options.train_memory_limit_gib if variant.swin_grad_checkpointing else None
                result = measure_train_step(
                    model, device, variant, options.train_size, options.train_batch, options.train_iterations,
                    options.train_warmup, baseline.get("median_ms"), options.compile_mode, limit, options.seed,
                    options.profile_dir,
                )
                if not baseline and result["value"] is not None:
                    baseline["median_ms"] = result["median_ms"]
                    result["speedup"] = 1.0
                return [result]

            steps += [
                (f"training step: {variant.name}, batch {options.train_batch}, "
                 f"{options.train_size}x{options.train_size}", lambda variant=variant: train_step(variant))
                for variant in default_train_variants(device, options.compile)
            ]
        if options.loader:
            steps.append((
                f"data loader: {options.loader_images} {options.loader_width}x{options.loader_height} JPEGs",
                lambda: measure_loader(
                    options.loader_images, options.loader_height, options.loader_width, options.loader_size,
                    batch_size=options.loader_batch, passes=options.loader_passes, sizes=options.loader_sizes,
                ),
            ))
        if options.evaluator:
            steps.append((
                f"evaluator: {options.eval_images} predictions of {options.eval_size}x{options.eval_size}",
                lambda: [measure_evaluator(device, options.eval_size, options.eval_images)],
            ))
        for description, step in steps:
            log(description)
            try:
                figures.extend(step())
            except Exception as error:  # one failed benchmark must not lose the others
                errors.append({"benchmark": description, "error": f"{type(error).__name__}: {error}"})
                log(f"  failed: {type(error).__name__}: {error}")
            release_memory(device)
            if progress is not None:
                progress(report())
    return report()


def _find(figures: Sequence[dict[str, Any]], benchmark: str, **match: Any) -> list[dict[str, Any]]:
    return [f for f in figures if f["benchmark"] == benchmark and all(f.get(k) == v for k, v in match.items())]


def summarize(figures: Sequence[dict[str, Any]], options: BenchmarkOptions, device: torch.device) -> dict[str, Any]:
    """The issue's targets, each with the measured value and whether it is met.

    A target is only judged at the sizes it names (1024×1024 inference, batch 8 at 1088×1088 training);
    at other sizes ``applies`` is False.
    """
    targets: list[dict[str, Any]] = []
    official_inference = options.size == 1024
    official_train = options.train_size == 1088 and options.train_batch == 8

    def add(name: str, required: float, measured: float | None, applies: bool, higher_is_better: bool = True,
            **details: Any) -> None:
        met = None if measured is None else (measured >= required if higher_is_better else measured <= required)
        targets.append({"target": name, "required": required, "measured": measured, "met": met,
                        "applies": applies, "device": str(device), **details})

    single = [f for f in _find(figures, "inference", batch=1) if f["name"] != STRAIGHTFORWARD_INFERENCE.name]
    if device.type == "cpu" and single:
        exact = [f for f in single if f["max_abs_diff_probability"] <= 1e-4] or single
        best = max(exact, key=lambda f: f["speedup"])
        add("cpu inference speedup, float32, saliency maps within 1e-4", 1.3, best["speedup"], official_inference,
            path=best["name"], max_abs_diff_probability=best["max_abs_diff_probability"],
            max_abs_diff_logits=best["max_abs_diff_logits"])
    if device.type == "cuda":
        bf16 = [f for f in single if f["variant"]["amp_dtype"] == "bfloat16"]
        if bf16:
            best = max(bf16, key=lambda f: f["speedup"])
            add("gpu bf16 inference speedup at batch 1", 3.0, best["speedup"], official_inference, path=best["name"])
        largest = _find(figures, "inference_largest_batch")
        baseline = [f for f in largest if f["name"] == STRAIGHTFORWARD_INFERENCE.name and f["value"]]
        fast = [f for f in largest if f["variant"]["amp_dtype"] == "bfloat16" and f["value"]]
        if baseline and fast:
            add("gpu bf16 inference speedup at the largest batch", 3.0, fast[0]["value"] / baseline[0]["value"],
                official_inference, path=fast[0]["name"], batch=fast[0]["batch"], baseline_batch=baseline[0]["batch"])
        steps = [f for f in _find(figures, "train_step") if f["value"] is not None and "speedup" in f]
        fast_steps = [f for f in steps if f["variant"]["amp_dtype"] == "bfloat16"]
        if fast_steps:
            best = max(fast_steps, key=lambda f: f["speedup"])
            add("gpu training step speedup", 2.0, best["speedup"], official_train, path=best["name"])
        checkpointed = [f for f in _find(figures, "train_step") if f["variant"]["swin_grad_checkpointing"]]
        if checkpointed and options.train_memory_limit_gib is not None:
            result = checkpointed[0]
            peak = None if result["value"] is None else result["peak_reserved_mib"] / 1024
            add("training step fits in the memory limit (peak GiB reserved)", options.train_memory_limit_gib, peak,
                official_train, higher_is_better=False, path=result["name"], error=result.get("error"))
            if peak is None:  # out of memory under the cap
                targets[-1]["met"] = False
    return {"targets": targets}
