"""Inference on real pictures: the ``Predictor`` API, output pictures, and batch prediction of files.

``Predictor`` takes a path, an RGB uint8 array or a PIL image and returns the saliency mask as
float32 in [0, 1] at the picture's own size. Pictures are resized to ``size``×``size`` (1024, the
official test size, or the checkpoint's test size) and prepared as ``pgnet.data.transforms.build_eval_transform``
does: by default as the official test code (full decode, normalised as float, then resized), with
``fast_decode`` reduced JPEG decode and a uint8 resize first. The normalisation statistics are the
checkpoint's (``pgnet.data.preprocessing``);
the logits leave the network at its stride-4 head resolution and are resized once, straight to the
picture's size, before the sigmoid (as the official test code and the evaluator do).

``predict_files`` runs a predictor over files and writes one PNG per picture (any output mode of
``pgnet.compose``); ``pgnet-predict`` is its command line, and ``pgnet.video`` does videos.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import sys
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pgnet.acceleration import CUDAGraphRunner, autocast_for, inference_network
from pgnet.choices import PRECISIONS
from pgnet.compose import (
    OUTPUT_MODES,  # noqa: F401
    Composer,
    compose,  # noqa: F401  (re-exported: the API before pgnet.compose)
    mask_to_uint8,  # noqa: F401
    parse_color,  # noqa: F401
    split_alpha,
)
from pgnet.data.io import (
    ImageReadError,
    jpeg_reduction_factor,
    probe_image_size,
    read_image,
    read_image_with_alpha,
)
from pgnet.data.preprocessing import OFFICIAL_MEAN, OFFICIAL_STD, Preprocessing, normalize_then_resize
from pgnet.output_plan import FileJob, plan_outputs  # noqa: F401  (part of this module's API)
from pgnet.outputs import NoSpaceError, write_image

ImageInput = str | os.PathLike | np.ndarray | Any  # Any: a PIL image (Pillow is optional)



# --------------------------------------------------------------------------------------------------
# Devices and preprocessing


def select_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` as a torch.device; None or "auto" picks CUDA, then MPS, then the CPU.

    An explicit device that this machine lacks is an error naming it.
    """
    if device is None or str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {str(device)!r} requested but CUDA is not available")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise RuntimeError(f"device {str(device)!r} requested but only {torch.cuda.device_count()} CUDA devices exist")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise RuntimeError(f"device {str(device)!r} requested but MPS is not available")
    return device


