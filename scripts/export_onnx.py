"""Export to ONNX: ``python scripts/export_onnx.py CHECKPOINT OUT.onnx [--verify]``."""

import sys

from pgnet.cli.export import main

if __name__ == "__main__":
    sys.exit(main())
