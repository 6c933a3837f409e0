"""``pgnet-eval`` / ``scripts/eval.py``: evaluate a checkpoint on named datasets, and/or prediction
folders against ground-truth folders; tables (terminal, Markdown, CSV, JSON, LaTeX, XLSX), published
references beside them, and curve plots."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pgnet.cli.common import (
    NothingDoneError,
    add_reading_options,
    build_command_parser,
    check_output_folder,
    errors_as,
    run_command,
)
from pgnet.errors import UserError

if TYPE_CHECKING:
    import torch

    from pgnet.distributed import DistInfo

PROG = "pgnet-eval"

EPILOG = """examples:
  checkpoint on registered datasets, saving its predictions:
    scripts/eval.py -c runs/dh/checkpoints/best.pth --datasets DUTS-TE HRSOD-TE --data-root data \\
        --save-preds preds -o results/dh
  prediction folders (preds/<method>/<dataset>/<name>.png) side by side, no model:
    scripts/eval.py --pred-root preds --datasets DUTS-TE HRSOD-TE --data-root data -o results/compare
  the validation sets of a training config (its data.val entries):
    scripts/eval.py -c runs/dh/checkpoints/best.pth --config configs/pgnet_dh.yaml -o results/dh
  explicit folders:
    scripts/eval.py --preds PGNet=preds/PGNet Other=other/masks --gt DAVIS-S=data/DAVIS-S/mask -o results/davis
  a reproduction of PGNet (UHRSD-TR + HRSOD-TR) beside the published scores, with the differences:
    scripts/eval.py -c CKPT --datasets DAVIS-S HRSOD-TE UHRSD-TE DUTS-TE --data-root data --reference pgnet-uh \
        -o results/uh
  DIS5K (HCE is added on DIS sets; DIS-TE is DIS-TE1..4 together):
    scripts/eval.py --pred-root preds --datasets DIS-VD DIS-TE --data-root data -o results/dis
