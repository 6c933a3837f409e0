"""pgnet.device: native bfloat16 detection on the CPU, its overrides, and what ``auto`` resolves to."""

import pytest
import torch

from pgnet.device import CPU_BF16_VARIABLE, cpu_flags, cpu_native_bf16, resolve_precision

CPU = torch.device("cpu")


def test_native_bf16_detection_asks_torch_and_yields_to_its_overrides(monkeypatch):
    monkeypatch.delenv(CPU_BF16_VARIABLE, raising=False)
    detected = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    assert cpu_native_bf16() is detected
    flags = cpu_flags()
    assert set(flags) >= {"avx512_bf16", "amx_bf16", "avx512_vnni"} and all(isinstance(v, bool) for v in flags.values())
    for value, expected in (("0", False), ("1", True)):
        monkeypatch.setenv(CPU_BF16_VARIABLE, value)
        assert cpu_native_bf16() is expected
        assert cpu_native_bf16(override=not expected) is (not expected)  # the parameter wins


def test_auto_is_bf16_for_inference_on_a_native_bf16_cpu_only(monkeypatch):
    monkeypatch.setenv(CPU_BF16_VARIABLE, "1")
    assert resolve_precision("auto", CPU, inference=True) == "bf16"
    assert resolve_precision("auto", CPU) == "fp32"  # training on a CPU stays float32
    assert resolve_precision("auto", CPU, inference=True, native_bf16=False) == "fp32"
    assert resolve_precision("fp32", CPU, inference=True) == "fp32"
    monkeypatch.setenv(CPU_BF16_VARIABLE, "0")
    assert resolve_precision("auto", CPU, inference=True) == "fp32"
    assert resolve_precision("bf16", CPU, inference=True) == "bf16"  # asked for: emulated, but honoured
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision("int8", CPU)
