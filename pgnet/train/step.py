"""One optimiser step of PGNet training, shared by the trainer and the benchmark.

A step runs, for each micro-batch, a forward pass with the CMGM attention maps under autocast, the
PGNet loss and a backward pass (the loss divided by the number of micro-batches and scaled for fp16),
then the optimiser step, with gradients clipped when asked. Apart from the fp16 gradient scaler's
check for infinite gradients, nothing in it waits for the device: the caller decides when to read
losses back.
"""

from __future__ import annotations

import contextlib
from typing import NamedTuple

import torch
from torch import nn

from pgnet.device import autocast
from pgnet.models.pgnet import PGNetOutput
from pgnet.train.losses import PGNetLoss


class MicroBatchResult(NamedTuple):
    output: PGNetOutput
    loss: torch.Tensor  # the total loss, detached
    terms: dict[str, torch.Tensor]  # each term, detached
    nonfinite: torch.Tensor  # 1.0 when the loss is NaN or infinite, else 0.0 (a device scalar)


class TrainStep:
    """Forward/backward passes and the optimiser step of PGNet training.

    Args:
        model: the PGNet whose parameters the optimiser updates (clipping reads its gradients).
        network: what to call for the forward pass: ``model`` itself, or it wrapped by DDP and/or
            ``torch.compile`` (default ``model``).
        criterion, optimizer: the PGNet loss and the optimiser.
        autocast_dtype: autocast dtype (None: float32; see ``pgnet.device.autocast_dtype``).
        scaler: the fp16 gradient scaler (None: a disabled one).
        memory_format: layout the images are given (the model's: channels_last on GPU by default).
        clip_grad: largest gradient norm (0: no clipping).
    """

    def __init__(
        self,
        model: nn.Module,
        criterion: PGNetLoss,
        optimizer: torch.optim.Optimizer,
        *,
        network: nn.Module | None = None,
        autocast_dtype: torch.dtype | None = None,
        scaler: torch.amp.GradScaler | None = None,
        memory_format: torch.memory_format = torch.contiguous_format,
        clip_grad: float = 0.0,
    ):
        self.model = model
        self.network = network if network is not None else model
        self.criterion = criterion
        self.optimizer = optimizer
        self.autocast_dtype = autocast_dtype
        self.device = next(model.parameters()).device
        self.scaler = scaler if scaler is not None else torch.amp.GradScaler(self.device.type, enabled=False)
        self.memory_format = memory_format
        self.clip_grad = clip_grad

    def autocast(self) -> contextlib.AbstractContextManager:
        """The autocast context of the forward passes (a no-op for float32)."""
        return autocast(self.device, self.autocast_dtype)

    def forward_backward(self, image: torch.Tensor, mask: torch.Tensor, micro_batches: int = 1) -> MicroBatchResult:
        """Forward, loss and backward for one micro-batch (B×3×H×W images, B×1×H×W masks on the device);
        gradients accumulate until ``apply`` or ``discard``."""
        image = image.contiguous(memory_format=self.memory_format)
        with self.autocast():
            output = self.network(image, need_attention=True)
            loss, terms = self.criterion(output, mask)
        self.scaler.scale(loss / micro_batches).backward()
        loss = loss.detach()
        return MicroBatchResult(output, loss, terms, (~torch.isfinite(loss)).float())

    def apply(self) -> None:
        """Clip the accumulated gradients (if asked), step the optimiser (through the scaler), zero them."""
        if self.clip_grad:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)

    def discard(self) -> None:
        """Drop the accumulated gradients without a step (a non-finite loss)."""
        self.optimizer.zero_grad(set_to_none=True)
