"""Serve a model over HTTP with a web page: ``python scripts/serve.py MODEL [--port 8000]``."""

import sys

from pgnet.cli.serve import main

if __name__ == "__main__":
    sys.exit(main())
