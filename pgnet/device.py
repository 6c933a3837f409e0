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
from typing import TYPE_CHECKING

from pgnet.errors import UserError

if TYPE_CHECKING:
    import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # auto: bf16 on CUDA when the GPU has it, fp32 elsewhere


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


# "off" is the training config's spelling of fp32 (``train.amp: off``).
_ALIASES = {"off": "fp32"}
_DTYPE_NAMES = {"fp32": None, "bf16": "bfloat16", "fp16": "float16"}


def resolve_precision(name: str, device: torch.device, key: str = "precision") -> str:
    """"fp32", "bf16" or "fp16" for ``device``; "auto" is bf16 on a CUDA device that has it, else fp32."""
    import torch

    name = _ALIASES.get(name, name)
    if name not in PRECISIONS:
        raise PrecisionError(f"{key} must be one of {', '.join(PRECISIONS)}, got {name!r}")
    if name == "auto":
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
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
