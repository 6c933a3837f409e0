"""The trainer end to end on tiny synthetic runs: run folder, exact resume after SIGKILL, Ctrl-C,
non-finite losses, TensorBoard content, and two-process DDP on CPU."""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import torch

from pgnet.checkpoint import load_checkpoint
from pgnet.cli.train import main as train_main
from pgnet.config import load_config
from pgnet.train.trainer import NonFiniteLossError, Trainer

REPO = Path(__file__).resolve().parents[2]
TRAIN = [sys.executable, str(REPO / "scripts" / "train.py")]

TINY = [
    "name=tiny",
    "model.swin=swin_tiny_patch4_window7_224",
    "model.swin_input_size=64",
    "model.drop_path_rate=0.2",
    "data.train=[{name: synthetic, n: 12, size: 96, seed: 0}]",
    "data.val=[{name: synthetic, n: 3, size: 80, seed: 99}]",
    "data.size=64",
    "data.multiscale=[56, 64]",
    "data.eval_size=64",
    "data.batch_size=2",
    "data.num_workers=0",
    "optim.name=adamw",
    "optim.lr=0.001",
    "schedule.warmup_epochs=0.5",
    "train.epochs=2",
    "train.log_every=1",
    "train.image_every=0",  # pictures only in the `uninterrupted` run
    "train.val_every=1",
    "train.keep_recent=1",
    "train.deterministic=true",
]


def env():
    # This process's thread count (one, see conftest.py): the resume tests compare the weights of runs made
    # here and in subprocesses bitwise.
    threads = str(torch.get_num_threads())
    return {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": threads}


def train_in_process(args: list[str]) -> int:
    """``scripts/train.py args`` in this process (no start-up cost), for runs that need no process of their
    own; the global switch a run sets is restored."""
    deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        return train_main(args)
    finally:
        torch.use_deterministic_algorithms(deterministic)


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run_dir / "checkpoints" / "last.pth")["model"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "straight"
    assert train_in_process(["--config", str(REPO / "configs" / "demo.yaml"), "--run-dir", str(run_dir), *TINY,
                             "train.image_every=3"]) == 0
    return run_dir


def test_run_folder_contents(uninterrupted):
    checkpoints = uninterrupted / "checkpoints"
    names = {p.name for p in checkpoints.iterdir()}
    assert names == {"last.pth", "best.pth", "epoch_0002.pth"}  # keep_recent=1
    # One file on disk: best (epoch 2 validated best here) and epoch_0002 are hard links to last.
    assert (checkpoints / "best.pth").samefile(checkpoints / "last.pth")
    assert (checkpoints / "epoch_0002.pth").samefile(checkpoints / "last.pth")
    assert load_config(uninterrupted / "config.yaml").data.batch_size == 2
    log = (uninterrupted / "log.txt").read_text()
    assert "step 12:" in log and "epoch 2 synthetic: " in log
    summary = json.loads((uninterrupted / "summary.json").read_text())
    assert summary["global_step"] == 12 and summary["epochs"] == 2
    assert set(summary["last_validation"]["metrics"]["synthetic"]) >= {"Sm", "MAE", "maxFm"}
    state = load_checkpoint(uninterrupted / "checkpoints" / "last.pth")
    assert state["position"] == {"epoch": 2, "step_in_epoch": 0, "global_step": 12}


def test_tensorboard_has_losses_lrs_pictures_and_pr_curves_at_matching_steps(uninterrupted):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(uninterrupted / "tb"), size_guidance={"images": 0, "scalars": 0, "tensors": 0})
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"loss/total", "loss/pred", "loss/side_cnn", "loss/side_swin", "loss/attention/r5-s2"} <= scalars
    assert {"lr/rest", "lr/swin", "speed/images_per_second", "val/synthetic/Sm", "val/synthetic/MAE"} <= scalars
    assert "data/skipped_samples" not in scalars  # nothing was skipped
    images = {tag for tag in events.Tags()["tensors"]
              if events.SummaryMetadata(tag).plugin_data.plugin_name == "images"}
    fixed = {f"prediction/val/synthetic/synthetic_00000{i}" for i in range(3)}
    assert {"prediction/train", "agl/r5-s2/train", "attention/r5-s2/train/object"} | fixed <= images
    queries = ("object", "boundary", "background")
    assert {f"attention/r5-s2/val/synthetic/synthetic_000000/{q}" for q in queries} <= images
    # Training pictures at the steps of their losses; the fixed validation pictures at every validation.
    assert [e.step for e in events.Tensors("prediction/train")] == [3, 6, 9, 12]
    assert {3, 6, 9, 12} <= {e.step for e in events.Scalars("loss/total")}
    val_steps = [e.step for e in events.Scalars("val/synthetic/Sm")]
    assert val_steps == [6, 12]
    assert [e.step for e in events.Tensors("agl/r5-s2/val/synthetic/synthetic_000001")] == val_steps
    assert max(int(events.Tensors(tag)[-1].tensor_proto.string_val[0]) for tag in images) <= 1100


