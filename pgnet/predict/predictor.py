"""The ``Predictor``: saliency masks of pictures for users of the library.

``Predictor`` takes a path, an RGB uint8 array or a PIL image and returns the saliency mask as
float32 in [0, 1] at the picture's own size. Pictures are resized to ``size``×``size`` (1024, the
official test size, or the checkpoint's test size) and prepared by ``pgnet.data.preprocessing.prepare_batch``,
the evaluation preprocessing that the evaluator's datasets run too: by default as the official test
code (full decode, normalised as float, then resized), with ``fast_decode`` reduced JPEG decode and a
uint8 resize first. The normalisation statistics are the checkpoint's. The prediction step is the evaluator's
(``pgnet.models.pgnet.predict_probabilities``), run on an ``InferenceRuntime`` (``pgnet.predict.runtime``).

``pgnet.predict.files.predict_files`` runs a predictor over files and writes one picture each
(any output mode of ``pgnet.predict.compose``); ``pgnet-predict`` is its command line, and ``pgnet.predict.video``
does videos.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pgnet.checkpoint import load_model_and_preprocessing
from pgnet.data.io import ImageReadError, original_image_size, read_image
from pgnet.data.preprocessing import Preprocessing, as_rgb_array, prepare_batch, resize_for_network
from pgnet.errors import UserError
from pgnet.predict import video
from pgnet.predict.batching import predict_batches
from pgnet.predict.int8 import Int8Calibration, find_calibration, input_range
from pgnet.predict.runtime import InferenceRuntime

ImageInput = str | os.PathLike | np.ndarray | Any  # Any: a PIL image (Pillow is optional)


def read_for_network(path: str | Path, size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """(image, original (H, W)) of a picture file, decoded no larger than a ``size`` input needs.

    The image is H×W×3 uint8 RGB with its EXIF orientation applied; a large JPEG is decoded at 1/2,
    1/4 or 1/8 scale (see ``read_image``), and the original size is that of the full picture.
    Raises ``ImageReadError`` naming the file.
    """
    path = Path(path)
    image = read_image(path, max_side=size)
    decoded = (int(image.shape[0]), int(image.shape[1]))
    try:
        original = original_image_size(path, decoded, size)
    except OSError as error:
        raise ImageReadError(path, error.strerror or str(error)) from None
    if original is None:
        image = read_image(path)
        original = (int(image.shape[0]), int(image.shape[1]))
    return image, original


# --------------------------------------------------------------------------------------------------
# The predictor


class Predictor:
    """Saliency masks from a PGNet for pictures of any size.

    Args:
        model: the network (put in eval mode; moved to ``device`` when not ``optimize``).
        size: the network input side; pictures are resized to size×size (None: the preprocessing's
            test size, 1024 officially).
        device: "cuda", "mps", "cpu", ... or None to pick CUDA, then MPS, then the CPU.
        flip: test-time augmentation: the mask is the mean of the predictions for the picture and
            for its mirror image (mirrored back).
        precision: "bf16" runs the network in bfloat16 (autocast on CUDA; on a CPU, with ``optimize``,
            a bfloat16 copy whose head and logits stay float32), "fp32" in float32; "auto" (the
            default) is bf16 on CUDA and on a CPU that computes bfloat16 natively
            (``pgnet.device.cpu_native_bf16``), fp32 elsewhere; "int8" (a CPU, with ``calibration``)
            is the CPU's bfloat16 copy with its ResNet branch in int8. Masks are always float32.
        batch_size: pictures per forward pass in ``predict_batch``.
        optimize: run a copy of the model with BatchNorm folded, fused attention and channels_last
            (``pgnet.predict.acceleration.prepare_for_inference``; masks agree with the plain model to ~1e-4).
        compile: ``torch.compile`` that copy (the first call of each input size compiles).
        cuda_graphs: replay CUDA graphs (one per batch shape); None: on for CUDA unless compiled.
        preprocessing: the normalisation (and test size) the model was trained with; None: the
            official one. ``from_checkpoint`` reads it from the checkpoint.
        fast_decode: decode large JPEG files at 1/2, 1/4 or 1/8 scale and resize the uint8 picture
            before normalising it (faster; docs/performance.md has its cost). Default: the official
            protocol, full decode, normalised as float, then resized.
        calibration: an int8 calibration of this model (an ``Int8Calibration`` or its JSON file, made
            by ``pgnet-calibrate``): "int8" runs the ResNet branch in int8 on a CPU
            (``pgnet.predict.int8``), and "auto" picks int8 on a CPU with native bfloat16 when the
            calibration records that its check against float32 held the accuracy rule.

    Call it with one picture (a path, an H×W×3 uint8 RGB array, or a PIL image) to get an H×W
    float32 mask in [0, 1], or with a list of pictures to get a list of masks.
    """

    def __init__(
        self,
        model: nn.Module,
        size: int | None = None,
        device: str | torch.device | None = None,
        flip: bool = False,
        precision: str = "auto",
        batch_size: int = 1,
        optimize: bool = True,
        compile: bool = False,
        cuda_graphs: bool | None = None,
        preprocessing: Preprocessing | None = None,
        fast_decode: bool = False,
        calibration: Int8Calibration | str | Path | None = None,
    ):
        self.preprocessing = preprocessing or Preprocessing()
        size = self.preprocessing.eval_size if size is None else size
        if int(size) < 32:
            raise UserError(f"size must be at least 32, got {size}")
        if int(batch_size) < 1:
            raise UserError(f"batch_size must be positive, got {batch_size}")
        self.model = model.eval()  # moved to ``device`` unless ``optimize`` (then its copy is)
        self.optimize = bool(optimize)
        self.compile = bool(compile)
        self.runtime = InferenceRuntime.create(
            self.model, device, precision, optimize=self.optimize, compile=self.compile, cuda_graphs=cuda_graphs,
            calibration=Int8Calibration.read(calibration),
            image_range=input_range(self.preprocessing.mean, self.preprocessing.std))
        self.size = int(size)
        self.flip = bool(flip)
        self.batch_size = int(batch_size)
        self.fast_decode = bool(fast_decode)

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, device: str | torch.device | None = None, *, weights: str = "model", **options: Any
    ) -> Predictor:
        """A predictor for a project checkpoint or an official one (converted or as released).

        ``weights`` picks "model" or "ema" weights of a project checkpoint; ``options`` are the
        other ``Predictor`` arguments (size, flip, precision, batch_size, fast_decode). The
        normalisation and default size are the checkpoint's (official for files that record none);
        a model package's int8 calibration is used unless ``calibration`` names another.
        """
        model, preprocessing = load_model_and_preprocessing(path, "cpu", weights=weights)
        options.setdefault("preprocessing", preprocessing)
        options["calibration"] = find_calibration(path, options.get("calibration"))
        return cls(model, device=device, **options)

    @classmethod
    def from_pretrained(cls, folder: str | Path, device: str | torch.device | None = None, **options: Any) -> Predictor:
        """A predictor for a model package folder (``pgnet-export --format package``); ``options`` as for
        ``from_checkpoint``, which reads packages and checkpoints alike."""
        return cls.from_checkpoint(folder, device, **options)

    @property
    def device(self) -> torch.device:
        return self.runtime.device

    @property
    def precision(self) -> str:
        """The resolved precision: "fp32", "bf16", "fp16" or "int8"."""
        return self.runtime.precision

    @property
    def network(self) -> Any:
        """What runs: the model, its prepared copy, compiled, or a CUDA graph runner."""
        return self.runtime.network

    def __repr__(self) -> str:
        return (
            f"Predictor(size={self.size}, device={str(self.device)!r}, flip={self.flip}, "
            f"precision={self.precision!r}, batch_size={self.batch_size}, optimize={self.optimize}, "
            f"compile={self.compile}, cuda_graphs={self.runtime.cuda_graphs}, "
            f"fast_decode={self.fast_decode}, {self.preprocessing})"
        )

    def __call__(self, image: ImageInput | Sequence[ImageInput]) -> np.ndarray | list[np.ndarray | None]:
        """The mask of one picture (H×W float32 in [0, 1]), or the list of masks of a list of pictures.

        One picture that cannot be read raises ``ImageReadError``; in a list, an unreadable path gets
        None in its place and a warning naming it (the other pictures are predicted).
        """
        if isinstance(image, (list, tuple)):
            return self.predict_batch(image, skip_unreadable=True)
        return self.predict_batch([image])[0]

    def load(self, image: ImageInput, shrink: bool = False) -> tuple[np.ndarray, tuple[int, int]]:
        """(RGB uint8 array to feed the network, (H, W) the mask will have) for one picture.

        ``shrink``: with ``fast_decode``, resize the array to the network input at once (what
        ``predict_arrays`` does with it anyway), so that a picture waiting for its batch holds
        size×size×3 bytes; the official protocol normalises the full picture first, so it stays full.
        """
        if isinstance(image, (str, os.PathLike)) and self.fast_decode:
            array, size = read_for_network(image, self.size)
        else:
            array = read_image(image) if isinstance(image, (str, os.PathLike)) else as_rgb_array(image)
            size = (int(array.shape[0]), int(array.shape[1]))
        return (resize_for_network(array, self.size) if shrink and self.fast_decode else array), size

    def predict_batch(self, images: Sequence[ImageInput], skip_unreadable: bool = False) -> list[np.ndarray | None]:
        """Masks of several pictures, ``batch_size`` per forward pass; equal to calling one by one.

        ``skip_unreadable``: a path that cannot be read gets None (and a warning naming it) instead of
        raising ``ImageReadError``.
        """
        masks: list[np.ndarray | None] = [None] * len(images)
        unreadable: list[ImageReadError] = []
        for batch in predict_batches(self, self._load_each(images, unreadable if skip_unreadable else None)):
            for index, mask in batch:
                masks[index] = mask
        for error in unreadable:
            warnings.warn(f"skipped {error}", stacklevel=3)  # past __call__, to its caller
        return masks

    def _load_each(self, images: Sequence[ImageInput], unreadable: list[ImageReadError] | None
                   ) -> Iterator[tuple[int, np.ndarray, tuple[int, int]]]:
        """(index, picture, mask size) of each picture, loaded as the batches ask for them; a picture
        that cannot be read is added to ``unreadable`` (None: its error is raised)."""
        for index, image in enumerate(images):
            try:
                loaded = self.load(image, shrink=True)
            except ImageReadError as error:
                if unreadable is None:
                    raise
                unreadable.append(error)
                continue
            yield (index, *loaded)

    def predict_video(self, source: str | os.PathLike | int, output: str | os.PathLike | None = None,
                      **options: Any) -> Any:
        """A video's (path) or camera's (index) frames with their masks, or the output video written.

        Without ``output``: an iterator of ``pgnet.predict.video.VideoFrame`` (index, RGB frame, mask), with
        ``options`` smooth, max_frames, capture_factory. With ``output``: writes it (``options`` as
        for ``pgnet.predict.video.write_video``: composer, smooth, max_frames, fps, ...) and returns a
        ``VideoResult``.
        """
        if output is None:
            return video.predict_video(self, source, **options)
        return video.write_video(self, source, output, **options)

    @torch.inference_mode()
    def predict_arrays(self, images: Sequence[np.ndarray], sizes: Sequence[tuple[int, int]]) -> list[np.ndarray]:
        """One forward pass over ``images`` (H×W×3 uint8 RGB each); masks resized to ``sizes``."""
        if len(images) != len(sizes):
            raise ValueError(f"got {len(images)} images but {len(sizes)} sizes")
        if not images:
            return []
        x = prepare_batch(images, self.size, self.preprocessing, self.fast_decode, self.device)  # B×3×S×S
        return [mask.cpu().numpy() for mask in self.runtime.predict(x, sizes, flip=self.flip)]
