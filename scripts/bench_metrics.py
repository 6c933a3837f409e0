#!/usr/bin/env python
"""Time pgnet.metrics against pysodmetrics on synthetic high-resolution masks, side by side.

Both run in this one process over the same masks. The masks are made in chunks of ``--chunk`` (not
timed); each chunk is scored by pysodmetrics' suite (MAE, S-measure, E-measure, F-measure, weighted
F-measure), by pgnet on the same metrics, and by pgnet's full suite (+ BIoU, mBA), the order
alternating between chunks so that machine load and cache state fall on all alike. Prints the
timings, the speed ratios and the largest difference between the two implementations' results.

``--threads`` sets torch's and OpenCV's thread counts (default 1: pysodmetrics runs on one core, so
the comparison is core for core; 0 keeps the libraries' defaults).

    python scripts/bench_metrics.py                 # 200 masks of 2048×1152
    python scripts/bench_metrics.py --n 10          # a quick check
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from pgnet.metrics import ALL_METRICS, SOD_METRICS, SODMetrics
from pgnet.metrics.reference import PySODReference
from pgnet.outputs import write_text


def synthetic_pair(index: int, height: int, width: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A (prediction, mask) pair of uint8 H×W maps: blobs, polygons and thin structures in the mask;
    the prediction blurs it, shifts its boundary, adds noise and a false-positive blob."""
    rng = np.random.default_rng([seed, index])
    mask = np.zeros((height, width), np.uint8)
    scale = min(height, width)
    if index % 50 != 49:  # every 50th mask is empty
        for _ in range(int(rng.integers(1, 4))):
            center = (int(rng.integers(0, width)), int(rng.integers(0, height)))
            axes = (int(rng.integers(scale // 20, scale // 3)), int(rng.integers(scale // 20, scale // 3)))
            cv2.ellipse(mask, center, axes, float(rng.uniform(0, 180)), 0, 360, 255, -1)
        points = rng.integers(0, [width, height], size=(int(rng.integers(3, 9)), 2)).astype(np.int32)
        cv2.fillPoly(mask, [points], 255)
        for _ in range(int(rng.integers(0, 6))):  # thin structures (hair, wires)
            start = tuple(int(v) for v in rng.integers(0, [width, height]))
            end = tuple(int(v) for v in rng.integers(0, [width, height]))
            cv2.line(mask, start, end, 255, int(rng.integers(1, 6)))
    sigma = float(rng.uniform(1, 12))
    pred = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), sigma)
    shift = rng.integers(-8, 9, size=2)
    pred = np.roll(pred, tuple(int(s) for s in shift), axis=(0, 1))
    center = (int(rng.integers(0, width)), int(rng.integers(0, height)))
    cv2.circle(pred, center, int(rng.integers(scale // 30, scale // 8)), float(rng.uniform(60, 255)), -1)
    pred += rng.normal(0, 12, size=pred.shape).astype(np.float32)
    return np.clip(pred, 0, 255).round().astype(np.uint8), mask


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", "--num-images", dest="num_images", type=int, default=200, help="masks (200)")
    parser.add_argument("--height", type=int, default=1152)
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--chunk", type=int, default=10, help="masks made and scored per round (10)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch and OpenCV threads (default 1, as pysodmetrics; 0: the libraries' defaults)")
    parser.add_argument("--device", default="cpu", help="device for pgnet.metrics (pysodmetrics: CPU)")
    parser.add_argument("--skip-pysod", action="store_true", help="time pgnet only")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    return parser.parse_args(argv)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
        cv2.setNumThreads(args.threads)
    device = torch.device(args.device)
    suites: dict[str, object] = {}
    if not args.skip_pysod:
        suites["pysodmetrics"] = PySODReference()
    suites["pgnet (same metrics)"] = SODMetrics(SOD_METRICS, device=device)
    suites["pgnet (all, + BIoU, mBA)"] = SODMetrics(ALL_METRICS, device=device)
    seconds = dict.fromkeys(suites, 0.0)

    for round_index, start in enumerate(range(0, args.num_images, args.chunk)):
        chunk = [synthetic_pair(i, args.height, args.width, args.seed)
                 for i in range(start, min(start + args.chunk, args.num_images))]
        order = list(suites) if round_index % 2 == 0 else list(reversed(suites))
        for name in order:
            suite = suites[name]
            _synchronize(device)
            begin = time.perf_counter()
            for pred, gt in chunk:
                suite.update(pred, gt)  # pgnet's time includes moving the arrays to the device
            _synchronize(device)
            seconds[name] += time.perf_counter() - begin
        print(f"  {start + len(chunk)}/{args.num_images} masks", file=sys.stderr)

    baseline = seconds.get("pysodmetrics")
    rows = [{"implementation": name, "total_s": total, "ms_per_image": 1000 * total / args.num_images,
             "speedup": baseline / total if baseline else None} for name, total in seconds.items()]
    print(f"\n{args.num_images} masks of {args.width}×{args.height}; torch threads {torch.get_num_threads()}, "
          f"OpenCV threads {cv2.getNumThreads()}; pgnet on {device}")
    print(f"{'implementation':26s} {'total s':>9s} {'ms/image':>9s} {'vs pysodmetrics':>16s}")
    for row in rows:
        speedup = f"{row['speedup']:.2f}× faster" if row["speedup"] else "-"
        print(f"{row['implementation']:26s} {row['total_s']:9.2f} {row['ms_per_image']:9.1f} {speedup:>16s}")

    ours = suites["pgnet (same metrics)"].compute()
    differences = {}
    if baseline:
        expected = suites["pysodmetrics"].compute()
        differences = {key: abs(ours[key] - expected[key]) for key in expected}
        worst = max(differences, key=differences.get)
        print(f"largest |pgnet - pysodmetrics| over the dataset values: {differences[worst]:.2e} ({worst})")
    report = {
        "num_images": args.num_images,
        "height": args.height,
        "width": args.width,
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "opencv_threads": cv2.getNumThreads(),
        "torch_version": torch.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "timings": rows,
        "pgnet_results": ours,
        "pgnet_full_results": suites["pgnet (all, + BIoU, mBA)"].compute(),
        "abs_difference_vs_pysodmetrics": differences,
    }
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        write_text(args.json, json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
