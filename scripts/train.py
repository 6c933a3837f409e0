"""Train PGNet: ``python scripts/train.py --config configs/pgnet_dh.yaml [key.sub=value ...]``."""

import sys

from pgnet.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
