"""Pretrained backbone weights from local files in every accepted format; nothing is downloaded."""

import re

import pytest
import timm
import torch
from safetensors.torch import save_file

import pgnet
from pgnet.checkpoint import model_checkpoint, save_checkpoint
from pgnet.models import create_model
from pgnet.models.backbones import ResNetBranch, SwinBranch, load_pretrained

TINY = "swin_tiny_patch4_window7_224"


@pytest.fixture(scope="module")
def timm_swin_state():
    torch.manual_seed(1)
    return timm.create_model(TINY, pretrained=False).state_dict()


def microsoft_layout(timm_state):
    """timm's Swin state dict rewritten as Microsoft's release: merging at the end of a stage."""
    renamed = {}
    for key, value in timm_state.items():
        renamed[re.sub(r"layers\.(\d+)\.downsample\.", lambda m: f"layers.{int(m[1]) - 1}.downsample.", key)] = value
    return {"model": renamed}


def assert_branch_has(branch, state, skip=()):
    for key, value in branch.state_dict().items():
        if key in state and not key.endswith(skip):
            torch.testing.assert_close(value, state[key], msg=key)


def test_timm_pth_and_safetensors(tmp_path, timm_swin_state):
    torch.save(timm_swin_state, tmp_path / "swin.pth")
    save_file({k: v.contiguous() for k, v in timm_swin_state.items()}, tmp_path / "swin.safetensors")
    for name in ("swin.pth", "swin.safetensors"):
        branch = SwinBranch(TINY)
        unused = load_pretrained(branch, tmp_path / name, "model.swin_pretrained")
        assert_branch_has(branch, timm_swin_state)
        assert any(k.startswith("layers.3.") for k in unused) and "head.fc.weight" in unused


def test_microsoft_swin_release_format(tmp_path, timm_swin_state):
    torch.save(microsoft_layout(timm_swin_state), tmp_path / "swin_tiny_patch4_window7_224.pth")
    branch = SwinBranch(TINY)
    load_pretrained(branch, tmp_path / "swin_tiny_patch4_window7_224.pth", "model.swin_pretrained")
    assert_branch_has(branch, timm_swin_state)
    torch.testing.assert_close(
        branch.layers[1].downsample.reduction.weight, timm_swin_state["layers.1.downsample.reduction.weight"]
    )


def test_torchvision_resnet_file(tmp_path):
    import torchvision

    reference = torchvision.models.resnet18(weights=None).state_dict()
    torch.save(reference, tmp_path / "resnet18_torchvision.pth")
    branch = ResNetBranch("resnet18")
    unused = load_pretrained(branch, tmp_path / "resnet18_torchvision.pth", "model.resnet_pretrained")
    assert unused == ["fc.bias", "fc.weight"] or sorted(unused) == ["fc.bias", "fc.weight"]
    assert_branch_has(branch, reference)


def test_missing_file_names_path_and_config_key(tmp_path):
    missing = tmp_path / "nowhere" / "swin.pth"
    with pytest.raises(FileNotFoundError, match=r"model\.swin_pretrained.*nowhere/swin\.pth"):
        create_model(swin=TINY, swin_input_size=112, swin_pretrained=str(missing))


def test_wrong_file_is_an_error_naming_keys(tmp_path):
    import torchvision

    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "resnet.pth")
    expected = r"model\.swin_pretrained: .*resnet\.pth does not fit swin_tiny.*unexpected conv1.weight.*more\)"
    with pytest.raises(ValueError, match=expected):
        load_pretrained(SwinBranch(TINY), tmp_path / "resnet.pth", "model.swin_pretrained")
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), tmp_path / "resnet34.pth")
    with pytest.raises(ValueError, match=r"resnet34.pth does not fit resnet18: unexpected layer1\.2\.conv1\.weight"):
        load_pretrained(ResNetBranch("resnet18"), tmp_path / "resnet34.pth", "model.resnet_pretrained")


def test_full_checkpoint_loads_without_backbone_files(tmp_path, timm_swin_state):
    import torchvision

    swin_file, resnet_file = tmp_path / "swin.pth", tmp_path / "resnet.pth"
    torch.save(microsoft_layout(timm_swin_state), swin_file)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), resnet_file)
    model = create_model(
        swin=TINY, swin_input_size=112, swin_pretrained=str(swin_file), resnet_pretrained=str(resnet_file)
    ).eval()
    save_checkpoint(model_checkpoint(model), tmp_path / "run" / "last.pth")
    swin_file.unlink()
    resnet_file.unlink()
    loaded = pgnet.load_model(tmp_path / "run" / "last.pth")
    image = torch.randn(1, 3, 80, 96)
    with torch.no_grad():
        torch.testing.assert_close(loaded(image).pred, model(image).pred)
