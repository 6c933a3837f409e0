"""Evaluate a checkpoint or prediction folders: ``python scripts/eval.py --help``."""

import sys

from pgnet.cli.eval import main

if __name__ == "__main__":
    sys.exit(main())
