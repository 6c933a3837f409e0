"""The pass/fail targets, as a declared table, and the summary that judges figures against them.

Each :class:`Target` names what it measures (a selector over the figures), its threshold and unit,
where the number comes from, the device it is judged on and the sizes it names: a target measured at
other sizes is reported with ``applies`` False.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from pgnet.benchmark.inference import STRAIGHTFORWARD_INFERENCE
from pgnet.benchmark.options import BenchmarkOptions
from pgnet.benchmark.record import find_figures

Figures = Sequence[dict[str, Any]]
# The largest difference in probability from the straightforward path a CPU fast path may have.
CPU_PROBABILITY_TOLERANCE = 1e-4


@dataclass(frozen=True)
class Selection:
    """The value a target judges (None: the measurement failed, so the target is missed) and details."""

    measured: float | None
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Target:
    """One pass/fail target: a row of :data:`TARGETS`."""

    name: str
    select: Callable[[Figures], Selection | None]  # None: no figures to judge (the benchmark did not run)
    threshold: float | None  # None: the value of ``threshold_option``
    unit: str
    source: str  # where the number comes from
    device: str | None  # the device type it is judged on (None: any)
    applies: Callable[[BenchmarkOptions], bool]  # whether the options measure at the sizes it names
    higher_is_better: bool = True
    threshold_option: str | None = None  # a BenchmarkOptions field that sets the threshold (None there: not judged)

    def required(self, options: BenchmarkOptions) -> float | None:
        """The threshold under ``options``."""
        return getattr(options, self.threshold_option) if self.threshold_option else self.threshold


# ---------------------------------------------------------------------------------------------- selectors


def _fast_at_batch_1(figures: Figures) -> list[dict[str, Any]]:
    return [f for f in find_figures(figures, "inference", batch=1) if f["name"] != STRAIGHTFORWARD_INFERENCE.name]


def _bf16(figures: Figures) -> list[dict[str, Any]]:
    return [f for f in figures if f["variant"]["amp_dtype"] == "bfloat16"]


def cpu_inference_speedup(figures: Figures) -> Selection | None:
    """The fastest float32 path at batch 1 whose probabilities stay within the tolerance (any, if none does)."""
    single = _fast_at_batch_1(figures)
    if not single:
        return None
    exact = [f for f in single if f["max_abs_diff_probability"] <= CPU_PROBABILITY_TOLERANCE] or single
    best = max(exact, key=lambda f: f["speedup"])
    details = {key: best[key] for key in ("max_abs_diff_probability", "max_abs_diff_logits")}
    return Selection(best["speedup"], {"path": best["name"], **details})


def bf16_inference_speedup(figures: Figures) -> Selection | None:
    """The fastest bf16 path's speedup at batch 1."""
    bf16 = _bf16(_fast_at_batch_1(figures))
    if not bf16:
        return None
    best = max(bf16, key=lambda f: f["speedup"])
    return Selection(best["speedup"], {"path": best["name"]})


def bf16_largest_batch_speedup(figures: Figures) -> Selection | None:
    """Images/s of the bf16 path at its largest batch over the straightforward path's at its own."""
    largest = [f for f in find_figures(figures, "inference_largest_batch") if f["value"]]
    baseline = [f for f in largest if f["name"] == STRAIGHTFORWARD_INFERENCE.name]
    fast = _bf16(largest)
    if not (baseline and fast):
        return None
    return Selection(fast[0]["value"] / baseline[0]["value"],
                     {"path": fast[0]["name"], "batch": fast[0]["batch"], "baseline_batch": baseline[0]["batch"]})


def bf16_train_speedup(figures: Figures) -> Selection | None:
    """The fastest bf16 training step's speedup over the float32 one."""
    steps = _bf16([f for f in find_figures(figures, "train_step") if f["value"] is not None and "speedup" in f])
    if not steps:
        return None
    best = max(steps, key=lambda f: f["speedup"])
    return Selection(best["speedup"], {"path": best["name"]})


def checkpointed_train_memory(figures: Figures) -> Selection | None:
    """Peak GiB reserved by the training step with Swin checkpointing (None: out of memory under the cap)."""
    checkpointed = [f for f in find_figures(figures, "train_step") if f["variant"]["swin_grad_checkpointing"]]
    if not checkpointed:
        return None
    result = checkpointed[0]
    peak = None if result["value"] is None else result["peak_reserved_mib"] / 1024
    return Selection(peak, {"path": result["name"], "error": result.get("error")})


