"""``pgnet-calibrate``: calibrate a model for int8 inference on the CPU and check it against float32.

The pictures (``--images``, with their masks in ``--masks`` matched by file stem) are run through the
model's float32 ResNet branch, which records the largest value of each activation
(``pgnet.predict.calibration``); the int8 predictor (``--precision int8``) quantises with those
ranges. The same pictures are then predicted in float32 and in int8: the largest and mean
probability difference, and with masks each score's difference (S-measure, MAE, max F, BIoU, mBA),
are written into the calibration's ``check``. When every score is within 0.002 of float32 and the
mean probability difference is at most 2e-3 (the rule of ``pgnet.benchmark.precision``), ``auto_rule``
is true and ``--precision auto`` runs int8 with this calibration on a CPU with native bfloat16.
The check reuses the calibration pictures; give held-out ones with ``--check-images``/``--check-masks``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from pgnet.cli.common import build_command_parser, run_command

PROG = "pgnet-calibrate"
EXIT_STATUSES = (
    "exit status: 0 calibration written and its check holds the accuracy rule; 1 written, but the rule "
    "does not hold or could not be judged (no masks); 2 nothing written (no readable picture, a bad option, "
    "an existing output)"
)


def build_parser() -> argparse.ArgumentParser:
    """``--checkpoint CK --images DIR [--masks DIR] --output FILE``."""
    parser = build_command_parser(
        PROG, "Calibrate a model for int8 inference on the CPU (the ResNet branch in int8) and check it "
        "against float32.",
        "Example: pgnet-calibrate --checkpoint runs/demo/checkpoints/best.pth --images data/val/image "
        "--masks data/val/mask --output runs/demo/int8.json", EXIT_STATUSES,
    )
    parser.add_argument("-c", "--checkpoint", required=True, help="the model: a checkpoint or a model package folder")
    parser.add_argument("--weights", choices=("model", "ema"), default="model", help="which weights of a checkpoint")
    parser.add_argument("--images", type=Path, required=True, help="folder of calibration pictures")
    parser.add_argument("--masks", type=Path, help="their masks (same file stems), to check the scores")
    parser.add_argument("--check-images", type=Path, help="held-out pictures to check on (default: --images)")
    parser.add_argument("--check-masks", type=Path, help="their masks (default: --masks when checking on --images)")
    parser.add_argument("--size", type=int, help="network input side (default: the checkpoint's test size)")
    parser.add_argument("--max-pictures", type=int, default=64, help="pictures used from each folder (64)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="the calibration file (JSON) to write")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, calibrate and check; the exit statuses are in ``--help``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.max_pictures < 1:
        parser.error(f"--max-pictures must be positive, got {args.max_pictures}")
    if args.check_masks and not args.check_images:
        parser.error("--check-masks goes with --check-images")
    return run_command(PROG, lambda: _calibrate(args))


def _read_samples(images: Path, masks: Path | None, limit: int) -> list[tuple]:
    """(picture, mask or None) of up to ``limit`` readable pictures of ``images`` (with ``masks``: the
    pairs matched by file stem, ``pgnet.data.registry.pair_files``), in name order; a picture without
    a mask, or an unreadable or mismatched pair, is reported and skipped."""
    from pgnet.data.io import IMAGE_EXTENSIONS, ImageReadError, PairMismatchError, list_files, read_image, read_pair
    from pgnet.data.registry import pair_files
    from pgnet.errors import UserError

    for folder in (images, masks):
        if folder is not None and not folder.is_dir():
            raise UserError(f"{folder}: not a folder")
    if masks is None:
        sources: list[tuple[Path, Path | None]] = [(path, None) for path in list_files(images, IMAGE_EXTENSIONS)]
    else:
        pairing = pair_files(images, masks)
        for path in pairing.unpaired_images:
            print(f"warning: {path}: no mask named {path.stem}.* in {masks}; skipped", file=sys.stderr)
        sources = list(pairing.pairs)
    samples = []
    for image_path, mask_path in sources:
        if len(samples) == limit:
            break
        try:
            sample = (read_image(image_path), None) if mask_path is None else read_pair(image_path, mask_path)[:2]
        except (ImageReadError, PairMismatchError) as error:
            print(f"warning: {error}; skipped", file=sys.stderr)
            continue
        samples.append(sample)
    if not samples:
        raise UserError(f"no readable pictures{' with masks' if masks else ''} in {images}")
    return samples


def _calibrate(args: argparse.Namespace) -> int:
    # Imported here, not at the top: --help and argument errors stay fast without torch.
    from pgnet.benchmark.precision import format_precision_figures, measure_precision_scores
    from pgnet.checkpoint import load_model_and_preprocessing
    from pgnet.predict.calibration import calibrate_pictures
    from pgnet.writing import check_new_file

    check_new_file(args.output, [args.checkpoint], overwrite=args.overwrite, what="calibration")
    model, preprocessing = load_model_and_preprocessing(args.checkpoint, "cpu", weights=args.weights)
    size = args.size or preprocessing.eval_size
    samples = _read_samples(args.images, args.masks, args.max_pictures)
    calibration = calibrate_pictures(model, [picture for picture, _ in samples], size, preprocessing)
    print(f"calibrated on {calibration.pictures} pictures at {size}x{size}", file=sys.stderr)
    held_out = args.check_images is not None
    if held_out:
        samples = _read_samples(args.check_images, args.check_masks, args.max_pictures)
    scores = measure_precision_scores(model, samples, ("int8",), size, preprocessing, calibration)
    print(format_precision_figures({"scores": scores}))
    check = {key: value for key, value in scores["int8"].items() if key != "resolved"}
    calibration.check = {**check, "masks": samples[0][1] is not None, "held_out": held_out}
    calibration.save(args.output)
    rule = calibration.check["auto_rule"]
    print(f"wrote {args.output}; the accuracy rule {'holds' if rule else 'does not hold'}"
          f"{'' if calibration.check['masks'] else ' (no masks: only the probabilities were compared)'}")
    return 0 if rule else 1


if __name__ == "__main__":  # python -m pgnet.cli.calibrate
    raise SystemExit(main())
