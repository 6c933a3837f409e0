"""Benchmark PGNet: ``python scripts/benchmark.py [--device cuda] [--quick] [--out results.json]``."""

import sys

from pgnet.cli.benchmark import main

if __name__ == "__main__":
    sys.exit(main())
