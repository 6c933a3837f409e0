"""What the benchmark suite measures: sizes, batches, iterations and which benchmarks run."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pgnet.benchmark.model import SMALL_MODEL
from pgnet.data.loader import DEFAULT_TRAIN_SIZES


@dataclass
class BenchmarkOptions:
    """What :func:`run_benchmarks` measures; the defaults are the official sizes."""

    device: str = "auto"
    model: dict[str, Any] = field(default_factory=dict)  # ModelConfig overrides (default: the official model)
    size: int = 1024
    batches: tuple[int, ...] = (1,)
    largest_batch: bool = True  # CUDA only: also at the largest batch that fits
    max_batch: int = 1024
    batch_tolerance: float = 0.0
    iterations: int = 10
    warmup: int = 3
    train_size: int = 1088
    train_batch: int = 8
    train_iterations: int = 5
    train_warmup: int = 2
    compile: bool = True  # also the torch.compile'd paths (one compilation per path)
    compile_mode: str | None = None
    tf32: bool | None = None  # None: PyTorch's settings
    # The official 11 GB cards, less ~0.5 GiB for the CUDA context: the checkpointed training step runs
    # with the allocator capped at this.
    train_memory_limit_gib: float | None = 10.5
    inference: bool = True
    train: bool = True
    loader: bool = True
    evaluator: bool = True
    loader_images: int = 6
    loader_height: int = 2160
    loader_width: int = 3840
    loader_size: int = 1024
    loader_sizes: tuple[int, ...] = DEFAULT_TRAIN_SIZES
    loader_batch: int = 2
    loader_passes: int = 3
    eval_size: int = 1024
    eval_images: int = 50
    seed: int = 0
    profile_dir: str | None = None  # write a torch.profiler table of each inference path and training step

    @classmethod
    def quick(cls, **overrides: Any) -> BenchmarkOptions:
        """Small sizes and a small network: a smoke run of every benchmark in seconds."""
        values: dict[str, Any] = dict(
            model=dict(SMALL_MODEL), size=128, max_batch=8, iterations=2, warmup=1, train_size=128,
            train_batch=2, train_iterations=2, train_warmup=1, loader_images=2, loader_height=270,
            loader_width=480, loader_size=128, loader_sizes=(128,), loader_passes=1, eval_size=128, eval_images=4,
            compile=False,
        )
        values.update(overrides)
        return cls(**values)
