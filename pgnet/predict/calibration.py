"""Making an int8 calibration of a model from pictures (``pgnet-calibrate``).

The pictures are prepared as the predictor prepares them (``prepare_batch`` at the network size) and
run through the model's prepared float32 copy (BatchNorm folded, what the int8 modules are built
from), which records the range of each activation int8 quantises (``pgnet.predict.int8.calibrate``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch

from pgnet.data.preprocessing import Preprocessing, prepare_batch
from pgnet.models.pgnet import PGNet
from pgnet.predict.acceleration import prepare_for_inference
from pgnet.predict.int8 import Int8Calibration, calibrate


def calibrate_pictures(model: PGNet, pictures: Sequence[np.ndarray], size: int,
                       preprocessing: Preprocessing | None = None) -> Int8Calibration:
    """An int8 calibration of ``model`` from RGB ``pictures`` (H×W×3 uint8) seen at ``size``²."""
    preprocessing = preprocessing or Preprocessing()
    network = prepare_for_inference(model.cpu().eval())

    def batches() -> Iterator[torch.Tensor]:
        for picture in pictures:
            batch = prepare_batch([picture], size, preprocessing, False, torch.device("cpu"))
            yield batch.contiguous(memory_format=torch.channels_last)

    return calibrate(network, batches(), size)
