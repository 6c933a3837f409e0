"""A video's output written whole or not at all, in segments that a later run can resume from.

``clip.mp4`` is written in ``.clip.mp4.partial/`` beside it: segments of ``segment_frames`` frames
(each encoded on its own, see ``pgnet.predict.media``), each renamed from a temporary name when
complete, and ``manifest.json`` listing the completed ones with what the run was (the source file, the
model, the options: ``key``) and the last frame's timestamp; with smoothing, the smoothed mask after a
segment's last frame (``state.npy``). When every frame is written the segments and the source's audio
are joined into a temporary file beside the output, its frames are counted back, and it is renamed to
``clip.mp4``; then the folder goes. A frame folder (``png``) is built in the same way
(``.clip.partial/frames/``) and renamed as a whole, replacing an older folder of that name whole.

An interrupted run (Ctrl-C, SIGTERM, a full disk) keeps the completed segments; the same command
resumes after them (``resume_point``), and the frames come out as those of an uninterrupted run. A
manifest of another command is discarded (or refused, with ``require_resume``).
"""

from __future__ import annotations

import io
import json
import os
import secrets
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from pgnet.errors import UserError
from pgnet.predict.media import SegmentEncoder, VideoFormat, count_frames, join_segments
from pgnet.writing import (
    atomic_create,
    move_into_place,
    no_space_as_error,
    write_bytes,
    write_image,
    write_text,
)

SEGMENT_FRAMES = 240  # frames per segment: the most work an interruption loses
MANIFEST = "manifest.json"
STATE = "state.npy"


class ResumeMismatchError(UserError):
    """``--resume`` was asked but the kept segments were made by another command or from another input."""


@dataclass
class ResumePoint:
    """Where a resumed run starts: frames already written, the last one's pts, the smoother's state."""

    frames: int
    last_pts: int | None
    state: np.ndarray | None


def partial_folder(output: Path) -> Path:
    """The hidden folder an output is built in: ``.NAME.partial`` beside it."""
    return output.with_name(f".{output.name}.partial")