def test_a_real_tensorboard_server_shows_the_run(uninterrupted):
    """Serve the run with TensorBoard itself and read what its dashboards would draw."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(uninterrupted / "tb"), "--host", "127.0.0.1",
         "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env(),
    )

    def get(path: str, **query: str):
        url = f"http://127.0.0.1:{port}{path}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
        with urllib.request.urlopen(url, timeout=10) as response:
            body = response.read()
        return body if body.startswith(b"\x89PNG") else json.loads(body)

    try:
        deadline = time.time() + 90
        while True:
            try:
                scalars = get("/data/plugin/scalars/tags")["."]
                break
            except (OSError, KeyError):
                if time.time() > deadline or server.poll() is not None:
                    raise
                time.sleep(0.5)
        plugins = get("/data/plugins_listing")
        assert all(plugins[name]["enabled"] for name in ("scalars", "images", "custom_scalars", "pr_curves", "text"))
        assert {"loss/total", "loss/attention/r5-s2", "lr/swin", "val/synthetic/Sm"} <= set(scalars)
        images = get("/data/plugin/images/tags")["."]
        tag = "attention/r5-s2/val/synthetic/synthetic_000000/object"
        assert "softmax attention row" in images[tag]["description"]
        assert "block matrix" in images["agl/r5-s2/train"]["description"]
        listing = get("/data/plugin/images/images", run=".", tag=tag)
        assert [entry["step"] for entry in listing] == [6, 12]
        assert get(f"/data/plugin/images/individualImage?{listing[-1]['query']}").startswith(b"\x89PNG")
        layout = get("/data/plugin/custom_scalars/layout")
        charts = {chart["title"]: chart["multiline"]["tag"] for category in layout["category"]
                  for chart in category["chart"]}
        assert charts["S-measure (higher is better)"] == ["^val/.*/Sm$"] and charts["losses"] == ["^loss/"]
        assert "about/pictures/text_summary" in get("/data/plugin/text/tags")["."]
        curve = get("/data/plugin/pr_curves/pr_curves", run=".", tag="val/synthetic/pr")["."][-1]
        # True pixel counts: 3 validation masks of 80×80 pixels at every threshold.
        totals = {tp + fp + tn + fn for tp, fp, tn, fn in zip(curve["true_positives"], curve["false_positives"],
                                                              curve["true_negatives"], curve["false_negatives"])}
        assert totals == {3 * 80 * 80}
        assert curve["recall"][0] >= curve["recall"][-1] and max(curve["precision"]) > 0
        pr_tags = get("/data/plugin/pr_curves/tags")["."]
        assert "pixels summed over the set" in pr_tags["val/synthetic/pr"]["description"]
    finally:
        server.kill()
        server.wait()


def wait_for(path: Path, text: str, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.exists() and text in path.read_text():
            return
        time.sleep(0.02)
    raise TimeoutError(f"{text!r} never appeared in {path}")


def train_until_killed(args: list[str], log_dir: Path, text: str, timeout: float = 600) -> None:
    """Start a training with ``args`` and SIGKILL it once ``text`` appears in ``log_dir``/log.txt."""
    process = subprocess.Popen(TRAIN + args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env())
    try:
        wait_for(log_dir / "log.txt", text, timeout=timeout)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()


def test_sigkill_mid_epoch_then_resume_gives_identical_weights(uninterrupted, tmp_path):
    run_dir = tmp_path / "killed"
    args = ["--config", str(REPO / "configs" / "demo.yaml"), "--run-dir", str(run_dir), *TINY,
            "train.checkpoint_every_steps=2"]  # a last.pth at step 8 at the latest when "step 9:" shows
    train_until_killed(args, run_dir, "step 9:")
    position = load_checkpoint(run_dir / "checkpoints" / "last.pth")["position"]
    assert position["epoch"] == 1 and 0 < position["step_in_epoch"] < 6, position  # inside the second epoch

    assert train_in_process(["--resume", str(run_dir)]) == 0
    resumed, straight = final_weights(run_dir), final_weights(uninterrupted)
    assert resumed.keys() == straight.keys()
    for key in straight:
        assert torch.equal(resumed[key], straight[key]), key
    # TensorBoard history kept: every step's loss once, both epochs' validation (nothing purged).
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
    events.Reload()
    assert [e.step for e in events.Scalars("loss/total")] == list(range(1, 13))
    assert [e.step for e in events.Scalars("val/synthetic/Sm")] == [6, 12]


def test_ctrl_c_saves_and_exits_cleanly(tmp_path):
    run_dir = tmp_path / "interrupted"
    args = ["--config", str(REPO / "configs" / "demo.yaml"), "--run-dir", str(run_dir), *TINY, "train.epochs=20"]
    process = subprocess.Popen(TRAIN + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env())
    wait_for(run_dir / "log.txt", "step 2:", timeout=600)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-2000:]
    assert "resume with --resume" in stderr
    position = load_checkpoint(run_dir / "checkpoints" / "last.pth")["position"]
    assert position["global_step"] >= 2


def test_refuses_to_overwrite_a_run(uninterrupted, capsys):
    before = sorted((path.name, path.stat().st_mtime_ns) for path in uninterrupted.rglob("*"))
    args = ["--config", str(REPO / "configs" / "demo.yaml"), "--run-dir", str(uninterrupted), *TINY]
    assert train_in_process(args) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert sorted((path.name, path.stat().st_mtime_ns) for path in uninterrupted.rglob("*")) == before


def test_config_errors_stop_before_anything_runs(tmp_path, capsys):
    demo = ["--config", str(REPO / "configs" / "demo.yaml"), "--run-dir", str(tmp_path / "r")]
    assert train_in_process([*demo, "train.epoch=3"]) == 2
    assert "unknown key train.epoch; did you mean train.epochs?" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
    assert train_in_process([*demo, "data.train=[{name: DUTS-TR, root: /nonexistent/DUTS}]"]) == 2
    assert "/nonexistent/DUTS" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def tiny_trainer(tmp_path, *extra):
    config = load_config(REPO / "configs" / "demo.yaml", [*TINY, "data.val=[]", "train.image_every=0", *extra])
    return Trainer(config, tmp_path / "run")


def test_nonfinite_loss_stops_naming_step_and_terms(tmp_path, monkeypatch):
    trainer = tiny_trainer(tmp_path, "train.checkpoint_every_steps=1")
    criterion = trainer.criterion.forward
    calls = {"n": 0}

    def poisoned(output, mask):
        calls["n"] += 1
        total, terms = criterion(output, mask)
        if calls["n"] >= 3:
            terms["pred"] = torch.tensor(float("nan"))
            total = total * float("nan")
        return total, terms

    monkeypatch.setattr(trainer.criterion, "forward", poisoned)
    with pytest.raises(NonFiniteLossError, match=r"global step 3 \(total=nan, pred=nan, side_cnn=.*attention/r5-s2="):
        trainer.fit()
    last = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pth")
    assert last["position"]["global_step"] == 2
    assert all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())


def test_nonfinite_steps_can_be_skipped(tmp_path, monkeypatch):
    trainer = tiny_trainer(tmp_path, "train.max_nonfinite_steps=2", "train.epochs=1")
    criterion = trainer.criterion.forward
    calls = {"n": 0}

    def sometimes_nan(output, mask):
        calls["n"] += 1
        total, terms = criterion(output, mask)
        return (total * float("nan"), terms) if calls["n"] in (2, 4) else (total, terms)

    monkeypatch.setattr(trainer.criterion, "forward", sometimes_nan)
    summary = trainer.fit()
    assert summary["nonfinite_steps"] == 2 and summary["global_step"] == 6
    weights = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pth")["model"]
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (torchrun starts its workers in sessions of their own)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(parent, []).append(int(entry.name))
    tree, index = [pid], 0
    while index < len(tree):
        tree += children.get(tree[index], [])
        index += 1
    return tree


def signal_all(pids: list[int], signum: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


def run_torchrun(command: list[str], timeout: float) -> tuple[int, str]:
    """Run a torchrun ``command``: (exit status, stderr). On a hang, every process of it prints its
    Python stacks (faulthandler, on SIGABRT) before the test fails with the end of stderr."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               env={**env(), "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"})
    try:
        _, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        tree = process_tree(process.pid)
        for pid in tree[1:]:  # the workers first, one at a time: their stacks tell where they wait
            signal_all([pid], signal.SIGABRT)
            time.sleep(2)
        signal_all(tree, signal.SIGABRT)
        time.sleep(5)
        signal_all(tree, signal.SIGKILL)
        _, stderr = process.communicate()
        pytest.fail(f"torchrun still running after {timeout} s; the end of its stderr, with each process's "
                    f"stacks:\n{stderr[-12000:]}")
    return process.returncode, stderr


def test_two_process_ddp_on_cpu(tmp_path):
    run_dir = tmp_path / "ddp"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
        "--master_port", str(free_port()), str(REPO / "scripts" / "train.py"),
        "--config", str(REPO / "configs" / "demo.yaml"), "--run-dir", str(run_dir), *TINY,
        "data.batch_size=4", "train.epochs=1", "data.val=[]",
    ]
    returncode, stderr = run_torchrun(command, timeout=240)
    assert returncode == 0, stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["world_size"] == 2
    assert summary["shards_disjoint_across_ranks"] is True
    assert summary["weights_identical_across_ranks"] is True
    assert summary["global_step"] == 3  # 12 samples / (2 per process × 2 processes)
