"""Write resized copies of a dataset for training: ``python datasets/cache.py --help``."""

import sys

from pgnet.cli.cache_dataset import main

if __name__ == "__main__":
    sys.exit(main())
