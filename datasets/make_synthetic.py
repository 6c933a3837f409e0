"""Write a synthetic dataset to disk: ``python datasets/make_synthetic.py --help``."""

import sys

from pgnet.cli.make_synthetic import main

if __name__ == "__main__":
    sys.exit(main())
