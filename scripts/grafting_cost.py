"""Cost of one grafting configuration on the CPU: ``python scripts/grafting_cost.py --graft-points r5-s2
r4-s1:window [--size 1024] [--out cost.json]`` (``pgnet-benchmark cost``; one configuration per process)."""

import sys

from pgnet.cli.benchmark import main

if __name__ == "__main__":
    sys.exit(main(["cost", *sys.argv[1:]]))
