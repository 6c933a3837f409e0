"""Saliency for videos and webcams: threaded frame reading and writing, batching, smoothing.

``predict_video`` yields each frame with its mask; ``write_video`` writes the output video (mp4,
same size and frame rate) of one mode of ``pgnet.predict.compose``, or for ``rgba`` (which common codecs
cannot hold) a folder of numbered PNGs. Frames are decoded (and resized for the network) ahead on a
reader thread (``pgnet.data.prefetch``) and composed and encoded on writer threads, so the network
does not wait for either; both hold a bounded number of frames. Audio is not carried over.

A capture source is anything with ``cv2.VideoCapture``'s ``isOpened``, ``read``, ``get`` and
``release``; ``capture_factory`` (default ``cv2.VideoCapture``) opens it from a path or a camera
index, which lets tests drive the webcam loop with a fake camera.
"""

from __future__ import annotations

import itertools
import math
import os
import queue
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from pgnet.data.prefetch import prefetch
from pgnet.data.preprocessing import resize_for_network
from pgnet.errors import UserError
from pgnet.predict.batching import ArrayPredictor, predict_batches
from pgnet.predict.compose import Composer
from pgnet.predict.files import PredictionReport
from pgnet.predict.output_plan import VIDEO_SUFFIX, VideoJob
from pgnet.writing import move_into_place, write_image

VIDEO_FOURCC = "mp4v"  # MPEG-4 part 2, which OpenCV's pip wheels can write
DEFAULT_FPS = 30.0  # when the source does not tell (many webcams)
_END = object()


class VideoReadError(OSError, UserError):
    """A video (or camera) that cannot be opened or yields no frame; ``path`` names it."""

    def __init__(self, path: str | Path | int, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


@dataclass
class VideoFrame:
    """One frame: its index from 0, the H×W×3 uint8 RGB picture and its H×W float32 mask."""

    index: int
    image: np.ndarray
    mask: np.ndarray


@dataclass
class VideoResult:
    """What ``write_video`` wrote: the output, frames written, and a note when the source ended early."""

    output: Path
    frames: int
    fps: float
    size: tuple[int, int]  # (H, W)
    warning: str | None = None


def source_name(source: str | os.PathLike | int) -> str:
    return f"camera {source}" if isinstance(source, int) else str(source)


class FrameReader:
    """Decodes frames ahead on a thread: iterating gives (RGB frame, network-size copy) pairs in order.

    Args:
        source: a video path or a camera index.
        size: the network input side (each frame is also resized to size×size, as uint8, on the
            thread); None: the second copy is the frame itself.
        capture_factory: opens ``source`` (default ``cv2.VideoCapture``).
        max_frames: stop after this many frames (None: until the source ends).
        depth: frames decoded ahead at most.

    Raises ``VideoReadError`` when the source cannot be opened. After iterating, ``frames`` is the
    number decoded and ``expected`` the count the container announces (None for a camera).
    """

    def __init__(
        self,
        source: str | os.PathLike | int,
        size: int | None,
        capture_factory: Callable[[Any], Any] | None = None,
        max_frames: int | None = None,
        depth: int = 8,
    ) -> None:
        self.source = source
        self.size = None if size is None else int(size)  # None: frames are not resized here
        self.max_frames = max_frames
        self.depth = max(1, int(depth))
        opener = capture_factory or cv2.VideoCapture
        self.capture = opener(source if isinstance(source, int) else str(source))
        if not self.capture.isOpened():
            self.capture.release()
            raise VideoReadError(source_name(source), "cannot open (not a video, unsupported codec or no such camera)")
        fps = float(self.capture.get(cv2.CAP_PROP_FPS) or 0.0)
        self.fps = fps if math.isfinite(fps) and 0 < fps < 1000 else DEFAULT_FPS
        count = float(self.capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0.0)  # -1 or nan for some streams
        self.expected = int(count) if math.isfinite(count) and count >= 1 and not isinstance(source, int) else None
        self.frames = 0
        # One thread: a capture is read in order, one frame after the other.
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="pgnet-frame-reader")

    @property
    def total(self) -> int | None:
        """Frames this reader will give at most, when known (for a progress bar)."""
        if self.expected is None:
            return self.max_frames
        return self.expected if self.max_frames is None else min(self.expected, self.max_frames)

    def _read(self, _: int) -> tuple[np.ndarray, np.ndarray] | None:
        """The next frame (RGB, network-size copy), or None past the end of the source (the
        argument, the frame's index, is what ``prefetch`` passes)."""
        ok, frame = self.capture.read()
        if not ok or frame is None:
            return None
        rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        return rgb, (rgb if self.size is None else resize_for_network(rgb, self.size))

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        indices = itertools.count() if self.max_frames is None else range(self.max_frames)
        for _, future in prefetch(self._pool, self._read, indices, self.depth):
            try:
                item = future.result()
            except Exception as error:
                raise VideoReadError(source_name(self.source), f"decoding failed: {error}") from error
            if item is None:
                break
            self.frames += 1
            yield item
        self.close()

    def ended_early(self) -> str | None:
        """A note when the source yielded fewer frames than it announced (truncated or corrupt)."""
        wanted = self.total
        if self.expected is None or wanted is None or self.frames >= wanted:
            return None
        return f"ends early: decoded {self.frames} of the {self.expected} frames its header announces (kept)"

    def close(self) -> None:
        """Stop decoding: drop the frames read ahead and release the capture."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        self.capture.release()

    def __enter__(self) -> FrameReader:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


class TemporalSmoother:
    """Exponential moving average of masks: ``m_t = A·m_{t−1} + (1 − A)·p_t`` (A = ``weight``).

    A = 0 returns every mask as it is. A step change reaches 1 − A^n of its size after n frames: the
    mask trails a moving subject by about A / (1 − A) frames (1 frame at 0.5, 4 at 0.8).
    """

    def __init__(self, weight: float) -> None:
        if not 0.0 <= float(weight) < 1.0:
            raise UserError(f"smoothing weight must be in [0, 1), got {weight}")
        self.weight = float(weight)
        self.state: np.ndarray | None = None

    def __call__(self, mask: np.ndarray) -> np.ndarray:
        if self.weight == 0.0:
            return mask
        if self.state is None or self.state.shape != mask.shape:
            self.state = mask.astype(np.float32, copy=True)
        else:
            self.state = self.weight * self.state + (1.0 - self.weight) * mask
        return self.state


def mean_consecutive_change(masks: Iterable[np.ndarray]) -> float:
    """Flicker: the mean absolute change between consecutive masks (float masks in [0, 1])."""
    changes, previous = [], None
    for mask in masks:
        if previous is not None:
            changes.append(float(np.abs(mask.astype(np.float32) - previous).mean()))
        previous = mask.astype(np.float32)
    return float(np.mean(changes)) if changes else 0.0


def predict_frames(predictor: ArrayPredictor, reader: Iterable[tuple[np.ndarray, np.ndarray]],
                   smooth: float = 0.0) -> Iterator[VideoFrame]:
    """Masks of a reader's frames, ``predictor.batch_size`` frames per forward pass, smoothed if asked."""
    smoother = TemporalSmoother(smooth)
    frames = ((frame, small, frame.shape[:2]) for frame, small in reader)
    index = 0
    for batch in predict_batches(predictor, frames):
        for frame, mask in batch:
            yield VideoFrame(index, frame, smoother(mask))
            index += 1


