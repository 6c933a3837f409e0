"""The official checkpoint: convert, load and reproduce the official outputs to 1e-4."""

import contextlib
import io
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from official_weights import reference_file

import pgnet
from pgnet.checkpoint import load_checkpoint
from pgnet.cli.convert import main as convert_main
from pgnet.models import PGNet, count_parameters
from pgnet.models.official import ConversionError, convert_official_state_dict

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def official_file(official_state, tmp_path_factory):
    path = tmp_path_factory.mktemp("official") / "PGNet_DUT+HR.pth"
    torch.save(official_state, path)
    return path


@pytest.fixture(scope="module")
def converted_file(official_file, tmp_path_factory):
    destination = tmp_path_factory.mktemp("converted") / "pgnet_official.pth"
    stdout = io.StringIO()  # the command's main in this process (its exit status from a process: below)
    with contextlib.redirect_stdout(stdout):
        assert convert_main([str(official_file), str(destination)]) == 0
    assert "35 source keys unused" in stdout.getvalue()
    assert "swin.norm.weight" in stdout.getvalue()
    return destination


@pytest.fixture(scope="module")
def official_case():
    return torch.load(reference_file("pgnet_official_case.pt"), weights_only=True)


def assert_matches_official(model, case):
    with torch.no_grad():
        out = model(case["input"], need_attention=True)
    for mine, name in ((out.pred, "pred"), (out.side_cnn, "wr"), (out.side_swin, "ws"), (out.attention[0], "att")):
        assert mine.shape == case[name].shape, name
        torch.testing.assert_close(mine, case[name], atol=1e-4, rtol=0, msg=lambda m, n=name: f"{n}: {m}")


def test_converted_checkpoint_reproduces_official_outputs(converted_file, official_case):
    state = load_checkpoint(converted_file)
    assert state["format"] == "pgnet"
    assert state["model_config"]["graft_points"] == ["r5-s2"]
    model = pgnet.load_model(converted_file)
    assert not model.training
    assert_matches_official(model, official_case)


def test_official_file_loads_directly(official_file, official_case):
    assert_matches_official(pgnet.load_model(official_file), official_case)


def test_default_model_size_matches_official():
    with torch.device("meta"):  # shapes only
        model = PGNet()
    total = count_parameters(model)
    assert abs(total / 1e6 - 72.72) < 0.005, total
    assert abs(count_parameters(model.swin) / 1e6 - 59.44) < 0.005
    assert abs(count_parameters(model.resnet) / 1e6 - 11.18) < 0.005


def test_every_key_is_mapped_or_listed_unused(official_state, official_model):
    converted, unused = convert_official_state_dict(official_state, official_model)
    assert len(converted) + len(unused) == len(official_state)
    assert {"swin.norm.weight", "swin.norm.bias"} <= set(unused)
    assert all(k.startswith("swin.norm") or k.endswith(("relative_position_index", "atten_mask")) for k in unused)


def test_checkpoint_without_ddp_prefix_loads_too(official_state, official_model):
    plain = {k[len("module.") :]: v for k, v in official_state.items()}
    converted, _ = convert_official_state_dict(plain, official_model)
    torch.testing.assert_close(converted["head_pred.weight"], plain["linear1.weight"])


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: s.pop("module.decoder.GF.qv.weight"), "missing decoder.graft.cmgm.query_value.weight"),
        (
            lambda s: s.update({"module.decoder.d3.conv.0.weight": torch.zeros(64, 65, 3, 3)}),
            "decoder.d3.conv.0.weight",
        ),
        (lambda s: s.update({"module.decoder.extra.weight": torch.zeros(1)}), "unknown key decoder.extra.weight"),
        (lambda s: s.update({"decoder.GF.k.bias": torch.zeros(64)}), "some keys start with 'module.'"),
        (
            lambda s: s.update({"module.swin.layers.0.blocks.1.atten_mask": torch.zeros(64, 49, 49)}),
            "atten_mask does not match",
        ),
    ],
)
def test_bad_checkpoints_fail_naming_the_key(official_state, official_model, edit, message):
    state = dict(official_state)
    edit(state)
    with pytest.raises(ConversionError, match=message.replace(".", r"\.").replace("(", r"\(")):
        convert_official_state_dict(state, official_model)


def test_converter_cli_reports_errors(tmp_path):
    bad = tmp_path / "bad.pth"
    torch.save({"module.decoder.GF.qv.weight": torch.zeros(128, 64)}, bad)
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "convert_official.py"), str(bad), str(tmp_path / "out.pth")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2  # a bad source: a usage error
    assert "missing" in result.stderr
    assert not (tmp_path / "out.pth").exists()