"""


def _named_paths(values: Sequence[str] | None, option: str) -> dict[str, Path]:
    """``NAME=PATH`` values as a dict; a bad value is an error naming the option."""
    named: dict[str, Path] = {}
    for value in values or []:
        name, separator, path = value.partition("=")
        if not separator or not name or not path:
            raise UserError(f"{option} expects NAME=PATH, got {value!r}")
        if name in named:
            raise UserError(f"{option}: {name!r} given twice")
        named[name] = Path(path).expanduser()
    return named


def build_parser() -> argparse.ArgumentParser:
    """Checkpoints and/or prediction folders against ground truth; the options by group."""
    parser = build_command_parser(
        PROG,
        "Evaluate saliency predictions: MAE, S-measure, E-measure, F-measure and weighted F-measure "
        "(pysodmetrics' definitions), BIoU and mBA (their papers' code), HCE (DIS5K's, as pysodmetrics).",
        EPILOG.rstrip(),
    )
    sources = parser.add_argument_group("what to evaluate")
    sources.add_argument("-c", "--checkpoint", help="a project checkpoint, an official one, or a model package folder")
    sources.add_argument("--name", help="method name of the checkpoint (default: from its path)")
    sources.add_argument("--weights", default="model", choices=("model", "ema"), help="weights of a project checkpoint")
    sources.add_argument("--preds", nargs="+", metavar="METHOD=FOLDER",
                         help="prediction folders, each holding <dataset>/<name>.png (or the PNGs of the one dataset)")
    sources.add_argument("--pred-root",
                         help="a folder whose subfolders are methods: ROOT/<method>/<dataset>/<name>.png")

    data = parser.add_argument_group("ground truth")
    data.add_argument("--datasets", nargs="+", metavar="NAME", help="registered datasets (e.g. DUTS-TE HRSOD-TE)")
    data.add_argument("--data-root", help="root the named datasets are found under: a dataset's own root (data/DUTS) "
                      "or the folder holding them by release (data, with DUTS/, HRSOD/, UHRSD/, DAVIS-S/ ...)")
    data.add_argument("--config", help="a training config: evaluate on its data.val sets as its training "
                      "validates on them (held-out splits, synthetic sets)")
    data.add_argument("--gt", nargs="+", metavar="NAME=MASK_FOLDER", help="ground-truth folders by dataset name")
    data.add_argument("--images", nargs="+", metavar="NAME=IMAGE_FOLDER",
                      help="image folders for --gt datasets (needed with a checkpoint)")

    model = parser.add_argument_group("running the checkpoint")
    model.add_argument("--size", type=int,
                       help="test size: images are resized to size×size (default: the checkpoint's, 1024 officially)")
    model.add_argument("--normalization", choices=("official", "imagenet"),
                       help="input statistics to use instead of the checkpoint's (default: the checkpoint's; "
                            "official for official checkpoints and files that record none)")
    model.add_argument("--fast-decode", action="store_true",
                       help="decode large JPEGs reduced and resize as uint8 before normalising (faster; "
                            "default: the official protocol, full decode, normalised as float, then resized)")
    model.add_argument("--flip", action="store_true", help="flip test-time augmentation")
    model.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "int8"),
                       help="auto: bf16 on CUDA and on a CPU with native bfloat16 (AVX-512 BF16, AMX), "
                            "fp32 elsewhere; int8 (CPU): the ResNet branch in int8, needs --calibration")
    model.add_argument("--calibration", type=Path,
                       help="an int8 calibration of the checkpoint (pgnet-calibrate), for --precision int8; "
                            "auto uses it when its recorded check held the accuracy rule")
    model.add_argument("--no-optimize", action="store_true",
                       help="run the network as loaded (default: BatchNorm folded, fused attention, channels_last, "
                            "CUDA graphs on CUDA; scores agree to ~1e-5)")
    model.add_argument("-b", "--batch-size", type=int, default=1, help="images per forward pass (default 1)")
    model.add_argument("--num-workers", type=int, default=2, help="data loader workers (default 2)")
    model.add_argument("--save-preds", metavar="OUT", help="save predictions as OUT/<method>/<dataset>/<name>.png")

    output = parser.add_argument_group("output")
    output.add_argument("-o", "--output", default="eval_results",
                        help="folder for results.{md,csv,json,tex,xlsx} and plots/ (default eval_results)")
    output.add_argument("--metrics", nargs="+", metavar="METRIC",
                        help="metric groups or keys, 'default' for MAE Sm Em Fm wFm BIoU mBA (default: those, "
                             "and HCE on DIS5K sets; e.g. 'default HCE' adds HCE everywhere)")
    output.add_argument("--reference", nargs="+", action="extend", metavar="KEY|FILE",
                        help="published scores to put beside yours, with a Δ row per method against the first: "
                             "a shipped key (pgnet-d, pgnet-dh, pgnet-uh) or a reference file (YAML, every entry)")
    output.add_argument("--latex-metrics", nargs="+", metavar="KEY",
                        help="metric keys in results.tex (default: those the references report, else all)")
    output.add_argument("--no-plots", action="store_true", help="write the tables only, no curve plots")
    output.add_argument("--allow-missing", action="store_true",
                        help="score the masks that have a prediction when some have none (default: stop)")
    output.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:1")
    add_reading_options(output, workers=2, workers_help="threads reading prediction files")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and evaluate; the exit statuses are in ``--help``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not (args.checkpoint or args.preds or args.pred_root):
        parser.error("give --checkpoint, --preds or --pred-root")
    if not (args.datasets or args.gt or args.config):
        parser.error("give --datasets (with --data-root), --gt or --config")
    if args.datasets and not args.data_root:
        parser.error("--datasets needs --data-root")
    if args.save_preds and not args.checkpoint:
        parser.error("--save-preds needs --checkpoint")
    check_output_folder(parser, args.output)
    check_output_folder(parser, args.save_preds, "--save-preds")

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s", stream=sys.stderr)
    return run_command(PROG, lambda: _evaluate(args))


def _evaluate(args: argparse.Namespace) -> int:
    """Under torchrun each process scores its share of every dataset (on CUDA its local rank's GPU);
    the main process writes the report and prints the tables."""
    # Imported here, not at the top: --help and argument errors stay fast without torch.
    from pgnet import distributed
    from pgnet.device import resolve_device

    with errors_as(NothingDoneError, RuntimeError):
        device = resolve_device(args.device)
        info = distributed.init_distributed(device.type)
    try:
        return _evaluate_on(args, distributed.rank_device(device, info), info)
    finally:
        distributed.cleanup(info)


def _evaluate_on(args: argparse.Namespace, device: torch.device, info: DistInfo) -> int:
    """``_evaluate`` on ``device`` as the process ``info``."""
    from pgnet.data.io import set_max_pixels
    from pgnet.evaluation.evaluator import EvalDataset, ModelMethod, config_datasets, evaluate, resolve_datasets
    from pgnet.evaluation.references import RESULT_KEYS, resolve_references
    from pgnet.evaluation.report import TABLE_FILES, format_table
    from pgnet.metrics import resolve_metric_groups

    with errors_as(NothingDoneError, RuntimeError):  # a method or dataset that failed while working: exit 1
        if args.max_pixels is not None:
            set_max_pixels(int(args.max_pixels))
        metrics = resolve_metric_groups(args.metrics) if args.metrics else None
        references = resolve_references(args.reference or [])
        unknown = [key for key in args.latex_metrics or [] if key not in RESULT_KEYS]
        if unknown:
            raise UserError(f"--latex-metrics: unknown key(s) {', '.join(unknown)}; known: {', '.join(RESULT_KEYS)}")
        datasets = config_datasets(args.config) if args.config else []
        datasets += resolve_datasets(args.datasets, args.data_root) if args.datasets else []
        images = _named_paths(args.images, "--images")
        for name, mask_dir in _named_paths(args.gt, "--gt").items():
            datasets.append(EvalDataset(name, mask_dir, images.pop(name, None)))
        if images:
            raise UserError(f"--images names datasets not given with --gt: {', '.join(images)}")
        prediction_dirs = _named_paths(args.preds, "--preds")
        if args.pred_root:
            for name, folder in _method_folders(Path(args.pred_root).expanduser()).items():
                prediction_dirs.setdefault(name, folder)
        model_method = None
        if args.checkpoint:
            model_method = ModelMethod(
                Path(args.checkpoint), name=args.name, weights=args.weights, size=args.size,
                normalization=args.normalization, fast_decode=args.fast_decode, precision=args.precision,
                calibration=args.calibration, flip=args.flip,
                optimize=not args.no_optimize, batch_size=args.batch_size, num_workers=args.num_workers,
                save_dir=Path(args.save_preds) if args.save_preds else None,
            )
        report = evaluate(
            datasets, args.output, model_method=model_method, prediction_dirs=prediction_dirs, metrics=metrics,
            references=references, latex_metrics=args.latex_metrics, plots=not args.no_plots, device=device,
            allow_missing=args.allow_missing, workers=args.workers, progress=not args.no_progress and info.is_main,
            dist_info=info,
        )
    if not info.is_main:
        return 0
    if len(report.datasets()) > 1:  # each dataset's table was printed as it finished; now all of them
        print()
        print(format_table(report.results, references=report.references))
    plots = "" if args.no_plots else ", plots/"
    print(f"results: {report.folder / TABLE_FILES[0]}, {', '.join(TABLE_FILES[1:])}{plots}")
    return 0


def _method_folders(root: Path) -> dict[str, Path]:
    """``--pred-root``: its subfolders by method name."""
    if not root.is_dir():
        raise UserError(f"--pred-root {root} does not exist or is not a folder")
    methods = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not methods:
        raise UserError(f"--pred-root {root} has no method subfolders")
    return {folder.name: folder for folder in methods}


if __name__ == "__main__":  # python -m pgnet.cli.eval
    sys.exit(main())