def loader_cache_speedup(figures: Figures) -> Selection | None:
    """Samples/s of one loader worker reading the cache over full-size decoding."""
    cached = find_figures(figures, "loader", name="cached")
    return Selection(cached[0]["speedup"], {"path": "cached"}) if cached else None


# ---------------------------------------------------------------------------------------------- the table


def official_inference_size(options: BenchmarkOptions) -> bool:
    return options.size == 1024


def official_train_size(options: BenchmarkOptions) -> bool:
    return options.train_size == 1088 and options.train_batch == 8


def official_loader_size(options: BenchmarkOptions) -> bool:
    return (options.loader_width, options.loader_height, options.loader_size) == (3840, 2160, 1024)


BENCHMARK_ISSUE = "benchmark issue: fast paths against the straightforward one"
LOADER_SPEEDUP = Target(
    "loader: cached copies over full-size decode, one worker", loader_cache_speedup, 3.0, "x",
    "high-resolution data issue: the fast data path at least 3x the naive one (was scripts/bench_data.py's gate)",
    None, official_loader_size,
)
TARGETS: tuple[Target, ...] = (
    Target("cpu inference speedup, float32, saliency maps within 1e-4", cpu_inference_speedup, 1.3, "x",
           BENCHMARK_ISSUE, "cpu", official_inference_size),
    Target("gpu bf16 inference speedup at batch 1", bf16_inference_speedup, 3.0, "x",
           BENCHMARK_ISSUE, "cuda", official_inference_size),
    Target("gpu bf16 inference speedup at the largest batch", bf16_largest_batch_speedup, 3.0, "x",
           BENCHMARK_ISSUE, "cuda", official_inference_size),
    Target("gpu training step speedup", bf16_train_speedup, 2.0, "x", BENCHMARK_ISSUE, "cuda", official_train_size),
    Target("training step fits in the memory limit (peak GiB reserved)", checkpointed_train_memory, None, "GiB",
           "paper: the official recipe's 11 GB cards, less ~0.5 GiB for the CUDA context", "cuda",
           official_train_size, higher_is_better=False, threshold_option="train_memory_limit_gib"),
    LOADER_SPEEDUP,
)


# ---------------------------------------------------------------------------------------------- the summary


def judge(target: Target, selection: Selection, required: float, applies: bool, device: torch.device) -> dict[str, Any]:
    """One target's result: the measured value, whether it meets ``required``, and where it comes from."""
    measured = selection.measured
    if measured is None:
        met = False
    else:
        met = measured >= required if target.higher_is_better else measured <= required
    return {"target": target.name, "required": required, "measured": measured, "met": met, "applies": applies,
            "device": str(device), "unit": target.unit, "source": target.source, **selection.details}


def summarize(figures: Figures, options: BenchmarkOptions, device: torch.device,
              targets: Sequence[Target] = TARGETS) -> dict[str, Any]:
    """Every target of ``targets`` judged on ``device`` whose figures were measured, with its result.

    A target is only judged at the sizes it names (1024×1024 inference, batch 8 at 1088×1088 training,
    3840×2160 JPEGs at 1024 for the loader); at other sizes ``applies`` is False.
    """
    results = []
    for target in targets:
        required = target.required(options)
        if (target.device not in (None, device.type)) or required is None:
            continue
        selection = target.select(figures)
        if selection is not None:
            results.append(judge(target, selection, required, target.applies(options), device))
    return {"targets": results}


def format_target(result: dict[str, Any]) -> str:
    """One line: the target, the measured value, the threshold and the verdict."""
    verdict = {True: "met", False: "MISSED", None: "-"}[result["met"]]
    if not result["applies"]:
        verdict = "not judged: measured at other sizes than the target names"
    measured = "-" if result["measured"] is None else f"{result['measured']:.2f}"
    return f"target: {result['target']}: {measured} (required {result['required']}): {verdict}"


def missed(results: Sequence[dict[str, Any]]) -> list[str]:
    """The names of the targets that apply and were missed."""
    return [result["target"] for result in results if result["applies"] and result["met"] is False]
