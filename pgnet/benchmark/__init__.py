"""Benchmarks: inference, a training step, the data loader, the evaluator and video, each fast path measured
against the straightforward path in the same run, on the same input.

- :mod:`~pgnet.benchmark.record`: the environment record and the figure record every measurement returns;
- :mod:`~pgnet.benchmark.timing`: synchronised timing, ``torch.profiler`` tables, backend settings for a block;
- :mod:`~pgnet.benchmark.memory`: peak CUDA memory, tensor sizes, the largest-batch search;
- :mod:`~pgnet.benchmark.model`: the network benchmarked (random weights, BatchNorm calibrated);
- :mod:`~pgnet.benchmark.inference`, :mod:`~pgnet.benchmark.training`: the variants and their measurement;
- :mod:`~pgnet.benchmark.loader`, :mod:`~pgnet.benchmark.evaluator`, :mod:`~pgnet.benchmark.video`: the
  data loader, the metrics (also against pysodmetrics), video prediction and foreground refinement;
- :mod:`~pgnet.benchmark.serve`: ``pgnet-serve`` under load from concurrent HTTP clients;
- :mod:`~pgnet.benchmark.options`, :mod:`~pgnet.benchmark.targets`, :mod:`~pgnet.benchmark.suite`: what
  the suite measures, the targets table and its summary, the suite itself.

Every figure carries its value and unit with the device, the dtype and the torch/timm versions it was
measured with. On CUDA every timing is bracketed by ``torch.cuda.synchronize`` after warm-up calls
(which also absorb compilation and cuDNN autotuning), and memory is the peak the CUDA caching
allocator saw.
"""

from pgnet.benchmark.model import SMALL_MODEL, build_benchmark_model
from pgnet.benchmark.options import BenchmarkOptions
from pgnet.benchmark.suite import run_benchmarks
from pgnet.benchmark.targets import TARGETS, Target, summarize

__all__ = ["SMALL_MODEL", "TARGETS", "BenchmarkOptions", "Target", "build_benchmark_model", "run_benchmarks",
           "summarize"]
