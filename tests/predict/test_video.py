"""Videos and webcams: ``pgnet.predict.video`` and ``pgnet-predict`` on short synthetic clips, tiny model at 64 px."""

import errno
import json
import signal
import subprocess
import sys
import threading
import time
import weakref
from collections import Counter
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from pgnet.cli.predict import main as predict_main
from pgnet.predict.compose import Composer, compose, mask_to_uint8
from pgnet.predict.media import SegmentEncoder, read_video, upright
from pgnet.predict.output_plan import plan_video_outputs
from pgnet.predict.predictor import Predictor
from pgnet.predict.video import (
    DEFAULT_FPS,
    FrameReader,
    TemporalSmoother,
    frames_in_flight,
    mean_consecutive_change,
    predict_video,
    write_video,
)
from pgnet.predict.video_output import ResumeMismatchError
from pgnet.writing import NoSpaceError

SIZE = 64
HEIGHT, WIDTH, FPS = 72, 96, 12.0


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint):
    return tiny_checkpoint  # the shared tiny trained model (conftest.py)


@pytest.fixture(scope="module")
def predictor(checkpoint):
    return Predictor.from_checkpoint(checkpoint, device="cpu", size=SIZE, batch_size=4, optimize=False)


class ColourPredictor:
    """Stands in for the network where only the video plumbing is tested: the mask is where the
    frame is orange (red channel high), computed on the network-size copy and resized back."""

    size, batch_size, fast_decode = SIZE, 2, True  # frames come resized to SIZE by the reader

    def __init__(self):
        self.batches = []

    def predict_arrays(self, images, sizes):
        self.batches.append(len(images))
        masks = []
        for image, (height, width) in zip(images, sizes):
            assert image.shape == (SIZE, SIZE, 3)
            small = np.clip((image[..., 0].astype(np.float32) - 120) / 100, 0, 1)
            masks.append(cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR))
        return masks


