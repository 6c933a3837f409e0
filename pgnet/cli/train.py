"""``pgnet-train`` / ``scripts/train.py``: train from a YAML config, or resume a run."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from pgnet.cli.common import EXIT_STATUS_HELP, NothingDoneError, build_command_parser, errors_as, run_command
from pgnet.errors import UserError

PROG = "pgnet-train"
EXIT_STATUSES = (
    f"{EXIT_STATUS_HELP}; 3 stopped by non-finite losses (last.pth is the last good checkpoint); "
    "128+N stopped by signal N after saving last.pth (130 Ctrl-C, 143 SIGTERM)"
)


def build_parser() -> argparse.ArgumentParser:
    """``--config CONFIG [key.sub=value ...]`` or ``--resume RUN_DIR``."""
    parser = build_command_parser(
        PROG, "Train PGNet from a YAML config.",
        "Example: scripts/train.py --config configs/pgnet_dh.yaml train.epochs=8 data.batch_size=4. "
        "Multi-GPU: torchrun --nproc_per_node 2 scripts/train.py --config ...",
        EXIT_STATUSES,
    )
    parser.add_argument("--config", help="YAML config (with optional _base_ files)")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last.pth")
    parser.add_argument("--run-dir", help="write the run here instead of output_dir/name-DATE-TIME")
    parser.add_argument("--init-from", metavar="CHECKPOINT",
                        help="start from these weights (a pgnet or an official checkpoint): train.init_from")
    parser.add_argument("overrides", nargs="*", help="dotted overrides such as train.epochs=8 (with --resume: only "
                        "the keys in pgnet.train.resume.RESUMABLE_KEYS)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and train; the exit statuses are in ``--help``."""
    parser = build_parser()
    args = parser.parse_intermixed_args(argv)
    if bool(args.config) == bool(args.resume):
        parser.error("give either --config CONFIG or --resume RUN_DIR")
    if args.init_from and args.resume:
        parser.error("--init-from starts a new run; --resume continues one from its own checkpoint")
    return run_command(PROG, lambda: _train(args))


def _train(args: argparse.Namespace) -> int:
    # Imported here, not at the top: --help and argument errors stay fast without torch.
    from pgnet.config import keys_set, load_config
    from pgnet.train.finetune import adopt_model_settings
    from pgnet.train.resume import plan_resume
    from pgnet.train.trainer import Trainer

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
        # The model settings the config and the command line leave unset come from a project checkpoint.
        config, lines = adopt_model_settings(config, keys_set(args.config, args.overrides))
        for line in lines:
            print(line, file=sys.stderr)
    trainer = Trainer(config, run_dir, resume=bool(args.resume))
    try:
        # a user error met while training (a full disk while saving: last.pth stays intact) exits 1;
        # NonFiniteLossError and TrainingInterrupted carry their own exit_status
        with errors_as(NothingDoneError, UserError):
            trainer.fit()
    finally:
        trainer.close()
    return 0


if __name__ == "__main__":  # python -m pgnet.cli.train
    sys.exit(main())
