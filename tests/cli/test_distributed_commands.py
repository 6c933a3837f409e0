"""``pgnet-predict`` and ``pgnet-eval`` launched by torchrun: two CPU processes on gloo write the same
files and report the same metrics as one process, each picture predicted once."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import write_pair

from pgnet.cli.eval import main as eval_main
from pgnet.cli.predict import main as predict_main

REPO = Path(__file__).resolve().parents[2]
SIZES = [(64, 96), (128, 64), (80, 80), (96, 128), (64, 72)]  # five pictures: shards of 3 and 2

# What each process of a launch runs: a command's real main(), its stdout and exit status kept per rank.
# (One command per launch: a process does not join a second group after leaving its first.)
RANK_SCRIPT = """
import contextlib, importlib, json, os, sys
folder, name, rank = sys.argv[1], sys.argv[2], os.environ["RANK"]
main = importlib.import_module("pgnet.cli." + name).main
argv = json.loads(open(os.path.join(folder, name + ".json")).read())
with open(os.path.join(folder, f"{name}.stdout{rank}"), "w") as out, contextlib.redirect_stdout(out):
    status = main(argv)
open(os.path.join(folder, f"{name}.status{rank}"), "w").write(str(status))
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_two_processes(launch: Path, name: str, timeout: float = 90) -> tuple[int, str]:
    """torchrun two CPU processes, each running ``launch/ranks.py`` for the command ``name``: (exit
    status, stderr). A hang kills the launch and its processes (each in a session of its own)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(free_port()), str(launch / "ranks.py"), str(launch), name]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "NO_ALBUMENTATIONS_UPDATE": "1", "PYTHONFAULTHANDLER": "1",
                   "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               env=environment)
    try:
        _, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        for pid in workers_of(process.pid):
            os.kill(pid, signal.SIGKILL)
        process.kill()
        _, stderr = process.communicate()
        pytest.fail(f"{name} under torchrun still running after {timeout} s:\n{stderr[-4000:]}")
    return process.returncode, stderr


def workers_of(pid: int) -> list[int]:
    """The processes whose parent is ``pid``."""
    children = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                children.append(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue
    return children


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.fixture(scope="module")
def pictures(tmp_path_factory) -> tuple[Path, Path]:
    """(image folder, mask folder) of five pictures of different sizes."""
    root = tmp_path_factory.mktemp("pictures")
    for index, (height, width) in enumerate(SIZES):
        write_pair(root / "images" / f"p{index}.jpg", root / "masks" / f"p{index}.png", size=(height, width),
                   seed=index)
    return root / "images", root / "masks"


def command_lines(checkpoint: Path, pictures: tuple[Path, Path], out: Path) -> dict[str, list[str]]:
    images, masks = pictures
    return {
        "predict": [str(images), "-c", str(checkpoint), "-o", str(out / "masks"), "--device", "cpu",
                    "--workers", "1", "--no-progress"],
        "eval": ["-c", str(checkpoint), "--name", "tiny", "--gt", f"d={masks}", "--images", f"d={images}",
                 "--save-preds", str(out / "preds"), "-o", str(out / "results"), "--device", "cpu",
                 "--num-workers", "0", "--no-plots", "--no-progress"],
    }


def test_two_processes_write_and_score_as_one(tiny_checkpoint, pictures, tmp_path, capsys):
    one, two = tmp_path / "one", tmp_path / "two"
    single = command_lines(tiny_checkpoint, pictures, one)
    statuses = {"predict": predict_main(single["predict"])}
    predict_out = capsys.readouterr().out
    statuses["eval"] = eval_main(single["eval"])
    capsys.readouterr()

    launch = tmp_path / "launch"
    launch.mkdir()
    for name, argv in command_lines(tiny_checkpoint, pictures, two).items():
        (launch / f"{name}.json").write_text(json.dumps(argv))
    (launch / "ranks.py").write_text(RANK_SCRIPT)
    for name in statuses:
        returncode, stderr = run_two_processes(launch, name)
        assert returncode == statuses[name], stderr[-4000:]

    for name, status in statuses.items():  # every process exits as the one process did
        assert [int((launch / f"{name}.status{rank}").read_text()) for rank in (0, 1)] == [status, status]
    assert statuses == {"predict": 0, "eval": 0}

    # predict: the same files, bit for bit; one summary (on rank 0) counting each picture once
    assert len(files_of(one / "masks")) == len(SIZES)
    assert files_of(two / "masks") == files_of(one / "masks")
    assert (launch / "predict.stdout0").read_text() == predict_out.replace(str(one), str(two))
    assert f"wrote {len(SIZES)} mask pictures" in predict_out
    assert (launch / "predict.stdout1").read_text() == ""

    # eval: the same saved predictions, the same metrics (float64 sums merged in another order)
    assert files_of(two / "preds") == files_of(one / "preds") and len(files_of(one / "preds")) == len(SIZES)
    results = [json.loads((run / "results" / "results.json").read_text()) for run in (one, two)]
    assert results[0]["results"].keys() == results[1]["results"].keys() == {"d"}
    expected, merged = results[0]["results"]["d"]["tiny"], results[1]["results"]["d"]["tiny"]
    assert merged["images"] == expected["images"] == len(SIZES)
    assert merged["metrics"].keys() == expected["metrics"].keys() and len(expected["metrics"]) >= 7
    for key, value in expected["metrics"].items():
        assert merged["metrics"][key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
    assert merged["curves"].keys() == expected["curves"].keys()
    for name, curve in expected["curves"].items():
        assert merged["curves"][name] == pytest.approx(curve, rel=1e-9, abs=1e-12), name
    assert "tiny" in (launch / "eval.stdout0").read_text() and (launch / "eval.stdout1").read_text() == ""
