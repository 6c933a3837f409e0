"""Data loader benchmark: samples/s of one loader worker on the official training recipe, from synthetic
high-resolution JPEG/PNG pairs, for full-size decode (straightforward), reduced JPEG decode and the
resized cache (``pgnet.data.cache``)."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from pgnet.benchmark.record import figure
from pgnet.benchmark.timing import torch_threads
from pgnet.data.cache import build_cache, find_cache
from pgnet.data.datasets import SODDataset
from pgnet.data.loader import DEFAULT_TRAIN_SIZES, build_train_loader
from pgnet.data.registry import pair_files
from pgnet.data.synthetic import write_synthetic_dataset
from pgnet.data.transforms import build_train_transform


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
    quality: int = 90,
    log: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Samples/s of one loader worker (one thread) on the official recipe, from ``n`` synthetic
    ``width``×``height`` JPEG/PNG pairs: full-size decode (straightforward), reduced JPEG decode, and
    the cache at ``long_side`` (whose one-off cost per pair each figure also gives)."""
    device = torch.device("cpu")
    transform = build_train_transform("official", size=size)
    with tempfile.TemporaryDirectory(prefix="pgnet-bench-") as folder, torch_threads(1):
        root = Path(folder)
        start = time.perf_counter()
        write_synthetic_dataset(root, n, (height, width), quality=quality, prefix="bench")
        if log is not None:
            log(f"wrote {n} synthetic {width}x{height} pairs in {time.perf_counter() - start:.1f} s")
        pairs = pair_files(root / "image", root / "mask").pairs
        start = time.perf_counter()
        report = build_cache(root, pairs, long_side)
        cache_ms = 1000 * (time.perf_counter() - start) / max(1, report.written)
        cache = find_cache(root, size)
        if cache is None or report.failed:
            raise RuntimeError(f"the cache of {n} pairs at long side {long_side} was not written: {report}")
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
            speedup=rate / rates["full_decode"], long_side=long_side, cache_ms_per_pair=cache_ms,
        )
        for name, rate in rates.items()
    ]


def format_loader_figures(figures: Sequence[dict[str, Any]]) -> str:
    """The loader figures as lines: samples/s, ms per sample and speedup of each path, and the cache's cost."""
    first = figures[0]
    lines = [f"per-worker throughput, {first['source']} -> {first['size']} training samples "
             f"(official recipe, batch {first['batch']}, {first['threads']} thread):"]
    for f in figures:
        lines.append(f"  {f['name']:14s} {f['value']:6.2f} samples/s  {1000 / f['value']:7.1f} ms/sample  "
                     f"{f['speedup']:5.2f}x full decode")
    lines.append(f"  one-off cache cost: {first['cache_ms_per_pair']:.0f} ms per pair (long side {first['long_side']})")
    return "\n".join(lines)
