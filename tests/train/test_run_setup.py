"""The pieces the training loop stands on: run set-up and close (the DDP process group included),
run state and best rule, stop signals."""

import json
import re
import signal
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from helpers import write_pair
from test_trainer import REPO, TINY

from pgnet import distributed
from pgnet.cli.common import run_command
from pgnet.cli.train import main as train_main
from pgnet.config import ConfigError, load_config
from pgnet.train.callbacks import Callback
from pgnet.train.data_setup import available_cores
from pgnet.train.interrupt import TrainingInterrupted, requested_signal, stop_signals_to
from pgnet.train.run_dir import check_not_busy
from pgnet.train.run_setup import start_run
from pgnet.train.run_state import BestRule, NonFiniteLossError, Position, RunState
from pgnet.train.trainer import Trainer
from pgnet.writing import NoSpaceError


def tiny_config(*extra):
    return load_config(REPO / "configs" / "demo.yaml", [*TINY, "data.val=[]", "train.device=cpu", *extra])


@pytest.fixture
def two_rank_group(tmp_path, monkeypatch):
    """A process group already joined, as torchrun's rank 0 of 2 would see it (a one-process gloo
    group, so that no second process is needed)."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield
    if dist.is_initialized():
        dist.destroy_process_group()


def test_cleanup_leaves_the_process_group(two_rank_group):
    info = distributed.init_distributed("cpu")
    assert info.enabled and dist.is_initialized()
    distributed.cleanup(info)
    assert not dist.is_initialized()
    distributed.cleanup(info)  # again: nothing to do
    distributed.cleanup(distributed.DistInfo())  # a single process has none


def test_a_setup_error_leaves_the_process_group(two_rank_group, tmp_path):
    with pytest.raises(ConfigError, match=r"data\.batch_size \(3\) must be divisible by .* \(1 × 2\)"):
        start_run(tiny_config("data.batch_size=3"), tmp_path / "run", resume=False, log_name="pgnet.test.setup")
    assert not dist.is_initialized()
    assert not (tmp_path / "run").exists()


def test_trainer_close_leaves_the_process_group_and_frees_the_folder(two_rank_group, tmp_path):
    trainer = Trainer(tiny_config("data.batch_size=4"), tmp_path / "run")
    assert trainer.dist.enabled and isinstance(trainer.network, torch.nn.parallel.DistributedDataParallel)
    trainer.close()
    assert not dist.is_initialized()
    # the reducer went before the group: it must not hold the group's last reference (see cleanup)
    assert not hasattr(trainer.network, "reducer") and not hasattr(trainer.network, "logger")
    assert not trainer.logger.handlers
    check_not_busy(tmp_path / "run")  # the folder is free
    trainer.close()  # again: nothing more


class EndWith(Callback):
    """Ends the run at its start with ``ending`` (None: lets it train)."""

    def __init__(self, ending: BaseException | None):
        self.ending = ending

    def on_run_start(self, trainer):
        if self.ending is not None:
            raise self.ending


@pytest.mark.parametrize("ending", [None, NonFiniteLossError("nan"), TrainingInterrupted(signal.SIGTERM)])
def test_fit_closes_the_run_however_it_ends(tmp_path, monkeypatch, ending):
    trainer = Trainer(tiny_config("train.epochs=1", "train.max_steps_per_epoch=1"), tmp_path / "run",
                      callbacks=[EndWith(ending)])
    left = []
    monkeypatch.setattr(distributed, "cleanup", lambda info, network=None: left.append((info, network)))
    if ending is None:
        trainer.fit()
    else:
        with pytest.raises(type(ending)):
            trainer.fit()
    assert left == [(trainer.dist, trainer.network)]
    assert not trainer.logger.handlers
    log = (tmp_path / "run" / "log.txt").read_text()
    if isinstance(ending, NonFiniteLossError):  # the error that ends a run is in log.txt too, with its traceback
        assert "ERROR stopped by an error:" in log and "NonFiniteLossError: nan" in log
    else:
        assert "ERROR" not in log


def write_pictures(root, count):
    """A ``generic`` dataset of ``count`` small pairs under ``root``."""
    for index in range(count):
        write_pair(root / "image" / f"p{index}.jpg", root / "mask" / f"p{index}.png", size=(40, 48), seed=index)
    return root


@pytest.mark.parametrize(("overrides", "message"), [
    (["model.graft_points=[r9-s9]"], r"model\.graft_points: 'r9-s9' is not a grafting point"),
    (["model.graft_points=[r5-s2, r5-s2]"], r"model\.graft_points: 'r5-s2' is listed twice"),
    (["model.graft_points=[]"], r"model\.graft_points must contain 'r5-s2'"),
    (["data.train=[]"], r"data\.train lists no dataset"),
    (["data.train=[{name: generic, root: MINE, split: train, val_fraction: 0.95}]"],
     r"dataset generic: val_fraction 0\.95 of 5 pairs holds out 5, leaving no training picture"),
    (["data.train=[{name: generic, root: MINE}]", "data.val=[{name: generic, root: MINE, split: val}]"],
     r"data\.val generic: 1 of its pictures are also in data\.train"),
    (["data.train=[{name: generic, root: MINE, split: train, val_fraction: 0.2}]", "data.batch_size=8"],
     r"data\.train holds 4 pictures \(after any split\), fewer than one step's data\.batch_size of 8; "
     r"set data\.batch_size=4 or less"),
])
def test_config_and_data_errors_stop_before_the_run_folder_exists(tmp_path, capsys, overrides, message):
    mine = write_pictures(tmp_path / "mine", 5)
    runs = tmp_path / "runs"
    overrides = [override.replace("MINE", str(mine)) for override in overrides]
    status = train_main(["--config", str(REPO / "configs" / "demo.yaml"), *TINY, "data.val=[]", f"output_dir={runs}",
                         *overrides])
    assert status == 2
    assert re.search(message, capsys.readouterr().err)
    assert not runs.exists()  # no run folder, no .lock, no empty log.txt


def test_held_out_pictures_are_listed_and_counted_and_run_errors_logged(tmp_path):
    mine = write_pictures(tmp_path / "mine", 5)
    split = "split: SPLIT, val_fraction: 0.2, split_seed: 0"
    trainer = Trainer(tiny_config(f"data.train=[{{name: generic, root: {mine}, {split.replace('SPLIT', 'train')}}}]",
                                  f"data.val=[{{name: generic, root: {mine}, {split.replace('SPLIT', 'val')}}}]",
                                  "data.num_workers=64"),
                      tmp_path / "run", callbacks=[EndWith(NoSpaceError(tmp_path / "run" / "last.pth"))])
    with pytest.raises(NoSpaceError):
        trainer.fit()
    held_out = json.loads((tmp_path / "run" / "split.json").read_text())
    assert list(held_out) == ["generic"] and held_out["generic"]["count"] == 1
    (image,) = held_out["generic"]["images"]
    assert Path(image).parent == mine / "image" and trainer.data.num_samples == 4
    log = (tmp_path / "run" / "log.txt").read_text()
    assert f"validation set generic: 1 pictures, held out of {mine} (val_fraction 0.2, split_seed 0)" in log
    assert f"data.num_workers 64 capped at {available_cores()}" in log and trainer.data.num_workers == available_cores()
    assert "ERROR stopped: NoSpaceError: no space left on device while writing" in log


def test_run_state_round_trips_through_checkpoint_fields():
    state = RunState(Position(2, 3, 15), best=0.5, best_step=12, nonfinite_steps=1,
                     history=[{"epoch": 2, "step": 12, "metrics": {}}])
    fields = state.checkpoint_fields()
    assert fields["position"] == {"epoch": 2, "step_in_epoch": 3, "global_step": 15}
    assert RunState.from_checkpoint(fields) == state
    state.position.global_step += 1
    assert fields["position"]["global_step"] == 15  # a copy, not the live position


def test_nonfinite_steps_are_counted_up_to_the_limit_then_exit_3(capsys):
    state = RunState()
    state.count_nonfinite("non-finite loss at global step 3", allowed=1)
    with pytest.raises(NonFiniteLossError, match=r"global step 4; stopping, last\.pth is the last good checkpoint"):
        state.count_nonfinite("non-finite loss at global step 4", allowed=1)
    assert state.nonfinite_steps == 2

    def stopped():
        raise NonFiniteLossError("non-finite loss at global step 4; stopping")

    assert run_command("pgnet-train", stopped) == 3
    assert "error: non-finite loss at global step 4; stopping" in capsys.readouterr().err


def test_best_rule():
    two = BestRule("MAE", "min", sets=2)
    assert str(two) == "mean MAE over 2 sets" and str(BestRule("Sm", "max", 1)) == "Sm"
    assert two.score({"a": {"MAE": 0.1}, "b": {"MAE": 0.3}}) == pytest.approx(0.2)
    assert two.score({"a": {"Sm": 0.9}}) is None
    assert two.beats(0.1, None) and two.beats(0.1, 0.2) and not two.beats(0.2, 0.1)
    assert BestRule("Sm", "max", 1).beats(0.9, 0.8)


def test_stop_signals_reach_the_handler_and_are_restored():
    received = []
    before = signal.getsignal(signal.SIGTERM)
    with stop_signals_to(lambda signum, frame: received.append(signum)):
        signal.raise_signal(signal.SIGTERM)
    assert received == [signal.SIGTERM] and signal.getsignal(signal.SIGTERM) is before
    assert requested_signal(True) == signal.SIGINT and requested_signal(signal.SIGTERM) == signal.SIGTERM
    assert TrainingInterrupted(signal.SIGTERM).exit_status == 128 + signal.SIGTERM