def _reader_size(predictor: ArrayPredictor) -> int | None:
    """Frames are resized as uint8 on the reader thread with ``fast_decode``; otherwise the predictor
    prepares them the official way (normalised as float, then resized)."""
    return predictor.size if predictor.fast_decode else None


def predict_video(
    predictor: ArrayPredictor,
    source: str | os.PathLike | int,
    smooth: float = 0.0,
    max_frames: int | None = None,
    capture_factory: Callable[[Any], Any] | None = None,
) -> Iterator[VideoFrame]:
    """Each frame of a video (path) or camera (index) with its mask, as ``VideoFrame``s in order."""
    with FrameReader(source, _reader_size(predictor), capture_factory, max_frames,
                     depth=2 * predictor.batch_size + 2) as reader:
        yield from predict_frames(predictor, reader, smooth)


class FrameWriter:
    """Composes frames on ``workers`` threads and writes them in order on another: an mp4
    (``mp4v``), or numbered PNGs for ``rgba``.

    The video goes to a hidden temporary file beside ``output`` and is renamed when ``close`` succeeds,
    so an interrupted run leaves no half-written video under the output's name.
    """

    def __init__(self, output: Path, composer: Composer, fps: float, size: tuple[int, int], depth: int = 8,
                 workers: int = 2) -> None:
        self.output, self.composer, self.size = Path(output), composer, size
        self.frames = 0
        self.error: BaseException | None = None
        self.sequence = composer.mode == "rgba"
        self.writer = None
        if self.sequence:
            self.output.mkdir(parents=True, exist_ok=True)
        else:
            self.output.parent.mkdir(parents=True, exist_ok=True)
            self.partial = self.output.with_name(f".{self.output.stem}.partial{VIDEO_SUFFIX}")
            fourcc = cv2.VideoWriter_fourcc(*VIDEO_FOURCC)
            self.writer = cv2.VideoWriter(str(self.partial), fourcc, fps, (size[1], size[0]), True)
            if not self.writer.isOpened():
                raise OSError(f"cannot write a {VIDEO_FOURCC} video to {self.output}")
        self._pool = ThreadPoolExecutor(max(1, int(workers)), thread_name_prefix="pgnet-compose")
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))  # (index, future of the picture)
        self._thread = threading.Thread(target=self._run, name="pgnet-frame-writer", daemon=True)
        self._thread.start()

    def _write(self, index: int, picture: np.ndarray) -> None:
        if self.sequence:
            write_image(self.output / f"{index + 1:06d}.png", picture)
        else:
            code = cv2.COLOR_GRAY2BGR if picture.ndim == 2 else cv2.COLOR_RGB2BGR
            self.writer.write(cv2.cvtColor(picture, code))
        self.frames += 1

    def _run(self) -> None:
        while (item := self._queue.get()) is not _END:
            index, future = item
            if self.error is None:  # after an error keep draining, so the producer never blocks
                try:
                    self._write(index, future.result())
                except Exception as error:  # raised by ``put`` or ``close``
                    self.error = error

    def put(self, frame: VideoFrame) -> None:
        if self.error is not None:
            raise OSError(f"writing {self.output} failed: {self.error}") from self.error
        self._queue.put((frame.index, self._pool.submit(self.composer, frame.image, frame.mask)))

    def close(self, keep: bool = True) -> None:
        """Finish writing; ``keep=False`` (or a writing error) removes the partial video."""
        self._queue.put(_END)
        self._thread.join()
        self._pool.shutdown()
        if self.writer is not None:
            self.writer.release()
            if keep and self.error is None and self.frames:
                move_into_place(self.partial, self.output)
            else:
                self.partial.unlink(missing_ok=True)
        if self.error is not None:
            raise OSError(f"writing {self.output} failed: {self.error}") from self.error


