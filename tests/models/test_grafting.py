"""Grafting at every level: the windowed CMGM, grafting-point specs, the windowed AGL, the official
weights in a four-level model, and a short training run with all four points."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from pgnet.config import ConfigError, LossConfig, load_config
from pgnet.models import PGNet, create_model
from pgnet.models.cmgm import CMGM
from pgnet.models.grafting import GraftPointError, GraftSpec, parse_graft_points
from pgnet.models.official import convert_official_state_dict
from pgnet.models.pgnet import ModelConfig
from pgnet.models.weights import load_weights_with_report
from pgnet.models.window_cmgm import WindowCMGM, WindowLayout, merge_windows, partition_windows
from pgnet.train.losses import PGNetLoss, window_attention_guided_loss

REPO = Path(__file__).resolve().parents[2]
TINY = dict(swin="swin_tiny_patch4_window7_224", resnet="resnet18", swin_input_size=64)
FOUR_LEVELS = ["r5-s2", "r4-s1:window", "r3-s1", "r2-s1"]


def randomized(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random BatchNorm statistics, so that eval-mode outputs are not trivially normalised."""
    generator = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=generator) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
    return module.eval()


def test_graft_point_specs():
    assert parse_graft_points(["r2-s1", "r5-s2", "r4-s1"]) == (
        GraftSpec("r5-s2", "global"), GraftSpec("r4-s1", "global"), GraftSpec("r2-s1", "window"))
    assert parse_graft_points(["r5-s2:window", "r3-s1:global"]) == (
        GraftSpec("r5-s2", "window"), GraftSpec("r3-s1", "global"))
    for bad, message in ((["r5-s2", "r3-s2"], "'r3-s2'"), (["r5-s2", "r3-s1:local"], "r3-s1:local"),
                         (["r3-s1"], "must contain 'r5-s2'"), (["r5-s2", "r3-s1", "r3-s1:global"], "twice")):
        with pytest.raises(GraftPointError, match=message):
            parse_graft_points(bad)


def test_partition_and_merge_are_inverse_with_padding():
    tokens = torch.randn(2, 7, 10, 3)
    layout = WindowLayout(4, 2)
    windows = partition_windows(tokens, layout)
    assert windows.shape == (2 * 3 * 3, 16, 3)  # (7+2)→12 rows, (10+2)→12 columns: 3×3 windows
    assert windows[0, 0].abs().sum() == 0 and torch.equal(windows[0, 10], tokens[0, 0, 0])  # offset 2 padded
    torch.testing.assert_close(merge_windows(windows, 2, 7, 10, layout), tokens)


