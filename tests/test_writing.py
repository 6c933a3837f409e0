"""Atomic writes: a full disk is named and leaves the old file or nothing, permissions follow the
umask, and the folder is synced."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from pgnet import writing
from pgnet.checkpoint import load_checkpoint, save_checkpoint
from pgnet.cli.predict import main as predict_main
from pgnet.data.synthetic import make_sample
from pgnet.writing import NoSpaceError, write_image

SIZE = 64


@pytest.fixture(scope="module")
def tiny(tiny_checkpoint) -> tuple[Path, dict]:
    """(checkpoint path, its state) of a tiny model without EMA weights: the shared one (conftest.py)."""
    return tiny_checkpoint, load_checkpoint(tiny_checkpoint)


def full_disk(monkeypatch):
    real_fsync = os.fsync

    def fsync(descriptor):
        if os.path.isfile(f"/proc/self/fd/{descriptor}") or not os.path.exists("/proc/self/fd"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(descriptor)

    monkeypatch.setattr(writing.os, "fsync", fsync)


def test_full_disk_is_named_and_leaves_nothing_truncated(tiny, tmp_path, monkeypatch, capsys):
    old = write_image(tmp_path / "keep.png", np.zeros((4, 4), np.uint8))
    before = old.read_bytes()
    full_disk(monkeypatch)
    with pytest.raises(NoSpaceError, match=f"no space left on device while writing {tmp_path / 'keep.png'}"):
        write_image(old, np.full((4, 4), 255, np.uint8))
    with pytest.raises(NoSpaceError, match=r"while writing .*last\.pth"):
        save_checkpoint({"step": 1}, tmp_path / "last.pth")
    from pgnet.evaluation.report import EvaluationReport, MethodResult

    report = EvaluationReport(tmp_path / "report")
    report.add(MethodResult("d", "m", {"MAE": 0.1}, 1))
    with pytest.raises(NoSpaceError, match=r"results\.md"):
        report.write()
    assert old.read_bytes() == before
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["keep.png"]
    monkeypatch.undo()
    write_image(tmp_path / "pictures" / "a.jpg", make_sample(3, (40, 40))[0])
    full_disk(monkeypatch)
    status = predict_main([str(tmp_path / "pictures"), "-c", str(tiny[0]), "-o", str(tmp_path / "masks"),
                           "--size", str(SIZE), "--no-progress", "--workers", "1", "--no-optimize"])
    assert status == 1 and f"no space left on device while writing {tmp_path / 'masks' / 'a.png'}" in \
        capsys.readouterr().err
    assert not (tmp_path / "masks").exists() or not list((tmp_path / "masks").iterdir())


def test_torch_unexpected_pos_on_a_full_disk_is_named(tmp_path, monkeypatch):
    save_checkpoint({"step": 1}, tmp_path / "last.pth")

    def failing_save(obj, stream):
        stream.write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    monkeypatch.setattr(torch, "save", failing_save)
    monkeypatch.setattr(writing.os, "statvfs", lambda folder: os.statvfs_result((4096,) * 2 + (0,) * 8))
    with pytest.raises(NoSpaceError, match=r"no space left on device while writing .*last\.pth"):
        save_checkpoint({"step": 2}, tmp_path / "last.pth")
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "last.pth")["step"] == 1 and len(list(tmp_path.iterdir())) == 1


def test_files_get_the_umask_permissions_and_the_folder_is_synced(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(writing.os, "fsync", lambda fd: synced.append(os.path.isdir(f"/proc/self/fd/{fd}"))
                        or real_fsync(fd))
    old_umask = os.umask(0o022)
    try:
        assert save_checkpoint({"step": 1}, tmp_path / "a.pth").stat().st_mode & 0o777 == 0o644
        os.umask(0o077)
        assert save_checkpoint({"step": 1}, tmp_path / "b.pth").stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(old_umask)
    assert synced == [False, True, False, True]  # the file, then its folder, each time