def write_video(
    predictor: ArrayPredictor,
    source: str | os.PathLike | int,
    output: str | os.PathLike,
    composer: Composer | None = None,
    smooth: float = 0.0,
    max_frames: int | None = None,
    fps: float | None = None,
    capture_factory: Callable[[Any], Any] | None = None,
    progress: bool = True,
    workers: int = 2,
) -> VideoResult:
    """Predict every frame of ``source`` and write the output video (or PNG folder for rgba).

    ``composer`` picks the mode (default: the mask); ``fps`` overrides the source's frame rate;
    ``workers`` threads compose the output frames (in order). A camera runs until ``max_frames``
    or Ctrl-C, and the video written so far is kept. Raises ``VideoReadError`` for a source that
    cannot be opened or yields no frame.
    """
    composer = composer or Composer("mask")
    depth = 2 * predictor.batch_size + 2
    with FrameReader(source, _reader_size(predictor), capture_factory, max_frames, depth=depth) as reader:
        frames = predict_frames(predictor, reader, smooth)
        first = next(frames, None)
        if first is None:
            raise VideoReadError(source_name(source), "no frame could be decoded")
        size = first.image.shape[:2]
        rate = float(fps) if fps else reader.fps
        writer = FrameWriter(Path(output), composer, rate, size, depth=depth, workers=workers)
        bar = tqdm(total=reader.total, unit="frame", desc=Path(str(source)).name, disable=not progress,
                   dynamic_ncols=True, leave=False)
        keep = False
        try:
            for frame in _chain(first, frames):
                if frame.image.shape[:2] != size:
                    shape = frame.image.shape[:2]
                    raise VideoReadError(source_name(source), f"frame {frame.index} is {shape}, not {size}")
                writer.put(frame)
                bar.update(1)
            keep = True
        except KeyboardInterrupt:
            keep = isinstance(source, int)  # Ctrl-C is how a camera run ends; a file's output is dropped
            if not keep:
                raise
        finally:
            bar.close()
            writer.close(keep=keep)
    return VideoResult(Path(output), writer.frames, rate, (int(size[0]), int(size[1])), reader.ended_early())


def _chain(first: VideoFrame, rest: Iterator[VideoFrame]) -> Iterator[VideoFrame]:
    yield first
    yield from rest


def predict_videos(
    predictor: ArrayPredictor,
    jobs: Iterable[VideoJob],
    composer: Composer,
    smooth: float = 0.0,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    max_frames: int | None = None,
    workers: int = 2,
) -> PredictionReport:
    """``write_video`` for each job; a video that cannot be read or written is skipped and logged."""
    report = PredictionReport()
    log = log or (lambda message: print(message, file=sys.stderr))
    for job in jobs:
        try:
            result = write_video(predictor, job.source, job.output, composer, smooth=smooth,
                                 max_frames=max_frames, progress=progress, workers=workers)
        except (VideoReadError, OSError, cv2.error) as error:
            reason = error.reason if isinstance(error, VideoReadError) else str(error)
            report.skipped.append((job.source, reason))
            log(f"skipped {job.source}: {reason}")
            continue
        report.written.append(result.output)
        if result.warning:
            log(f"{job.source} {result.warning}")
    return report