def moving_disc_frames(count, height=HEIGHT, width=WIDTH, noise=0.0, seed=0):
    """RGB frames of an orange disc moving right over a blue gradient, with optional sensor noise."""
    rng = np.random.default_rng(seed)
    gradient = np.linspace(60, 200, width, dtype=np.float32)[None, :, None]
    frames = []
    for index in range(count):
        frame = np.broadcast_to(gradient * np.array([0.2, 0.5, 1.0], np.float32), (height, width, 3)).copy()
        cv2.circle(frame, (width // 4 + 3 * index, height // 2), height // 4, (240, 150, 30), -1)
        frame += rng.normal(0, noise, frame.shape).astype(np.float32)
        frames.append(np.clip(frame, 0, 255).astype(np.uint8))
    return frames


def write_clip(path, frames, fps=FPS, codec=None, pts=None, audio_seconds=None, audio_codec="aac"):
    """A real encoded video (PyAV) of RGB ``frames``: mp4 (H.264, or 4:4:4 for odd sides), avi
    (MJPEG) or mkv; ``pts`` in 1/``fps`` units (default 0, 1, 2, ...); ``audio_seconds`` adds a
    440 Hz tone of that length."""
    height, width = frames[0].shape[:2]
    codec = codec or {".avi": "mjpeg", ".webm": "libvpx-vp9"}.get(Path(path).suffix, "libx264")
    pix_fmt = {"mjpeg": "yuvj420p"}.get(codec, "yuv420p" if height % 2 == width % 2 == 0 else "yuv444p")
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        stream.codec_context.time_base = 1 / Fraction(fps).limit_denominator(1001)
        sound = None
        if audio_seconds:
            sound = container.add_stream(audio_codec, rate=48000)
            sound.layout = "mono"
        for index, picture in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(picture, format="rgb24")
            frame.pts, frame.time_base = (pts or range(len(frames)))[index], stream.codec_context.time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
        if sound is not None:
            samples = np.sin(np.arange(int(48000 * audio_seconds)) * (2 * np.pi * 440 / 48000)).astype(np.float32)
            for start in range(0, len(samples), 1024):
                chunk = samples[None, start:start + 1024]
                audio = av.AudioFrame.from_ndarray(chunk, format="flt", layout="mono")
                audio.sample_rate, audio.pts = 48000, start
                container.mux(sound.encode(audio))
            container.mux(sound.encode(None))
    return path


def read_clip(path):
    """(RGB frames, fps) of a video file."""
    frames, _ = read_video(path)
    with av.open(str(path)) as container:
        fps = float(container.streams.video[0].average_rate)
    return frames, fps


def audio_seconds(path):
    """The length of a file's audio stream in seconds (None without one): end of its last packet."""
    with av.open(str(path)) as container:
        if not container.streams.audio:
            return None
        stream = container.streams.audio[0]
        ends = [float((packet.pts + packet.duration) * packet.time_base)
                for packet in container.demux(stream) if packet.size]
        return max(ends)


class FakeCamera:
    """A camera for tests: ``cv2.VideoCapture``'s interface, endless frames, no frame rate reported."""

    def __init__(self, index, frames=None):
        self.index, self.frames, self.position, self.released = index, frames or moving_disc_frames(4), 0, False

    def isOpened(self):
        return self.index == 0

    def read(self):
        frame = self.frames[self.position % len(self.frames)]
        self.position += 1
        return True, cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)

    def get(self, prop):
        return 0.0

    def release(self):
        self.released = True


FAST = ("--no-optimize", "-b", "8")


def run_cli(capsys, *args):
    status = predict_main([str(a) for a in args] + ["--no-progress"])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_predict_video_yields_every_frame_with_the_pictures_mask(predictor, tmp_path):
    clip = write_clip(tmp_path / "clip.mp4", moving_disc_frames(5))
    decoded, _ = read_clip(clip)
    frames = list(predictor.predict_video(clip))
    assert [frame.index for frame in frames] == list(range(5))
    expected = predictor.predict_arrays(decoded[:4], [(HEIGHT, WIDTH)] * 4)
    for frame, image, mask in zip(frames, decoded, expected):
        np.testing.assert_array_equal(frame.image, image)
        assert frame.mask.shape == (HEIGHT, WIDTH) and frame.mask.dtype == np.float32
        np.testing.assert_allclose(frame.mask, mask, atol=1e-5)
    stand_in = ColourPredictor()
    assert len(list(predict_video(stand_in, clip, max_frames=3))) == 3 and stand_in.batches == [2, 1]


def test_cli_video_keeps_frame_count_size_and_fps_and_a_folder_of_videos(checkpoint, tmp_path, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    write_clip(inputs / "a.mp4", moving_disc_frames(5))
    write_clip(inputs / "b.avi", moving_disc_frames(3), fps=25.0)
    cv2.imwrite(str(inputs / "still.png"), moving_disc_frames(1)[0])
    status, out, err = run_cli(capsys, inputs, "-c", checkpoint, "-o", tmp_path / "out", "--size", SIZE, *FAST)
    assert status == 0, err
    assert "wrote 1 mask pictures" in out and "wrote 2 mask videos" in out
    assert (tmp_path / "out" / "still.png").is_file()
    for name, count, fps in (("a.mp4", 5, FPS), ("b.mp4", 3, 25.0)):
        frames, written_fps = read_clip(tmp_path / "out" / name)
        assert len(frames) == count and written_fps == pytest.approx(fps)
        assert frames[0].shape == (HEIGHT, WIDTH, 3)
    assert not list((tmp_path / "out").glob(".*"))  # no partial files left
    status, out, err = run_cli(capsys, inputs, "-c", checkpoint, "-o", tmp_path / "out", "--size", SIZE, *FAST,
                               "--resume")
    assert status == 0 and "wrote 2 mask videos" in out
    assert f"{tmp_path / 'out' / 'a.mp4'} is complete: kept" in err and "b.mp4 is complete: kept" in err


@pytest.mark.parametrize("mode", ["overlay", "color", "blur", "background"])
def test_each_background_mode_on_video(tmp_path, mode):
    source = moving_disc_frames(3)
    clip = write_clip(tmp_path / "clip.avi", source)
    backdrop = np.full((10, 30, 3), (0, 200, 0), np.uint8)
    composer = Composer(mode, "#ff00ff", background=backdrop if mode == "background" else None, blur=5,
                        refine_foreground=mode == "background")
    stand_in = ColourPredictor()
    result = write_video(stand_in, clip, tmp_path / "out.mp4", composer, progress=False)
    assert (result.frames, result.size, result.fps, result.warning) == (3, (HEIGHT, WIDTH), FPS, None)
    written, _ = read_clip(tmp_path / "out.mp4")
    expected = [compose(frame.image, frame.mask, mode, "#ff00ff", background=backdrop, blur=5,
                        refine_foreground=mode == "background") for frame in stand_in_frames(clip)]
    assert len(written) == 3
    for picture, reference in zip(written, expected):
        assert np.abs(picture.astype(float) - reference).mean() < 8  # up to mp4v's compression


def stand_in_frames(clip, **options):
    return list(predict_video(ColourPredictor(), clip, **options))


def test_rgba_video_as_a_numbered_png_sequence(tmp_path):
    clip = write_clip(tmp_path / "clip.mp4", moving_disc_frames(3))
    result = write_video(ColourPredictor(), clip, tmp_path / "cut", composer=Composer("rgba"), progress=False,
                         video_format="png")
    names = sorted(path.name for path in result.output.iterdir())
    assert names == ["000001.png", "000002.png", "000003.png"]
    for name, frame in zip(names, stand_in_frames(clip)):
        rgba = cv2.imread(str(result.output / name), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(rgba[..., 3], mask_to_uint8(frame.mask))
        np.testing.assert_array_equal(rgba[..., 2::-1], frame.image)


def test_truncated_video_keeps_decoded_frames_and_unreadable_ones_are_skipped(checkpoint, tmp_path, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    whole = write_clip(tmp_path / "whole.avi", moving_disc_frames(12))
    data = whole.read_bytes()
    (inputs / "cut.avi").write_bytes(data[: len(data) // 2])
    (inputs / "junk.mp4").write_bytes(b"not a video at all" * 20)
    mp4 = write_clip(tmp_path / "whole.mp4", moving_disc_frames(4)).read_bytes()
    (inputs / "nomoov.mp4").write_bytes(mp4[: len(mp4) // 2])  # an mp4 cut before its index
    status, out, err = run_cli(capsys, inputs, "-c", checkpoint, "-o", tmp_path / "out", "--size", SIZE, *FAST)
    assert status == 0
    assert "skipped 2" in out and "junk.mp4" in err and "nomoov.mp4" in err
    assert "cut.avi ends early: decoded" in err and "of the 12 frames" in err
    frames, _ = read_clip(tmp_path / "out" / "cut.mp4")
    assert 1 <= len(frames) < 12
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["cut.mp4"]


def test_webcam_loop_with_a_fake_camera(checkpoint, tmp_path, capsys, monkeypatch):
    cameras = []
    monkeypatch.setattr(cv2, "VideoCapture", lambda index: cameras.append(FakeCamera(index)) or cameras[-1])
    status, _, err = run_cli(capsys, "--webcam", 0, "--max-frames", 5, "-c", checkpoint, "-o", tmp_path, "--size",
                               SIZE, "--mode", "color", *FAST)
    assert status == 0, err
    status, _, err = run_cli(capsys, "--webcam", 3, "-c", checkpoint, "-o", tmp_path, "--size", SIZE, *FAST)
    assert status == 1 and "camera 3" in err
    monkeypatch.undo()  # read the result with the real cv2.VideoCapture
    frames, fps = read_clip(tmp_path / "webcam0.mp4")
    assert len(frames) == 5 and fps == DEFAULT_FPS and cameras[0].released

    class Interrupting(ColourPredictor):  # Ctrl-C during the third batch: a camera run keeps what it wrote
        def predict_arrays(self, images, sizes):
            if len(self.batches) == 2:
                raise KeyboardInterrupt
            return super().predict_arrays(images, sizes)

    result = write_video(Interrupting(), 0, tmp_path / "stopped.mp4", capture_factory=FakeCamera, progress=False)
    assert result.frames == 4 and len(read_clip(tmp_path / "stopped.mp4")[0]) == 4


def test_smoothing_reduces_flicker_on_a_moving_shape(predictor, tmp_path):
    clip = write_clip(tmp_path / "noisy.avi", moving_disc_frames(8, noise=12.0))
    raw = [frame.mask for frame in predict_video(predictor, clip)]  # the tiny network's masks
    smoother = TemporalSmoother(0.6)
    smoothed = [smoother(mask).copy() for mask in raw]
    assert mean_consecutive_change(smoothed) < 0.75 * mean_consecutive_change(raw)
    # predict_video applies the same smoother
    through_video = [frame.mask for frame in stand_in_frames(clip, smooth=0.6)]
    smoother = TemporalSmoother(0.6)
    for frame, mask in zip(stand_in_frames(clip), through_video):
        np.testing.assert_allclose(mask, smoother(frame.mask), atol=1e-6)
    np.testing.assert_array_equal(TemporalSmoother(0.0)(raw[1]), raw[1])
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        TemporalSmoother(1.0)


def test_video_outputs_are_planned_without_collisions(tmp_path):
    (tmp_path / "in" / "sub").mkdir(parents=True)
    for name in ("a.mp4", "a.avi", "sub/b.mov", "c.txt"):
        (tmp_path / "in" / name).write_bytes(b"x")
    jobs = plan_video_outputs([tmp_path / "in"], tmp_path / "out", "mp4", recursive=True)
    outputs = sorted(job.output.relative_to(tmp_path / "out").as_posix() for job in jobs)
    assert outputs == ["a.avi.mp4", "a.mp4.mp4", "sub/b.mp4"]
    frames = plan_video_outputs([tmp_path / "in" / "sub" / "b.mov"], tmp_path / "out", "png")
    assert [job.output.name for job in frames] == ["b"]
    assert [job.output.name for job in plan_video_outputs([tmp_path / "in" / "sub"], tmp_path / "o", "webm")] == [
        "b.webm"]
    with pytest.raises(FileExistsError, match="overwrite"):
        plan_video_outputs([tmp_path / "in" / "a.mp4"], tmp_path / "in", "mp4")
    with pytest.raises(OSError, match="junk"):
        (tmp_path / "junk.mp4").write_bytes(b"x")
        FrameReader(tmp_path / "junk.mp4", SIZE)


def test_cli_pictures_on_a_background_keep_their_transparency(checkpoint, predictor, tmp_path, capsys):
    pictures = tmp_path / "in"
    pictures.mkdir()
    frame = moving_disc_frames(1)[0]
    alpha = np.full((HEIGHT, WIDTH), 255, np.uint8)
    alpha[:, : WIDTH // 3] = 0  # the left third is transparent
    cv2.imwrite(str(pictures / "cut.png"), cv2.cvtColor(np.dstack((frame, alpha)), cv2.COLOR_RGBA2BGRA))
    backdrop = np.full((30, 40, 3), (0, 0, 250), np.uint8)
    cv2.imwrite(str(tmp_path / "bg.png"), backdrop)  # BGR on disk: red
    status, out, err = run_cli(capsys, pictures, "-c", checkpoint, "-o", tmp_path / "out", "--size", SIZE, *FAST,
                               "--background", tmp_path / "bg.png", "--refine-foreground")
    assert status == 0, err
    assert "wrote 1 background pictures" in out
    written = cv2.cvtColor(cv2.imread(str(tmp_path / "out" / "cut.png")), cv2.COLOR_BGR2RGB)
    assert (written[:, : WIDTH // 3] == (250, 0, 0)).all()  # transparent input: only the background shows
    mask = predictor.predict_arrays([frame], [(HEIGHT, WIDTH)])[0]
    expected = compose(np.dstack((frame, alpha)), mask, "background", background=backdrop[..., ::-1],
                       refine_foreground=True)
    assert np.abs(written.astype(int) - expected).max() <= 1


def test_cli_rejects_bad_video_options(tmp_path, capsys):
    for options in (["--smooth", "1"], ["--max-frames", "0"], ["--mode", "color", "--background", "x.png"],
                    ["--mode", "rgba", "--video-format", "mp4"], ["--segment-frames", "0"], []):
        with pytest.raises(SystemExit) as exit_info:
            predict_main([*options, "-c", "ck.pth", "-o", str(tmp_path)] + ([] if not options else ["in.mp4"]))
        assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--smooth" in err and "mp4 (H.264) videos cannot be transparent" in err


def test_frames_are_turned_upright_as_their_display_matrix_says():
    picture = np.arange(6, dtype=np.uint8).reshape(2, 3)
    assert upright(picture, 0) is picture
    np.testing.assert_array_equal(upright(picture, -90), [[3, 0], [4, 1], [5, 2]])  # a phone held upright
    np.testing.assert_array_equal(upright(picture, 90), [[2, 5], [1, 4], [0, 3]])
    np.testing.assert_array_equal(upright(picture, 180), picture[::-1, ::-1])


# --------------------------------------------------------------------------------------------------
# Outputs as an editor expects them: exact size, alpha, audio, timestamps, whole or absent, resumable


def stand_in_masks(clip, **options):
    return [mask_to_uint8(frame.mask) for frame in stand_in_frames(clip, **options)]


def test_odd_sizes_are_kept_in_every_format(tmp_path):
    clip = write_clip(tmp_path / "odd.avi", moving_disc_frames(2, height=179, width=321))  # MJPEG
    notes = []
    for video_format, mode in (("mp4", "overlay"), ("webm", "rgba"), ("prores", "rgba")):
        result = write_video(ColourPredictor(), clip, tmp_path / f"out-{video_format}", Composer(mode),
                             video_format=video_format, progress=False, log=notes.append)
        frames, _ = read_video(result.output)
        assert (len(frames), frames[0].shape[:2], result.size) == (2, (179, 321), (179, 321))
    assert len(notes) == 1 and "321x179 has an odd side" in notes[0] and "yuv444p" in notes[0]


@pytest.mark.parametrize("video_format", ["webm", "prores"])
def test_transparent_video_has_the_mask_as_alpha(tmp_path, video_format):
    clip = write_clip(tmp_path / "clip.mkv", moving_disc_frames(4), codec="ffv1")  # lossless source
    result = write_video(ColourPredictor(), clip, tmp_path / "cut", Composer("rgba"), video_format=video_format,
                         progress=False)
    decoded, _ = read_video(result.output, alpha=True, decoder="libvpx-vp9" if video_format == "webm" else None)
    masks = stand_in_masks(clip)
    errors = [np.abs(rgba[..., 3].astype(int) - mask).max() for rgba, mask in zip(decoded, masks)]
    assert len(decoded) == 4
    assert max(errors) == 0, errors  # ProRes 4444's alpha is lossless, and WebM with alpha is encoded lossless
    if video_format == "webm":  # the flag players need to show the alpha
        with av.open(str(result.output)) as container:
            assert container.streams.video[0].metadata.get("ALPHA_MODE") == "1"
    colours = [np.abs(rgba[..., :3].astype(int) - frame.image).mean() for rgba, frame in
               zip(decoded, stand_in_frames(clip))]
    assert max(colours) < 4


def test_audio_is_kept_copied_or_re_encoded_and_dropped_on_request(tmp_path):
    clip = write_clip(tmp_path / "talk.mp4", moving_disc_frames(12), audio_seconds=1.0)
    notes = []
    length = audio_seconds(clip)
    for video_format, mode, audio in (("mp4", "color", True), ("webm", "rgba", True), ("mp4", "mask", False)):
        result = write_video(ColourPredictor(), clip, tmp_path / f"out-{video_format}-{audio}", Composer(mode),
                             video_format=video_format, audio=audio, progress=False, log=notes.append)
        if audio:
            assert audio_seconds(result.output) == pytest.approx(length, abs=0.03)
        else:
            assert audio_seconds(result.output) is None
        assert len(read_video(result.output)[0]) == 12
    assert notes == [f"{clip}: audio re-encoded to libopus (.webm cannot hold the source's audio codec)"]


def test_variable_frame_rate_timestamps_are_kept(tmp_path):
    stamps = [0, 1, 3, 4, 9, 10]  # in 1/12 s: a stream with gaps
    clip = write_clip(tmp_path / "vfr.mp4", moving_disc_frames(6), pts=stamps)
    result = write_video(ColourPredictor(), clip, tmp_path / "out", progress=False)
    with av.open(str(result.output)) as container:
        stream = container.streams.video[0]
        times = [float(frame.pts * stream.time_base) for frame in container.decode(stream)]
    assert times == pytest.approx([stamp / FPS for stamp in stamps], abs=1e-3)


def test_a_full_disk_stops_the_video_with_exit_1_and_no_output(checkpoint, tmp_path, capsys, monkeypatch):
    clip = write_clip(tmp_path / "clip.mp4", moving_disc_frames(6))
    encode = SegmentEncoder.encode

    def failing(self, picture, pts):  # the disk fills up at the fourth frame (as on a small tmpfs)
        if self.frames == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        encode(self, picture, pts)

    monkeypatch.setattr(SegmentEncoder, "encode", failing)
    status, _, err = run_cli(capsys, clip, "-c", checkpoint, "-o", tmp_path / "out", "--size", SIZE, *FAST)
    assert status == 1
    assert f"error: no space left on device while writing {tmp_path / 'out' / 'clip.mp4'}" in err
    assert [path.name for path in (tmp_path / "out").rglob("*")] == []  # no output, no temporary file


class Interrupting(ColourPredictor):
    """Ctrl-C during batch ``stop`` (counted from 0)."""

    def __init__(self, stop):
        super().__init__()
        self.stop = stop

    def predict_arrays(self, images, sizes):
        if len(self.batches) == self.stop:
            raise KeyboardInterrupt
        return super().predict_arrays(images, sizes)


@pytest.mark.parametrize("video_format", ["mp4", "png"])
def test_an_interrupted_video_resumes_to_the_frames_of_an_uninterrupted_run(tmp_path, video_format, monkeypatch):
    """The frames given to the encoder (mp4) or written (png) are those of an uninterrupted run, exactly.
    Decoded mp4 frames are compared within a few levels: on a loaded machine libx264 now and then
    encodes the same frames of a segment to other bits (up to 13 levels apart when decoded)."""
    encoded = {}  # (pts, picture) of each completed segment's frames, by the folder it was built in
    encode, close = SegmentEncoder.encode, SegmentEncoder.close

    def recording_encode(self, picture, pts):
        self.__dict__.setdefault("inputs", []).append((pts, picture.copy()))
        encode(self, picture, pts)

    def recording_close(self):
        close(self)
        encoded.setdefault(self.path.parent.name, []).extend(self.inputs)

    monkeypatch.setattr(SegmentEncoder, "encode", recording_encode)
    monkeypatch.setattr(SegmentEncoder, "close", recording_close)
    clip = write_clip(tmp_path / "long.mp4", moving_disc_frames(14, noise=8.0), audio_seconds=14 / FPS)
    options = dict(composer=Composer("rgba" if video_format == "png" else "blur", blur=3), smooth=0.5,
                   segment_frames=4, video_format=video_format, progress=False, resume_key="model A")
    output = tmp_path / ("out.mp4" if video_format == "mp4" else "out")
    with pytest.raises(KeyboardInterrupt):
        write_video(Interrupting(stop=5), clip, output, **options)  # 10 frames predicted, 2 segments written
    partial = tmp_path / f".{output.name}.partial"
    assert not output.exists() and not list(partial.rglob("*.tmp"))
    assert json.loads((partial / "manifest.json").read_text())["frames"] == 8

    notes = []
    resumed_predictor = ColourPredictor()
    result = write_video(resumed_predictor, clip, output, log=notes.append, **options)
    assert notes[0] == f"{output}: resuming after frame 8, kept in {partial}"
    assert sum(resumed_predictor.batches) == 6 and result.frames == 14 and not partial.exists()
    whole = write_video(ColourPredictor(), clip, tmp_path / f"whole{output.suffix}", **options)
    if video_format == "mp4":
        kept, fresh = encoded[partial.name], encoded[".whole.mp4.partial"]
        assert len(kept) == 14 and [pts for pts, _ in kept] == [pts for pts, _ in fresh]
        for index, ((_, given), (_, reference)) in enumerate(zip(kept, fresh)):
            np.testing.assert_array_equal(given, reference, err_msg=f"encoder input {index}")
        resumed, stamps = read_video(result.output)
        expected, expected_stamps = read_video(whole.output)
        assert audio_seconds(result.output) == pytest.approx(audio_seconds(clip), abs=0.03)
    else:
        resumed = [cv2.imread(str(path), cv2.IMREAD_UNCHANGED) for path in sorted(result.output.iterdir())]
        expected = [cv2.imread(str(path), cv2.IMREAD_UNCHANGED) for path in sorted(whole.output.iterdir())]
        stamps = expected_stamps = None
    assert len(resumed) == 14 and stamps == expected_stamps
    for index, (picture, reference) in enumerate(zip(resumed, expected)):
        if video_format == "png":
            np.testing.assert_array_equal(picture, reference, err_msg=f"frame {index}")
        else:
            difference = np.abs(picture.astype(np.int16) - reference)
            assert difference.max() <= 24 and difference.mean() < 1.0, f"frame {index}"

    # Kept segments of another model are discarded, or refused with require_resume.
    with pytest.raises(KeyboardInterrupt):
        write_video(Interrupting(stop=3), clip, output, **options)
    with pytest.raises(ResumeMismatchError, match="another command"):
        write_video(ColourPredictor(), clip, output, require_resume=True, **{**options, "resume_key": "model B"})
    notes = []
    write_video(ColourPredictor(), clip, output, log=notes.append, **{**options, "resume_key": "model B"})
    assert notes[0] == f"{output}: discarding 4 kept frames of another command"


def test_a_frame_folder_replaces_an_older_one_whole_and_pictures_cannot_land_in_it(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    clip = write_clip(tmp_path / "in" / "clip.mp4", moving_disc_frames(5))
    short = write_clip(tmp_path / "short.mp4", moving_disc_frames(3))
    for source in (clip, short):
        write_video(ColourPredictor(), source, tmp_path / "out" / "clip", Composer("rgba"), video_format="png",
                    progress=False)
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["clip"]
    assert sorted(path.name for path in (tmp_path / "out" / "clip").iterdir()) == [f"00000{i}.png" for i in (1, 2, 3)]
    (tmp_path / "in" / "clip").mkdir()
    cv2.imwrite(str(tmp_path / "in" / "clip" / "000001.jpg"), moving_disc_frames(1)[0])
    status, _, err = run_cli(capsys, tmp_path / "in", "-r", "-c", "unused.pth", "-o", tmp_path / "o2", "--mode",
                             "rgba", "--video-format", "png")
    assert status == 2 and "picture outputs would land on video outputs" in err and "000001.png" in err


def test_frames_in_flight_are_bounded_whatever_the_length(tmp_path, monkeypatch):
    """Each decoded picture, network-size copy, mask and output picture is counted while it lives: at
    most ``frames_in_flight(1)`` of each at once, for a video longer than the bound and one four times
    longer (counts, not bytes: what the threads' timing does not vary beyond the bound)."""
    live, peaks, lock = Counter(), {}, threading.Lock()

    def release(kind):
        with lock:
            live[kind] -= 1

    def track(kind, array):
        with lock:
            live[kind] += 1
            peaks[length][kind] = max(peaks[length][kind], live[kind])
        weakref.finalize(array, release, kind)
        return array

    read = FrameReader._read

    def counted_read(self, index):
        item = read(self, index)
        if item is not None:
            track("decoded", item[0])
            track("network-size", item[1])
        return item

    class OneByOne(ColourPredictor):
        batch_size = 1

        def predict_arrays(self, images, sizes):
            return [track("mask", mask) for mask in super().predict_arrays(images, sizes)]

    class CountedComposer(Composer):
        def __call__(self, image, mask):
            return track("output", super().__call__(image, mask))

    monkeypatch.setattr(FrameReader, "_read", counted_read)
    frame = moving_disc_frames(1, height=96, width=160)[0]
    for length in (24, 96):  # both longer than the bound
        peaks[length] = Counter()
        clip = write_clip(tmp_path / f"clip{length}.avi", [frame] * length)
        result = write_video(OneByOne(), clip, tmp_path / f"out{length}.mp4", CountedComposer("color"),
                             progress=False, segment_frames=8)
        assert result.frames == length and not any(live.values())  # every picture counted was released
    bound = frames_in_flight(1)
    for length, peak in peaks.items():
        assert sorted(peak) == ["decoded", "mask", "network-size", "output"]
        assert 2 <= max(peak.values()) and all(count <= bound for count in peak.values()), (length, dict(peak))


# pgnet-predict's video path (its SIGTERM handler, its error mapping, write_video) with a stand-in
# network: what a signal does, without the time to load a model in a subprocess.
SIGNALLED = """
import sys, numpy as np
from pgnet.cli.predict import PROG, terminate_as_interrupt
from pgnet.cli.common import run_command
from pgnet.predict.video import write_video

class Slow:
    size, batch_size, fast_decode = 64, 2, True
    def predict_arrays(self, images, sizes):
        return [np.full(size, 0.5, np.float32) for size in sizes]

with terminate_as_interrupt():
    sys.exit(run_command(PROG, lambda: write_video(Slow(), sys.argv[1], sys.argv[2], progress=False,
                                                   segment_frames=4, resume_key="stand-in") and 0))
"""


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_mid_video_leaves_nothing_under_the_final_name(tmp_path, signum):
    clip = write_clip(tmp_path / "long.mp4", moving_disc_frames(300, height=48, width=64))
    out = tmp_path / "out"
    process = subprocess.Popen([sys.executable, "-c", SIGNALLED, str(clip), str(out / "long.mp4")],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    manifest = out / ".long.mp4.partial" / "manifest.json"
    deadline = time.time() + 120
    while not manifest.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    process.send_signal(signum)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signum, err.decode()
    assert [path.name for path in out.iterdir()] == [".long.mp4.partial"]  # nothing under the final name
    assert not list(manifest.parent.glob(".*")) and json.loads(manifest.read_text())["frames"] % 4 == 0


def test_a_real_full_disk_raises_no_space_and_leaves_no_output(tmp_path):
    """On a 32 KiB tmpfs (where this process may mount one): FFmpeg's own write error, not an injected one."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32k", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        clip = write_clip(tmp_path / "clip.mp4", moving_disc_frames(24, noise=20.0))
        with pytest.raises(NoSpaceError, match=f"no space left on device while writing {disk / 'clip.mp4'}"):
            write_video(ColourPredictor(), clip, disk / "clip.mp4", Composer("overlay"), progress=False,
                        segment_frames=8)
        assert not (disk / "clip.mp4").exists() and not list(disk.rglob("*.tmp"))
    finally:
        subprocess.run(["umount", str(disk)], check=True)
