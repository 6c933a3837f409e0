"""Optimiser groups (by module) and the learning-rate schedules."""

import math

import pytest
import torch
from torch import nn

from pgnet.config import OptimConfig, ScheduleConfig
from pgnet.models import PGNet
from pgnet.models.pgnet import ModelConfig
from pgnet.train.optim import build_optimizer, build_scheduler, lr_factor


def group_sizes(model: nn.Module, config: OptimConfig) -> dict[str, tuple[float, float, set[str]]]:
    """Group name -> (LR, millions of parameters, names of its parameters)."""
    optimizer = build_optimizer(model, config)
    names = {id(p): n for n, p in model.named_parameters()}
    return {
        g["name"]: (g["lr"], sum(p.numel() for p in g["params"]) / 1e6, {names[id(p)] for p in g["params"]})
        for g in optimizer.param_groups
    }


@pytest.mark.parametrize(
    ("graft_points", "rest_millions"),
    [(("r5-s2",), 13.28), (("r5-s2", "r4-s1"), 13.37)],
)
def test_the_swin_branch_alone_trains_at_the_swin_lr(graft_points, rest_millions):
    with torch.device("meta"):  # sizes only: no weights are filled
        model = PGNet(ModelConfig(graft_points=graft_points))
    groups = group_sizes(model, OptimConfig(lr=0.03, swin_lr_scale=0.1))
    assert set(groups) == {"swin", "rest"}
    swin_lr, swin_millions, swin_names = groups["swin"]
    rest_lr, rest_millions_found, rest_names = groups["rest"]
    assert swin_lr == pytest.approx(0.003) and rest_lr == 0.03
    assert swin_millions == pytest.approx(59.44, abs=0.005)  # the official Swin branch
    assert rest_millions_found == pytest.approx(rest_millions, abs=0.005)
    assert all(name.startswith("swin.") for name in swin_names)
    # Decoder modules named after the Swin features they read train at the full LR, as officially.
    swin_named = {n for n in rest_names if "swin" in n}
    assert any(n.startswith("decoder.graft.reduce_swin.") for n in swin_named)
    assert any(n.startswith("head_side_swin.") for n in swin_named)
    assert len(swin_named) >= 38


def test_no_decay_groups_split_each_branch():
    with torch.device("meta"):
        model = PGNet(ModelConfig(swin="swin_tiny_patch4_window7_224", swin_input_size=64))
    optimizer = build_optimizer(model, OptimConfig(no_decay_norm_bias=True, weight_decay=0.01))
    by_name = {g["name"]: g for g in optimizer.param_groups}
    assert set(by_name) == {"swin", "swin_no_decay", "rest", "rest_no_decay"}
    assert by_name["rest_no_decay"]["weight_decay"] == 0.0 and by_name["rest"]["weight_decay"] == 0.01
    assert all(p.ndim <= 1 for p in by_name["swin_no_decay"]["params"])


def test_a_plain_module_has_one_group_at_the_full_lr():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    (group,) = build_optimizer(model, OptimConfig(lr=0.5)).param_groups
    assert group["lr"] == 0.5 and len(group["params"]) == 4


def official_lr(T: int, base: float, total: int, warmup: int) -> float:
    """The official LR_Scheduler('cos') as the reference README states it."""
    lr = 0.5 * base * (1 + math.cos(math.pi * (T - warmup) / (total - warmup)))
    return lr * T / warmup if T < warmup else lr


@pytest.mark.parametrize(("epochs", "iters", "warmup_epochs"), [(6, 1, 3), (32, 7, 16), (5, 3, 2), (4, 2, 0)])
def test_official_cosine_is_the_official_schedule(epochs, iters, warmup_epochs):
    base = 0.03
    parameter = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([{"params": [parameter], "lr": base}], lr=base)
    scheduler = build_scheduler(optimizer, ScheduleConfig("official_cosine", warmup_epochs), iters, epochs)
    total, warmup = epochs * iters, warmup_epochs * iters
    for T in range(total):
        expected = official_lr(T, base, total, warmup) if warmup else 0.5 * base * (1 + math.cos(math.pi * T / total))
        assert math.isclose(optimizer.param_groups[0]["lr"], expected, rel_tol=1e-12, abs_tol=1e-18), T
        optimizer.step()
        scheduler.step()
    if warmup:
        assert official_lr(0, base, total, warmup) == 0.0


def test_official_warmup_is_not_linear():
    official = ScheduleConfig("official_cosine", warmup_epochs=16)
    linear = ScheduleConfig("warmup_cosine", warmup_epochs=16)
    # Half-way through a warm-up of half the run: a quarter of the base LR, where the ramp gives half.
    assert lr_factor(8, 32, 16, official) == pytest.approx(0.25)
    assert lr_factor(8, 32, 16, linear) == pytest.approx(0.5)
    for step in (16, 20, 31):  # after the warm-up both are the same cosine
        assert lr_factor(step, 32, 16, official) == pytest.approx(lr_factor(step, 32, 16, linear))
