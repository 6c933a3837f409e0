"""The one batching loop of prediction: full batches in order, the rest flushed, inputs drawn lazily."""

import numpy as np
import pytest

from pgnet.predict.batching import batched, predict_batches


class RecordingPredictor:
    """Predicts a mask full of each picture's first pixel value, at the asked size; records batch sizes."""

    size, fast_decode = 8, False

    def __init__(self, batch_size):
        self.batch_size = batch_size
        self.passes = []

    def load(self, image, shrink=False):
        return image, image.shape[:2]

    def predict_arrays(self, images, sizes):
        self.passes.append(len(images))
        return [np.full(size, image[0, 0, 0], np.float32) for image, size in zip(images, sizes)]


def test_batched_fills_batches_in_order_and_flushes_the_rest():
    assert list(batched(range(7), 3)) == [[0, 1, 2], [3, 4, 5], [6]]
    assert list(batched(range(6), 3)) == [[0, 1, 2], [3, 4, 5]]
    assert list(batched([], 3)) == []
    with pytest.raises(ValueError, match="batch size must be positive"):
        list(batched(range(3), 0))


def test_batched_draws_no_more_than_one_batch_ahead():
    drawn = []

    def items():
        for index in range(5):
            drawn.append(index)
            yield index

    batches = batched(items(), 2)
    assert next(batches) == [0, 1] and drawn == [0, 1]
    assert next(batches) == [2, 3] and drawn == [0, 1, 2, 3]


def test_predict_batches_gives_each_key_its_mask():
    predictor = RecordingPredictor(batch_size=2)
    items = [(f"p{value}", np.full((4, 5, 3), value, np.uint8), (3 + value, 2)) for value in range(5)]
    results = [pair for batch in predict_batches(predictor, items) for pair in batch]
    assert predictor.passes == [2, 2, 1]
    assert [key for key, _ in results] == ["p0", "p1", "p2", "p3", "p4"]
    for value, (_, mask) in enumerate(results):
        assert mask.shape == (3 + value, 2) and (mask == value).all()
