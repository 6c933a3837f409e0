"""Calibrate a model for int8 inference on the CPU: ``python scripts/calibrate.py --help``."""

import sys

from pgnet.cli.calibrate import main

if __name__ == "__main__":
    sys.exit(main())
