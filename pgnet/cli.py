"""Command-line entry points. Each parses its arguments and calls the library; ``scripts/`` and the
console scripts declared in setup.cfg both land here."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def convert_official_main(argv: Sequence[str] | None = None) -> int:
    """``scripts/convert_official.py SRC DST``."""
    parser = argparse.ArgumentParser(
        description="Convert a released official PGNet checkpoint to a pgnet checkpoint."
    )
    parser.add_argument("source", help="official checkpoint (state dict saved from DDP, keys 'module.*')")
    parser.add_argument("destination", help="pgnet checkpoint to write")
    args = parser.parse_args(argv)

    from pgnet.checkpoint import convert_official_checkpoint
    from pgnet.models.official import ConversionError

    try:
        unused = convert_official_checkpoint(args.source, args.destination)
    except (ConversionError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {args.destination}")
    print(f"{len(unused)} source keys unused (never-run swin.norm and Swin buffers timm recomputes):")
    for key in unused:
        print(f"  {key}")
    return 0


def train_main(argv: Sequence[str] | None = None) -> int:
    """``scripts/train.py --config CONFIG [key.sub=value ...]`` or ``--resume RUN_DIR``."""
    parser = argparse.ArgumentParser(
        description="Train PGNet from a YAML config.",
        epilog="Example: scripts/train.py --config configs/pgnet_dh.yaml train.epochs=8 data.batch_size=4. "
        "Multi-GPU: torchrun --nproc_per_node 2 scripts/train.py --config ...",
    )
    parser.add_argument("--config", help="YAML config (with optional _base_ files)")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last.pth")
    parser.add_argument("--run-dir", help="write the run here instead of output_dir/name-DATE-TIME")
    parser.add_argument("overrides", nargs="*", help="dotted overrides such as train.epochs=8")
    args = parser.parse_args(argv)
    if bool(args.config) == bool(args.resume):
        parser.error("give either --config CONFIG or --resume RUN_DIR")

    from pathlib import Path

    from pgnet.config import ConfigError, load_config
    from pgnet.engine.trainer import NonFiniteLossError, Trainer, TrainingInterrupted

    try:
        if args.resume:
            run_dir = Path(args.resume)
            config = load_config(run_dir / "config.yaml", args.overrides)
        else:
            run_dir = Path(args.run_dir) if args.run_dir else None
            config = load_config(args.config, args.overrides)
        trainer = Trainer(config, run_dir, resume=bool(args.resume))
    except (ConfigError, FileNotFoundError, FileExistsError, ValueError, KeyError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        trainer.fit()
    except TrainingInterrupted:
        return 130
    except NonFiniteLossError as error:
        print(f"error: {error}", file=sys.stderr)
        return 3
    return 0
