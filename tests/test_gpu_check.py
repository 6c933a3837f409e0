"""``make gpu-check`` (scripts/gpu_check.py) on a machine without CUDA: it stops at once with a clear
message and its own exit status, and names only CUDA tests that exist."""

import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gpu_check.py"


def test_without_cuda_it_stops_at_once_with_its_own_status(tmp_path):
    out = tmp_path / "out"
    start = time.perf_counter()
    result = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "CUDA_VISIBLE_DEVICES": "", "OUT": str(out)})
    assert result.returncode == 3, result.stderr
    assert "no CUDA device here" in result.stderr and "nothing run" in result.stderr
    assert not out.exists()  # nothing written
    assert time.perf_counter() - start < 60


def test_make_runs_the_script_and_its_tests_exist():
    dry_run = subprocess.run(["make", "-n", "gpu-check"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert dry_run.returncode == 0 and "scripts/gpu_check.py" in dry_run.stdout
    namespace: dict = {"__file__": str(SCRIPT), "__name__": "gpu_check"}
    exec(compile(SCRIPT.read_text(), str(SCRIPT), "exec"), namespace)  # the module's constants, no main()
    for node in namespace["CUDA_TESTS"]:
        path, _, test = node.partition("::")
        assert (REPO / path).is_file(), path
        assert not test or f"def {test}(" in (REPO / path).read_text(), node
