import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import pgnet._compat  # noqa: F401  (before anything imports torchvision or timm)
