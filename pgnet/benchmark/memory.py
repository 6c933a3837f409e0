"""Memory: the peak CUDA memory of a block, a process's resident memory and the peak of a block on
the CPU (``/proc``, Linux), the size of tensors and modules, and the search for the largest batch that
fits on the device."""

from __future__ import annotations

import gc
import os
import threading
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from pgnet.device import synchronize

MIB = 2**20
# Errors a too large batch raises besides OutOfMemoryError (cuDNN/cuBLAS allocations, 32-bit indexing).
_TOO_LARGE_MESSAGES = ("out of memory", "ALLOC_FAILED", "NOT_ENOUGH_WORKSPACE", "INT_MAX", "32-bit")


def release_memory(device: torch.device) -> None:
    """Collect garbage and, on CUDA, return the allocator's cached blocks."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


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


def resident_mib(pid: int | str = "self") -> float | None:
    """The resident memory of process ``pid`` (this one by default) in MiB; None where /proc has none."""
    try:
        with open(f"/proc/{pid}/statm", encoding="ascii") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MIB
    except (OSError, ValueError, IndexError):
        return None


class ResidentPeak:
    """This process's peak resident memory inside a ``with`` block, sampled every ``interval_s``
    seconds: ``start_mib`` at entry, ``peak_mib``, and ``growth_mib`` = peak − start (0 off Linux)."""

    def __init__(self, interval_s: float = 0.001) -> None:
        self.interval_s = interval_s
        self.start_mib = self.peak_mib = self.growth_mib = 0.0
        self._stop = threading.Event()

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak_mib = max(self.peak_mib, resident_mib() or 0.0)

    def __enter__(self) -> ResidentPeak:
        self.start_mib = self.peak_mib = resident_mib() or 0.0
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mib = max(self.peak_mib, resident_mib() or 0.0)
        self.growth_mib = self.peak_mib - self.start_mib
