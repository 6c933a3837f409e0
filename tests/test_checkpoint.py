"""Checkpoint files: atomic writes survive a kill, bad files give errors naming them."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import pgnet
from pgnet.checkpoint import MissingWeightsError, load_checkpoint, read_model_weights, save_checkpoint
from pgnet.data.preprocessing import Preprocessing
from pgnet.models import ModelConfig
from pgnet.models.weights import CheckpointError

WRITER = """
import sys, torch
from pgnet.checkpoint import save_checkpoint
path = sys.argv[1]
step = 0
print("ready", flush=True)
while True:
    step += 1
    save_checkpoint({"step": step, "weights": torch.full((4_000_000,), float(step))}, path)
"""


def test_kill_during_save_never_breaks_the_last_checkpoint(tmp_path):
    path = tmp_path / "last.pth"
    save_checkpoint({"step": 0, "weights": torch.zeros(4_000_000)}, path)
    for delay in (0.4, 0.9, 1.3):
        process = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
        assert process.stdout.readline().strip() == "ready"
        time.sleep(delay)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        state = load_checkpoint(path)
        assert torch.all(state["weights"] == float(state["step"]))
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "last.pth"]
    # A killed writer may leave its temporary file behind, never a broken last.pth.
    assert all(name.startswith(".last.pth.") and name.endswith(".tmp") for name in leftovers)


def test_failed_save_keeps_the_old_file_and_cleans_up(tmp_path, monkeypatch):
    path = tmp_path / "last.pth"
    save_checkpoint({"step": 1}, path)

    def broken_save(obj, stream):
        stream.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"step": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pth"]


def test_bad_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nothing\.pth"):
        pgnet.load_model(tmp_path / "nothing.pth")
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"garbage\.pth"):
        pgnet.load_model(tmp_path / "garbage.pth")
    torch.save({"some.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match=r"other\.pth: neither a pgnet checkpoint nor an official"):
        pgnet.load_model(tmp_path / "other.pth")


def test_a_stored_model_config_gets_the_messages_of_a_config_file(tmp_path):
    def stored(**values):
        state = {"format": "pgnet", "version": 1, "model_config": values, "model": {}}
        return save_checkpoint(state, tmp_path / "bad.pth")

    with pytest.raises(CheckpointError) as raised:
        pgnet.load_model(stored(width="64", graft_points="r5-s2"))
    assert str(raised.value) == (
        f"checkpoint {tmp_path / 'bad.pth'}: model_config.width: expected an integer, got '64'; "
        "model_config.graft_points: expected a list, got 'r5-s2'"
    )
    for values, message in (
        ({"width": 0}, r"bad\.pth: model_config\.width: 0 is out of range \(allowed: an integer >= 1\)"),
        ({"widht": 64}, r"bad\.pth: unknown key model_config\.widht; did you mean model_config\.width, "),
    ):
        with pytest.raises(CheckpointError, match=message):
            pgnet.load_model(stored(**values))


def test_one_reader_tells_project_from_official_checkpoints(tmp_path):
    official = save_checkpoint({"module.decoder.GF.qv.weight": torch.zeros(1)}, tmp_path / "official.pth")
    found = read_model_weights(official, weights="ema")  # an official file has one set of weights
    assert found.official and found.config == ModelConfig() and found.preprocessing == Preprocessing()
    assert found.description == f"{official} (official PGNet checkpoint, converted)"
    project = save_checkpoint({"format": "pgnet", "model_config": {"width": 32, "swin_pretrained": "swin.pth"},
                               "model": {"w": torch.zeros(1)}}, tmp_path / "mine.pth")
    found = read_model_weights(project)
    assert not found.official and set(found.state_dict) == {"w"} and found.description == f"{project} (model weights)"
    assert found.config == ModelConfig(width=32)  # backbone files are for initialisation only
    with pytest.raises(MissingWeightsError, match=r"mine\.pth: no 'ema' weights \(it has: model\)$"):
        read_model_weights(project, "ema")
    with pytest.raises(CheckpointError, match=r"other\.pth: neither .* \(it has: a, b, c, \.\.\. \(1 more\)\)$"):
        read_model_weights(save_checkpoint({key: torch.zeros(1) for key in "abcd"}, tmp_path / "other.pth"))
