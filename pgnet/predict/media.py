"""Video files through PyAV (FFmpeg's libraries): decoding with timestamps and rotation, encoding one
segment, and joining segments with the source's audio into one file.

Output formats (``VIDEO_FORMATS``), all at the frame's exact size:

- ``mp4``: H.264 (libx264, no B-frames). 4:2:0 needs even sides; an odd-sized frame is encoded 4:4:4
  (High 4:4:4 profile, which some players cannot play: ``VideoFormat.size_note`` says so);
- ``webm``: VP9 (libvpx), with an alpha plane (``yuva420p``) for cut-outs: what browsers and editors
  read as transparent video. With alpha it is encoded lossless, so the alpha is the mask exactly (at
  sharp edges lossy VP9 is off by up to 30 levels); its alpha is read back only by the ``libvpx-vp9``
  decoder. Opaque, CRF 20;
- ``prores``: ProRes 4444 in ``.mov`` (prores_ks) with a 16-bit alpha plane (12 bits when decoded):
  the editors' intermediate format, large files; the alpha is the mask exactly;
- ``png``: a folder of numbered PNGs (``pgnet.predict.video_output``), not encoded here.

Segments are encoded independently (each starts with a key frame), so a video interrupted after some
segments can go on from there and give the same frames as an uninterrupted run; ``join_segments`` copies
their packets, and the audio (copied, or re-encoded when the container cannot hold its codec) into the
final file.
"""

from __future__ import annotations

import heapq
import itertools
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

from pgnet.errors import UserError


@dataclass(frozen=True)
class VideoFormat:
    """An output format: container suffix, codec, pixel formats (opaque, odd sides, alpha) and options."""

    name: str
    suffix: str  # "" for a frame folder
    codec: str | None
    pix_fmt: str | None = None  # opaque frames of even sides
    odd_pix_fmt: str | None = None  # opaque frames with an odd side (None: pix_fmt allows them)
    alpha_pix_fmt: str | None = None  # None: no transparency
    options: dict[str, str] = field(default_factory=dict)
    alpha_options: dict[str, str] = field(default_factory=dict)  # replace ``options`` with alpha
    audio_codec: str | None = None  # what audio is re-encoded to when the container cannot copy it

    def pixel_format(self, alpha: bool, size: tuple[int, int]) -> str:
        """The encoder's pixel format for frames of (H, W) ``size``, with or without alpha."""
        if alpha:
            if self.alpha_pix_fmt is None:
                raise UserError(f"{self.name} videos cannot be transparent: choose --video-format webm, prores or png")
            return self.alpha_pix_fmt
        odd = size[0] % 2 or size[1] % 2
        return self.odd_pix_fmt if odd and self.odd_pix_fmt else self.pix_fmt

    def size_note(self, alpha: bool, size: tuple[int, int]) -> str | None:
        """A line for the log when the size changes how the video is encoded (None: nothing to say)."""
        if not alpha and self.odd_pix_fmt and (size[0] % 2 or size[1] % 2):
            return (f"{size[1]}x{size[0]} has an odd side: {self.name} is encoded {self.odd_pix_fmt} to keep the "
                    "exact size (High 4:4:4 H.264, which some players cannot play; --video-format webm plays anywhere)")
        return None


VIDEO_FORMATS: dict[str, VideoFormat] = {
    "mp4": VideoFormat("mp4", ".mp4", "libx264", "yuv420p", "yuv444p", None,
                       {"crf": "18", "preset": "veryfast", "bf": "0"}, "aac"),
    "webm": VideoFormat("webm", ".webm", "libvpx-vp9", "yuv420p", None, "yuva420p",
                        {"crf": "20", "b": "0", "deadline": "good", "cpu-used": "4", "row-mt": "1"},
                        {"lossless": "1", "deadline": "good", "cpu-used": "4", "row-mt": "1"}, "libopus"),
    "prores": VideoFormat("prores", ".mov", "prores_ks", "yuv444p10le", None, "yuva444p10le",
                          {"profile": "4444", "alpha_bits": "16"}, audio_codec="pcm_s16le"),
    "png": VideoFormat("png", "", None, alpha_pix_fmt="rgba"),
}
DEFAULT_FPS = 30.0  # when a source does not tell (many webcams)


