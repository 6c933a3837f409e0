import pgnet._compat  # noqa: F401  (before anything imports torchvision or timm)
