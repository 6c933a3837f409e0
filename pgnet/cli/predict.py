"""``pgnet-predict`` / ``scripts/predict.py``: saliency masks (or cut-outs) for pictures on disk."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """``scripts/predict.py INPUT [INPUT ...] --checkpoint CKPT --output DIR [options]``.

    Exit status: 0 when at least one picture was written, 1 when none could be, 2 for a usage error
    (bad checkpoint, inputs not found, an output that would overwrite an input).
    """
    from pgnet.choices import OUTPUT_MODES, PRECISIONS

    parser = argparse.ArgumentParser(
        description="Predict saliency masks for pictures (files, folders or globs) with a PGNet checkpoint.",
        epilog="Example: scripts/predict.py photos/ -r --checkpoint runs/dh/best.pth -o masks --mode rgba --flip",
    )
    parser.add_argument("inputs", nargs="+", help="picture files, folders, or glob patterns (quote them)")
    parser.add_argument("-o", "--output", required=True, help="folder for the outputs (created; names kept, .png)")
    parser.add_argument("-c", "--checkpoint", required=True, help="project checkpoint, or an official one")
    parser.add_argument(
        "--weights", default="model", choices=("model", "ema"), help="which weights of a project checkpoint"
    )
    parser.add_argument(
        "--mode",
        default="mask",
        choices=OUTPUT_MODES,
        help="mask: 8-bit mask; rgba: cut-out with the mask as alpha; overlay: tinted picture; "
        "color: the subject on a plain colour (default: mask)",
    )
    parser.add_argument(
        "--color", help="R,G,B or #RRGGBB: the background (color mode, default white) or tint (overlay, red)"
    )
    parser.add_argument(
        "--size", type=int, default=1024, help="network input side (default 1024, the official test size)"
    )
    parser.add_argument(
        "--flip", action="store_true", help="flip test-time augmentation (mean with the mirrored picture)"
    )
    parser.add_argument("-b", "--batch-size", type=int, default=1, help="pictures per forward pass (default 1)")
    parser.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:1, mps")
    parser.add_argument("--precision", default="auto", choices=PRECISIONS, help="auto: bf16 on CUDA, fp32 elsewhere")
    parser.add_argument("--no-optimize", action="store_true",
                        help="run the model as loaded (default: BatchNorm folded, fused attention, channels_last)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the network (each new size compiles)")
    parser.add_argument("--no-cuda-graphs", action="store_true", help="on CUDA, launch kernels eagerly")
    parser.add_argument("-r", "--recursive", action="store_true", help="search folders (and ** globs) recursively")
    parser.add_argument("--workers", type=int, default=4,
                        help="threads reading and writing pictures; at most this many are decoded at once (default 4)")
    parser.add_argument("--max-pixels", type=float, metavar="N",
                        help="skip pictures over N pixels without decoding them (default 100e6; 0: no limit)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    from pgnet.data.io import set_max_pixels
    from pgnet.inference import Predictor, parse_color, plan_outputs, predict_files

    try:
        if args.max_pixels is not None:
            set_max_pixels(int(args.max_pixels))
        color = parse_color(args.color) if args.color else None
        jobs = plan_outputs(args.inputs, args.output, recursive=args.recursive)
    except (FileNotFoundError, FileExistsError, ValueError) as error:  # UserError is a ValueError
        print(f"error: {error}", file=sys.stderr)
        return 2
    if not jobs:
        print(f"error: no pictures found in {' '.join(args.inputs)}", file=sys.stderr)
        return 1
    try:
        predictor = Predictor.from_checkpoint(
            args.checkpoint,
            device=args.device,
            weights=args.weights,
            size=args.size,
            flip=args.flip,
            precision=args.precision,
            batch_size=args.batch_size,
            optimize=not args.no_optimize,
            compile=args.compile,
            cuda_graphs=False if args.no_cuda_graphs else None,
        )
    except (FileNotFoundError, KeyError, ValueError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{len(jobs)} pictures, {predictor}", file=sys.stderr)
    if args.compile:
        print("compiling (the first call of each size can take a minute)", file=sys.stderr, flush=True)
    try:
        report = predict_files(
            predictor, jobs, mode=args.mode, color=color, workers=args.workers, progress=not args.no_progress
        )
    except ValueError as error:  # a UserError such as NoSpaceError: stop with its message
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {len(report.written)} {args.mode} pictures to {args.output}; skipped {len(report.skipped)}")
    return 0 if report.written else 1


if __name__ == "__main__":  # python -m pgnet.cli.predict
    sys.exit(main())