class VideoReadError(OSError, UserError):
    """A video (or camera) that cannot be opened or yields no frame; ``path`` names it."""

    def __init__(self, path: str | Path | int, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason

    def __str__(self) -> str:
        return self.args[0]


def upright(picture: np.ndarray, rotation: int) -> np.ndarray:
    """A decoded picture turned as its display matrix says (``rotation``: degrees counterclockwise
    the picture must turn to be upright, a multiple of 90)."""
    turns = (int(rotation) // 90) % 4
    return np.ascontiguousarray(np.rot90(picture, turns)) if turns else picture


class VideoSource:
    """A video file opened for decoding: frames as (H×W×3 uint8 RGB, pts) in order, upright.

    ``fps`` is the average frame rate (``DEFAULT_FPS`` when unknown), ``time_base`` the video stream's,
    ``expected`` the frame count the container announces (None when it does not), ``audio`` the
    first audio stream (None without). ``start(pts)`` makes decoding begin at the first frame whose
    pts is at least ``pts`` (resuming). Raises ``VideoReadError`` for a file FFmpeg cannot open.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        try:
            self.container = av.open(str(path), "r")
            self.stream = self.container.streams.video[0]
        except (av.FFmpegError, IndexError, UnicodeDecodeError) as error:
            raise VideoReadError(path, f"cannot open (not a video or unsupported codec: {error})") from error
        self.stream.thread_type = "AUTO"
        rate = self.stream.average_rate or self.stream.guessed_rate
        self.fps = float(rate) if rate and 0 < float(rate) < 1000 else DEFAULT_FPS
        self.time_base: Fraction = self.stream.time_base or Fraction(1, 90000)
        self.expected = int(self.stream.frames) if self.stream.frames and self.stream.frames > 0 else None
        self.audio = self.container.streams.audio[0] if self.container.streams.audio else None
        self._from_pts: int | None = None

    def start(self, pts: int) -> None:
        """Decode from the first frame whose pts is ``pts`` or later (seeks to the key frame before it)."""
        self.container.seek(int(pts), stream=self.stream, backward=True, any_frame=False)
        self._from_pts = int(pts)

    def frames(self) -> Iterator[tuple[np.ndarray, int | None]]:
        """(RGB picture, pts in ``time_base``) of each frame, in presentation order."""
        decoded = self.container.decode(self.stream)
        if self._from_pts is not None:
            decoded = self._from(decoded)
        for frame in decoded:
            yield upright(frame.to_ndarray(format="rgb24"), getattr(frame, "rotation", 0) or 0), frame.pts

    def _from(self, decoded: Iterator[av.VideoFrame]) -> Iterator[av.VideoFrame]:
        """The frames from ``_from_pts`` on. A seek that landed past that frame (an inexact index) is
        redone from the start of the file, so that no frame is missed."""
        first = next(decoded, None)
        if first is not None and first.pts is not None and first.pts > self._from_pts:
            self.container.seek(0, stream=self.stream, backward=True, any_frame=False)
            decoded, first = self.container.decode(self.stream), None
        frames = decoded if first is None else itertools.chain((first,), decoded)
        for frame in frames:
            if frame.pts is None or frame.pts >= self._from_pts:
                yield frame

    def close(self) -> None:
        self.container.close()


class SegmentEncoder:
    """Encodes frames into one file of ``video_format`` (a segment, or a whole short video).

    Frames are H×W (gray), H×W×3 (RGB) or H×W×4 (RGBA) uint8 pictures of (H, W) ``size`` with their
    pts in ``time_base``; ``alpha`` keeps the fourth channel as the video's alpha plane.
    """

    def __init__(self, path: str | os.PathLike, video_format: VideoFormat, size: tuple[int, int], alpha: bool,
                 time_base: Fraction, fps: float) -> None:
        self.path = Path(path)
        self.alpha = alpha
        self.container = av.open(str(path), "w", format=_muxer(video_format))
        try:
            rate = Fraction(fps).limit_denominator(1001)
            options = video_format.alpha_options if alpha and video_format.alpha_options else video_format.options
            self.stream = self.container.add_stream(video_format.codec, rate=rate, options=dict(options))
            self.stream.width, self.stream.height = size[1], size[0]
            self.stream.pix_fmt = video_format.pixel_format(alpha, size)
            self.stream.time_base = time_base
            self.stream.codec_context.time_base = time_base
            if video_format.alpha_pix_fmt and alpha and video_format.codec == "libvpx-vp9":
                self.stream.metadata["alpha_mode"] = "1"
        except BaseException:
            self.container.close()
            raise
        self.frames = 0

    def encode(self, picture: np.ndarray, pts: int) -> None:
        if picture.ndim == 2:
            frame = av.VideoFrame.from_ndarray(picture, format="gray")
        elif picture.shape[2] == 4 and self.alpha:
            frame = av.VideoFrame.from_ndarray(picture, format="rgba").reformat(format=self.stream.pix_fmt)
            _set_alpha_plane(frame, picture[..., 3])  # exact: the conversion may round some values by 1
        else:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(picture[..., :3]), format="rgb24")
        frame.pts, frame.time_base = int(pts), self.stream.codec_context.time_base
        self.container.mux(self.stream.encode(frame))
        self.frames += 1

    def close(self) -> None:
        """Flush the encoder and finish the file (raises what writing it raised)."""
        try:
            self.container.mux(self.stream.encode(None))
        finally:
            self.container.close()

    def abort(self) -> None:
        """Close without flushing (the file is then removed by the caller)."""
        try:
            self.container.close()
        except (av.FFmpegError, OSError):
            pass


def _muxer(video_format: VideoFormat) -> str:
    return {".mp4": "mp4", ".webm": "webm", ".mov": "mov"}[video_format.suffix]


def _packets(path: Path, kind: str) -> Iterator[av.Packet]:
    """The packets of the first ``kind`` stream of a file (empty end-of-stream packets left out)."""
    with av.open(str(path)) as container:
        streams = getattr(container.streams, kind)
        if not streams:
            return
        for packet in container.demux(streams[0]):
            if packet.size:
                yield packet


def _audio_packets(source: Path, codec: str | None, output: Any, end_time: float | None
                   ) -> tuple[Any, Iterator[av.Packet]] | None:
    """The output audio stream for ``source``'s first audio stream and the packets to mux into it:
    copied when the output container holds the codec, else re-encoded to ``codec``. Audio starting at
    or after ``end_time`` seconds (the end of the video) is left out."""
    probe = av.open(str(source))
    if not probe.streams.audio:
        probe.close()
        return None
    template = probe.streams.audio[0]
    copy = template.codec_context.name in output.supported_codecs
    if copy:
        stream = output.add_stream_from_template(template)
    else:
        rate = 48000 if codec == "libopus" else template.rate
        stream = output.add_stream(codec, rate=rate)
        stream.layout = template.layout.name if template.layout.nb_channels <= 2 else "stereo"
    probe.close()

    def before_end(time_base: Fraction, pts: int | None) -> bool:
        return end_time is None or pts is None or float(pts * time_base) < end_time

    def copied() -> Iterator[av.Packet]:
        for packet in _packets(source, "audio"):
            if before_end(packet.time_base, packet.pts):
                yield packet

    def encoded() -> Iterator[av.Packet]:
        with av.open(str(source)) as container:
            for frame in container.decode(container.streams.audio[0]):
                if before_end(frame.time_base, frame.pts):
                    frame.pts = None  # the encoder counts samples from 0
                    yield from stream.encode(frame)
        yield from stream.encode(None)

    return stream, (copied() if copy else encoded())


@dataclass
class JoinResult:
    frames: int
    audio: str | None  # "copied", "re-encoded to CODEC", or None without audio


def join_segments(segments: Sequence[Path], output: Path, video_format: VideoFormat, audio_from: Path | None,
                  end_time: float | None = None) -> JoinResult:
    """Copy the video packets of ``segments`` (in order) and the audio of ``audio_from`` (None: none)
    into a new ``output`` file, interleaved by time. Raises ``ValueError`` when the segments' codec
    parameters differ (they must come from one encoder setting)."""
    if not segments:
        raise ValueError("no segment to join")
    with av.open(str(segments[0])) as first:
        template = first.streams.video[0]
        extradata = template.codec_context.extradata
        container = av.open(str(output), "w", format=_muxer(video_format))
        try:
            video = container.add_stream_from_template(template)
            tags = {key.lower(): value for key, value in template.metadata.items()}
            if "alpha_mode" in tags:  # WebM: players show the alpha only with this flag
                video.metadata["alpha_mode"] = tags["alpha_mode"]
        except BaseException:
            container.close()
            raise
    result = JoinResult(0, None)
    try:
        audio = _audio_packets(audio_from, video_format.audio_codec, container, end_time) if audio_from else None

        def video_packets() -> Iterator[av.Packet]:
            for segment in segments:
                with av.open(str(segment)) as opened:
                    if opened.streams.video[0].codec_context.extradata != extradata:
                        raise ValueError(f"segment {segment} was encoded with other parameters")
                yield from _packets(segment, "video")

        streams: list[tuple[Any, Iterator[av.Packet]]] = [(video, video_packets())]
        if audio is not None:
            streams.append(audio)
            result.audio = "copied" if audio[0].codec_context.name == _codec_of(audio_from) else \
                f"re-encoded to {audio[0].codec_context.name}"
        for stream, packet in _interleaved(streams):
            packet.stream = stream
            container.mux(packet)
            result.frames += stream is video
    finally:
        container.close()
    return result


def _codec_of(path: Path) -> str | None:
    with av.open(str(path)) as container:
        return container.streams.audio[0].codec_context.name if container.streams.audio else None


def _interleaved(streams: Sequence[tuple[Any, Iterator[av.Packet]]]) -> Iterator[tuple[Any, av.Packet]]:
    """Packets of several streams merged by decoding time (each stream's packets are in order)."""

    def keyed(order: int, stream: Any, packets: Iterator[av.Packet]) -> Iterator[tuple[float, int, int, Any, Any]]:
        for count, packet in enumerate(packets):
            stamp = packet.dts if packet.dts is not None else packet.pts
            seconds = float(stamp * packet.time_base) if stamp is not None and packet.time_base else 0.0
            yield seconds, order, count, stream, packet

    for _, _, _, stream, packet in heapq.merge(*(keyed(i, s, p) for i, (s, p) in enumerate(streams))):
        yield stream, packet


def count_frames(path: str | os.PathLike) -> int:
    """Frames decoded from a video file's first video stream (how an output is verified)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        return sum(1 for _ in container.decode(stream))


def read_video(path: str | os.PathLike, alpha: bool = False, decoder: str | None = None
               ) -> tuple[list[np.ndarray], list[int | None]]:
    """Every frame of a video file as RGB (or RGBA with ``alpha``: the alpha plane read exactly,
    rescaled to 8 bits) with its pts. ``decoder`` names an FFmpeg decoder to use instead of the
    default (``libvpx-vp9`` reads a WebM's alpha)."""
    pictures: list[np.ndarray] = []
    stamps: list[int | None] = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        if decoder is None:
            decoded: Iterator[Any] = container.decode(stream)
        else:
            context = av.CodecContext.create(decoder, "r")
            context.extradata = stream.codec_context.extradata
            decoded = (frame for packet in container.demux(stream) if packet.size for frame in context.decode(packet))
        for frame in decoded:
            rgb = frame.to_ndarray(format="rgb24")
            if alpha:
                rgb = np.dstack((rgb, _alpha_plane(frame)))
            pictures.append(rgb)
            stamps.append(frame.pts)
    return pictures, stamps


def _plane_bits(name: str) -> int:
    """Bits per sample of a planar YUV(A) pixel format name (``yuva420p`` 8, ``yuva444p10le`` 10)."""
    return 8 if name.endswith("p") else int(name.split("p")[-1].rstrip("lbe"))


def _set_alpha_plane(frame: av.VideoFrame, alpha: np.ndarray) -> None:
    """Write H×W uint8 ``alpha`` into a yuva frame's alpha plane (scaled to its bit depth, rounded)."""
    bits = _plane_bits(frame.format.name)
    plane = frame.planes[3]
    dtype = np.uint8 if bits == 8 else np.dtype("<u2")
    values = alpha if bits == 8 else np.rint(alpha.astype(np.float64) * ((2**bits - 1) / 255.0))
    rows = np.zeros((frame.height, plane.line_size // np.dtype(dtype).itemsize), dtype)
    rows[:, : frame.width] = values
    plane.update(rows.tobytes())


def _alpha_plane(frame: av.VideoFrame) -> np.ndarray:
    """The alpha plane of a decoded frame as H×W uint8 (a 10/12/16-bit plane rescaled and rounded)."""
    name = frame.format.name
    if not name.startswith("yuva"):
        return np.full((frame.height, frame.width), 255, np.uint8)
    plane = frame.planes[3]
    bits = _plane_bits(name)
    dtype = np.uint8 if bits == 8 else np.dtype("<u2")
    row = plane.line_size // np.dtype(dtype).itemsize
    values = np.frombuffer(bytes(plane), dtype=dtype).reshape(-1, row)[: frame.height, : frame.width]
    if bits == 8:
        return values.copy()
    return np.rint(values.astype(np.float64) * 255.0 / (2**bits - 1)).astype(np.uint8)

