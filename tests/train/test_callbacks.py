"""Callbacks on tiny runs (2 steps at 64 px, the shared tiny config): the hooks in order with their
arguments, a callback stopping the run with a resumable last.pth, its state saved and resumed."""

import signal

import pytest
import torch
from conftest import REPO, TINY_RUN

from pgnet.checkpoint import load_checkpoint, save_checkpoint
from pgnet.config import load_config
from pgnet.train.callbacks import Callback
from pgnet.train.trainer import Trainer, TrainingInterrupted

# The shared tiny run (4 pictures, batches of 2: 2 steps, EMA kept), validated on one picture.
VALIDATED = [*TINY_RUN, "data.val=[{name: synthetic, n: 1, size: 64, seed: 99}]", "train.log_every=2"]


def tiny_config(*extra: str):
    return load_config(REPO / "configs" / "demo.yaml", [*TINY_RUN, *extra])


class StopAfter(Callback):
    """Asks the trainer to stop once ``steps`` global steps are done."""

    def __init__(self, steps: int):
        self.steps = steps

    def on_step_end(self, trainer, result):
        if result.step >= self.steps:
            trainer.request_stop(f"StopAfter({self.steps})")


class CountSteps(Callback):
    """Counts the steps that updated the weights, in its checkpointed state."""

    def __init__(self):
        self.steps = 0

    def on_step_end(self, trainer, result):
        self.steps += result.updated

    def state_dict(self):
        return {"steps": self.steps}

    def load_state_dict(self, state):
        self.steps = state["steps"]


class Record(Callback):
    """Records every hook call with what it was given (and checks what the trainer shows then)."""

    def __init__(self):
        self.calls = []

    def setup(self, trainer):
        self.calls.append(("setup", trainer.position.global_step))

    def on_run_start(self, trainer):
        self.calls.append(("run_start",))

    def on_epoch_start(self, trainer, epoch):
        self.calls.append(("epoch_start", epoch))

    def on_micro_batch_start(self, trainer, step, index, batch):
        self.calls.append(("micro_batch_start", step, index, tuple(batch["image"].shape)))

    def on_micro_batch_end(self, trainer, step, index, batch, output):
        self.calls.append(("micro_batch_end", step, index, tuple(output.pred.shape)))

    def on_step_end(self, trainer, result):
        assert trainer.position.global_step == result.step  # already counted
        self.calls.append(("step_end", result.step, next(iter(result.losses)), result.updated, result.images,
                           result.log, result.images_per_second > 0))

    def on_train_epoch_end(self, trainer, epoch, skipped):
        self.calls.append(("train_epoch_end", epoch, skipped))

    def on_validation_end(self, trainer, result):
        assert trainer.validation_model is trainer.ema.module  # the EMA weights were validated
        self.calls.append(("validation_end", result.epoch, result.step, sorted(result.metrics["synthetic"]),
                           {"precision", "recall"} <= set(result.curves["synthetic"])))

    def on_save(self, trainer, name):
        self.calls.append(("save", name, trainer.position.epoch))

    def on_epoch_end(self, trainer, epoch):
        assert (trainer.run_dir / "checkpoints" / "last.pth").is_file()
        self.calls.append(("epoch_end", epoch))

    def on_run_end(self, trainer, summary):
        self.calls.append(("run_end", summary["global_step"]))

    def teardown(self, trainer):
        self.calls.append(("teardown",))


def test_hooks_run_in_order_with_their_arguments(tmp_path):
    record = Record()
    trainer = Trainer(load_config(REPO / "configs" / "demo.yaml", VALIDATED), tmp_path / "run", callbacks=[record])
    assert [type(c).__name__ for c in trainer.callbacks] == ["NonFiniteGuard", "EMA", "Progress", "TensorBoard",
                                                           "CheckpointLinks", "Record"]
    trainer.fit()
    metrics = sorted(trainer.state.history[-1]["metrics"]["synthetic"])
    assert {"Sm", "MAE", "maxFm"} <= set(metrics)
    assert record.calls == [
        ("setup", 0),
        ("run_start",),
        ("epoch_start", 0),
        ("micro_batch_start", 1, 0, (2, 3, 64, 64)),
        ("micro_batch_end", 1, 0, (2, 1, 64, 64)),
        ("step_end", 1, "total", True, 2, False, True),
        ("micro_batch_start", 2, 0, (2, 3, 64, 64)),
        ("micro_batch_end", 2, 0, (2, 1, 64, 64)),
        ("step_end", 2, "total", True, 2, True, True),  # train.log_every=2
        ("train_epoch_end", 0, 0),
        ("validation_end", 0, 2, metrics, True),
        ("save", "last", 1),
        ("epoch_end", 0),
        ("run_end", 2),
        ("teardown",),
    ]
    trainer.close()  # again: no second teardown
    assert record.calls[-2:] == [("run_end", 2), ("teardown",)]
    assert (tmp_path / "run" / "checkpoints" / "best.pth").samefile(tmp_path / "run" / "checkpoints" / "last.pth")


def test_a_callback_stops_the_run_and_its_state_resumes(tmp_path):
    run_dir = tmp_path / "run"
    counter = CountSteps()
    with pytest.raises(TrainingInterrupted, match=r"StopAfter\(1\)") as stopped:
        Trainer(tiny_config(), run_dir, callbacks=[counter, StopAfter(1)]).fit()
    assert stopped.value.exit_status == 128 + signal.SIGINT  # as for Ctrl-C
    assert "stopped by StopAfter(1); resume with --resume" in (run_dir / "log.txt").read_text()
    last = load_checkpoint(run_dir / "checkpoints" / "last.pth")
    assert last["position"] == {"epoch": 0, "step_in_epoch": 1, "global_step": 1}
    assert last["callbacks"] == {"CountSteps": {"steps": 1}}  # callbacks without a state save nothing

    resumed_counter = CountSteps()
    resumed = Trainer(load_config(run_dir / "config.yaml"), run_dir, resume=True, callbacks=[resumed_counter])
    assert resumed_counter.steps == 1
    assert resumed.fit()["global_step"] == 2
    assert resumed_counter.steps == 2
    assert load_checkpoint(run_dir / "checkpoints" / "last.pth")["callbacks"] == {"CountSteps": {"steps": 2}}


def test_a_checkpoint_without_callback_states_resumes(tmp_path, tiny_trained_checkpoint):
    """As written before callbacks had a state: the callbacks keep theirs, the EMA and weights load."""
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    old = load_checkpoint(tiny_trained_checkpoint)
    old.pop("callbacks", None)
    save_checkpoint({**old, "position": {"epoch": 0, "step_in_epoch": 1, "global_step": 1}},
                    run_dir / "checkpoints" / "last.pth")
    counter = CountSteps()
    trainer = Trainer(tiny_config(), run_dir, resume=True, callbacks=[counter])
    try:
        assert counter.steps == 0 and trainer.position.global_step == 1
        for key, value in trainer.ema.module.state_dict().items():
            assert torch.equal(value, old["ema"][key]), key
    finally:
        trainer.close()


def test_callbacks_need_distinct_state_keys(tmp_path):
    with pytest.raises(ValueError, match="two callbacks have the state key 'CountSteps'"):
        Trainer(tiny_config(), tmp_path / "run", callbacks=[CountSteps(), CountSteps()])
    with pytest.raises(TypeError, match="Callback instances"):
        Trainer(tiny_config(), tmp_path / "run", callbacks=[print])
    assert not (tmp_path / "run").exists()
