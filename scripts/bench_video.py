"""Video prediction, smoothing and foreground refinement: ``python scripts/bench_video.py [--checkpoint CKPT]``
(``pgnet-benchmark video``)."""

import sys

from pgnet.cli.benchmark import main

if __name__ == "__main__":
    sys.exit(main(["video", *sys.argv[1:]]))
