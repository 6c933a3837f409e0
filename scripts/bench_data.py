"""One loader worker on synthetic 3840x2160 JPEGs: ``python scripts/bench_data.py [--n 6] [--passes 3]``
(``pgnet-benchmark data``; exits 1 when the cache is under 3x full decode)."""

import sys

from pgnet.cli.benchmark import main

if __name__ == "__main__":
    sys.exit(main(["data", *sys.argv[1:]]))