def resolve_precision(precision: str, device: torch.device) -> str:
    """ "fp32" or "bf16"; "auto" is bf16 on a CUDA device that supports it, fp32 elsewhere."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    return precision


def normalize(
    images: torch.Tensor, mean: Sequence[float] = OFFICIAL_MEAN, std: Sequence[float] = OFFICIAL_STD
) -> torch.Tensor:
    """B×3×H×W RGB on the 0-255 scale (any dtype) → float32 normalised with ``mean``/``std`` (0-255 scale).

    The network's input normalisation on tensors: the predictor's fast path and the ONNX export use
    it; it equals the ``A.Normalize`` step of ``build_eval_transform``.
    """
    mean = torch.tensor(mean, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(std, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
    return (images.float() - mean) / std


def resize_for_network(image: np.ndarray, size: int) -> np.ndarray:
    """H×W×3 uint8 → size×size×3 uint8, bilinear: the ``A.Resize`` step of ``build_eval_transform``."""
    if image.shape[:2] == (size, size):
        return image
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR)


def as_rgb_array(image: np.ndarray | Any) -> np.ndarray:
    """An H×W×3 uint8 RGB array from a numpy array or a PIL image.

    Arrays must be uint8, H×W×3 (RGB); H×W (gray) and H×W×4 (alpha dropped) are accepted too. A PIL
    image is converted to RGB as it is, without applying its EXIF orientation.
    """
    return split_alpha(image)[0]


def _original_size(path: Path, decoded: tuple[int, int], max_side: int) -> tuple[int, int] | None:
    """The full (H, W), after EXIF rotation, of a picture ``read_image(path, max_side)`` decoded to ``decoded``.

    Only JPEGs are decoded reduced; their header (``probe_image_size``) gives the full size. None when
    the header does not account for ``decoded``: then decode at full size.
    """
    if min(decoded) < max_side:
        return decoded  # a reduced decode keeps both sides at least max_side long
    full = probe_image_size(path)
    if full is None or decoded == full:  # no header found: read_image decoded it at full size
        return decoded
    factor = jpeg_reduction_factor(full, max_side)
    return full if decoded == (-(-full[0] // factor), -(-full[1] // factor)) else None


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
        original = _original_size(path, decoded, size)
    except OSError as error:
        raise ImageReadError(path, error.strerror or str(error)) from None
    if original is None:
        image = read_image(path)
        original = (int(image.shape[0]), int(image.shape[1]))
    return image, original


# --------------------------------------------------------------------------------------------------
# The predictor


@torch.no_grad()
def predict_probabilities(
    model: nn.Module,
    images: torch.Tensor,
    sizes: Sequence[tuple[int, int]],
    flip: bool = False,
    autocast: Callable[[], contextlib.AbstractContextManager] | None = None,
) -> list[torch.Tensor]:
    """Saliency probabilities of normalised ``images`` (B×3×S×S on the model's device), one H×W
    float32 tensor per image at its ``sizes`` entry.

    The head runs at stride 4 (the ResNet's r2 grid): asking for that size keeps the network from
    resizing, so each map is resized once, straight to its target size, before the sigmoid (as the
    official test code does). ``flip`` averages with the mirrored image's probabilities; ``autocast``
    wraps the forward pass. Used by the predictor and the evaluator alike.
    """
    batch_size = images.shape[0]
    if flip:
        images = torch.cat((images, images.flip(-1)))  # 2B×3×S×S
    head_size = (-(-images.shape[-2] // 4), -(-images.shape[-1] // 4))
    with autocast() if autocast is not None else contextlib.nullcontext():
        logits = model(images, output_size=head_size, need_attention=False).pred  # (2)B×1×h×w
    logits = logits.float()
    probabilities = []
    for index, size in enumerate(sizes):
        views = logits[index : index + 1]
        if flip:
            views = torch.cat((views, logits[batch_size + index : batch_size + index + 1].flip(-1)))
        resized = F.interpolate(views, size=tuple(size), mode="bilinear", align_corners=False)
        probabilities.append(torch.sigmoid(resized).mean(0)[0])  # H×W
    return probabilities


class Predictor:
    """Saliency masks from a PGNet for pictures of any size.

    Args:
        model: the network (put in eval mode; moved to ``device`` when not ``optimize``).
        size: the network input side; pictures are resized to size×size (None: the preprocessing's
            test size, 1024 officially).
        device: "cuda", "mps", "cpu", ... or None to pick CUDA, then MPS, then the CPU.
        flip: test-time augmentation: the mask is the mean of the predictions for the picture and
            for its mirror image (mirrored back).
        precision: "bf16" runs the network under bfloat16 autocast, "fp32" in float32; "auto" (the
            default) is bf16 on CUDA and fp32 elsewhere. Masks are always returned as float32.
        batch_size: pictures per forward pass in ``predict_batch``.
        optimize: run a copy of the model with BatchNorm folded, fused attention and channels_last
            (``pgnet.acceleration.prepare_for_inference``; masks agree with the plain model to ~1e-4).
        compile: ``torch.compile`` that copy (first call of each size compiles; 1.4× on a CPU).
        cuda_graphs: replay CUDA graphs (one per batch shape); None: on for CUDA unless compiled.
        preprocessing: the normalisation (and test size) the model was trained with; None: the
            official one. ``from_checkpoint`` reads it from the checkpoint.
        fast_decode: decode large JPEG files at 1/2, 1/4 or 1/8 scale and resize the uint8 picture
            before normalising it (faster; see the README for its cost). Default: the official
            protocol, full decode, normalised as float, then resized.

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
    ):
        self.preprocessing = preprocessing or Preprocessing()
        size = self.preprocessing.eval_size if size is None else size
        if int(size) < 32:
            raise ValueError(f"size must be at least 32, got {size}")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.device = select_device(device)
        self.precision = resolve_precision(precision, self.device)
        self.model = model.eval()  # moved to ``device`` unless ``optimize`` (then its copy is)
        self.optimize = bool(optimize)
        self.compile = bool(compile)
        amp_dtype = torch.bfloat16 if self.precision == "bf16" else None
        self.network = inference_network(self.model, self.device, optimize=self.optimize, compile=self.compile,
                                         cuda_graphs=cuda_graphs, autocast_dtype=amp_dtype)
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
        normalisation and default size are the checkpoint's (official for files that record none).
        """
        from pgnet.checkpoint import load_model_and_preprocessing

        model, preprocessing = load_model_and_preprocessing(path, "cpu", weights=weights)
        options.setdefault("preprocessing", preprocessing)
        return cls(model, device=device, **options)

    def __repr__(self) -> str:
        return (
            f"Predictor(size={self.size}, device={str(self.device)!r}, flip={self.flip}, "
            f"precision={self.precision!r}, batch_size={self.batch_size}, optimize={self.optimize}, "
            f"compile={self.compile}, cuda_graphs={isinstance(self.network, CUDAGraphRunner)}, "
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

    def load(self, image: ImageInput) -> tuple[np.ndarray, tuple[int, int]]:
        """(RGB uint8 array to feed the network, (H, W) the mask will have) for one picture."""
        if isinstance(image, (str, os.PathLike)):
            if self.fast_decode:
                return read_for_network(image, self.size)
            array = read_image(image)
            return array, (int(array.shape[0]), int(array.shape[1]))
        array = as_rgb_array(image)
        return array, (int(array.shape[0]), int(array.shape[1]))

    def predict_batch(self, images: Sequence[ImageInput], skip_unreadable: bool = False) -> list[np.ndarray | None]:
        """Masks of several pictures, ``batch_size`` per forward pass; equal to calling one by one.

        ``skip_unreadable``: a path that cannot be read gets None (and a warning naming it) instead of
        raising ``ImageReadError``.
        """
        masks: list[np.ndarray | None] = [None] * len(images)
        pending: list[tuple[int, np.ndarray, tuple[int, int]]] = []  # at most batch_size decoded pictures

        def run() -> None:
            predicted = self.predict_arrays([image for _, image, _ in pending], [size for _, _, size in pending])
            for (index, _, _), mask in zip(pending, predicted):
                masks[index] = mask
            pending.clear()

        for index, image in enumerate(images):
            try:
                pending.append((index, *self.load(image)))
            except ImageReadError as error:
                if not skip_unreadable:
                    raise
                warnings.warn(f"skipped {error}", stacklevel=3)
            if len(pending) == self.batch_size:
                run()
        if pending:
            run()
        return masks

    def predict_video(self, source: str | os.PathLike | int, output: str | os.PathLike | None = None,
                      **options: Any) -> Any:
        """A video's (path) or camera's (index) frames with their masks, or the output video written.

        Without ``output``: an iterator of ``pgnet.video.VideoFrame`` (index, RGB frame, mask), with
        ``options`` smooth, max_frames, capture_factory. With ``output``: writes it (``options`` as
        for ``pgnet.video.write_video``: composer, smooth, max_frames, fps, ...) and returns a
        ``VideoResult``.
        """
        from pgnet import video

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
        mean, std = self.preprocessing.mean, self.preprocessing.std
        if self.fast_decode:  # uint8 resize, normalised on the device
            batch = np.stack([resize_for_network(as_rgb_array(image), self.size) for image in images])  # B×S×S×3
            x = normalize(torch.from_numpy(batch).to(self.device).permute(0, 3, 1, 2), mean, std)  # B×3×S×S
        else:  # the official order: normalise the full picture as float, then resize
            batch = np.stack([normalize_then_resize(as_rgb_array(image), self.size, mean, std) for image in images])
            x = torch.from_numpy(batch).to(self.device).permute(0, 3, 1, 2)  # B×3×S×S
        if self.optimize:
            x = x.contiguous(memory_format=torch.channels_last)
        autocast = autocast_for(self.network, self.device, torch.bfloat16 if self.precision == "bf16" else None)
        masks = predict_probabilities(self.network, x, sizes, flip=self.flip, autocast=autocast)
        return [mask.cpu().numpy() for mask in masks]


# --------------------------------------------------------------------------------------------------
# --------------------------------------------------------------------------------------------------
# Prediction over files


@dataclass
class PredictionReport:
    """What ``predict_files`` did: the outputs written and the inputs skipped, with the reason."""

    written: list[Path] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def _prefetch(
    pool: ThreadPoolExecutor, function: Callable, items: Sequence, depth: int
) -> Iterator[tuple[Any, Future]]:
    """(item, future of function(item)) in order, keeping up to ``depth`` calls running ahead."""
    iterator = iter(items)
    pending = deque((item, pool.submit(function, item)) for item in itertools.islice(iterator, depth))
    while pending:
        yield pending.popleft()
        for item in itertools.islice(iterator, 1):
            pending.append((item, pool.submit(function, item)))


def _write_output(job: FileJob, mask: np.ndarray, composer: Composer) -> Path:
    image = None if composer.mode == "mask" else read_image_with_alpha(job.source)  # RGB or RGBA
    if image is not None and image.shape[:2] != mask.shape:
        raise ImageReadError(job.source, f"decoded at {image.shape[:2]}, expected {mask.shape}")
    return write_image(job.output, composer(image, mask))


def predict_files(
    predictor: Predictor,
    jobs: Sequence[FileJob],
    mode: str = "mask",
    color: Sequence[int] | str | None = None,
    workers: int = 4,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    **compose_options: Any,
) -> PredictionReport:
    """Predict every job's picture and write its output picture (see ``compose`` for ``mode``,
    ``color`` and the ``compose_options`` background, blur and refine_foreground).

    Pictures are read and outputs written by ``workers`` threads while the network runs; each picture
    is resized to the network's input as soon as it is decoded, so at most ``workers`` full-size
    pictures (each under the pixel limit, see ``pgnet.data.io.max_pixels_limit``) are in memory at
    once. A picture that cannot be read or written is skipped, and ``log`` (default: print to stderr
    above the progress bar) gets a line naming it. A full disk stops the run with ``NoSpaceError``
    (outputs are written atomically: nothing truncated is left).
    """
    from tqdm import tqdm

    composer = Composer(mode, color, **compose_options)
    report = PredictionReport()
    bar = tqdm(total=len(jobs), unit="img", disable=not progress, dynamic_ncols=True)
    log = log or (lambda message: tqdm.write(message, file=sys.stderr))
    workers = max(1, int(workers))

    def skip(job: FileJob, error: BaseException) -> None:
        reason = error.reason if isinstance(error, ImageReadError) else str(error)
        report.skipped.append((job.source, reason))
        log(f"skipped {job.source}: {reason}")
        bar.update(1)

    writes: deque[tuple[FileJob, Future]] = deque()

    def finish_writes(keep: int) -> None:
        while len(writes) > keep:
            job, future = writes.popleft()
            try:
                report.written.append(future.result())
                bar.update(1)
            except NoSpaceError:
                raise  # every later write would fail too: stop
            except (OSError, ValueError, cv2.error) as error:
                skip(job, error)

    def flush(batch: list[tuple[FileJob, np.ndarray, tuple[int, int]]]) -> None:
        masks = predictor.predict_arrays([image for _, image, _ in batch], [size for _, _, size in batch])
        for (job, _, _), mask in zip(batch, masks):
            writes.append((job, pool.submit(_write_output, job, mask, composer)))
        batch.clear()
        finish_writes(keep=2 * workers)

    with ThreadPoolExecutor(workers) as pool:
        batch: list[tuple[FileJob, np.ndarray, tuple[int, int]]] = []
        depth = predictor.batch_size + workers

        def read(job: FileJob) -> tuple[np.ndarray, tuple[int, int]]:
            # At most ``depth`` pictures wait, each under the pixel limit. With fast decode each is
            # resized at once (a waiting picture holds size×size×3 bytes); the official protocol
            # normalises the full picture first, so it waits at full size.
            image, size = predictor.load(job.source)
            return (resize_for_network(image, predictor.size) if predictor.fast_decode else image), size

        for job, future in _prefetch(pool, read, jobs, depth):
            try:
                image, size = future.result()
            except (OSError, ValueError, cv2.error) as error:
                skip(job, error)
                continue
            batch.append((job, image, size))
            if len(batch) == predictor.batch_size:
                flush(batch)
        if batch:
            flush(batch)
        finish_writes(keep=0)
    bar.close()
    return report
