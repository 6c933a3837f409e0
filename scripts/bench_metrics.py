"""pgnet.metrics against pysodmetrics: ``python scripts/bench_metrics.py [--n 200] [--json FILE]``
(``pgnet-benchmark metrics``)."""

import sys

from pgnet.cli.benchmark import main

if __name__ == "__main__":
    sys.exit(main(["metrics", *sys.argv[1:]]))
