"""``pgnet-train`` / ``scripts/train.py``: train from a YAML config, or resume a run."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """``scripts/train.py --config CONFIG [key.sub=value ...]`` or ``--resume RUN_DIR``."""
    parser = argparse.ArgumentParser(
        description="Train PGNet from a YAML config.",
        epilog="Example: scripts/train.py --config configs/pgnet_dh.yaml train.epochs=8 data.batch_size=4. "
        "Multi-GPU: torchrun --nproc_per_node 2 scripts/train.py --config ...",
    )
    parser.add_argument("--config", help="YAML config (with optional _base_ files)")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last.pth")
    parser.add_argument("--run-dir", help="write the run here instead of output_dir/name-DATE-TIME")
    parser.add_argument("--init-from", metavar="CHECKPOINT",
                        help="start from these weights (a pgnet or an official checkpoint): train.init_from")
    parser.add_argument("overrides", nargs="*", help="dotted overrides such as train.epochs=8 (with --resume: only "
                        "the keys in pgnet.engine.resume.RESUMABLE_KEYS)")
    args = parser.parse_intermixed_args(argv)
    if bool(args.config) == bool(args.resume):
        parser.error("give either --config CONFIG or --resume RUN_DIR")
    if args.init_from and args.resume:
        parser.error("--init-from starts a new run; --resume continues one from its own checkpoint")

    from pathlib import Path

    from pgnet.config import ConfigError, load_config
    from pgnet.engine.resume import plan_resume
    from pgnet.engine.trainer import NonFiniteLossError, Trainer, TrainingInterrupted
    from pgnet.errors import UserError

    try:
        if args.resume:
            run_dir = Path(args.resume)
            plan = plan_resume(run_dir, args.overrides)
            if plan.finished:
                print(f"{run_dir} is finished ({plan.position['epoch']} of {plan.config.train.epochs} epochs); "
                      f"nothing to do (train.epochs=N continues it)", file=sys.stderr)
                return 0
            config = plan.config
        else:
            run_dir = Path(args.run_dir) if args.run_dir else None
            config = load_config(args.config, args.overrides)
            if args.init_from:
                config.train.init_from = args.init_from
        trainer = Trainer(config, run_dir, resume=bool(args.resume))
    except (ConfigError, FileNotFoundError, FileExistsError, ValueError, KeyError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        trainer.fit()
    except TrainingInterrupted as interrupted:
        return interrupted.exit_status
    except NonFiniteLossError as error:
        print(f"error: {error}", file=sys.stderr)
        return 3
    except UserError as error:  # e.g. a full disk while saving (the last checkpoint stays intact)
        print(f"error: {error}", file=sys.stderr)
        return 1
    finally:
        trainer.close()
    return 0


if __name__ == "__main__":  # python -m pgnet.cli.train
    sys.exit(main())
