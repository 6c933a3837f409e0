"""``pgnet-export`` / ``scripts/export_onnx.py``: export a checkpoint's inference path to ONNX, or the
model as a package folder (``--format package``: config, safetensors weights, model card)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pgnet.cli.common import EXIT_STATUS_HELP, NothingDoneError, build_command_parser, errors_as, run_command
from pgnet.errors import UserError

PROG = "pgnet-export"


def build_parser() -> argparse.ArgumentParser:
    """``CHECKPOINT OUT.onnx [--logits] [--static-size H W] [--verify]`` or ``CHECKPOINT DIR --format package``."""
    parser = build_command_parser(
        PROG,
        "Export PGNet to ONNX: input 'image' float32 Bx3xHxW RGB 0-255, output 'mask' float32 "
        "Bx1xHxW probabilities; batch, height and width dynamic.",
        "Examples: scripts/export_onnx.py runs/dh/best.pth pgnet.onnx --verify\n"
        "          pgnet-export runs/dh/best.pth models/dh --format package --half",
        f"{EXIT_STATUS_HELP}; --verify: 1 when onnxruntime and PyTorch differ by more than the tolerance",
    )
    parser.add_argument("checkpoint", help="project checkpoint, or an official one")
    parser.add_argument("output", help="the .onnx file to write (a folder with --format package)")
    parser.add_argument("--format", default="onnx", choices=("onnx", "package"),
                        help="onnx: one ONNX file; package: a folder of config.json, model.safetensors (weights "
                        "only, no pickle) and README.md, read by every pgnet command and Predictor.from_pretrained")
    package = parser.add_argument_group("package options")
    package.add_argument("--half", action="store_true", help="store the weights as float16 (read back as float32)")
    package.add_argument("--license", default="unspecified", help="the licence named in the model card")
    package.add_argument("--calibration", help="the model's int8 calibration (pgnet-calibrate) to ship in the package: "
                         "its predictor then runs int8 on CPUs where auto allows it")
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
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUT (ONNX file or package)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and export; the exit statuses are in ``--help``."""
    args = build_parser().parse_args(argv)
    return run_command(PROG, lambda: _export(args))


def _export(args: argparse.Namespace) -> int:
    # Imported here, not at the top: --help and argument errors stay fast without torch.
    from pgnet.checkpoint import load_model_and_preprocessing
    from pgnet.predict.export import compare_onnx, export_onnx, export_package
    from pgnet.writing import check_new_file

    if args.format == "package":
        folder = export_package(args.checkpoint, args.output, weights=args.weights, half=args.half,
                                license=args.license, overwrite=args.overwrite, calibration=args.calibration)
        size = sum(path.stat().st_size for path in folder.iterdir()) / 2**20
        print(f"wrote {folder} ({size:.1f} MiB)")
        return 0

    check_new_file(args.output, [args.checkpoint], overwrite=args.overwrite, what="ONNX file")
    with errors_as(UserError, ImportError):  # onnx not installed: a usage error naming the module
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
            raise NothingDoneError(f"difference above {tolerance}")
    return 0


if __name__ == "__main__":  # python -m pgnet.cli.export
    sys.exit(main())
