"""Timing and profiling: a synchronised stopwatch, timing statistics, ``torch.profiler`` tables, and the
backend settings a measurement runs under (cuDNN autotuning, TF32, thread counts), each set for a block.

On CUDA every timing is bracketed by ``torch.cuda.synchronize``.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import cv2
import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from pgnet.device import synchronize
from pgnet.writing import write_text


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    """Seconds one call of ``fn`` takes, the device synchronised before and after."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def timing_details(seconds: Sequence[float]) -> dict[str, float | int]:
    """Median, mean and fastest of ``seconds`` in milliseconds, and how many there are."""
    return {
        "median_ms": 1000 * statistics.median(seconds),
        "mean_ms": 1000 * statistics.fmean(seconds),
        "min_ms": 1000 * min(seconds),
        "iterations": len(seconds),
    }


def write_profile(fn: Callable[[], Any], device: torch.device, path: Path, row_limit: int = 30) -> dict[str, Any]:
    """Profile one call of ``fn`` (``torch.profiler``, device synchronised) and write its operator table,
    sorted by self device time on CUDA (self CPU time otherwise), to ``path``. Returns the file and,
    on CUDA, how many kernels ran and their total time."""
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
    set_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous_torch)
        cv2.setNumThreads(previous_cv2)


def set_threads(count: int) -> None:
    """Torch and OpenCV use ``count`` threads from now on."""
    torch.set_num_threads(count)
    cv2.setNumThreads(count)
