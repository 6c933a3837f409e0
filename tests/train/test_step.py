"""The training step shared by the trainer and the benchmark."""

import torch

import pgnet
from pgnet.config import LossConfig, OptimConfig
from pgnet.train.losses import PGNetLoss
from pgnet.train.optim import build_optimizer
from pgnet.train.step import TrainStep

SMALL = dict(swin="swin_tiny_patch4_window7_224", resnet="resnet18", swin_input_size=112)


def make_step(clip_grad=0.0):
    torch.manual_seed(0)
    model = pgnet.create_model(**SMALL).train()
    return TrainStep(model, PGNetLoss(LossConfig()), build_optimizer(model, OptimConfig(lr=1e-3)), clip_grad=clip_grad)


def batch(seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(2, 3, 64, 64, generator=generator), (torch.rand(2, 1, 64, 64, generator=generator) > 0.5).float()


def test_step_updates_the_weights_and_clears_the_gradients():
    step = make_step(clip_grad=0.5)
    before = [p.detach().clone() for p in step.model.parameters()]
    result = step.forward_backward(*batch())
    assert result.nonfinite.item() == 0 and torch.isfinite(result.loss) and not result.loss.requires_grad
    assert set(result.terms) == {"pred", "side_cnn", "side_swin", "attention/r5-s2"} and result.output.attention
    grads = [p.grad for p in step.model.parameters()]
    assert all(g is not None for g in grads)
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    step.apply()
    assert all(p.grad is None for p in step.model.parameters())
    moved = [not torch.equal(a, b) for a, b in zip(before, step.model.parameters())]
    assert sum(moved) > 0.9 * len(moved)
    assert norm > 0.5  # so clipping (to 0.5) took effect on this step


def test_micro_batches_accumulate_and_a_discarded_step_changes_nothing():
    step = make_step()
    image, mask = batch()
    torch.manual_seed(1)  # the same drop-path draws for both micro-batches
    step.forward_backward(image, mask, micro_batches=2)
    first = [p.grad.clone() for p in step.model.parameters()]
    torch.manual_seed(1)
    step.forward_backward(image, mask, micro_batches=2)
    for grad, param in zip(first, step.model.parameters()):
        torch.testing.assert_close(param.grad, 2 * grad, rtol=1e-4, atol=1e-6)
    before = [p.detach().clone() for p in step.model.parameters()]
    step.discard()
    assert all(p.grad is None for p in step.model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, step.model.parameters()))
    nan_image = torch.full_like(image, float("nan"))
    assert step.forward_backward(nan_image, mask).nonfinite.item() == 1
