"""The network on small configurations: taps, any input size, grafting points, config errors."""

import pytest
import torch

from pgnet.models import ModelConfig, PGNet, create_model
from pgnet.models.backbones import ResNetBranch, SwinBranch

SMALL = dict(swin="swin_tiny_patch4_window7_224", resnet="resnet18", swin_input_size=112)


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    return create_model(**SMALL)


def test_swin_taps_match_the_official_layout():
    branch = SwinBranch("swin_base_patch4_window7_224").eval()
    with torch.no_grad():
        taps = branch(torch.randn(1, 3, 300, 200))
    assert [tuple(t.shape[1:]) for t in taps] == [(128, 56, 56), (256, 28, 28), (512, 14, 14), (512, 14, 14)]
    assert len(branch.layers) == 3  # the fourth stage is never built


def test_swin_s2_is_taken_after_the_merge_and_before_the_next_blocks():
    branch = SwinBranch(SMALL["swin"], input_size=112).eval()
    image = torch.randn(1, 3, 112, 112)
    with torch.no_grad():
        s1, s2, s3, _ = branch(image)
        expected_s2 = branch.layers[1].downsample(branch.layers[0](s1.permute(0, 2, 3, 1)))
        expected_s3 = branch.layers[2].downsample(branch.layers[1].blocks(expected_s2))
    torch.testing.assert_close(s2, expected_s2.permute(0, 3, 1, 2))
    torch.testing.assert_close(s3, expected_s3.permute(0, 3, 1, 2))


@pytest.mark.parametrize(
    ("variant", "channels"), [("resnet18", (64, 128, 256, 512)), ("resnet50", (256, 512, 1024, 2048))]
)
def test_resnet_channels_are_derived(variant, channels):
    branch = ResNetBranch(variant).eval()
    assert branch.channels == channels
    with torch.no_grad():
        features = branch(torch.randn(1, 3, 64, 96))
    assert [f.shape[1] for f in features] == list(channels)
    assert [f.shape[-1] for f in features] == [24, 12, 6, 3]


@pytest.mark.parametrize("size", [(97, 131), (64, 64), (150, 90)])
def test_any_input_size_at_inference(small_model, size):
    small_model.eval()
    with torch.no_grad():
        out = small_model(torch.randn(2, 3, *size))
    assert out.pred.shape == (2, 1, *size)
    assert out.side_cnn.shape == out.side_swin.shape == (2, 1, 14, 14)  # s2's grid at a 112 Swin input
    assert out.attention == []
    with torch.no_grad():
        resized = small_model(torch.randn(1, 3, *size), output_size=(40, 50))
    assert resized.pred.shape == (1, 1, 40, 50)


def test_training_forward_gives_attention_and_every_parameter_gets_a_gradient(small_model):
    small_model.train()
    out = small_model(torch.randn(2, 3, 96, 96))
    assert len(out.attention) == 1
    assert out.attention[0].shape == (2, 1, 196, 196)
    assert out.attention_grids == [(14, 14)]
    loss = out.pred.mean() + out.side_cnn.mean() + out.side_swin.mean() + out.attention[0].mean()
    loss.backward()
    without_grad = [n for n, p in small_model.named_parameters() if p.grad is None]
    assert without_grad == []  # no module is built that does not run (DDP needs no find_unused_parameters)
    small_model.zero_grad(set_to_none=True)


def test_second_grafting_point():
    model = create_model(**SMALL, graft_points=["r5-s2", "r4-s1"], token_budget=200).train()
    out = model(torch.randn(1, 3, 320, 448))  # r4 is 20×28 = 560 tokens > 200: pooled by 2 to 10×14
    assert out.attention_grids == [(14, 14), (10, 14)]
    assert [a.shape for a in out.attention] == [(1, 1, 196, 196), (1, 1, 140, 140)]
    assert out.pred.shape == (1, 1, 320, 448)
    assert len(model.attention_heads) == 2
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 160, 224), need_attention=True).attention[1].shape == (1, 1, 140, 140)


def test_eval_with_attention_on_request(small_model):
    small_model.eval()
    with torch.no_grad():
        out = small_model(torch.randn(1, 3, 64, 64), need_attention=True)
    assert out.attention[0].shape == (1, 1, 196, 196)


def test_config_errors_name_the_value():
    with pytest.raises(ValueError, match="swin_huge"):
        PGNet(ModelConfig(swin="swin_huge"))
    with pytest.raises(ValueError, match="resnet101"):
        create_model(resnet="resnet101")
    with pytest.raises(KeyError, match="grafting_points"):
        create_model(grafting_points=["r5-s2"])
    with pytest.raises(ValueError, match="graft_points"):
        create_model(**SMALL, graft_points=["r4-s1"])


def test_drop_path_rates_follow_the_official_linspace():
    branch = SwinBranch("swin_base_patch4_window7_224", drop_path_rate=0.5)
    rates = [getattr(block.drop_path1, "drop_prob", 0.0) for stage in branch.layers for block in stage.blocks]
    expected = torch.linspace(0, 0.5, 24)[:22].tolist()
    assert rates == pytest.approx(expected, abs=1e-6)


def test_config_round_trip():
    config = ModelConfig(graft_points=("r5-s2", "r4-s1"), token_budget=1024)
    assert ModelConfig.from_dict(config.to_dict()) == config


def _conv_input_layouts(model: PGNet, image: torch.Tensor, need_attention: bool) -> dict[str, bool]:
    """Name of every Conv2d → whether its input was channels_last (and not also NCHW-contiguous)."""
    layouts, hooks = {}, []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Conv2d):
            def record(module, inputs, output, name=name):
                x = inputs[0]
                layouts[name] = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
            hooks.append(module.register_forward_hook(record))
    try:
        with torch.no_grad():
            model(image, need_attention=need_attention)
    finally:
        for hook in hooks:
            hook.remove()
    return layouts


@pytest.mark.parametrize("graft_points", [("r5-s2",), ("r5-s2", "r4-s1")])
def test_channels_last_propagates_to_every_convolution(graft_points, default_threads):
    """A channels_last input keeps every feature channels_last (Swin taps, CMGM outputs included), so no
    convolution or BatchNorm meets an NCHW tensor: on a GPU those take the slow layout conversions and
    BatchNorm kernels. The outputs are those of the NCHW model."""
    # default_threads: the 1e-4 bound below holds at the machine's thread count; at one thread (the
    # suite's default, conftest.py) one logit of 12288 differs by 1.05e-4 with graft_points ("r5-s2",).
    torch.manual_seed(0)
    model = create_model(**SMALL, graft_points=graft_points, token_budget=64).eval()
    image = torch.randn(1, 3, 128, 96)
    with torch.no_grad():
        reference = model(image, need_attention=True)
    model = model.to(memory_format=torch.channels_last)
    image = image.contiguous(memory_format=torch.channels_last)
    layouts = _conv_input_layouts(model, image, need_attention=False)
    assert len(layouts) > 40 and all(layouts.values()), [n for n, cl in layouts.items() if not cl]
    with torch.no_grad():
        output = model(image, need_attention=True)
    torch.testing.assert_close(output.pred, reference.pred, atol=1e-4, rtol=1e-4)
    for mine, theirs in zip(output.attention, reference.attention):
        torch.testing.assert_close(mine, theirs, atol=1e-4, rtol=1e-4)
