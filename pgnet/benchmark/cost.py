"""The cost of a model configuration on the CPU: parameters, FLOPs, inference time, training memory.

- FLOPs: ``torch.utils.flop_counter.FlopCounterMode`` over one inference forward pass (no
  attention-map branch), attention through the math backend so that its matrix products are
  counted; one multiply-add is 2 FLOPs.
- inference time: the fast path (``prepare_for_inference``: BatchNorm folded, fused attention,
  channels_last), batch 1, ``torch.inference_mode``; the median of a few passes after a warm-up.
- training memory: the growth of the process's resident memory (``/proc/self/statm``, sampled every
  millisecond by a thread) during one training step (forward with the attention maps, PGNet loss,
  backward, SGD step) over what it held just before; the step measured is the second, so gradients'
  and optimiser buffers' first allocations are not counted twice. Run one configuration per process:
  memory freed by an earlier model may be reused without showing as growth.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from pgnet.benchmark.memory import ResidentPeak
from pgnet.benchmark.model import build_benchmark_model
from pgnet.config import LossConfig, OptimConfig
from pgnet.models.pgnet import PGNet, count_parameters
from pgnet.predict.acceleration import prepare_for_inference
from pgnet.train.losses import PGNetLoss
from pgnet.train.optim import build_optimizer
from pgnet.train.step import TrainStep


def inference_gflops(model: PGNet, size: int) -> float:
    """GFLOPs of one inference forward pass of ``model`` on a 1×3×size×size image."""
    model = model.eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), counter:
        model(torch.randn(1, 3, size, size), need_attention=False)
    return counter.get_total_flops() / 1e9


def inference_seconds(model: PGNet, size: int, repetitions: int = 3) -> list[float]:
    """Seconds of each of ``repetitions`` fast-path forward passes at 1×3×size×size (after one warm-up)."""
    network = prepare_for_inference(model)
    image = torch.randn(1, 3, size, size).contiguous(memory_format=torch.channels_last)
    seconds = []
    with torch.inference_mode():
        for index in range(repetitions + 1):
            start = time.perf_counter()
            network(image)
            if index:
                seconds.append(time.perf_counter() - start)
    return seconds


def training_step_memory_mib(model: PGNet, size: int, batch: int, seed: int = 0) -> float:
    """Resident-memory growth (MiB) of the second of two training steps at batch×3×size×size."""
    model = model.train()
    step = TrainStep(model, PGNetLoss(LossConfig()), build_optimizer(model, OptimConfig(lr=1e-4)))
    generator = torch.Generator().manual_seed(seed)
    image = torch.randn(batch, 3, size, size, generator=generator)
    mask = (torch.rand(batch, 1, size, size, generator=generator) > 0.5).float()
    step.forward_backward(image, mask)
    step.apply()
    with ResidentPeak() as peak:
        step.forward_backward(image, mask)
        step.apply()
    return peak.growth_mib


def measure_cost(model: PGNet, inference_size: int = 1024, train_size: int = 512, train_batch: int = 2,
                 repetitions: int = 3) -> dict[str, Any]:
    """Parameters, inference GFLOPs and CPU seconds at ``inference_size``, and training memory."""
    seconds = inference_seconds(model, inference_size, repetitions)
    return {
        "graft_points": list(model.config.graft_points),
        "parameters_m": count_parameters(model) / 1e6,
        "gflops": inference_gflops(model, inference_size),
        "cpu_inference_s_median": statistics.median(seconds),
        "cpu_inference_s": seconds,
        "train_memory_growth_mib": training_step_memory_mib(model, train_size, train_batch),
        "threads": torch.get_num_threads(),
    }


def measure_graft_cost(graft_points: Sequence[str], window_size: int = 8, inference_size: int = 1024,
                       train_size: int = 512, train_batch: int = 2, repetitions: int = 3) -> dict[str, Any]:
    """:func:`measure_cost` of the official model with ``graft_points`` (random weights, BatchNorm calibrated)."""
    model = build_benchmark_model({"graft_points": list(graft_points), "window_size": window_size})
    return measure_cost(model, inference_size, train_size, train_batch, repetitions)
