"""``pgnet-predict`` / ``scripts/predict.py``: saliency masks, cut-outs and new backgrounds for
pictures and videos on disk, or for a webcam."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pgnet.cli.common import (
    NothingDoneError,
    add_reading_options,
    build_command_parser,
    check_output_folder,
    errors_as,
    run_command,
)
from pgnet.device import INFERENCE_PRECISIONS
from pgnet.errors import UserError
from pgnet.predict.compose import DEFAULT_BLUR, OUTPUT_MODES, Composer

if TYPE_CHECKING:
    import torch

    from pgnet.distributed import DistInfo
    from pgnet.predict.files import PredictionReport

# pgnet.predict.media.VIDEO_FORMATS, named here so that --help stays fast (no PyAV import)
VIDEO_FORMAT_NAMES = ("mp4", "webm", "prores", "png")

PROG = "pgnet-predict"
EXIT_STATUSES = (
    "exit status: 0 at least one output written; 1 none could be (unreadable inputs, a full disk, no input "
    "found); 2 usage error (a bad option or checkpoint, inputs not found, an output over an input)"
)


def build_parser() -> argparse.ArgumentParser:
    """``INPUT [INPUT ...] --checkpoint CKPT --output DIR [options]``."""
    parser = build_command_parser(
        PROG, "Predict saliency masks for pictures (files, folders or globs) with a PGNet checkpoint.",
        "Example: scripts/predict.py photos/ -r --checkpoint runs/dh/best.pth -o masks --mode rgba --flip",
        EXIT_STATUSES,
    )
    parser.add_argument("inputs", nargs="*", help="pictures, videos, folders, or glob patterns (quote them)")
    parser.add_argument("-o", "--output", required=True,
                        help="folder for the outputs (created; names kept: pictures .png, videos by --video-format)")
    parser.add_argument("-c", "--checkpoint", required=True,
                        help="project checkpoint, an official one, or a model package folder")
    parser.add_argument(
        "--weights", default="model", choices=("model", "ema"), help="which weights of a project checkpoint"
    )
    parser.add_argument(
        "--mode",
        choices=OUTPUT_MODES,
        help="mask: 8-bit mask; rgba: cut-out with the mask as alpha (videos: WebM with alpha); overlay: tinted "
        "picture; color: the subject on a plain colour; blur: on its background blurred; background: on the "
        "--background picture (default: mask, or background when --background is given)",
    )
    parser.add_argument(
        "--color", help="R,G,B or #RRGGBB: the background (color mode, default white) or tint (overlay, red)"
    )
    parser.add_argument("--background", metavar="IMAGE", help="picture behind the subject (resized to cover)")
    parser.add_argument("--blur", type=float, default=DEFAULT_BLUR,
                        help=f"blur mode: Gaussian sigma in pixels (default {DEFAULT_BLUR:g})")
    parser.add_argument("--refine-foreground", action="store_true",
                        help="estimate the subject's colour at soft edges (no halo of the old background)")
    parser.add_argument("--smooth", type=float, default=0.0, metavar="A",
                        help="videos: mask = A x previous + (1 - A) x current (0 = off; lags ~A/(1-A) frames)")
    parser.add_argument("--webcam", type=int, metavar="N", help="read camera N instead of files (Ctrl-C stops)")
    parser.add_argument("--max-frames", type=int, help="videos and webcam: stop after this many frames")
    parser.add_argument(
        "--video-format", choices=VIDEO_FORMAT_NAMES,
        help="videos: mp4 (H.264), webm (VP9, with alpha for rgba), prores (ProRes 4444 .mov, with alpha), png "
        "(a folder of numbered frames); default webm for --mode rgba, mp4 otherwise",
    )
    parser.add_argument("--no-audio", action="store_true", help="videos: leave the source's audio out")
    parser.add_argument("--segment-frames", type=int, default=240, metavar="N",
                        help="videos: frames per segment, the most work an interruption loses (default 240)")
    parser.add_argument(
        "--resume", action="store_true",
        help="videos: keep the outputs already complete, go on from the segments an interrupted run kept, and "
        "fail if they belong to another command (without it the same command resumes too, outputs are written "
        "again, and other commands' segments are discarded)",
    )
    parser.add_argument(
        "--size", type=int, help="network input side (default: the checkpoint's test size, 1024 officially)"
    )
    parser.add_argument(
        "--fast-decode", action="store_true",
        help="decode large JPEGs reduced and resize as uint8 before normalising (faster; default: the official "
        "protocol, full decode, normalised as float, then resized)",
    )
    parser.add_argument(
        "--flip", action="store_true", help="flip test-time augmentation (mean with the mirrored picture)"
    )
    parser.add_argument("-b", "--batch-size", type=int, default=1, help="pictures per forward pass (default 1)")
    parser.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:1, mps")
    parser.add_argument("--precision", default="auto", choices=INFERENCE_PRECISIONS,
                        help="auto: bf16 on CUDA and on a CPU with native bfloat16 (AVX-512 BF16, AMX), fp32 "
                        "elsewhere; int8 (CPU): the ResNet branch in int8, needs --calibration")
    parser.add_argument("--calibration", type=Path,
                        help="an int8 calibration of the checkpoint (pgnet-calibrate), for --precision int8; auto "
                        "uses it when its recorded check held the accuracy rule")
    parser.add_argument("--no-optimize", action="store_true",
                        help="run the model as loaded (default: BatchNorm folded, fused attention, channels_last)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the network (each new size compiles)")
    parser.add_argument("--no-cuda-graphs", action="store_true", help="on CUDA, launch kernels eagerly")
    parser.add_argument("-r", "--recursive", action="store_true", help="search folders (and ** globs) recursively")
    add_reading_options(parser, workers=4,
                        workers_help="threads reading and writing pictures; at most this many are decoded at once")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and predict; the exit statuses are in ``--help``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.inputs and args.webcam is None:
        parser.error("give pictures, videos or folders, or --webcam N")
    mode = args.mode or ("background" if args.background else "mask")
    if args.background and mode != "background":
        parser.error(f"--background goes with --mode background, not {mode}")
    if not 0 <= args.smooth < 1:
        parser.error(f"--smooth must be in [0, 1), got {args.smooth:g}")
    if args.max_frames is not None and args.max_frames < 1:
        parser.error(f"--max-frames must be positive, got {args.max_frames}")
    check_output_folder(parser, args.output)
    if args.segment_frames < 1:
        parser.error(f"--segment-frames must be positive, got {args.segment_frames}")
    if mode == "rgba" and args.video_format == "mp4":
        parser.error("mp4 (H.264) videos cannot be transparent: --mode rgba needs --video-format webm, prores or png")
    with terminate_as_interrupt():
        return run_command(PROG, lambda: _predict(args, mode))


class Terminated(KeyboardInterrupt):
    """SIGTERM: the run stops as after Ctrl-C (the output being written is removed) and exits 143."""

    exit_status = 128 + signal.SIGTERM


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Inside the block SIGTERM raises ``Terminated`` in the main thread, so it cleans up as Ctrl-C does."""

    def handler(signum: int, frame: Any) -> None:
        print(f"{PROG}: terminated", file=sys.stderr, flush=True)
        raise Terminated

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _resume_key(args: argparse.Namespace) -> str:
    """What identifies the model of a video run: a kept output is resumed only by the same one."""
    checkpoint = Path(args.checkpoint)
    stamp = checkpoint.stat() if checkpoint.is_file() else None
    parts = [os.path.realpath(checkpoint), stamp and stamp.st_size, stamp and stamp.st_mtime_ns, args.weights,
             args.size, args.fast_decode, args.flip, args.precision, args.device, args.batch_size, args.no_optimize,
             args.compile, args.calibration and os.path.realpath(args.calibration)]
    return "|".join(map(str, parts))


