"""The data side of a training run: the training stream and the validation sets of a config."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import ConcatDataset

from pgnet.config import ConfigError, DataConfig, dataset_options, validation_labels
from pgnet.data.datasets import build_dataset, build_train_dataset
from pgnet.data.loader import build_eval_loader, build_train_loader, set_loader_epoch
from pgnet.data.preprocessing import Preprocessing
from pgnet.data.split import shared_images
from pgnet.data.transforms import build_eval_transform, build_train_transform
from pgnet.distributed import DistInfo
from pgnet.evaluation import scoring
from pgnet.metrics import SODMetrics
from pgnet.writing import write_text

HELD_OUT_FILE = "split.json"  # in the run folder: the pictures of each validation set


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity, where the OS tells it)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def loader_workers(requested: int, logger: logging.Logger | None = None) -> int:
    """``data.num_workers`` capped at the cores available (more workers than cores only compete);
    the cap is logged."""
    cores = available_cores()
    if requested <= cores:
        return requested
    if logger is not None:
        logger.info("data.num_workers %d capped at %d: the cores this process may use", requested, cores)
    return cores


def check_held_out(train_dataset: ConcatDataset, validation: list[tuple[str, Any]]) -> None:
    """Validation pictures must not be training pictures; raises naming the set and an example."""
    training = [part.pairs for part in train_dataset.datasets if hasattr(part, "pairs")]
    for name, dataset in validation:
        shared = shared_images(training, [dataset.pairs]) if hasattr(dataset, "pairs") else []
        if shared:
            raise ConfigError(
                f"data.val {name}: {len(shared)} of its pictures are also in data.train (e.g. {shared[0]}); "
                "validation needs held-out pictures (a split of one folder: the same val_fraction and "
                "split_seed in both entries)"
            )


class Validation:
    """One validation set: predicts at ``eval_size``, resizes back to each mask, computes the metrics."""

    def __init__(self, name: str, dataset, num_workers: int):
        self.name = name
        self.loader = build_eval_loader(dataset, batch_size=1, num_workers=num_workers)

    @torch.no_grad()
    def run(self, model: torch.nn.Module, device: torch.device, autocast: Callable) -> tuple[dict, dict | None]:
        """(metrics, mean curves and pixel counts) of ``model`` (in eval mode) on this set, predicted by
        the evaluator."""
        metrics = SODMetrics(device=device)
        if scoring.accumulate_model(model, self.loader, device, metrics, autocast=autocast) == 0:
            raise RuntimeError(f"validation set {self.name}: no image could be scored")
        return metrics.compute(), {**metrics.curves(), **metrics.pixel_counts()}


class TrainingData:
    """Training stream and validation sets described by a ``DataConfig``.

    Fails before training starts when a dataset has no valid sample or a root does not exist.
    """

    def __init__(self, config: DataConfig, seed: int, micro_batch: int, dist: DistInfo, logger: logging.Logger):
        self.config = config
        self.preprocessing = Preprocessing.from_data_config(config)  # saved in every checkpoint
        self.mean, self.std = self.preprocessing.mean, self.preprocessing.std
        if not config.train:
            raise ConfigError("data.train lists no dataset: give at least one, e.g. "
                              "\"data.train=[{name: generic, root: my_pictures, split: train}]\"")
        self.num_workers = loader_workers(config.num_workers, logger)
        augment = {key: value for key, value in asdict(config.augment).items() if value is not None}
        transform = build_train_transform(config.preset, size=config.size, mean=self.mean, std=self.std, **augment)
        self.dataset = build_train_dataset([dataset_options(e) for e in config.train], transform)
        self.loader = build_train_loader(
            self.dataset,
            batch_size=micro_batch,
            num_workers=self.num_workers,
            seed=seed,
            distributed=dist.enabled,
            sizes=config.multiscale,
            world_size=dist.world_size if dist.enabled else None,
            rank=dist.rank if dist.enabled else None,
        )
        self.micro_batch, self.world_size = micro_batch, dist.world_size
        self.skipped = 0  # unreadable samples left out of the batches of the current epoch so far
        self.num_samples = len(self.dataset)
        self.batches_per_epoch = len(self.loader)
        eval_transform = build_eval_transform(config.eval_size, mean=self.mean, std=self.std,
                                              fast_decode=config.fast_decode)
        self.validation_labels = validation_labels(config.val)
        self._validation = [
            (label, build_dataset(dataset_options(entry), eval_transform))
            for label, entry in zip(self.validation_labels, config.val)
        ]
        check_held_out(self.dataset, self._validation)
        self.logger = logger
        self._picture_samples: list[tuple[str, dict[str, Any]]] | None = None

    @property
    def has_validation(self) -> bool:
        return bool(self._validation)

    def steps_per_epoch(self, grad_accum: int, limit: int = 0) -> int:
        """Optimiser steps in an epoch of ``grad_accum`` batches each, at most ``limit`` (0: no limit)."""
        steps = self.batches_per_epoch // grad_accum
        if limit:
            steps = min(steps, limit)
        if steps < 1:
            per_step = grad_accum * self.world_size  # data.batch_size must be a multiple of it
            fits = self.num_samples // per_step * per_step
            advice = (f"set data.batch_size={fits} or less, or add pictures" if fits else
                      f"add pictures, or lower train.grad_accum ({grad_accum}) or the number of processes")
            raise ConfigError(
                f"an epoch has no optimiser step: data.train holds {self.num_samples} pictures (after any split), "
                f"fewer than one step's data.batch_size of {self.config.batch_size}; {advice}"
            )
        return steps

    def held_out(self) -> dict[str, dict[str, Any]]:
        """``{validation set: {"count", "images"}}``: the pictures each validation set scores."""
        return {name: {"count": len(dataset), "images": [str(image) for image, _ in getattr(dataset, "pairs", [])]}
                for name, dataset in self._validation}

    def record_held_out(self, run_dir: Path) -> None:
        """List the validation pictures in ``run_dir/split.json`` and log how many each set holds
        (held out of which training dataset, for a split)."""
        held_out = self.held_out()
        if not held_out:
            return
        write_text(run_dir / HELD_OUT_FILE, json.dumps(held_out, indent=1))
        for (name, record), entry in zip(held_out.items(), self.config.val):
            origin = f"held out of {entry.root} (val_fraction {entry.val_fraction}, split_seed {entry.split_seed})" \
                if entry.split == "val" else "a separate set"
            self.logger.info("validation set %s: %d pictures, %s; listed in %s", name, record["count"], origin,
                             HELD_OUT_FILE)

    def epoch_batches(self, epoch: int, start_batch: int = 0) -> Iterator[dict[str, Any]]:
        """The batches of ``epoch`` from ``start_batch`` on (the same batches a whole epoch has there)."""
        set_loader_epoch(self.loader, epoch, start_batch)
        yield from self.loader

    def epoch_steps(self, epoch: int, start_step: int, grad_accum: int) -> Iterator[list[dict[str, Any]]]:
        """The micro-batches of each optimiser step of ``epoch`` from ``start_step`` on, without the
        empty ones; counts the unreadable samples left out in ``skipped``.

        A batch whose files were all unreadable still takes its place in its step (an empty list for a
        step of such batches), so that every step consumes ``grad_accum`` batches and a resume starts
        at the right one."""
        self.skipped = 0
        step: list[dict[str, Any]] = []
        for batch in self.epoch_batches(epoch, start_batch=start_step * grad_accum):
            self.skipped += int(batch.get("skipped", 0))
            step.append(batch)
            if len(step) == grad_accum:
                yield [micro_batch for micro_batch in step if micro_batch["image"].shape[0] > 0]
                step = []

    def shard(self, epoch: int) -> list[int]:
        """The dataset indices this rank trains on in ``epoch``."""
        return self.loader.batch_sampler.shard(epoch).tolist()

    def validation_sets(self) -> Iterator[tuple[str, Validation]]:
        for name, dataset in self._validation:
            yield name, Validation(name, dataset, self.num_workers)

    def picture_samples(self, count: int) -> list[tuple[str, dict[str, Any]]]:
        """Up to ``count`` samples of the first validation set, evenly spaced over it and chosen once,
        as (``set/name`` label, eval sample); unreadable ones are left out."""
        if self._picture_samples is None:
            self._picture_samples = []
            if self._validation:
                name, dataset = self._validation[0]
                size = len(dataset)
                indices = sorted({round(i * (size - 1) / max(count - 1, 1)) for i in range(min(count, size))})
                for index in indices:
                    sample = dataset[index]
                    if sample is not None:
                        self._picture_samples.append((f"{name}/{sample['name']}", sample))
        return self._picture_samples
