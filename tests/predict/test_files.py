"""Predicting files: the progress bar counts each picture as its output is written."""

from __future__ import annotations

import time

import numpy as np

import pgnet.predict.files as files
from pgnet.data.io import read_image
from pgnet.predict.output_plan import plan_outputs
from pgnet.writing import write_image


class SlowPredictor:
    """A constant mask after a short pause per batch; records how far the bar was at each batch."""

    size, fast_decode, batch_size = 8, False, 1

    def __init__(self):
        self.bar_at_batch: list[int] = []

    def load(self, image, shrink=False):
        picture = read_image(image)
        return picture, picture.shape[:2]

    def predict_arrays(self, images, sizes):
        self.bar_at_batch.append(BarRecorder.last.n)
        time.sleep(0.05)  # the writes of earlier pictures finish meanwhile
        return [np.full(size, 0.5, np.float32) for size in sizes]


class BarRecorder:
    """Stands in for tqdm: counts like it, and remembers the last bar made."""

    last: BarRecorder

    def __init__(self, total, **_):
        self.total, self.n = total, 0
        BarRecorder.last = self

    def update(self, n=1):
        self.n += n

    def close(self):
        pass

    @staticmethod
    def write(message, file=None):
        pass


def test_the_bar_counts_pictures_as_they_are_written_not_at_the_end(tmp_path, monkeypatch):
    monkeypatch.setattr(files, "tqdm", BarRecorder)
    for index in range(8):
        write_image(tmp_path / "in" / f"{index}.png", np.full((6, 9, 3), index * 20, np.uint8))
    predictor = SlowPredictor()
    report = files.predict_files(predictor, plan_outputs([tmp_path / "in"], tmp_path / "out"), workers=4)
    assert len(report.written) == 8 and BarRecorder.last.n == 8
    # The writes of the first pictures were done while the last ones were predicted (a bar that counted
    # only collected writes stood at 0 until the end: 2 × workers writes are kept in flight).
    assert predictor.bar_at_batch[-1] >= 3, predictor.bar_at_batch
