"""Saliency for videos and webcams: threaded decoding, batching, smoothing, and outputs written whole.

``predict_video`` yields each frame with its mask; ``write_video`` writes the output of one mode of
``pgnet.predict.compose`` at the source's exact size and timestamps, with its audio: an H.264 ``mp4``,
a VP9 ``webm`` (with alpha for ``rgba``, the default there), a ProRes 4444 ``.mov`` or a folder of
PNGs (``pgnet.predict.media.VIDEO_FORMATS``). The output is built in segments beside its final name
and renamed when complete (``pgnet.predict.video_output``); an interrupted run resumes after the last
complete segment when given the same ``resume_key``.

Three stages overlap: frames are decoded with PyAV (and resized for the network) ahead on a reader
thread (``pgnet.data.prefetch``), the network runs on the caller's thread, and outputs are composed on
``workers`` threads and encoded on a writer thread. Frames in flight are bounded whatever the
resolution and length: ``2·batch + 2`` decoded ahead, two batches (predicted, handed over), ``2·batch + 2``
waiting to be composed and encoded, one being encoded (``frames_in_flight``).

Files are decoded with PyAV; a camera (an index) with OpenCV, or any object with
``cv2.VideoCapture``'s ``isOpened``, ``read``, ``get`` and ``release`` that ``capture_factory``
(default ``cv2.VideoCapture``) opens, which lets tests drive the webcam loop with a fake camera.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import queue
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
from tqdm import tqdm

from pgnet.data.prefetch import prefetch
from pgnet.data.preprocessing import resize_for_network
from pgnet.errors import UnknownNameError, UserError
from pgnet.predict.batching import ArrayPredictor, predict_batches
from pgnet.predict.compose import Composer
from pgnet.predict.files import PredictionReport
from pgnet.predict.media import DEFAULT_FPS, VIDEO_FORMATS, VideoFormat, VideoReadError, VideoSource
from pgnet.predict.output_plan import VideoJob
from pgnet.predict.video_output import SEGMENT_FRAMES, ResumePoint, VideoOutput, partial_folder
from pgnet.writing import NoSpaceError

__all__ = [
    "DEFAULT_FPS",
    "FrameReader",
    "TemporalSmoother",
    "VideoFrame",
    "VideoReadError",
    "VideoResult",
    "default_video_format",
    "frames_in_flight",
    "mean_consecutive_change",
    "output_format",
    "predict_frames",
    "predict_video",
    "predict_videos",
    "source_name",
    "write_video",
]
_END = object()


@dataclass
class VideoFrame:
    """One frame: its index from 0, the H×W×3 uint8 RGB picture, its H×W float32 mask and its pts (in
    the reader's ``time_base``)."""

    index: int
    image: np.ndarray
    mask: np.ndarray
    pts: int | None = None


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


def default_video_format(mode: str) -> str:
    """``webm`` (VP9 with alpha) for cut-outs, ``mp4`` (H.264) for every other mode."""
    return "webm" if mode == "rgba" else "mp4"


def output_format(name: str | None, mode: str) -> VideoFormat:
    """The output format named (None: the mode's default); a format that cannot hold the mode is
    refused here, before any work."""
    name = name or default_video_format(mode)
    if name not in VIDEO_FORMATS:
        raise UnknownNameError(f"unknown video format {name!r}; choose from {', '.join(VIDEO_FORMATS)}")
    chosen = VIDEO_FORMATS[name]
    if mode == "rgba":
        chosen.pixel_format(True, (2, 2))  # raises for a format without alpha
    return chosen


def frames_in_flight(batch_size: int) -> int:
    """The most frames a video run holds at once: decoded ahead, the batch being predicted and the one
    being handed to the writer, waiting to be composed and encoded, and the one being encoded."""
    return 2 * _depth(batch_size) + 2 * batch_size + 1


def _depth(batch_size: int) -> int:
    return 2 * batch_size + 2


class FrameReader:
    """Decodes frames ahead on a thread: iterating gives (RGB frame, network-size copy, pts) in order.

    Args:
        source: a video path or a camera index.
        size: the network input side (each frame is also resized to size×size, as uint8, on the
            thread); None: the second copy is the frame itself.
        capture_factory: opens a camera (default ``cv2.VideoCapture``); given, a path is opened by
            it too.
        max_frames: stop after frame ``max_frames`` (None: until the source ends).
        depth: frames decoded ahead at most.
        resume: start after the frames a kept output already holds.

    Raises ``VideoReadError`` when the source cannot be opened. ``time_base`` times the pts (a file's
    stream's; 1/fps for a camera); after iterating, ``frames`` is the number decoded (resumed ones
    included) and ``expected`` the count the container announces (None for a camera).
    """

    def __init__(
        self,
        source: str | os.PathLike | int,
        size: int | None,
        capture_factory: Callable[[Any], Any] | None = None,
        max_frames: int | None = None,
        depth: int = 8,
        resume: ResumePoint | None = None,
    ) -> None:
        self.source = source
        self.size = None if size is None else int(size)  # None: frames are not resized here
        self.max_frames = max_frames
        self.depth = max(1, int(depth))
        self.video: VideoSource | None = None
        self.capture = None
        self.audio = False
        if isinstance(source, int) or capture_factory is not None:
            opener = capture_factory or cv2.VideoCapture
            self.capture = opener(source if isinstance(source, int) else str(source))
            if not self.capture.isOpened():
                self.capture.release()
                raise VideoReadError(source_name(source), "cannot open (no such camera or unsupported source)")
            fps = float(self.capture.get(cv2.CAP_PROP_FPS) or 0.0)
            self.fps = fps if np.isfinite(fps) and 0 < fps < 1000 else DEFAULT_FPS
            self.time_base = 1 / Fraction(self.fps).limit_denominator(1001)
            self.expected = None
            self._decoded: Iterator[tuple[np.ndarray, int | None]] = self._camera_frames()
        else:
            self.video = VideoSource(source)
            self.fps, self.time_base, self.expected = self.video.fps, self.video.time_base, self.video.expected
            self.audio = self.video.audio is not None
            self._decoded = self.video.frames()
        self.frames = 0
        self.note: str | None = None  # why decoding stopped before the end, when it did
        self._read_count = 0
        self._last_pts: int | None = None
        if resume is not None and resume.frames:
            self.frames, self._last_pts = resume.frames, resume.last_pts
            if self.video is not None and resume.last_pts is not None:
                self.video.start(resume.last_pts + 1)
            else:
                self._decoded = itertools.islice(self._decoded, resume.frames, None)
        # One thread: a source is read in order, one frame after the other.
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="pgnet-frame-reader")

    def _camera_frames(self) -> Iterator[tuple[np.ndarray, int | None]]:
        while True:
            ok, frame = self.capture.read()
            if not ok or frame is None:
                return
            yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB), None

    @property
    def total(self) -> int | None:
        """Frames this reader will give at most, counted from the first, when known (a progress bar)."""
        if self.expected is None:
            return self.max_frames
        return self.expected if self.max_frames is None else min(self.expected, self.max_frames)

    def _read(self, index: int) -> tuple[np.ndarray, np.ndarray, int] | None:
        """The next frame (RGB, network-size copy, pts), or None past the end of the source."""
        try:
            item = next(self._decoded, None)
        except (av.FFmpegError, ValueError) as error:  # corrupt data: what was decoded is kept
            if not self._read_count:
                raise
            self.note = f"stopped decoding at frame {index}: {error}"
            return None
        if item is None:
            return None
        self._read_count += 1
        rgb, pts = item
        if pts is None:  # a camera, or a stream without timestamps: the frame's place at the frame rate
            pts = round(index / (self.fps * self.time_base))
        return rgb, (rgb if self.size is None else resize_for_network(rgb, self.size)), pts

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
        indices = itertools.count(self.frames) if self.max_frames is None else range(self.frames, self.max_frames)
        for _, future in prefetch(self._pool, self._read, indices, self.depth):
            try:
                item = future.result()
            except Exception as error:
                raise VideoReadError(source_name(self.source), f"decoding failed: {error}") from error
            if item is None:
                break
            rgb, small, pts = item
            if self._last_pts is not None and pts <= self._last_pts:  # timestamps must increase
                pts = self._last_pts + 1
            self._last_pts = pts
            self.frames += 1
            yield rgb, small, pts
        self.close()

    @property
    def stopped_by_max_frames(self) -> bool:
        return self.max_frames is not None and self.frames >= self.max_frames

    def ended_early(self) -> str | None:
        """A note when the source yielded fewer frames than it announced (truncated or corrupt)."""
        wanted = self.total
        if self.expected is None or wanted is None or self.frames >= wanted:
            return None
        return f"ends early: decoded {self.frames} of the {self.expected} frames its header announces (kept)"

    def close(self) -> None:
        """Stop decoding: drop the frames read ahead and release the source."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        if self.capture is not None:
            self.capture.release()
        if self.video is not None:
            self.video.close()
            self.video = None

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


def predict_frames(predictor: ArrayPredictor, reader: Iterable[tuple[np.ndarray, np.ndarray, int | None]],
                   smooth: float = 0.0, start: int = 0, state: np.ndarray | None = None) -> Iterator[VideoFrame]:
    """Masks of a reader's frames, ``predictor.batch_size`` frames per forward pass, smoothed if asked
    (from ``state``, the smoothed mask before the first frame, when resuming); indices from ``start``."""
    smoother = TemporalSmoother(smooth)
    smoother.state = state
    frames = (((frame, pts), small, frame.shape[:2]) for frame, small, pts in reader)
    index = start
    for batch in predict_batches(predictor, frames):
        for (frame, pts), mask in batch:
            yield VideoFrame(index, frame, smoother(mask), pts)
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
                     depth=_depth(predictor.batch_size)) as reader:
        yield from predict_frames(predictor, reader, smooth)


class FrameWriter:
    """Composes frames on ``workers`` threads and hands them, in order, to a ``VideoOutput`` on a
    writer thread; at most ``depth`` frames wait. ``keep_state``: each frame's mask goes with it (the
    smoother's state, kept at segment ends for resuming)."""

    def __init__(self, output: VideoOutput, composer: Composer, depth: int = 8, workers: int = 2,
                 keep_state: bool = False) -> None:
        self.output, self.composer, self.keep_state = output, composer, keep_state
        self.frames = 0
        self.error: BaseException | None = None
        self.cancelled = False
        self._closed = False
        self._pool = ThreadPoolExecutor(max(1, int(workers)), thread_name_prefix="pgnet-compose")
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))  # (pts, state, future of the picture)
        self._thread = threading.Thread(target=self._run, name="pgnet-frame-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (item := self._queue.get()) is not _END:
            pts, state, future = item
            if self.error is None and not self.cancelled:  # otherwise drain, so the producer never blocks
                try:
                    self.output.add(future.result(), pts, state)
                    self.frames += 1
                except BaseException as error:  # raised by ``put`` or ``close``
                    self.error = error

    def _raise_error(self) -> None:
        if isinstance(self.error, (NoSpaceError, UserError)):
            raise self.error
        raise OSError(f"writing {self.output.output} failed: {self.error}") from self.error

    def put(self, frame: VideoFrame) -> None:
        if self.error is not None:
            self._raise_error()
        # The frame itself is not queued: its picture and mask go once the output picture is composed.
        state = frame.mask if self.keep_state else None
        self._queue.put((frame.pts, state, self._pool.submit(self.composer, frame.image, frame.mask)))

    def close(self, cancel: bool = False) -> None:
        """Wait for the frames put so far to be written (``cancel``: drop them); raises a writing error."""
        if not self._closed:
            self._closed = True
            self.cancelled = cancel
            self._queue.put(_END)
            self._thread.join()
            self._pool.shutdown(cancel_futures=cancel)
        if self.error is not None and not cancel:
            self._raise_error()


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
    video_format: str | None = None,
    audio: bool = True,
    resume_key: str | None = None,
    require_resume: bool = False,
    segment_frames: int = SEGMENT_FRAMES,
    log: Callable[[str], None] | None = None,
) -> VideoResult:
    """Predict every frame of ``source`` and write the output video (or frame folder), whole or not at all.

    ``composer`` picks the mode (default: the mask); ``video_format`` the output (``VIDEO_FORMATS``;
    default ``default_video_format``); ``audio`` False leaves the source's audio out; ``fps``
    overrides the source's frame rate (frames are then evenly spaced); ``workers`` threads compose the
    output frames. ``resume_key`` (what identifies the model and options, e.g. the command line) makes
    the run resumable: kept segments of the same source and key are continued, others discarded
    (``require_resume``: refused). A camera runs until ``max_frames`` or Ctrl-C, and what was filmed is
    kept. Raises ``VideoReadError`` for a source that cannot be opened or yields no frame,
    ``NoSpaceError`` for a full disk (the completed segments kept for resuming), ``OSError`` when
    encoding fails; ``log`` (default: stderr) gets the notes a user should see.
    """
    composer = composer or Composer("mask")
    log = log or (lambda message: tqdm.write(message, file=sys.stderr))
    chosen = output_format(video_format, composer.mode)
    camera = isinstance(source, int)
    key = None if camera or resume_key is None else _resume_key(resume_key, source, chosen, composer, smooth,
                                                                max_frames, fps, audio, segment_frames)
    target = VideoOutput(output, chosen, key, segment_frames, require_resume, log)
    resume = target.resume_point()
    depth = _depth(predictor.batch_size)
    with FrameReader(source, _reader_size(predictor), capture_factory, max_frames, depth, resume) as reader:
        start = resume.frames if resume else 0
        frames = predict_frames(predictor, reader, smooth, start, resume.state if resume else None)
        if fps:
            reader.fps, reader.time_base = float(fps), 1 / Fraction(float(fps)).limit_denominator(1001)
            frames = (VideoFrame(f.index, f.image, f.mask, f.index) for f in frames)
        first = next(frames, None)
        if first is None and not start:
            raise VideoReadError(source_name(source), "no frame could be decoded")
        size = first.image.shape[:2] if first is not None else None
        writer = None
        bar = tqdm(total=reader.total, initial=start, unit="frame", desc=Path(str(source)).name,
                   disable=not progress, dynamic_ncols=True, leave=False)
        completed = False
        try:
            if first is not None:
                note = chosen.size_note(composer.mode == "rgba", size)
                if note:
                    log(f"{source_name(source)}: {note}")
                target.begin(size, composer.mode == "rgba", reader.time_base, reader.fps)
                writer = FrameWriter(target, composer, depth, workers, keep_state=smooth > 0)
                try:
                    for frame in itertools.chain((first,), frames):
                        if frame.image.shape[:2] != size:
                            shape = frame.image.shape[:2]
                            raise VideoReadError(source_name(source), f"frame {frame.index} is {shape}, not {size}")
                        writer.put(frame)
                        bar.update(1)
                except KeyboardInterrupt:
                    if not camera:  # Ctrl-C is how a camera run ends; a file's run stops here
                        raise
                writer.close()
            elif size is None:  # resumed after every frame had been written
                target.begin((0, 0), composer.mode == "rgba", reader.time_base, reader.fps)
            audio_from = Path(source) if audio and reader.audio else None
            if audio_from is not None and chosen.codec is None:
                log(f"{source_name(source)}: frame folders carry no audio (choose --video-format mp4, webm or prores)")
                audio_from = None
            end_time = None
            if reader.stopped_by_max_frames and target.last_pts is not None:
                end_time = float(target.last_pts * reader.time_base) + 1.0 / reader.fps
            audio_note = target.finish(audio_from, end_time)
            if audio_note:
                log(f"{source_name(source)}: {audio_note} ({chosen.suffix} cannot hold the source's audio codec)")
            completed = True
        finally:
            bar.close()
            if not completed:
                error = sys.exc_info()[1]
                interrupted = isinstance(error, KeyboardInterrupt)
                if writer is not None:  # after Ctrl-C the frames already predicted are still written
                    try:
                        writer.close(cancel=not interrupted)
                    except Exception:  # a write error during that: the error already raised goes on
                        pass
                target.abandon(keep=interrupted or isinstance(error, NoSpaceError))
    return VideoResult(Path(output), target.frames, reader.fps,
                       (int(size[0]), int(size[1])) if size else (0, 0), reader.ended_early() or reader.note)