def _predict(args: argparse.Namespace, mode: str) -> int:
    """Under torchrun each process predicts its share of the pictures and videos (on CUDA its local
    rank's GPU); the main process prints the summary, and every process exits with the same status."""
    # Imported here, not at the top: --help and argument errors stay fast without torch.
    from pgnet import distributed
    from pgnet.device import resolve_device

    if args.webcam is not None and distributed.launched_by_torchrun():
        raise UserError("--webcam runs in one process: start it without torchrun")
    with errors_as(UserError, RuntimeError):  # a device this machine lacks: a usage error
        device = resolve_device(args.device)
    info = distributed.init_distributed(device.type)
    try:
        return _predict_on(args, mode, distributed.rank_device(device, info), info)
    finally:
        distributed.cleanup(info)


def _plan_digest(jobs: Sequence[Any]) -> str:
    """A digest of planned jobs (their sources and outputs), compared between processes."""
    import hashlib

    return hashlib.sha256(repr([(str(job.source), str(job.output)) for job in jobs]).encode()).hexdigest()


def _summed(report: PredictionReport, info: DistInfo) -> tuple[int, int]:
    """(outputs written, inputs skipped) by every process, from each one's ``report``."""
    from pgnet.distributed import gather_objects

    counts = gather_objects((len(report.written), len(report.skipped)), info)
    return sum(written for written, _ in counts), sum(skipped for _, skipped in counts)


