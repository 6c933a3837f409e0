"""The network the benchmarks run: random weights, BatchNorm statistics calibrated to a trained network's
scale, so that timings and the differences between paths are those of a real model."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pgnet.models.layers import init_decoder_weights
from pgnet.models.pgnet import ModelConfig, PGNet, create_model

# A small network for smoke runs and tests.
SMALL_MODEL = {"swin": "swin_tiny_patch4_window7_224", "resnet": "resnet18", "swin_input_size": 112}


def calibrate_batchnorm(model: PGNet, image: torch.Tensor) -> None:
    """Set every BatchNorm's running statistics to those of ``model`` on ``image`` (then eval mode).

    With random weights and the initial statistics (mean 0, variance 1) activations grow layer after
    layer (logits in the hundreds); calibrated, they have the scale of a trained network's, so that
    the differences between paths are measured at a realistic scale.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [norm.momentum for norm in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average: one batch sets the statistics
    model.train()
    with torch.no_grad():
        model(image, need_attention=True)
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum
    model.eval()


def build_benchmark_model(overrides: dict[str, Any], seed: int = 0) -> PGNet:
    """A PGNet with random weights (``ModelConfig`` overrides; the official model by default) and
    BatchNorm statistics calibrated on a random image."""
    torch.manual_seed(seed)
    model = create_model(ModelConfig.from_dict({**ModelConfig().to_dict(), **overrides}))
    for graft in (model.decoder.cnn3_graft, model.decoder.cnn2_graft):  # they start at zero: make them count
        if graft is not None:
            init_decoder_weights(graft.expand)
    calibrate_batchnorm(model, torch.randn(2, 3, 256, 256, generator=torch.Generator().manual_seed(seed + 1)))
    return model