def _resume_key(resume_key: str, source: str | os.PathLike, chosen: VideoFormat, composer: Composer,
                smooth: float, max_frames: int | None, fps: float | None, audio: bool, segment_frames: int) -> str:
    """What a kept output must match to be resumed: the source file as it is now, the caller's key
    (the model), and every option that changes the frames."""
    status = os.stat(source)
    background = composer.background
    digest = hashlib.sha1(np.ascontiguousarray(background).tobytes()).hexdigest() if background is not None else None
    parts = [resume_key, os.path.realpath(source), status.st_size, status.st_mtime_ns, chosen.name, composer.mode,
             composer.color, composer.blur, composer.refine_foreground, digest, smooth, max_frames, fps, audio,
             segment_frames]
    return "|".join(map(str, parts))


def predict_videos(
    predictor: ArrayPredictor,
    jobs: Iterable[VideoJob],
    composer: Composer,
    smooth: float = 0.0,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    max_frames: int | None = None,
    workers: int = 2,
    **options: Any,
) -> PredictionReport:
    """``write_video`` for each job (``options``: video_format, audio, resume_key, require_resume,
    segment_frames); a video that cannot be read or encoded is skipped and logged; a full disk stops
    the run (``NoSpaceError``). With ``require_resume`` a video whose output exists (and has no kept
    segments) is complete and kept as it is."""
    report = PredictionReport()
    log = log or (lambda message: tqdm.write(message, file=sys.stderr))
    for job in jobs:
        if options.get("require_resume") and job.output.exists() and not partial_folder(job.output).exists():
            log(f"{job.output} is complete: kept")  # resuming a run of many videos skips the finished ones
            report.written.append(job.output)
            continue
        try:
            result = write_video(predictor, job.source, job.output, composer, smooth=smooth, max_frames=max_frames,
                                 progress=progress, workers=workers, log=log, **options)
        except NoSpaceError:
            raise
        except (VideoReadError, OSError, av.FFmpegError, cv2.error) as error:
            reason = error.reason if isinstance(error, VideoReadError) else str(error)
            report.skipped.append((job.source, reason))
            log(f"skipped {job.source}: {reason}")
            continue
        report.written.append(result.output)
        if result.warning:
            log(f"{job.source} {result.warning}")
    return report
