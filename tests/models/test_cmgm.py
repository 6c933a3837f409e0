"""The CMGM against the official module's stored outputs, and its pooling beyond the token budget."""

import runpy
import warnings

import pytest
import torch
from official_weights import build_state_dict, reference_file

from pgnet.models.cmgm import CMGM, pooling_stride
from pgnet.models.official import official_to_project_key


@pytest.fixture(scope="module")
def official_case():
    return torch.load(reference_file("cmgm_official_case.pt"), weights_only=True)


@pytest.fixture(scope="module")
def official_cmgm():
    state = build_state_dict("cmgm_official_keys.tsv")
    # The official module sits at decoder.GF inside PGNet: reuse that mapping for its inner names.
    prefix = "decoder.graft.cmgm."
    renamed = {official_to_project_key(f"decoder.GF.{k}")[len(prefix) :]: v for k, v in state.items()}
    module = CMGM(64, num_heads=8).eval()
    result = module.load_state_dict(renamed, strict=False)
    assert not result.unexpected_keys
    assert all(k.endswith("num_batches_tracked") for k in result.missing_keys)
    return module


def test_matches_official_outputs(official_cmgm, official_case):
    with torch.no_grad():
        out, attention_map = official_cmgm(official_case["x"], official_case["y"], need_attention=True)
    assert out.shape == official_case["out"].shape == (2, 64, 12, 14)
    assert attention_map.shape == official_case["cam"].shape == (2, 8, 168, 168)
    torch.testing.assert_close(out, official_case["out"], atol=1e-4, rtol=0)
    torch.testing.assert_close(attention_map, official_case["cam"], atol=1e-4, rtol=0)


def test_inference_path_matches_without_attention_matrix(official_cmgm, official_case):
    with torch.no_grad():
        out, attention_map = official_cmgm(official_case["x"], official_case["y"], need_attention=False)
    assert attention_map is None
    torch.testing.assert_close(out, official_case["out"], atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    ("height", "width", "budget", "stride"),
    [
        (28, 28, 2048, 1),
        (45, 45, 2048, 1),
        (46, 46, 2048, 2),
        (352, 352, 2048, 8),
        (91, 91, 2048, 4),
        (7, 3000, 100, 32),
    ],
)
def test_pooling_stride_is_smallest_power_of_two_that_fits(height, width, budget, stride):
    assert pooling_stride(height, width, budget) == stride
    ceil = -(-height // stride) * -(-width // stride)
    assert ceil <= budget
    if stride > 1:
        half = stride // 2
        assert -(-height // half) * -(-width // half) > budget


def test_large_grid_is_pooled_to_the_budget():
    module = CMGM(64).eval()
    x, y = torch.randn(1, 64, 352, 352), torch.randn(1, 64, 352, 352)
    with torch.no_grad():
        fused, attention_map = module(x, y)
        fused_fast, none = module(x, y, need_attention=False)
    assert fused.shape == (1, 64, 352, 352)
    assert attention_map.shape == (1, 8, 1936, 1936)
    assert module.graft_grid(352, 352) == (44, 44)
    assert none is None
    torch.testing.assert_close(fused_fast, fused, atol=1e-4, rtol=1e-4)


def test_odd_sizes_and_other_widths():
    module = CMGM(32, num_heads=4, token_budget=100).eval()
    x, y = torch.randn(2, 32, 23, 17), torch.randn(2, 32, 23, 17)
    with torch.no_grad():
        fused, attention_map = module(x, y)
    grid = module.graft_grid(23, 17)
    assert grid == (6, 5)  # stride 4: ceil(23/4) x ceil(17/4) = 30 <= 100, stride 2 gives 108
    assert fused.shape == x.shape
    assert attention_map.shape == (2, 4, 30, 30)


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="divisible"):
        CMGM(60, num_heads=8)
    with pytest.raises(ValueError, match="same shape"):
        CMGM(64)(torch.randn(1, 64, 8, 8), torch.randn(1, 64, 8, 9))


def test_module_main_prints_shapes(capsys):
    with warnings.catch_warnings():  # already imported here: runpy warns that it runs the module afresh
        warnings.simplefilter("ignore", RuntimeWarning)
        runpy.run_module("pgnet.models.cmgm", run_name="__main__", alter_sys=True)  # what `python -m` runs
    stdout = capsys.readouterr().out
    assert "[1, 64, 352, 352] -> feature [1, 64, 352, 352], attention map [1, 8, 1936, 1936]" in stdout
    assert "44×44" in stdout
