"""Video benchmarks on synthetic data: video prediction, temporal smoothing and foreground refinement.

- frames/s and peak memory (resident set, sampled) of ``write_video`` (mask mode, H.264 out; decoding,
  network and encoding overlapped) on a synthetic clip of a moving subject with sensor noise, beside
  the time of the predictor alone on one frame, at each resolution asked (720p and 4K by default); without a checkpoint
  the default model (Swin-B + ResNet-18) runs with random weights (BatchNorm calibrated, as in
  ``pgnet-benchmark``), which cost the same as trained ones;
- flicker: mean absolute change between consecutive masks of that clip, raw and smoothed with weights
  0.5 and 0.8 (and, as the cost of the lag, the mean change of the smoothed masks from the raw ones);
- foreground refinement: its cost at 2048×2048 and the error at soft edges of raw colours and of the
  estimate against the true foreground (``make_soft_composite``, five seeds at 1024×1024).
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pgnet import Predictor, load_model
from pgnet.benchmark.memory import ResidentPeak
from pgnet.benchmark.model import build_benchmark_model
from pgnet.data.synthetic import make_soft_composite
from pgnet.predict.calibration import calibrate_pictures
from pgnet.predict.compose import Composer
from pgnet.predict.foreground import estimate_foreground
from pgnet.predict.int8 import Int8Calibration
from pgnet.predict.media import VIDEO_FORMATS, SegmentEncoder
from pgnet.predict.video import TemporalSmoother, frames_in_flight, mean_consecutive_change, write_video

SMOOTHING_WEIGHTS = (0.5, 0.8)


class RecordingComposer(Composer):
    """The mask mode, keeping every mask it writes."""

    def __init__(self) -> None:
        super().__init__("mask")
        self.masks: list[np.ndarray] = []

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        self.masks.append(mask)
        return super().__call__(image, mask)


def write_moving_clip(path: Path, frames: int, height: int, width: int, fps: float = 30.0) -> Path:
    """A subject with a soft edge sliding 1 % of the width per frame, Gaussian noise of sigma 6 (H.264)."""
    _, alpha, foreground, background = make_soft_composite(7, (height, width))
    rng = np.random.default_rng(0)
    encoder = SegmentEncoder(path, VIDEO_FORMATS["mp4"], (height, width), False, 1 / Fraction(fps), fps)
    for index in range(frames):
        shift = int((index - frames // 2) * 0.01 * width)
        moved = np.roll(alpha, shift, axis=1)[..., None]
        frame = moved * np.roll(foreground, shift, axis=1) + (1 - moved) * background
        encoder.encode(np.clip(frame + rng.normal(0, 6, frame.shape), 0, 255).astype(np.uint8), index)
    encoder.close()
    return path


def video_predictor(checkpoint: str | None, size: int, batch_size: int = 1, precision: str = "auto",
                    calibration: str | Path | None = None) -> Predictor:
    """A CPU predictor of ``checkpoint``, or of the official architecture with random weights; "int8"
    without a ``calibration`` file is calibrated on one random size² picture (as the speed benchmark)."""
    # Random weights are seeded, with BatchNorm calibrated as pgnet-benchmark does (otherwise the
    # logits are in the hundreds and every mask is the same saturated picture).
    model = load_model(checkpoint, "cpu") if checkpoint else build_benchmark_model({})
    int8 = Int8Calibration.read(calibration)
    if precision == "int8" and int8 is None:
        picture = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
        int8 = calibrate_pictures(model, [picture], size)
    return Predictor(model, size=size, device="cpu", batch_size=batch_size, precision=precision, calibration=int8)


def measure_video(predictor: Predictor, frames: int, height: int, width: int,
                  log: Callable[[str], None] = print) -> dict[str, Any]:
    """Frames/s of ``write_video`` on a synthetic clip, the predictor's time on one frame, and flicker."""
    with tempfile.TemporaryDirectory(prefix="pgnet-video-") as folder:
        clip = write_moving_clip(Path(folder) / "clip.mp4", frames, height, width)
        still = np.zeros((height, width, 3), np.uint8)
        predictor(still)  # warm-up, not timed
        start = time.perf_counter()
        for _ in range(3):
            predictor(still)
        network = (time.perf_counter() - start) / 3
        log(f"the predictor alone on one {width}x{height} frame: {network:.2f} s")
        composer = RecordingComposer()
        start, cpu_start = time.perf_counter(), time.process_time()
        with ResidentPeak(interval_s=0.02) as memory:
            result = write_video(predictor, clip, Path(folder) / "out.mp4", composer, progress=True)
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    log(f"video: {result.frames} frames {width}x{height} at --size {predictor.size}, batch "
        f"{predictor.batch_size}, {torch.get_num_threads()} threads: {result.frames / seconds:.3f} frames/s "
        f"({seconds:.1f} s; CPU time of the process {cpu_seconds / result.frames:.2f} s per frame; "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
    log(f"peak resident memory {memory.peak_mib:.0f} MiB ({memory.peak_mib - memory.start_mib:+.0f} MiB over the "
        f"model loaded; at most {frames_in_flight(predictor.batch_size)} frames in flight)")
    raw = composer.masks
    flicker = {"raw": mean_consecutive_change(raw)}
    log(f"flicker (mean |mask_t - mask_t-1|): raw {flicker['raw']:.5f}")
    for weight in SMOOTHING_WEIGHTS:
        smoother = TemporalSmoother(weight)
        smoothed = [smoother(mask).copy() for mask in raw]
        lag = float(np.mean([np.abs(s - m).mean() for s, m in zip(smoothed, raw)]))
        flicker[f"smooth_{weight}"] = mean_consecutive_change(smoothed)
        log(f"  --smooth {weight}: {flicker[f'smooth_{weight}']:.5f} (mean |smoothed - raw| {lag:.5f})")
    return {"network_s": network, "frames": result.frames, "frames_per_s": result.frames / seconds,
            "peak_mib": memory.peak_mib, "video_mib": memory.peak_mib - memory.start_mib,
            "cpu_s_per_frame": cpu_seconds / result.frames, "flicker": flicker}


def measure_foreground_refinement(log: Callable[[str], None] = print) -> dict[str, Any]:
    """Soft-edge colour error of raw colours and of the refined foreground, and the refinement's time."""
    raw_errors, estimate_errors = [], []
    for seed in range(5):
        composite, alpha, foreground, _ = make_soft_composite(seed, 1024)
        edge = (alpha > 0.05) & (alpha < 0.95)
        estimate = estimate_foreground(composite, alpha).astype(np.float32)
        raw_errors.append(np.abs(composite - foreground)[edge].mean())
        estimate_errors.append(np.abs(estimate - foreground)[edge].mean())
    log(f"soft-edge colour error (0-255, mean over 0.05 < alpha < 0.95, 5 scenes at 1024x1024): raw "
        f"{np.mean(raw_errors):.2f}, refined {np.mean(estimate_errors):.2f}")
    composite, alpha, _, _ = make_soft_composite(0, 2048)
    estimate_foreground(composite, alpha)
    times = []
    for _ in range(3):
        start = time.perf_counter()
        estimate_foreground(composite, alpha)
        times.append(time.perf_counter() - start)
    log(f"refine-foreground at 2048x2048: {min(times):.3f} s (best of 3; median {np.median(times):.3f} s)")
    return {"raw_edge_error": float(np.mean(raw_errors)), "refined_edge_error": float(np.mean(estimate_errors)),
            "refine_s": min(times)}
