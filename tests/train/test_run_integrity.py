"""Run integrity end to end: exact resume across a batch of unreadable files, one writer per run
folder, SIGTERM saves, the resume-override policy, leftovers of a killed save, linked checkpoints,
uniquely named validation sets and skipped files named in log.txt."""

import json
import signal
import subprocess
import time
from pathlib import Path

import cv2
import pytest
import torch
import yaml
from test_trainer import REPO, TINY, TRAIN, env, final_weights, train_in_process, train_until_killed, wait_for

from pgnet.checkpoint import load_checkpoint
from pgnet.cli.train import main as train_main
from pgnet.data.sampler import ResumableBatchSampler
from pgnet.data.synthetic import make_sample
from pgnet.train.resume import plan_resume
from pgnet.train.trainer import Trainer

DEMO = str(REPO / "configs" / "demo.yaml")


def write_pairs(root: Path, count: int, seed: int, size: int = 96) -> list[Path]:
    """root/image/sNN.png + root/mask/sNN.png; returns the image paths in dataset order."""
    (root / "image").mkdir(parents=True)
    (root / "mask").mkdir(parents=True)
    images = []
    for index in range(count):
        image, mask = make_sample(seed * 1000 + index, (size, size))
        images.append(root / "image" / f"s{index:02d}.png")
        cv2.imwrite(str(images[-1]), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(root / "mask" / f"s{index:02d}.png"), mask)
    return images


@pytest.fixture(scope="module")
def bad_batch_data(tmp_path_factory):
    """12 pairs whose second batch of epoch 0 (seed 0, batches of 2) is two 0-byte images, a mask
    without image, an image path that is a folder and a dangling link; two validation sets both
    named ``generic``."""
    root = tmp_path_factory.mktemp("bad_batch")
    images = write_pairs(root / "train", 12, seed=0)
    sampler = ResumableBatchSampler(12, 2, [56, 64], seed=0)
    sampler.set_epoch(0)
    second_batch = [request.index for request in list(sampler)[1]]
    for index in second_batch:
        images[index].write_bytes(b"")
    cv2.imwrite(str(root / "train" / "mask" / "orphan.png"), make_sample(7, (96, 96))[1])
    (root / "train" / "image" / "folder.png").mkdir()
    (root / "train" / "image" / "dangling.png").symlink_to(root / "nowhere.png")
    write_pairs(root / "setA", 2, seed=5, size=64)
    write_pairs(root / "setB", 2, seed=6, size=64)
    return root, [images[i].name for i in second_batch]


def bad_batch_args(root: Path, run_dir: Path) -> list[str]:
    return ["--config", DEMO, "--run-dir", str(run_dir), *TINY, "train.epochs=1", "train.image_every=0",
            f"data.train=[{{name: generic, root: {root / 'train'}}}]",
            f"data.val=[{{name: generic, root: {root / 'setA'}}}, {{name: generic, root: {root / 'setB'}}}]"]


@pytest.fixture(scope="module")
def bad_batch_straight(bad_batch_data, tmp_path_factory):
    root, _ = bad_batch_data
    run_dir = tmp_path_factory.mktemp("runs") / "straight"
    assert train_in_process(bad_batch_args(root, run_dir)) == 0
    return run_dir


def test_unreadable_batch_then_sigkill_then_resume_gives_identical_weights(bad_batch_data, bad_batch_straight,
                                                                              tmp_path):
    root, _ = bad_batch_data
    run_dir = tmp_path / "killed"
    train_until_killed([*bad_batch_args(root, run_dir), "train.checkpoint_every_steps=1"], run_dir, "step 4:")
    position = load_checkpoint(run_dir / "checkpoints" / "last.pth")["position"]
    assert position["epoch"] == 0 and 3 <= position["step_in_epoch"] < 6, position  # after the empty batch

    assert train_in_process(["--resume", str(run_dir)]) == 0
    resumed, straight = final_weights(run_dir), final_weights(bad_batch_straight)
    for key in straight:
        assert torch.equal(resumed[key], straight[key]), key
    for run in (run_dir, bad_batch_straight):
        summary = json.loads((run / "summary.json").read_text())
        assert summary["global_step"] == 6  # the empty batch's step counts, with no update
    # TensorBoard equals the uninterrupted run's point for point, the epoch's skipped samples included
    # (those of the batch before the kill): the resumed process's points after the checkpoint replace
    # the killed process's.
    straight_scalars = board_scalars(bad_batch_straight)
    assert straight_scalars["data/skipped_samples"] == [(6, 2.0)]  # the two 0-byte images
    assert board_scalars(run_dir) == straight_scalars


def board_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar TensorBoard shows for a run, as (step, value) per tag, less the speed of each step."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(event.step, event.value) for event in events.Scalars(tag)]
            for tag in events.Tags()["scalars"] if not tag.startswith("speed/")}


