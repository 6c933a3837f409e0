"""Training-step benchmarks: the trainer's step (``pgnet.train.step.TrainStep``: forward, PGNet loss,
backward, SGD step) in eager float32 against bf16 autocast + channels_last + cuDNN autotuning
(+ ``torch.compile``), and the same with activation checkpointing in the Swin branch.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from pgnet.benchmark.memory import PeakMemory, is_too_large, release_memory
from pgnet.benchmark.record import dtype_name, figure, variant_record
from pgnet.benchmark.timing import cudnn_benchmark, timed, timing_details, write_profile
from pgnet.config import LossConfig, OptimConfig
from pgnet.models.pgnet import PGNet
from pgnet.train.losses import PGNetLoss
from pgnet.train.optim import build_optimizer
from pgnet.train.step import TrainStep


@dataclass(frozen=True)
class TrainVariant:
    """One way of running a training step."""

    name: str
    autocast_dtype: torch.dtype | None = None  # None: float32
    channels_last: bool = False
    compile: bool = False
    cudnn_benchmark: bool = False
    swin_grad_checkpointing: bool = False

    @property
    def dtype(self) -> str:
        return dtype_name(self.autocast_dtype)


STRAIGHTFORWARD_TRAIN = TrainVariant("eager_fp32")


def default_train_variants(device: torch.device, compile: bool = False) -> list[TrainVariant]:
    """The straightforward step first, then the fast ones (on the CPU: float32 with Swin checkpointing)."""
    if device.type != "cuda":
        return [STRAIGHTFORWARD_TRAIN, TrainVariant("eager_fp32_swin_checkpointing", swin_grad_checkpointing=True)]
    fast = TrainVariant("bf16_channels_last", autocast_dtype=torch.bfloat16, channels_last=True, cudnn_benchmark=True)
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
    details: dict[str, Any] = {"size": size, "batch": batch, "variant": variant_record(variant)}
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
    # The step is the trainer's own (pgnet.train.step.TrainStep).
    train_step = TrainStep(model, PGNetLoss(LossConfig()), build_optimizer(model, OptimConfig(lr=1e-4)),
                           network=network, autocast_dtype=variant.autocast_dtype, memory_format=memory_format)
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