def _predict_on(args: argparse.Namespace, mode: str, device: torch.device, info: DistInfo) -> int:
    """``_predict`` on ``device`` as the process ``info``: every process plans every output (and
    refuses alike), then predicts its shard (``pgnet.distributed.shard_of``); the counts are summed."""
    from pgnet.data.io import set_max_pixels
    from pgnet.distributed import gather_objects, shard_of, stop_together
    from pgnet.predict.files import predict_files
    from pgnet.predict.output_plan import VIDEO_SUFFIXES, check_apart, is_video_file, plan_outputs, plan_video_outputs
    from pgnet.predict.predictor import Predictor
    from pgnet.predict.video import default_video_format, predict_videos, source_name, write_video

    if args.max_pixels is not None:
        set_max_pixels(int(args.max_pixels))
    composer = Composer(mode, args.color, background=args.background, blur=args.blur,
                        refine_foreground=args.refine_foreground)
    picture_inputs = [source for source in args.inputs if not is_video_file(source)]
    # an input path that matches nothing: a usage error
    with stop_together(info), errors_as(UserError, FileNotFoundError):
        jobs = plan_outputs(picture_inputs, args.output, recursive=args.recursive) if picture_inputs else []
        video_format = args.video_format or default_video_format(mode)
        video_jobs = plan_video_outputs(args.inputs, args.output, video_format, recursive=args.recursive)
        check_apart(jobs, video_jobs)
    if len(set(gather_objects(_plan_digest([*jobs, *video_jobs]), info))) > 1:
        raise UserError("the processes found different pictures or videos: every machine must see the same files "
                        "at the same paths")
    if not jobs and not video_jobs and args.webcam is None:
        raise NothingDoneError(f"no pictures or videos found in {' '.join(args.inputs)}")
    # torch's errors loading a checkpoint: a usage error
    with stop_together(info), errors_as(UserError, RuntimeError):
        predictor = Predictor.from_checkpoint(
            args.checkpoint, device=device, weights=args.weights, size=args.size, fast_decode=args.fast_decode,
            flip=args.flip, precision=args.precision, batch_size=args.batch_size, optimize=not args.no_optimize,
            compile=args.compile, cuda_graphs=False if args.no_cuda_graphs else None, calibration=args.calibration,
        )
    processes = f", {info.world_size} processes" if info.world_size > 1 else ""
    if info.is_main:
        print(f"{len(jobs)} pictures, {len(video_jobs)} videos, {predictor}{processes}", file=sys.stderr)
        if args.compile:
            print("compiling (the first call of each size can take a minute)", file=sys.stderr, flush=True)
    progress = not args.no_progress and info.is_main
    written = 0
    if jobs:  # this process's share of them (all of them for one process), then the counts of all
        with stop_together(info), errors_as(NothingDoneError, UserError):  # met while working (a full disk): exit 1
            report = predict_files(predictor, shard_of(jobs, info), workers=args.workers, progress=progress,
                                   mode=composer.mode, color=composer.color, background=composer.background,
                                   blur=composer.blur, refine_foreground=composer.refine_foreground)
        pictures, skipped = _summed(report, info)
        if info.is_main:
            print(f"wrote {pictures} {mode} pictures to {args.output}; skipped {skipped}")
        written += pictures
    if video_jobs:
        with stop_together(info), errors_as(NothingDoneError, UserError):  # a full disk: exit 1
            report = predict_videos(predictor, shard_of(video_jobs, info), composer, smooth=args.smooth,
                                    progress=progress, max_frames=args.max_frames, workers=args.workers,
                                    video_format=video_format, audio=not args.no_audio,
                                    resume_key=_resume_key(args), require_resume=args.resume,
                                    segment_frames=args.segment_frames)
        videos, skipped = _summed(report, info)
        if info.is_main:
            print(f"wrote {videos} {mode} videos to {args.output}; skipped {skipped}")
        written += videos
    if args.webcam is not None:
        output = Path(args.output) / f"webcam{args.webcam}{VIDEO_SUFFIXES[video_format]}"
        try:
            result = write_video(predictor, args.webcam, output, composer, smooth=args.smooth,
                                 max_frames=args.max_frames, progress=not args.no_progress,
                                 workers=args.workers, video_format=video_format)
        except OSError as error:  # VideoReadError included
            raise NothingDoneError(f"{source_name(args.webcam)}: {getattr(error, 'reason', error)}") from error
        print(f"wrote {result.frames} frames of {source_name(args.webcam)} to {result.output}")
        written += 1
    return 0 if written else 1


if __name__ == "__main__":  # python -m pgnet.cli.predict
    sys.exit(main())
