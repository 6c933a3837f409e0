"""``pgnet-export`` / ``scripts/export_onnx.py``: export a checkpoint's inference path to ONNX."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """``scripts/export_onnx.py CHECKPOINT OUT.onnx [--logits] [--static-size H W] [--verify]``."""
    parser = argparse.ArgumentParser(
        description="Export PGNet to ONNX: input 'image' float32 Bx3xHxW RGB 0-255, output 'mask' float32 "
        "Bx1xHxW probabilities; batch, height and width dynamic.",
        epilog="Example: scripts/export_onnx.py runs/dh/best.pth pgnet.onnx --verify",
    )
    parser.add_argument("checkpoint", help="project checkpoint, or an official one")
    parser.add_argument("output", help="the .onnx file to write")
    parser.add_argument(
        "--weights", default="model", choices=("model", "ema"), help="which weights of a project checkpoint"
    )
    parser.add_argument("--logits", action="store_true", help="output logits instead of probabilities")
    parser.add_argument(
        "--static-size", type=int, nargs=2, metavar=("H", "W"),
        help="fix the input size (needed for global r4-s1, r3-s1 or r2-s1 points)",
    )
    parser.add_argument("--opset", type=int, help="ONNX opset (default: the exporter's)")
    parser.add_argument("--no-optimize", action="store_true", help="skip the exporter's graph optimisation")
    parser.add_argument("--verify", action="store_true", help="run the file in onnxruntime and compare with PyTorch")
    args = parser.parse_args(argv)

    from pgnet.checkpoint import load_model_and_preprocessing
    from pgnet.export import compare_onnx, export_onnx

    try:
        model, preprocessing = load_model_and_preprocessing(args.checkpoint, "cpu", weights=args.weights)
        path = export_onnx(
            model,
            args.output,
            logits=args.logits,
            static_size=args.static_size,
            opset=args.opset,
            optimize=not args.no_optimize,
            preprocessing=preprocessing,
        )
    except (FileNotFoundError, KeyError, ValueError, ImportError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)")
    if args.verify:
        shapes = ((1, 3, *args.static_size), (2, 3, *args.static_size)) if args.static_size else None
        differences = compare_onnx(model, path, logits=args.logits, preprocessing=preprocessing,
                                   **({"shapes": shapes} if shapes else {}))
        print(
            f"onnxruntime vs PyTorch, largest difference per input shape: {', '.join(f'{d:.2e}' for d in differences)}"
        )
        tolerance = 1e-2 if args.logits else 1e-3
        if max(differences) > tolerance:
            print(f"error: difference above {tolerance}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":  # python -m pgnet.cli.export
    sys.exit(main())