@pytest.mark.parametrize("shifted", [False, True])
def test_window_cmgm_on_odd_sizes_and_sdpa_equals_materialised(shifted):
    torch.manual_seed(0)
    module = randomized(WindowCMGM(32, num_heads=4, window_size=4, shifted=shifted))
    x, y = torch.randn(2, 32, 13, 19), torch.randn(2, 32, 13, 19)
    with torch.no_grad():
        fused, attention_map = module(x, y, need_attention=True)
        fast, none = module(x, y, need_attention=False)
    windows = (-(-(13 + 2 * shifted) // 4)) * (-(-(19 + 2 * shifted) // 4))
    assert fused.shape == x.shape and none is None
    assert attention_map.shape == (2 * windows, 4, 16, 16)
    torch.testing.assert_close(fast, fused, atol=1e-5, rtol=0)


def test_one_window_covering_the_grid_is_the_global_cmgm():
    """A window larger than the grid, its padding masked, computes exactly the global CMGM."""
    torch.manual_seed(0)
    global_cmgm = randomized(CMGM(32, num_heads=4))
    windowed = WindowCMGM(32, num_heads=4, window_size=8).eval()
    windowed.load_state_dict(global_cmgm.state_dict())
    x, y = torch.randn(2, 32, 5, 7), torch.randn(2, 32, 5, 7)
    with torch.no_grad():
        for need_attention in (True, False):
            expected, _ = global_cmgm(x, y, need_attention)
            actual, _ = windowed(x, y, need_attention)
            torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)


def test_padded_positions_have_no_attention():
    module = WindowCMGM(16, num_heads=2, window_size=4, shifted=True).eval()
    attention = []
    module.softmax.register_forward_hook(lambda _m, _i, output: attention.append(output))
    with torch.no_grad():
        module(torch.randn(1, 16, 3, 3), torch.randn(1, 16, 3, 3))
    # offset 2: four windows over the 3×3 grid; window 0 holds the grid's (0, 0) at its (2, 2)
    valid = torch.zeros(4, 4, dtype=torch.bool)
    valid[2:, 2:] = True
    assert torch.all(attention[0][0][:, :, ~valid.flatten()] == 0)


def test_windowed_agl_against_a_direct_computation():
    torch.manual_seed(0)
    grid, layout = (5, 6), WindowLayout(4, 2)
    mask = torch.rand(2, 1, 20, 24)
    side_cnn, side_swin = torch.randn(2, 1, 3, 3), torch.randn(2, 1, 3, 3)
    logits = torch.randn(2, 4, 16, 16)  # (5+2)→8 rows, (6+2)→8 columns: 2×2 windows of 16 positions
    loss = window_attention_guided_loss(logits, grid, layout, mask, side_cnn, side_swin)

    def on_grid(maps):
        return F.interpolate(maps, size=grid, mode="bilinear", align_corners=False)

    gt, cnn, swin = on_grid(mask), on_grid(torch.sigmoid(side_cnn)), on_grid(torch.sigmoid(side_swin))
    positions = [(y, x) for y in range(5) for x in range(6)]
    total, pairs = 0.0, 0
    for b in range(2):
        for p in positions:
            for q in positions:
                window_p = ((p[0] + 2) // 4, (p[1] + 2) // 4)
                if window_p != ((q[0] + 2) // 4, (q[1] + 2) // 4):
                    continue
                index = window_p[0] * 2 + window_p[1]
                i = ((p[0] + 2) % 4) * 4 + (p[1] + 2) % 4
                j = ((q[0] + 2) % 4) * 4 + (q[1] + 2) % 4
                target = gt[b, 0][p] * gt[b, 0][q]
                weight = 1 + 0.5 * ((target - cnn[b, 0][p] * cnn[b, 0][q]).abs()
                                    + (target - swin[b, 0][p] * swin[b, 0][q]).abs())
                total += weight * F.binary_cross_entropy_with_logits(logits[b, index, i, j], target)
                pairs += 1
    torch.testing.assert_close(loss, total / pairs)


def test_loss_terms_are_named_by_point_with_their_weights():
    torch.manual_seed(0)
    model = create_model(**TINY, graft_points=FOUR_LEVELS, window_size=4).train()
    mask = (torch.rand(2, 1, 70, 90) > 0.5).float()
    output = model(torch.randn(2, 3, 70, 90))
    _, terms = PGNetLoss(LossConfig())(output, mask)
    assert list(terms) == ["pred", "side_cnn", "side_swin", "attention/r5-s2", "attention/r4-s1",
                           "attention/r3-s1", "attention/r2-s1"]
    weighted, _ = PGNetLoss(LossConfig(attention_points={"r3-s1": 0.5, "r2-s1": 0.0}))(output, mask)
    expected = (terms["pred"] + 0.125 * (terms["side_cnn"] + terms["side_swin"]) + terms["attention/r5-s2"]
                + terms["attention/r4-s1"] + 0.5 * terms["attention/r3-s1"])
    torch.testing.assert_close(weighted.detach(), expected)
    with pytest.raises(ConfigError, match="r3-s2"):
        load_config(None, ["loss.attention_points={r3-s2: 1.0}"])


@pytest.mark.parametrize("kind", ["global", "window"])
def test_each_kind_at_every_level_on_odd_sizes(kind):
    torch.manual_seed(0)
    points = ["r5-s2"] + [f"{p}:{kind}" for p in ("r4-s1", "r3-s1", "r2-s1")]
    model = create_model(**TINY, graft_points=points, window_size=4, token_budget=64).train()
    output = model(torch.randn(2, 3, 70, 90))  # r2 18×23, r3 9×12, r4 5×6: none a multiple of 4
    assert output.attention_points == ["r5-s2", "r4-s1", "r3-s1", "r2-s1"]
    if kind == "window":
        assert output.attention_grids[1:] == [(5, 6), (9, 12), (18, 23)]
        assert [a.shape for a in output.attention[1:]] == [(2, 4, 16, 16), (2, 12, 16, 16), (2, 30, 16, 16)]
        assert [w.offset for w in output.attention_windows[1:]] == [0, 2, 0]  # every second one shifted
    else:
        assert output.attention_grids[1:] == [(5, 6), (5, 6), (5, 6)]  # r3 and r2 pooled to ≤ 64 tokens
        assert [a.shape for a in output.attention[1:]] == [(2, 1, 30, 30)] * 3
    loss, _ = PGNetLoss()(output, (torch.rand(2, 1, 70, 90) > 0.5).float())
    loss.backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 75, 61)).pred.shape == (1, 1, 75, 61)


def test_new_grafts_start_as_the_model_without_them():
    """The r3/r2 grafts' output projections start at zero: same weights, same predictions."""
    torch.manual_seed(0)
    plain = randomized(create_model(**TINY))
    grafted = create_model(**TINY, graft_points=["r5-s2", "r3-s1", "r2-s1"]).eval()
    missing = grafted.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert {k.split(".")[1] for k in missing if k.startswith("decoder.")} == {"cnn3_graft", "cnn2_graft"}
    image = torch.randn(1, 3, 96, 80)
    with torch.no_grad():
        torch.testing.assert_close(grafted(image).pred, plain(image).pred)


def test_official_checkpoint_loads_into_a_four_level_model(official_state, official_model):
    """Every official module keeps its name: only the new grafting modules are missing."""
    converted, _ = convert_official_state_dict(official_state, official_model)
    with torch.device("meta"):  # storage without initialisation: every value compared below is loaded
        model = PGNet(ModelConfig(graft_points=FOUR_LEVELS, drop_path_rate=0.0))
        default_keys = set(PGNet(ModelConfig(drop_path_rate=0.0)).state_dict())
    model = model.to_empty(device="cpu")
    result = model.load_state_dict(converted, strict=False)
    assert result.unexpected_keys == []
    new_modules = {".".join(k.split(".")[:3 if k.startswith("decoder.cnn4_block.") else 2])
                   for k in result.missing_keys}
    assert new_modules == {"decoder.cnn4_block.cmgm", "decoder.cnn3_graft", "decoder.cnn2_graft",
                           "attention_heads.1", "attention_heads.2", "attention_heads.3"}
    assert set(converted) == default_keys
    # The same through train.init_from's loading with accounting: the new modules listed by name.
    renamed, _ = convert_official_state_dict(official_state, partial=True)
    report = load_weights_with_report(model, renamed, "official")
    assert [name for name, _ in report.new_groups] == [
        "decoder.cnn4_block.cmgm", "decoder.cnn3_graft", "decoder.cnn2_graft", "attention_heads.*"]
    assert {key.split(".")[1] for key in report.new if key.startswith("attention_heads.")} == {"1", "2", "3"}
    assert len(report.loaded) == len(converted)


def test_short_training_run_with_all_four_points(tmp_path):
    """Training, validation, checkpoints and TensorBoard pictures with every level grafted."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from pgnet.checkpoint import load_checkpoint
    from pgnet.train.trainer import Trainer

    overrides = [
        "model.swin=swin_tiny_patch4_window7_224", "model.swin_input_size=64", "model.window_size=4",
        "model.graft_points=[r5-s2, r4-s1:window, r3-s1, r2-s1]", "loss.attention_points={r2-s1: 0.5}",
        "data.train=[{name: synthetic, n: 4, size: 80, seed: 0}]",
        "data.val=[{name: synthetic, n: 2, size: 80, seed: 9}]",
        "data.size=64", "data.multiscale=[64]", "data.eval_size=72", "data.batch_size=2", "data.num_workers=0",
        "train.epochs=1", "train.log_every=1", "train.image_every=2", "train.val_every=1",
    ]
    config = load_config(REPO / "configs" / "demo.yaml", overrides)
    summary = Trainer(config, tmp_path / "run").fit()
    assert summary["global_step"] == 2
    assert "Sm" in summary["last_validation"]["metrics"]["synthetic"]
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pth")
    assert any(k.startswith("decoder.cnn2_graft.cmgm.") for k in state["model"])
    events = EventAccumulator(str(tmp_path / "run" / "tb"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    points = ("r5-s2", "r4-s1", "r3-s1", "r2-s1")
    assert {f"loss/attention/{p}" for p in points} <= set(events.Tags()["scalars"])
    pictures = set(events.Tags()["tensors"])  # pictures are logged in TensorBoard's tensor format
    for point in points:  # global and windowed points alike get attention and AGL pictures
        assert any(tag.startswith(f"attention/{point}/val/") for tag in pictures), (point, sorted(pictures))
        assert any(tag.startswith(f"agl/{point}/val/") for tag in pictures), (point, sorted(pictures))


def test_window_cmgm_compiles_whole_and_trains_as_eager():
    """torch.compile captures it whole (fullgraph=True: no graph break) for training: forward with the
    attention map, and the gradients of a backward through both outputs, equal eager mode's. The
    aot_eager backend traces the forward and backward graphs as inductor would, without its
    minutes of C++ code generation on this CPU."""
    torch.manual_seed(0)
    eager = randomized(WindowCMGM(16, num_heads=2, window_size=4, shifted=True)).train()
    twin = WindowCMGM(16, num_heads=2, window_size=4, shifted=True).train()
    twin.load_state_dict(eager.state_dict())
    x, y = torch.randn(2, 16, 9, 11), torch.randn(2, 16, 9, 11)
    results = []
    for module, network in ((eager, eager), (twin, torch.compile(twin, fullgraph=True, backend="aot_eager"))):
        fused, attention_map = network(x, y, need_attention=True)
        (fused.square().mean() + attention_map.sigmoid().mean()).backward()
        results.append((fused, {name: p.grad for name, p in module.named_parameters()}))
    (fused, grads), (fused_compiled, grads_compiled) = results
    torch.testing.assert_close(fused_compiled, fused, atol=1e-5, rtol=1e-5)
    assert grads.keys() == grads_compiled.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grads_compiled[name], grad, atol=1e-5, rtol=1e-4, msg=name)
