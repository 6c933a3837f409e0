"""The one schema of a dataset entry (an item of a config's ``data.train`` or ``data.val``): its fields
and their defaults, read by the config loader (``pgnet.config.DatasetEntry``) and by
:func:`pgnet.data.datasets.build_dataset` for the keys a plain dict leaves out."""

from __future__ import annotations

from dataclasses import MISSING, dataclass, fields
from typing import Any, Literal


@dataclass
class DatasetEntry:
    """One dataset: a known name (or ``folder`` with ``root``), or ``synthetic`` generated on the fly."""

    name: str
    root: str | None = None
    repeat: int = 1
    label: str | None = None  # validation sets: the name in logs and summary (default: name, + root if repeated)
    # synthetic only
    n: int = 200
    size: int = 512
    seed: int = 0
    # files only: hold out a fraction for validation, no file moved (see pgnet.data.split)
    split: Literal["all", "train", "val"] = "all"
    val_fraction: float = 0.1
    split_seed: int = 0


SYNTHETIC_KEYS = ("n", "size", "seed")  # the options of synthetic data only
SPLIT_KEYS = ("split", "val_fraction", "split_seed")  # the options of file datasets only
ENTRY_DEFAULTS: dict[str, Any] = {f.name: f.default for f in fields(DatasetEntry) if f.default is not MISSING}
