"""Evaluator benchmarks: images/s of :class:`~pgnet.metrics.SODMetrics` on predictions already on the
device, and ``pgnet.metrics`` against pysodmetrics on the same high-resolution masks, side by side.

The comparison makes its masks in chunks (not timed); each chunk is scored by pysodmetrics' suite
(MAE, S-measure, E-measure, F-measure, weighted F-measure), by pgnet on the same metrics, and by
pgnet's full suite (+ BIoU, mBA), the order alternating between chunks so that machine load and cache
state fall on all alike.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import cv2
import numpy as np
import torch

from pgnet.benchmark.record import environment, figure
from pgnet.benchmark.timing import timed
from pgnet.data.synthetic import make_sample, sample_seed
from pgnet.metrics import ALL_METRICS, SOD_METRICS, SODMetrics
from pgnet.metrics.reference import PySODReference

PYSOD = "pysodmetrics"
SAME_METRICS = "pgnet (same metrics)"
ALL_PGNET_METRICS = "pgnet (all, + BIoU, mBA)"


def degrade(mask: np.ndarray, rng: np.random.Generator, max_sigma: float, noise: float, scale: float = 1.0,
            false_positive: bool = False) -> np.ndarray:
    """A prediction of the uint8 ``mask``, float32 in [0, ``scale``]: blurred (sigma drawn in [1, max_sigma]),
    shifted by up to 8 pixels, with a false-positive disc when asked, plus Gaussian noise of ``noise``."""
    pred = cv2.GaussianBlur(mask.astype(np.float32) / np.float32(255 / scale), (0, 0), float(rng.uniform(1, max_sigma)))
    pred = np.roll(pred, tuple(int(s) for s in rng.integers(-8, 9, size=2)), axis=(0, 1))
    if false_positive:
        height, width = mask.shape
        center = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        radius = int(rng.integers(min(height, width) // 30, min(height, width) // 8))
        cv2.circle(pred, center, radius, float(rng.uniform(60, 255)) * scale / 255, -1)
    pred += rng.normal(0, noise, size=pred.shape).astype(np.float32)
    return np.clip(pred, 0, scale)


def synthetic_prediction(seed: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(prediction float32 in [0, 1], mask uint8) of ``size``×``size``: the mask blurred, shifted and noised."""
    _, mask = make_sample(seed, size)
    return degrade(mask, np.random.default_rng(seed), max_sigma=8, noise=0.05), mask


def synthetic_pair(index: int, height: int, width: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A (prediction, mask) pair of uint8 H×W maps: blobs, polygons and thin structures in the mask (every
    50th empty); the prediction blurs it, shifts its boundary, adds noise and a false-positive blob."""
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
    pred = degrade(mask, rng, max_sigma=12, noise=12, scale=255, false_positive=True)
    return pred.round().astype(np.uint8), mask


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


def _score(suite: Any, pairs: Sequence[tuple[np.ndarray, np.ndarray]]) -> None:
    for pred, gt in pairs:
        suite.update(pred, gt)  # pgnet's time includes moving the arrays to the device


def compare_with_pysodmetrics(
    device: torch.device,
    num_images: int = 200,
    height: int = 1152,
    width: int = 2048,
    seed: int = 0,
    chunk: int = 10,
    pysod: bool = True,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Seconds of pysodmetrics (unless ``pysod`` is False) and of pgnet.metrics on ``num_images``
    synthetic masks, the results, and the largest differences between the two implementations."""
    suites: dict[str, Any] = {PYSOD: PySODReference()} if pysod else {}
    suites[SAME_METRICS] = SODMetrics(SOD_METRICS, device=device)
    suites[ALL_PGNET_METRICS] = SODMetrics(ALL_METRICS, device=device)
    seconds = dict.fromkeys(suites, 0.0)
    for round_index, start in enumerate(range(0, num_images, chunk)):
        pairs = [synthetic_pair(i, height, width, seed) for i in range(start, min(start + chunk, num_images))]
        for name in list(suites) if round_index % 2 == 0 else list(reversed(suites)):
            seconds[name] += timed(partial(_score, suites[name], pairs), device)
        if log is not None:
            log(f"  {start + len(pairs)}/{num_images} masks")

    baseline = seconds.get(PYSOD)
    ours = suites[SAME_METRICS].compute()
    differences: dict[str, float] = {}
    if baseline:
        expected = suites[PYSOD].compute()
        differences = {key: abs(ours[key] - expected[key]) for key in expected}
    env = environment(device)
    return {
        "num_images": num_images,
        "height": height,
        "width": width,
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "opencv_threads": cv2.getNumThreads(),
        "torch_version": env["torch"],
        "platform": env["platform"],
        "processor": env["cpu"],
        "timings": [{"implementation": name, "total_s": total, "ms_per_image": 1000 * total / num_images,
                     "speedup": baseline / total if baseline else None} for name, total in seconds.items()],
        "pgnet_results": ours,
        "pgnet_full_results": suites[ALL_PGNET_METRICS].compute(),
        "abs_difference_vs_pysodmetrics": differences,
    }


def format_comparison(report: dict[str, Any]) -> str:
    """The comparison as a table: total and per-image time of each implementation, its speedup, and the
    largest difference from pysodmetrics."""
    lines = [f"{report['num_images']} masks of {report['width']}×{report['height']}; torch threads "
             f"{report['torch_threads']}, OpenCV threads {report['opencv_threads']}; pgnet on {report['device']}",
             f"{'implementation':26s} {'total s':>9s} {'ms/image':>9s} {'vs pysodmetrics':>16s}"]
    for row in report["timings"]:
        speedup = f"{row['speedup']:.2f}× faster" if row["speedup"] else "-"
        lines.append(f"{row['implementation']:26s} {row['total_s']:9.2f} {row['ms_per_image']:9.1f} {speedup:>16s}")
    differences = report["abs_difference_vs_pysodmetrics"]
    if differences:
        worst = max(differences, key=differences.get)
        lines.append(f"largest |pgnet - pysodmetrics| over the dataset values: {differences[worst]:.2e} ({worst})")
    return "\n".join(lines)
