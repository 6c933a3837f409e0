"""Run-folder pieces without training: the lock across processes, linked checkpoints, leftovers,
TensorBoard history on resume, the resume-override policy, validation-set labels."""

import logging
import os
import signal
import subprocess
import sys
import textwrap
import time

import cv2
import pytest
import torch

from pgnet.config import DatasetEntry, load_config, save_config
from pgnet.data.datasets import build_dataset
from pgnet.data.synthetic import make_sample
from pgnet.train.data_setup import validation_labels
from pgnet.train.resume import RESUMABLE_KEYS, ResumeOverrideError, plan_resume
from pgnet.train.run_dir import (
    RunFolderBusyError,
    RunFolderLock,
    check_not_busy,
    link_checkpoint,
    remove_temporaries,
    rotate_epoch_checkpoints,
)
from pgnet.train.tb_history import open_summary_writer


def test_a_second_process_is_refused_and_a_sigkill_frees_the_folder(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from pgnet.train.run_dir import RunFolderLock
            lock = RunFolderLock({str(tmp_path)!r})
            print("locked", flush=True)
            time.sleep(120)
        """)],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        busy = rf"{tmp_path} is in use by another training \(process {holder.pid}\)"
        with pytest.raises(RunFolderBusyError, match=busy):
            RunFolderLock(tmp_path)
        with pytest.raises(RunFolderBusyError):
            check_not_busy(tmp_path)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    lock = RunFolderLock(tmp_path)  # the kernel dropped the dead process's lock
    assert (tmp_path / ".lock").read_text().strip() == str(os.getpid())
    lock.release()


def test_linked_checkpoints_share_storage_or_fall_back_to_a_copy(tmp_path, monkeypatch):
    last = tmp_path / "last.pth"
    torch.save({"step": 1}, last)
    link_checkpoint(last, tmp_path / "best.pth")
    assert (tmp_path / "best.pth").samefile(last) and last.stat().st_nlink == 2

    def no_links(*args):
        raise OSError("hard links not supported")

    monkeypatch.setattr(os, "link", no_links)
    link_checkpoint(last, tmp_path / "copy.pth")
    assert not (tmp_path / "copy.pth").samefile(last)
    assert (tmp_path / "copy.pth").read_bytes() == last.read_bytes()
    assert not list(tmp_path.glob(".*.tmp"))


def test_rotation_and_leftovers(tmp_path):
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    torch.save({"step": 2}, checkpoints / "last.pth")
    (checkpoints / "epoch_0001.pth").write_bytes(b"old")
    rotate_epoch_checkpoints(checkpoints, 2, keep_recent=1)
    assert sorted(p.name for p in checkpoints.iterdir()) == ["epoch_0002.pth", "last.pth"]
    leftovers = [checkpoints / ".last.pth.ab12.tmp", tmp_path / ".config.yaml.cd34.tmp"]
    for path in leftovers:
        path.write_bytes(b"partial")
    assert remove_temporaries(tmp_path) == sorted(leftovers)
    assert not any(path.exists() for path in leftovers)


def test_resumed_tensorboard_keeps_history_to_the_checkpoint_and_replaces_what_follows(tmp_path):
    """Killed after logging step 5 with its checkpoint at step 3, then resumed with a change (another
    learning rate from step 3 on): TensorBoard shows the first process's points up to step 3 and the
    resumed process's after it, each once, as one run that took the change at step 3 would; a second
    resume purges again, on top of the first."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def scalars(tag):
        events = EventAccumulator(str(tmp_path), size_guidance={"scalars": 0})
        events.Reload()
        return [(e.step, e.value) for e in events.Scalars(tag)]

    first = open_summary_writer(tmp_path)
    for step in range(1, 6):
        first.add_scalar("lr", step, step)
    first.add_scalar("val", 30, 3)  # the epoch-end validation at the checkpoint's step
    first.add_scalar("val", 50, 5)
    first.close()  # killed here, after its checkpoint at step 3
    # A resumed process starts in a later second, so its event file sorts after the first one (in one
    # second, one process's files sort by a counter as text: ...10 before ...9).
    time.sleep(1 - time.time() % 1)
    resumed = open_summary_writer(tmp_path, resume_step=3)
    for step in range(3, 9):  # a resume at an epoch's end validates again at step 3
        if step > 3:
            resumed.add_scalar("lr", step + 0.5, step)
        if step in (3, 6):
            resumed.add_scalar("val", step * 10 + 0.5, step)
    resumed.close()
    assert scalars("lr") == [(1, 1), (2, 2), (3, 3), (4, 4.5), (5, 5.5), (6, 6.5), (7, 7.5), (8, 8.5)]
    assert scalars("val") == [(3, 30), (6, 60.5)]
    time.sleep(1 - time.time() % 1)
    again = open_summary_writer(tmp_path, resume_step=5)
    again.add_scalar("lr", 6.25, 6)
    again.add_scalar("val", 99, 5)  # none at 5 left after the first purge: written
    again.close()
    assert scalars("lr") == [(1, 1), (2, 2), (3, 3), (4, 4.5), (5, 5.5), (6, 6.25)]
    assert scalars("val") == [(3, 30), (5, 99)]


@pytest.fixture
def fake_run(tmp_path):
    """A run folder as the trainer leaves it after 2 of 3 epochs (6 steps each): its recipe in
    ``config.yaml`` and in ``last.pth``."""
    config = load_config(None, ["train.epochs=3"])
    save_config(config, tmp_path / "config.yaml")
    (tmp_path / "checkpoints").mkdir()
    torch.save({"position": {"epoch": 2, "step_in_epoch": 0, "global_step": 12}, "config": config.to_dict()},
               tmp_path / "checkpoints" / "last.pth")
    return tmp_path


def test_resume_takes_the_checkpoint_recipe_and_refuses_an_edited_config_yaml(fake_run):
    edited = load_config(fake_run / "config.yaml", ["optim.lr=0.5", "data.batch_size=4"])
    save_config(edited, fake_run / "config.yaml")
    with pytest.raises(ResumeOverrideError, match=r"config\.yaml differs from the recipe its checkpoints/last\.pth "
                                                   r"holds in data\.batch_size, optim\.lr; "):
        plan_resume(fake_run, ["train.epochs=4"])
    (fake_run / "config.yaml").unlink()  # the recipe is the checkpoint's: config.yaml is not needed
    plan = plan_resume(fake_run, ["train.epochs=4"])
    default = load_config(None)
    assert (plan.config.optim.lr, plan.config.data.batch_size) == (default.optim.lr, default.data.batch_size)
    # A resume stopped before its first save left config.yaml with its accepted changes: not an edit.
    save_config(plan.config, fake_run / "config.yaml")
    assert plan_resume(fake_run, ["train.epochs=5"]).config.resume_changes == [
        {"step": 12, "epoch": 2, "key": "train.epochs", "old": 3, "new": 5}]


@pytest.mark.parametrize("override", ["optim.lr=0.5", "optim.name=adamw", "model.width=32", "data.batch_size=4",
                                      "train.seed=1", "resume_changes=[{step: 0}]"])
def test_resume_refuses_changes_outside_the_policy(fake_run, override):
    key = override.split("=")[0]
    with pytest.raises(ResumeOverrideError, match=rf"^{key} cannot change when resuming"):
        plan_resume(fake_run, [override])


def test_resume_records_accepted_changes_with_their_step(fake_run):
    plan = plan_resume(fake_run, ["train.epochs=5", "data.num_workers=0", "train.log_every=10"])
    assert not plan.finished
    assert plan.config.resume_changes == [
        {"step": 12, "epoch": 2, "key": "data.num_workers", "old": 4, "new": 0},
        {"step": 12, "epoch": 2, "key": "train.epochs", "old": 3, "new": 5},
    ]  # train.log_every=10 is the stored value: no change
    assert {change["key"] for change in plan.changes} <= set(RESUMABLE_KEYS)
    assert plan_resume(fake_run, ["train.epochs=2"]).finished
    with pytest.raises(ResumeOverrideError, match=r"train\.epochs: 1 is fewer than the 2 epochs"):
        plan_resume(fake_run, ["train.epochs=1"])


def test_validation_sets_get_unique_labels():
    entries = [DatasetEntry("generic", root="data/a/test"), DatasetEntry("generic", root="data/b/test"),
               DatasetEntry("DUTS-TE", root="data/DUTS"), DatasetEntry("synthetic", seed=1),
               DatasetEntry("synthetic", seed=2), DatasetEntry("generic", root="x", label="mine")]
    assert validation_labels(entries) == ["generic@a-test", "generic@b-test", "DUTS-TE", "synthetic@seed1",
                                          "synthetic@seed2", "mine"]
    twice = [DatasetEntry("generic", root="same"), DatasetEntry("generic", root="same")]
    labels = validation_labels(twice)
    assert len(set(labels)) == 2


def test_files_left_out_of_a_dataset_are_named(tmp_path, caplog):
    for folder in ("image", "mask"):
        (tmp_path / folder).mkdir()
    for stem in ("a", "b"):
        image, mask = make_sample(0, (32, 32))
        cv2.imwrite(str(tmp_path / "image" / f"{stem}.jpg"), image)
        cv2.imwrite(str(tmp_path / "mask" / f"{stem}.png"), mask)
    cv2.imwrite(str(tmp_path / "mask" / "orphan.png"), mask)
    (tmp_path / "image" / "folder.jpg").mkdir()
    (tmp_path / "image" / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    with caplog.at_level(logging.WARNING, logger="pgnet.data"):
        assert len(build_dataset({"name": "generic", "root": str(tmp_path)})) == 2
    assert "1 masks have no image" in caplog.text and "orphan.png" in caplog.text
    assert "folder.jpg is a folder" in caplog.text and "gone.jpg is a link to nothing" in caplog.text
