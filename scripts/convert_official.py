"""Convert a released official PGNet checkpoint: ``python scripts/convert_official.py SRC DST``."""

import sys

from pgnet.cli.convert import main

if __name__ == "__main__":
    sys.exit(main())
