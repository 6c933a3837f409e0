"""Cost of one grafting configuration on the CPU (one configuration per process: see ``pgnet.cost``).

``python scripts/grafting_cost.py --graft-points r5-s2 r4-s1:window [--size 1024] [--out cost.json]``
prints (and writes) parameters, inference GFLOPs and fast-path CPU seconds at size², and the
resident-memory growth of a training step at 512² batch 2, for the official model with those points.
"""

import argparse
import json
import sys

from pgnet.benchmark import build_benchmark_model
from pgnet.cost import measure_cost


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--graft-points", nargs="+", default=["r5-s2"], help="model.graft_points (default r5-s2)")
    parser.add_argument("--window-size", type=int, default=8)
    parser.add_argument("--size", type=int, default=1024, help="inference size (default 1024)")
    parser.add_argument("--train-size", type=int, default=512)
    parser.add_argument("--train-batch", type=int, default=2)
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--out", help="also write the figures to this JSON file")
    args = parser.parse_args()
    model = build_benchmark_model({"graft_points": args.graft_points, "window_size": args.window_size})
    figures = measure_cost(model, args.size, args.train_size, args.train_batch, args.repetitions)
    text = json.dumps(figures, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
