"""What a measurement is quoted with: the environment record and the figure record.

A figure is a plain dict (JSON-ready) that carries the value and its unit with the device, the dtype
and the torch/timm versions it was measured with; the environment record adds the hardware and the
numeric settings that change float32 results.
"""

from __future__ import annotations

import contextlib
import os
import platform
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pgnet._compat  # noqa: F401  # isort: skip  (first: makes torchvision, hence timm, importable)
import timm
import torch

from pgnet.device import cpu_flags, cpu_native_bf16


def cpu_name() -> str:
    """The processor's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    """The GPU's name on CUDA, the processor's otherwise."""
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
    if device.type == "cpu":
        env.update(cpu_flags=cpu_flags(), cpu_capability=torch.backends.cpu.get_cpu_capability(),
                   cpu_native_bf16=cpu_native_bf16())
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


def dtype_name(autocast_dtype: torch.dtype | None) -> str:
    """How a figure names its precision: "float32", or "<dtype> autocast"."""
    return "float32" if autocast_dtype is None else f"{str(autocast_dtype).removeprefix('torch.')} autocast"


def find_figures(figures: Sequence[dict[str, Any]], benchmark: str, **match: Any) -> list[dict[str, Any]]:
    """The figures of ``benchmark`` whose details equal ``match``."""
    return [f for f in figures if f["benchmark"] == benchmark and all(f.get(k) == v for k, v in match.items())]


def variant_record(variant: Any) -> dict[str, Any]:
    """A variant (a dataclass) as its figures record it, the autocast dtype by name.

    The dtype goes under the key ``amp_dtype``, the one earlier reports and their readers (the
    targets' selectors included) use; in code the field is ``autocast_dtype``.
    """
    values: dict[str, Any] = {}
    for key, value in asdict(variant).items():
        if key == "autocast_dtype":
            key = "amp_dtype"
        if isinstance(value, torch.dtype):
            value = str(value).removeprefix("torch.")
        values[key] = value
    return values
