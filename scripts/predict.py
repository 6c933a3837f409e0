"""Predict saliency masks: ``python scripts/predict.py photos/ --checkpoint CKPT -o masks [--mode rgba]``."""

import sys

from pgnet.cli.predict import main

if __name__ == "__main__":
    sys.exit(main())
