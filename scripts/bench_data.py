"""Benchmark the high-resolution data path: samples/s of one loader worker.

    python scripts/bench_data.py [--n 6] [--passes 3] [--width 3840 --height 2160]

Writes synthetic WIDTHxHEIGHT JPEG/PNG pairs to a temporary folder and runs the default training
recipe (1024 resize, border crop, flip, normalise, multi-scale collate) through a DataLoader with
num_workers=0 and one thread, i.e. what one worker process does:

- naive:   full-size JPEG and mask decode;
- reduced: JPEG decoded at 1/2-1/8 scale down to the training size (mask at full size);
- cached:  copies from ``datasets/cache.py`` (long side --long-side), as training uses them when present.

The fast path (cached) must be at least 3x the naive one; exits 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import cv2
import torch

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from pgnet.benchmark import loader_samples_per_second
from pgnet.data.cache import build_cache, find_cache
from pgnet.data.datasets import SODDataset
from pgnet.data.registry import pair_files
from pgnet.data.synthetic import write_synthetic_dataset
from pgnet.data.transforms import build_train_transform

REQUIRED_SPEEDUP = 3.0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=6, help="number of images")
    parser.add_argument("--passes", type=int, default=3, help="timed passes over the images")
    parser.add_argument("--width", type=int, default=3840)
    parser.add_argument("--height", type=int, default=2160)
    parser.add_argument("--size", type=int, default=1024, help="training size of the recipe")
    parser.add_argument("--long-side", type=int, default=1280, help="long side of the cache")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality of the test images")
    args = parser.parse_args(argv)

    torch.set_num_threads(1)  # one worker's share: DataLoader workers run single-threaded
    cv2.setNumThreads(1)
    transform = build_train_transform("official", size=args.size)
    with tempfile.TemporaryDirectory(prefix="pgnet-bench-") as folder:
        root = Path(folder)
        start = time.perf_counter()
        write_synthetic_dataset(root, args.n, (args.height, args.width), quality=args.quality, prefix="bench")
        print(f"wrote {args.n} synthetic {args.width}x{args.height} pairs in {time.perf_counter() - start:.1f} s")
        pairs = pair_files(root / "image", root / "mask").pairs
        start = time.perf_counter()
        report = build_cache(root, pairs, args.long_side)
        cache_seconds = (time.perf_counter() - start) / max(1, report.written)
        cache = find_cache(root, args.size)
        assert cache is not None and report.written == args.n, report

        datasets = {
            "naive": SODDataset(pairs, transform, reduced_decode=False),
            "reduced": SODDataset(pairs, transform, reduced_decode=True),
            "cached": SODDataset(pairs, transform, cache=cache),
        }
        rates = {
            name: loader_samples_per_second(dataset, args.batch_size, args.passes) for name, dataset in datasets.items()
        }

    print(
        f"\nper-worker throughput, {args.width}x{args.height} JPEG -> {args.size} training samples "
        f"(official recipe, batch {args.batch_size}, 1 thread):"
    )
    for name, rate in rates.items():
        print(f"  {name:8s} {rate:6.2f} samples/s  {1000 / rate:7.1f} ms/sample  {rate / rates['naive']:5.2f}x naive")
    print(f"  one-off cache cost: {1000 * cache_seconds:.0f} ms per pair (long side {args.long_side})")
    speedup = rates["cached"] / rates["naive"]
    verdict = "PASS" if speedup >= REQUIRED_SPEEDUP else "FAIL"
    print(f"fast path (cached) is {speedup:.2f}x naive: {verdict} (required {REQUIRED_SPEEDUP:.0f}x)")
    return 0 if speedup >= REQUIRED_SPEEDUP else 1


if __name__ == "__main__":
    sys.exit(main())
