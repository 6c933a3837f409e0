"""Where and in what precision a network runs: the one device resolver, the one precision resolver,
autocast and synchronisation.

Every command, the trainer, the ``Predictor``, the evaluator and the benchmark resolve ``--device`` /
``train.device`` and ``--precision`` / ``train.amp`` here, so the same name means the same thing
everywhere. This module knows nothing of training or prediction; both build on it.

torch is imported by the functions, not by the module: a command's ``--help`` reads ``PRECISIONS``
without loading torch.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

from pgnet.errors import UserError

if TYPE_CHECKING:
    import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # auto: see resolve_precision
# Inference may also run "int8" on a CPU: the ResNet branch and a decoder block in int8 (``pgnet.predict.int8``).
INFERENCE_PRECISIONS = (*PRECISIONS, "int8")

# "1" or "0" overrides what ``cpu_native_bf16`` detects (a test forces it off; a user may force it on).
CPU_BF16_VARIABLE = "PGNET_CPU_BF16"
# The processor flags a CPU benchmark records: the vector units, and bfloat16/int8 in hardware.
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16", "amx_int8")


class DeviceError(UserError, RuntimeError):
    """A device this machine does not have, or a name torch does not know (also a RuntimeError, as
    torch's own device errors are)."""


class PrecisionError(UserError):
    """A precision name outside :data:`PRECISIONS`."""


def _mps_available() -> bool:
    import torch

    mps = getattr(torch.backends, "mps", None)
    return mps is not None and mps.is_available()


def resolve_device(name: str | torch.device | None = "auto", key: str | None = None) -> torch.device:
    """``name`` as a torch.device this machine has; ``key`` (e.g. "train.device") starts error messages.

    None or "auto" picks CUDA (the current device), then MPS, then the CPU. "cuda" without an index
    becomes the current CUDA device, so a device compares equal to the tensors placed on it.
    """
    import torch

    if name is None or str(name) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    prefix = f"{key}: " if key else ""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DeviceError(f"{prefix}unknown device {str(name)!r} (auto, cpu, cuda, cuda:N or mps)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"{prefix}device {str(device)!r} requested but CUDA is not available")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise DeviceError(f"{prefix}device {str(device)!r} requested but only {count} CUDA devices exist")
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
    elif device.type == "mps" and not _mps_available():
        raise DeviceError(f"{prefix}device {str(device)!r} requested but MPS is not available")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise DeviceError(f"{prefix}device type {device.type!r} is not supported (cpu, cuda or mps)")
    return device


def cpu_flags() -> dict[str, bool]:
    """Which of :data:`CPU_FLAGS` the processor reports in ``/proc/cpuinfo`` (all False where it is unreadable)."""
    flags: set[str] = set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    return {flag: flag in flags for flag in CPU_FLAGS}


def cpu_native_bf16(override: bool | None = None) -> bool:
    """Whether the CPU computes bfloat16 in hardware (AVX-512 BF16 or AMX), so that oneDNN runs bfloat16
    convolutions and matmuls at twice the float32 rate; without it bfloat16 is emulated.

    ``override`` (else the ``PGNET_CPU_BF16`` environment variable, "1" or "0") replaces the detection,
    which asks torch and falls back to the ``/proc/cpuinfo`` flags.
    """
    if override is not None:
        return bool(override)
    forced = os.environ.get(CPU_BF16_VARIABLE, "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    import torch

    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if all(probe is not None for probe in probes):
        return any(probe() for probe in probes)
    flags = cpu_flags()
    return flags["avx512_bf16"] or flags["amx_bf16"]


# Whether ``auto`` runs inference in bfloat16 on a CPU with native bfloat16: on, since the scores of a
# trained model stay within 0.002 of float32 and the mean probability difference within 2e-3
# (docs/performance.md, "bfloat16 and int8 on the CPU").
AUTO_CPU_BF16 = True

# "off" is the training config's spelling of fp32 (``train.amp: off``).
_ALIASES = {"off": "fp32"}
_DTYPE_NAMES = {"fp32": None, "bf16": "bfloat16", "fp16": "float16", "int8": "bfloat16"}  # int8: the rest in bf16


def resolve_precision(name: str, device: torch.device, key: str = "precision", inference: bool = False,
                      native_bf16: bool | None = None) -> str:
    """"fp32", "bf16" or "fp16" for ``device`` ("int8" too, for ``inference`` on a CPU).

    "auto" is bf16 on a CUDA device that has it; for ``inference``, also on a CPU that computes
    bfloat16 natively (``cpu_native_bf16``, with ``native_bf16`` its override); fp32 elsewhere.
    Training on a CPU stays in float32.
    """
    import torch

    name = _ALIASES.get(name, name)
    valid = INFERENCE_PRECISIONS if inference else PRECISIONS
    if name not in valid:
        raise PrecisionError(f"{key} must be one of {', '.join(valid)}, got {name!r}")
    if name == "int8" and device.type != "cpu":
        raise PrecisionError(f"{key} int8 runs on a CPU only, not on {device}")
    if name == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        if device.type == "cpu" and inference and AUTO_CPU_BF16 and cpu_native_bf16(native_bf16):
            return "bf16"
        return "fp32"
    return name


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a resolved precision; None for fp32 (no autocast)."""
    import torch

    name = _DTYPE_NAMES[_ALIASES.get(precision, precision)]
    return None if name is None else getattr(torch, name)


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` on ``device`` in ``dtype``, or a no-op context for None (fp32)."""
    import torch

    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def synchronize(device: torch.device) -> None:
    """Wait for ``device``'s queued work (CUDA); nothing to wait for on the CPU."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
