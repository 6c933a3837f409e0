"""The torchvision compatibility fix: applied only on the exact missing-operator error."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import pgnet._compat as compat

COMPAT_FILE = Path(compat.__file__)

# Loads the compat module on its own: importing the pgnet package would import timm, which needs the
# real torchvision.
LOAD_COMPAT = f"""
import importlib.util
spec = importlib.util.spec_from_file_location("compat", {str(COMPAT_FILE)!r})
compat = importlib.util.module_from_spec(spec)
spec.loader.exec_module(compat)
"""

BROKEN_TORCHVISION = """
import torch
if not torch._C._jit_get_schemas_for_operator("torchvision::nms"):
    raise RuntimeError("operator torchvision::nms does not exist")
IMPORTED = True
"""


def run_with_fake_torchvision(tmp_path: Path, init_source: str, code: str) -> subprocess.CompletedProcess:
    package = tmp_path / "torchvision"
    package.mkdir()
    (package / "__init__.py").write_text(textwrap.dedent(init_source))
    return subprocess.run(
        [sys.executable, "-c", LOAD_COMPAT + textwrap.dedent(code)],
        env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_broken_torchvision_is_patched_and_imports(tmp_path):
    result = run_with_fake_torchvision(
        tmp_path,
        BROKEN_TORCHVISION,
        """
        import torchvision, torch
        assert torchvision.IMPORTED
        assert compat._torchvision_fragment is not None
        assert torch._C._jit_get_schemas_for_operator("torchvision::qnms")
        print("patched")
        """,
    )
    assert result.returncode == 0, result.stderr
    assert "patched" in result.stdout


def test_working_torchvision_is_left_alone(tmp_path):
    result = run_with_fake_torchvision(
        tmp_path,
        "IMPORTED = True\n",
        """
        import torch
        assert compat._torchvision_fragment is None
        assert not torch._C._jit_get_schemas_for_operator("torchvision::nms")
        assert compat.ensure_torchvision_importable() is False
        print("untouched")
        """,
    )
    assert result.returncode == 0, result.stderr
    assert "untouched" in result.stdout


def test_other_import_errors_are_raised_unchanged(tmp_path):
    result = run_with_fake_torchvision(
        tmp_path, 'raise RuntimeError("something else broke")\n', "pass\n"
    )
    assert result.returncode != 0
    assert "something else broke" in result.stderr


def test_real_torchvision_and_timm_import_here():
    import timm
    import torchvision

    assert torchvision.__version__ and timm.__version__
    # Repeated calls are harmless and report no new patch.
    assert compat.ensure_torchvision_importable() is False


@pytest.mark.parametrize("name", ["nms", "qnms"])
def test_schemas_exist_after_import(name):
    import torch

    assert torch._C._jit_get_schemas_for_operator(f"torchvision::{name}")
