"""The inference runtime: a model made ready to predict, with its device, precision and input layout.

``InferenceRuntime`` is what the ``Predictor`` and ``pgnet-eval`` both run a model with: the device
and precision (resolved by ``pgnet.device``), the network from
``pgnet.predict.acceleration.inference_network`` and the rule that an optimised network is fed
channels_last images.

bfloat16 runs under autocast on CUDA (and for a network that is not optimised); on a CPU the
optimised network is a bfloat16 copy instead (``LowPrecisionNetwork``: weights and activations in
bfloat16, its head and logits in float32), which spares autocast's per-call casts of the weights.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pgnet.device import autocast, autocast_dtype, resolve_device, resolve_precision
from pgnet.errors import UserError
from pgnet.models.pgnet import predict_probabilities
from pgnet.predict.acceleration import CUDAGraphRunner, LowPrecisionNetwork, inference_network
from pgnet.predict.int8 import Int8Calibration, Int8CalibrationError, int8_available


def autocast_for(
    network: Any, device: torch.device, dtype: torch.dtype | None
) -> Callable[[], contextlib.AbstractContextManager]:
    """A factory of the autocast context to call ``network`` in: ``dtype`` autocast, or none for float32,
    for a ``CUDAGraphRunner`` (which autocasts inside its graphs) and for a ``LowPrecisionNetwork``
    (already in its dtype), compiled or not."""
    if isinstance(getattr(network, "_orig_mod", network), (CUDAGraphRunner, LowPrecisionNetwork)):
        dtype = None
    return lambda: autocast(device, dtype)


def network_dtype(device: torch.device, precision: str, optimize: bool) -> torch.dtype | None:
    """The dtype of the network's own weights: bfloat16 for an optimised network on a CPU in bf16,
    None (float32, autocast where the precision asks) otherwise."""
    return torch.bfloat16 if device.type == "cpu" and optimize and precision in ("bf16", "int8") else None


def choose_int8(requested: str, resolved: str, device: torch.device, optimize: bool, compile: bool,
                calibration: Int8Calibration | None) -> str:
    """``resolved`` with "int8" where it applies: asked for (then everything it needs must be there), or
    "auto" resolved to bf16 on a CPU with a calibration whose recorded check held (``check["auto_rule"]``)."""
    if resolved == "int8":
        if calibration is None:
            raise Int8CalibrationError("precision int8 needs a calibration of the model: make one with "
                                       "pgnet-calibrate and pass it (--calibration FILE)")
        if not optimize or compile:
            raise UserError("precision int8 runs the prepared network eagerly: it needs optimize and no compile")
        return resolved
    if (requested == "auto" and resolved == "bf16" and device.type == "cpu" and optimize and not compile
            and calibration is not None and calibration.check.get("auto_rule") is True and int8_available()):
        return "int8"
    return resolved


@dataclass(frozen=True)
class InferenceRuntime:
    """A model ready for inference: the network to call, its device and precision, its input layout.

    Build it with ``create``; ``predict`` runs the shared prediction step
    (``pgnet.models.pgnet.predict_probabilities``) with it.
    """

    network: Any  # the model, its prepared copy (float32 or a LowPrecisionNetwork), compiled, or a CUDAGraphRunner
    device: torch.device
    precision: str  # resolved: "fp32", "bf16", "fp16" or "int8"
    channels_last: bool  # feed channels_last images (the network was prepared for them)

    @classmethod
    def create(
        cls,
        model: nn.Module,
        device: str | torch.device | None = None,
        precision: str = "auto",
        optimize: bool = True,
        compile: bool = False,
        cuda_graphs: bool | None = None,
        calibration: Int8Calibration | None = None,
        image_range: tuple[float, float] | None = None,
    ) -> InferenceRuntime:
        """Resolve ``device`` and ``precision`` and make the network for ``model`` (in eval mode):
        with ``optimize`` a prepared copy (BatchNorm folded, fused attention, channels_last), ``compile``
        it, or replay CUDA graphs (``cuda_graphs`` None: on CUDA unless compiled); see
        ``pgnet.predict.acceleration.inference_network``. ``calibration`` (with ``image_range``, the
        normalised image's range) serves "int8" (see ``choose_int8``)."""
        device = resolve_device(device)
        resolved = choose_int8(precision, resolve_precision(precision, device, inference=True), device,
                               optimize, compile, calibration)
        network = inference_network(model.eval(), device, optimize=optimize, compile=compile,
                                    cuda_graphs=cuda_graphs, autocast_dtype=autocast_dtype(resolved),
                                    dtype=network_dtype(device, resolved, optimize),
                                    int8=calibration if resolved == "int8" else None, image_range=image_range)
        precision = resolved
        return cls(network, device, precision, channels_last=bool(optimize))

    @property
    def autocast(self) -> Callable[[], contextlib.AbstractContextManager]:
        """A factory of the autocast context to call ``network`` in (none for fp32 and CUDA graphs)."""
        return autocast_for(self.network, self.device, autocast_dtype(self.precision))

    @property
    def cuda_graphs(self) -> bool:
        return isinstance(self.network, CUDAGraphRunner)

    def predict(self, images: torch.Tensor, sizes: Sequence[tuple[int, int]], flip: bool = False
                ) -> list[torch.Tensor]:
        """Probabilities (H×W float32 each, at ``sizes``) of normalised B×3×S×S ``images``."""
        return predict_probabilities(self.network, images.to(self.device, non_blocking=True), sizes, flip=flip,
                                     autocast=self.autocast, channels_last=self.channels_last)
