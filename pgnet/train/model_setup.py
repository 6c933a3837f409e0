"""What a training run trains and how it steps: the model (fine-tuning applied), the
optimiser, the schedule, the fp16 gradient scaler, the loss and the wrappers (SyncBatchNorm, DDP,
``torch.compile``) the forward pass goes through.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pgnet.config import Config
from pgnet.device import autocast_dtype, resolve_precision
from pgnet.distributed import DistInfo
from pgnet.models.pgnet import PGNet, create_model
from pgnet.train.finetune import FineTuning
from pgnet.train.losses import PGNetLoss
from pgnet.train.optim import build_optimizer, build_scheduler
from pgnet.train.step import TrainStep


@dataclass
class TrainingParts:
    """The trained ``model`` (unwrapped) and what trains it; ``network`` is what the forward pass
    calls (the model, wrapped by DDP and/or ``torch.compile`` when asked)."""

    model: PGNet
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    criterion: PGNetLoss
    network: nn.Module
    train_step: TrainStep

    def checkpoint_fields(self) -> dict[str, Any]:
        """The optimiser, schedule and scaler states for a checkpoint (the model goes in whole)."""
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict()}

    def load(self, state: Mapping[str, Any]) -> None:
        """Load the model and ``checkpoint_fields`` from the checkpoint ``state``."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])


def wrap_network(model: nn.Module, device: torch.device, dist: DistInfo, compile_graph: bool) -> nn.Module:
    """``model`` in DDP for a multi-process run, then compiled when ``compile_graph``."""
    network = model
    if dist.enabled:
        device_ids = [device.index] if device.type == "cuda" else None
        network = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    if compile_graph:
        # One static graph per multi-scale size (5 in the official recipe): symbolic shapes through
        # the CMGM's pooling-stride search compile far more slowly than these few recompilations.
        network = torch.compile(network, dynamic=False)
    return network


def build_training_parts(config: Config, finetuning: FineTuning, device: torch.device, dist: DistInfo,
                         steps_per_epoch: int, log: Callable[[str], object]) -> TrainingParts:
    """Build the model (starting weights and frozen parts from ``finetuning``, reported to ``log``)
    on ``device`` and everything that trains it as ``config`` says."""
    train = config.train
    model: PGNet = create_model(finetuning.model_config).to(device)
    finetuning.apply(model, log)
    dtype = autocast_dtype(resolve_precision(train.amp, device, key="train.amp"))
    channels_last = train.channels_last if train.channels_last is not None else device.type == "cuda"
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    if dist.enabled and train.sync_bn and device.type == "cuda":  # SyncBatchNorm is CUDA-only
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    optimizer = build_optimizer(model, config.optim)
    scheduler = build_scheduler(optimizer, config.schedule, steps_per_epoch, train.epochs)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    criterion = PGNetLoss(config.loss)
    network = wrap_network(model, device, dist, train.compile)
    train_step = TrainStep(model, criterion, optimizer, network=network, autocast_dtype=dtype, scaler=scaler,
                           memory_format=memory_format, clip_grad=train.clip_grad)
    return TrainingParts(model, optimizer, scheduler, scaler, criterion, network, train_step)
