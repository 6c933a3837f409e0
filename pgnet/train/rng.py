"""Every random number generator's state, saved in checkpoints and restored on resume."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def rng_state() -> dict[str, Any]:
    """Every RNG state, as tensors and plain values (loads with ``weights_only=True``)."""
    name, keys, position, has_gauss, cached = np.random.get_state()  # noqa: NPY002 (the legacy global RNG is what libraries use)
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(position),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": list(random.getstate()[1]),
        "python_version": random.getstate()[0],
        "python_gauss": random.getstate()[2],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    np.random.set_state(  # noqa: NPY002
        (numpy_state["name"], numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"],
         numpy_state["has_gauss"], numpy_state["cached"])
    )
    random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002
    torch.manual_seed(seed)


def fork_rank_stream(rank: int) -> None:
    """Give DDP rank ``rank`` its own torch stream, drawn from the state every rank restored (rank 0's)."""
    torch.manual_seed(int(torch.randint(0, 2**31, (1,)).item()) + rank)
