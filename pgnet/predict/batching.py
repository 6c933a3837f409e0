"""Batching for prediction: pictures gathered ``batch_size`` at a time, one forward pass per batch.

``predict_batches`` is the one loop that ``Predictor.predict_batch``, ``pgnet.predict.files`` and
``pgnet.predict.video`` run. ``ArrayPredictor`` is what they need of a predictor, so that those
modules do not import ``pgnet.predict.predictor`` (whose ``Predictor.predict_video`` calls them).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Protocol, TypeVar

import numpy as np

Item = TypeVar("Item")
Key = TypeVar("Key")


class ArrayPredictor(Protocol):
    """What the prediction loops use of a ``pgnet.predict.predictor.Predictor``."""

    size: int  # the network input side
    batch_size: int  # pictures per forward pass
    fast_decode: bool  # pictures are resized as uint8 before they are normalised

    def load(self, image: Any, shrink: bool = False) -> tuple[np.ndarray, tuple[int, int]]: ...

    def predict_arrays(self, images: Sequence[np.ndarray], sizes: Sequence[tuple[int, int]]) -> list[np.ndarray]: ...


def batched(items: Iterable[Item], size: int) -> Iterator[list[Item]]:
    """Consecutive lists of ``size`` items, the last one holding the rest; items are drawn as the
    lists are asked for, so at most ``size`` of them wait."""
    if size < 1:
        raise ValueError(f"batch size must be positive, got {size}")
    batch: list[Item] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def predict_batches(
    predictor: ArrayPredictor, items: Iterable[tuple[Key, np.ndarray, tuple[int, int]]]
) -> Iterator[list[tuple[Key, np.ndarray]]]:
    """The (key, mask) pairs of each forward pass over ``items``, in order.

    ``items`` are (key, H×W×3 uint8 RGB picture, (H, W) of its mask) triples, taken ``batch_size`` at
    a time (the last batch holds the rest); the key is whatever the caller needs back with the mask.
    """
    for batch in batched(items, predictor.batch_size):
        keys, images, sizes = zip(*batch)
        yield list(zip(keys, predictor.predict_arrays(images, sizes)))