class VideoOutput:
    """Builds ``output`` (a video file, or a frame folder for the ``png`` format) from frames.

    Call ``resume_point`` (a resumable ``key`` only), then ``begin`` with the frame size and timing,
    ``add`` for each output picture in order, and ``finish`` (complete: joined, counted, renamed) or
    ``abandon`` (interrupted or failed). ``log`` receives the lines a user should see.
    """

    def __init__(self, output: str | os.PathLike, video_format: VideoFormat, key: str | None = None,
                 segment_frames: int = SEGMENT_FRAMES, require_resume: bool = False,
                 log: Callable[[str], None] = print) -> None:
        if segment_frames < 1:
            raise ValueError(f"segment_frames must be positive, got {segment_frames}")
        self.output, self.format, self.key = Path(output), video_format, key
        self.segment_frames, self.require_resume, self.log = int(segment_frames), require_resume, log
        self.folder = partial_folder(self.output)
        self.frames = 0  # frames written, resumed ones included
        self.segments: list[str] = []
        self.last_pts: int | None = None
        self._encoder: SegmentEncoder | None = None
        self._temporary: Path | None = None
        self._in_segment = 0
        self._timing: tuple[tuple[int, int], bool, Fraction, float] | None = None

    # -- resuming ---------------------------------------------------------------------------------
    def resume_point(self) -> ResumePoint | None:
        """The point to resume from when a kept manifest matches ``key``; otherwise the folder is
        cleared (or ``ResumeMismatchError`` with ``require_resume``) and None is returned."""
        manifest = self._read_manifest()
        matches = manifest is not None and self.key is not None and manifest.get("key") == self.key
        if not matches:
            if self.require_resume and manifest is not None:
                raise ResumeMismatchError(f"cannot resume {self.output}: the frames kept in {self.folder} were made "
                                          "by another command or from another input")
            if manifest is not None:
                self.log(f"{self.output}: discarding {manifest.get('frames', 0)} kept frames of another command")
            shutil.rmtree(self.folder, ignore_errors=True)
            return None
        self.segments, self.frames, self.last_pts = list(manifest["segments"]), int(manifest["frames"]), \
            manifest["last_pts"]
        state = np.load(self.folder / STATE) if (self.folder / STATE).is_file() else None
        self._drop_unrecorded_frames(self.frames)
        for leftover in self.folder.glob(".*.tmp"):  # a segment a kill interrupted
            leftover.unlink(missing_ok=True)
        self.log(f"{self.output}: resuming after frame {self.frames}, kept in {self.folder}")
        return ResumePoint(self.frames, self.last_pts, state)

    def _read_manifest(self) -> dict[str, Any] | None:
        try:
            manifest = json.loads((self.folder / MANIFEST).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        names = manifest.get("segments") if isinstance(manifest, dict) else None
        if not isinstance(names, list) or not all((self.folder / str(name)).exists() for name in names):
            return None
        return manifest

    # -- writing ----------------------------------------------------------------------------------
    def begin(self, size: tuple[int, int], alpha: bool, time_base: Fraction, fps: float) -> None:
        """Frames of (H, W) ``size`` (with alpha or not) come next, timed in ``time_base``."""
        self._timing = (size, alpha, time_base, fps)
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.format.codec is None:
            (self.folder / "frames").mkdir(exist_ok=True)

    def add(self, picture: np.ndarray, pts: int, state: np.ndarray | None = None) -> None:
        """Write the next output picture (``pts`` in the time base of ``begin``); ``state`` is the
        smoother's state after this frame, kept when the frame ends a segment."""
        with no_space_as_error(self.output, self.folder):
            if self.format.codec is None:
                write_image(self.folder / "frames" / f"{self.frames + 1:06d}.png", picture)
            else:
                if self._encoder is None:
                    self._open_segment()
                self._encoder.encode(picture, pts)
            self.frames += 1
            self._in_segment += 1
            self.last_pts = pts
            if self._in_segment == self.segment_frames:
                self._close_segment(state)

    def _open_segment(self) -> None:
        size, alpha, time_base, fps = self._timing
        name = f"{len(self.segments):06d}{self.format.suffix}"
        self._temporary = self.folder / f".{name}.{secrets.token_hex(4)}.tmp"
        self._encoder = SegmentEncoder(self._temporary, self.format, size, alpha, time_base, fps)

    def _close_segment(self, state: np.ndarray | None) -> None:
        """Finish the current segment (an encoded file, or the PNGs so far) and record it in the manifest."""
        if self.format.codec is None:
            self.segments = ["frames"]  # PNG frames: the manifest counts them
        else:
            name = f"{len(self.segments):06d}{self.format.suffix}"
            self._encoder.close()
            self._encoder = None
            move_into_place(self._temporary, self.folder / name)
            self._temporary = None
            self.segments.append(name)
        self._in_segment = 0
        if state is not None:
            buffer = io.BytesIO()
            np.save(buffer, np.asarray(state, dtype=np.float32))
            write_bytes(self.folder / STATE, buffer.getvalue())
        manifest = {"key": self.key, "frames": self.frames, "last_pts": self.last_pts, "segments": self.segments}
        write_text(self.folder / MANIFEST, json.dumps(manifest, indent=1))

    def finish(self, audio_from: Path | None = None, end_time: float | None = None) -> str | None:
        """Complete the output: join the segments (with ``audio_from``'s audio up to ``end_time``
        seconds), check the frame count, rename into place and remove the folder. Returns a note on
        the audio for the log (None: nothing to say)."""
        note = None
        with no_space_as_error(self.output, self.folder):
            if self.format.codec is None:
                self._place_frames()
            else:
                if self._encoder is not None:
                    self._close_segment(None)
                segments = [self.folder / name for name in self.segments]
                note = self._join(segments, audio_from, end_time)
        shutil.rmtree(self.folder, ignore_errors=True)
        return note

    def _join(self, segments: list[Path], audio_from: Path | None, end_time: float | None) -> str | None:
        result: dict[str, Any] = {}

        def create(temporary: Path) -> None:
            joined = join_segments(segments, temporary, self.format, audio_from, end_time)
            decoded = count_frames(temporary)
            if joined.frames != self.frames or decoded != self.frames:
                raise OSError(f"{self.output}: {decoded} frames decoded back from the joined video, "
                              f"{self.frames} written")
            result["audio"] = joined.audio

        atomic_create(self.output, create)
        audio = result.get("audio")
        return f"audio {audio}" if audio and audio != "copied" else None

    def _place_frames(self) -> None:
        frames = self.folder / "frames"
        count = sum(1 for _ in frames.glob("*.png"))
        if count != self.frames:
            raise OSError(f"{self.output}: {count} frames in {frames}, {self.frames} written")
        old = None
        if self.output.exists() or self.output.is_symlink():
            if not self.output.is_dir():
                raise UserError(f"{self.output} exists and is not a folder of frames")
            old = self.output.with_name(f".{self.output.name}.{secrets.token_hex(4)}.old")
            os.replace(self.output, old)  # the older folder goes whole: frames are never mixed
        os.replace(frames, self.output)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def abandon(self, keep: bool) -> None:
        """Stop after an interruption or an error: remove the segment being written; keep the completed
        ones when ``keep`` (and the output is resumable), else the whole folder."""
        if self._encoder is not None:
            self._encoder.abort()
            self._encoder = None
        if self._temporary is not None:
            self._temporary.unlink(missing_ok=True)
        manifest = self._read_manifest() if keep and self.key is not None else None
        if manifest is not None:
            self._drop_unrecorded_frames(int(manifest["frames"]))
            self.log(f"{self.output}: {manifest['frames']} frames kept in {self.folder}; the same command resumes "
                     "after them")
            return
        shutil.rmtree(self.folder, ignore_errors=True)

    def _drop_unrecorded_frames(self, recorded: int) -> None:
        """Remove the PNG frames past the last recorded segment (a resumed run writes them again)."""
        for extra in (self.folder / "frames").glob("*.png"):
            if not extra.stem.isdigit() or int(extra.stem) > recorded:
                extra.unlink(missing_ok=True)