def test_skipped_files_and_validation_sets_are_named_in_the_log(bad_batch_data, bad_batch_straight):
    _, bad_names = bad_batch_data
    log = (bad_batch_straight / "log.txt").read_text()
    for name in bad_names:
        assert name in log  # skipped at training time, named in log.txt (not only on stderr)
    assert "step 2 skipped: its batches had no readable sample" in log
    assert "1 masks have no image" in log and "orphan.png" in log
    assert "folder.png is a folder" in log and "dangling.png is a link to nothing" in log
    assert "validation sets: generic@setA, generic@setB; best.pth: the highest mean Sm over 2 sets" in log
    assert "epoch 1 generic@setA: " in log and "epoch 1 generic@setB: " in log
    assert "new best mean Sm over 2 sets" in log
    summary = json.loads((bad_batch_straight / "summary.json").read_text())
    assert summary["validation_sets"] == ["generic@setA", "generic@setB"]
    assert set(summary["last_validation"]["metrics"]) == {"generic@setA", "generic@setB"}
    assert summary["best_rule"] == "max of mean Sm over 2 sets"


def test_one_writer_sigterm_saves_and_resume_policy(tmp_path, capsys):
    """A second trainer on a live run stops at once naming the PID; SIGTERM saves last.pth (143);
    leftovers of a killed save are removed; accepted overrides are recorded, others refused; a
    finished run exits 0 touching nothing; a kill at epoch end is completed on resume. (The first
    trainer is a process of its own; the others run in this one, to save start-up time.)"""
    run_dir = tmp_path / "run"
    args = ["--config", DEMO, "--run-dir", str(run_dir), *TINY, "train.epochs=20", "data.val=[]",
            "train.image_every=0", "train.max_steps_per_epoch=2"]
    first_stderr = open(tmp_path / "first.stderr", "w+")  # a file: a pipe nobody reads could fill and block
    first = subprocess.Popen([*TRAIN, *args], stdout=subprocess.DEVNULL, stderr=first_stderr, env=env())
    try:
        wait_for(run_dir / "log.txt", "step 1:", timeout=600)
        for second_args in (args, ["--resume", str(run_dir)]):
            started = time.perf_counter()
            assert train_main(second_args) == 2
            assert f"{run_dir} is in use by another training (process {first.pid})" in capsys.readouterr().err
            assert time.perf_counter() - started < 30
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
        first_stderr.close()
    stderr = (tmp_path / "first.stderr").read_text()
    assert first.returncode == 143, stderr[-2000:]
    log = (run_dir / "log.txt").read_text()
    assert "SIGTERM: saving last.pth after this step" in log and "stopped by SIGTERM" in log
    position = load_checkpoint(run_dir / "checkpoints" / "last.pth")["position"]
    assert position["global_step"] >= 1
    epochs = position["epoch"] + 1  # at most one more epoch (2 steps) to train

    for refused in ("optim.lr=0.5", "model.width=32", "optim.name=sgd"):
        assert train_main(["--resume", str(run_dir), refused]) == 2
        assert f"{refused.split('=')[0]} cannot change when resuming" in capsys.readouterr().err

    leftover = run_dir / "checkpoints" / ".last.pth.x1y2.tmp"  # as a save killed mid-write leaves it
    leftover.write_bytes(b"\0" * 1000)
    assert train_main(["--resume", str(run_dir), f"train.epochs={epochs}", "train.log_every=2"]) == 0
    assert not leftover.exists()
    stored = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert stored["train"]["epochs"] == epochs and stored["train"]["log_every"] == 2
    assert stored["resume_changes"] == [
        {"step": position["global_step"], "epoch": position["epoch"], "key": "train.epochs", "old": 20, "new": epochs},
        {"step": position["global_step"], "epoch": position["epoch"], "key": "train.log_every", "old": 1, "new": 2},
    ]
    checkpoints = run_dir / "checkpoints"
    newest = checkpoints / f"epoch_{epochs:04d}.pth"
    assert newest.samefile(checkpoints / "last.pth")

    capsys.readouterr()
    before = {path: (path.stat().st_mtime_ns, path.read_bytes()) for path in run_dir.rglob("*") if path.is_file()}
    assert train_main(["--resume", str(run_dir)]) == 0
    assert f"is finished ({epochs} of {epochs} epochs); nothing to do" in capsys.readouterr().err
    after = {path: (path.stat().st_mtime_ns, path.read_bytes()) for path in run_dir.rglob("*") if path.is_file()}
    assert after == before

    # A kill between last.pth and the epoch rotation: the next start completes it.
    newest.unlink()
    (checkpoints / "epoch_0000.pth").write_bytes(b"older")
    trainer = Trainer(plan_resume(run_dir, [f"train.epochs={epochs + 1}"]).config, run_dir, resume=True)
    trainer.close()
    assert newest.samefile(checkpoints / "last.pth")
    assert sorted(p.name for p in checkpoints.glob("epoch_*")) == [newest.name]


def test_config_errors_leave_no_run_folder(tmp_path, capsys):
    assert train_main(["--config", DEMO, "--run-dir", str(tmp_path / "r"), "train.val_every=0"]) == 2
    assert "train.val_every: 0 is out of range (allowed: an integer >= 1)" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
    if torch.cuda.device_count() > 3:
        pytest.skip("this machine has a cuda:3")
    assert train_main(["--config", DEMO, "--run-dir", str(tmp_path / "r"), *TINY, "train.device=cuda:3"]) == 2
    assert "train.device: device 'cuda:3' requested" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
