"""``make gpu-check``: every CUDA path of the project in one command, on a machine with an NVIDIA GPU.

Each step runs under its own time limit (about 8 minutes in all on one H100) and writes into one
folder: ``$OUT`` when set, else ``gpu-check/<UTC time>``:

- ``environment.json``: the GPU, driver, torch, CUDA and NCCL versions;
- ``tests.log`` and ``tests.xml``: every CUDA test (``tests/test_gpu.py``: bf16 inference, CUDA
  graphs in the predictor and in ``pgnet-eval``, NCCL at world size 1 with the DDP self-checks,
  compiled training and resume, bf16 and fp16 training, tiny and at the official recipe's sizes;
  and the CUDA metrics test);
- ``benchmark.log`` and ``benchmark.json``: ``pgnet-benchmark --device cuda --check`` (inference at
  batch 1 and the largest batch, the training step; the targets of ``pgnet.benchmark.targets``);
- ``summary.json``: each step's status and seconds.

Exit status: 0 every step passed; 1 a step failed or ran out of time; 3 no CUDA device here, nothing
run. Run it with a Python whose torch has CUDA (``make gpu-check PYTHON_GPU=python3``); the project's
own dependencies must be importable (``pip install -e .`` there, or carried wheels).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NO_CUDA = 3
CUDA_TESTS = ["tests/test_gpu.py", "tests/metrics/test_metrics.py::test_cuda_gives_the_cpu_results"]
# Seconds per step: within about 8 minutes on one H100 with room for the start.
TESTS_LIMIT, BENCHMARK_LIMIT = 270, 180


def output_folder() -> Path:
    if os.environ.get("OUT"):
        return Path(os.environ["OUT"])
    return REPO / "gpu-check" / datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")


def environment() -> dict:
    """What the figures were measured on."""
    import torch

    properties = torch.cuda.get_device_properties(0)
    record = {"gpu": properties.name, "gpu_memory_gib": round(properties.total_memory / 2**30, 1),
              "multiprocessors": properties.multi_processor_count, "torch": torch.__version__,
              "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
              "nccl": ".".join(map(str, torch.cuda.nccl.version())) if torch.distributed.is_nccl_available() else None,
              "python": sys.version.split()[0]}
    try:
        record["nvidia_smi"] = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                                               "--format=csv,noheader"], capture_output=True, text=True,
                                              timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError) as error:
        record["nvidia_smi"] = f"not run: {error}"
    return record


def run_step(name: str, command: list[str], log: Path, limit: float) -> dict:
    """Run ``command`` from the repository root with its output in ``log``; its status and seconds."""
    print(f"gpu-check: {name} (at most {limit:.0f} s; log {log})", flush=True)
    start = time.perf_counter()
    environment_variables = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO),
                             os.environ.get("PYTHONPATH")])), "PYTHONUNBUFFERED": "1",
                             "NO_ALBUMENTATIONS_UPDATE": "1"}
    with log.open("w") as stream:
        try:
            returncode = subprocess.run(command, cwd=REPO, stdout=stream, stderr=subprocess.STDOUT,
                                        env=environment_variables, timeout=limit).returncode
            status = "passed" if returncode == 0 else f"failed (exit status {returncode})"
        except subprocess.TimeoutExpired:
            status = f"ran out of time ({limit:.0f} s)"
    seconds = round(time.perf_counter() - start, 1)
    print(f"gpu-check: {name}: {status} in {seconds} s", flush=True)
    return {"step": name, "status": status, "seconds": seconds, "log": log.name}


def main() -> int:
    try:
        import torch
    except ImportError as error:
        print(f"gpu-check: torch cannot be imported ({error}); nothing run", file=sys.stderr)
        return NO_CUDA
    if not torch.cuda.is_available():
        print(f"gpu-check: no CUDA device here (torch {torch.__version__}, torch.cuda.is_available() is False); "
              "nothing run. Run it on a machine with an NVIDIA GPU and a CUDA build of torch.", file=sys.stderr)
        return NO_CUDA
    sys.path.insert(0, str(REPO))
    try:
        from pgnet.writing import write_text
    except ImportError as error:
        print(f"gpu-check: the project cannot be imported ({error}): install its dependencies here "
              "(pip install -e ., or carried wheels)", file=sys.stderr)
        return 1
    folder = output_folder()
    folder.mkdir(parents=True, exist_ok=True)
    write_text(folder / "environment.json", json.dumps(environment(), indent=2) + "\n")
    steps = [
        run_step("CUDA tests", [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs",
                                "--junitxml", str(folder / "tests.xml"), *CUDA_TESTS],
                 folder / "tests.log", TESTS_LIMIT),
        run_step("benchmark", [sys.executable, str(REPO / "scripts" / "benchmark.py"), "--device", "cuda",
                               "--no-compile", "--check", "--out", str(folder / "benchmark.json")],
                 folder / "benchmark.log", BENCHMARK_LIMIT),
    ]
    passed = all(step["status"] == "passed" for step in steps)
    summary = {"passed": passed, "folder": str(folder), "steps": steps}
    write_text(folder / "summary.json", json.dumps(summary, indent=2) + "\n")
    print(f"gpu-check: {'every step passed' if passed else 'a step failed'}; figures and logs in {folder}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
