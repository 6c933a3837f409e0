"""Scoring a model on an evaluation loader: the one loop that ``pgnet-eval`` and the trainer's
validation both run.

Images at the test size go through the network; the logits are taken at the head's stride-4
resolution and resized once, straight to each mask's original size, then the sigmoid
(``pgnet.models.pgnet.predict_probabilities``); every prediction is scored as its 8-bit PNG would be,
and can be saved as that PNG.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from pgnet.metrics import SODMetrics, quantize_prediction
from pgnet.models.pgnet import predict_probabilities
from pgnet.writing import write_image


def save_prediction_png(path: Path, pred: torch.Tensor) -> None:
    """Write an H×W prediction (float in [0, 1] or uint8) as an 8-bit PNG; errors name the file."""
    write_image(path, quantize_prediction(pred).cpu().numpy())


@torch.no_grad()
def accumulate_model(
    model: torch.nn.Module,
    loader: DataLoader,
    device: torch.device | str,
    metrics: SODMetrics,
    *,
    autocast: Callable[[], contextlib.AbstractContextManager] | None = None,
    flip: bool = False,
    channels_last: bool = False,
    save_dir: str | Path | None = None,
    progress: bool = False,
    description: str | None = None,
) -> int:
    """Predict every image of an evaluation loader and add it to ``metrics``; returns the images scored.

    ``loader`` yields :func:`pgnet.data.loader.collate_eval` batches (images at the test size, masks
    at their original size). The logits are taken at the head's stride-4 resolution and resized once
    to each mask's size before the sigmoid; ``flip`` averages with the mirrored image's prediction.
    With ``save_dir`` each prediction is written as ``save_dir/<name>.png`` (8-bit, as scored).
    The model is used as it is (put it in eval mode first); ``channels_last`` feeds it channels_last
    images (for a model prepared by ``pgnet.predict.acceleration``).
    """
    device = torch.device(device)
    save_dir = Path(save_dir) if save_dir is not None else None
    total = len(loader.dataset) if hasattr(loader.dataset, "__len__") else None
    count = 0
    with tqdm(total=total, desc=description, unit="img", disable=not progress, leave=False) as bar:
        for batch in loader:
            bar.update(len(batch["name"]) + int(batch.get("skipped", 0)))
            if batch["image"].shape[0] == 0:
                continue
            images = batch["image"].to(device, non_blocking=True)  # B×3×S×S
            sizes = [tuple(mask.shape[-2:]) for mask in batch["mask"]]
            predictions = predict_probabilities(model, images, sizes, flip=flip, autocast=autocast,
                                                channels_last=channels_last)
            for name, mask, pred in zip(batch["name"], batch["mask"], predictions):
                metrics.update(pred, mask[0].to(device))
                if save_dir is not None:
                    save_prediction_png(save_dir / f"{name}.png", pred)
                count += 1
    return count
