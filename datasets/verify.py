"""Check a dataset on disk: ``python datasets/verify.py --help``."""

import sys

from pgnet.cli.verify_dataset import main

if __name__ == "__main__":
    sys.exit(main())
