"""Safety of outputs and inputs (issue 13): no overwrites, bounded decoding, atomic writes on a full
disk, one-line checkpoint errors, evaluation roots as the README lays them out, and the small items."""

from __future__ import annotations

import errno
import os
import struct
import subprocess
import sys
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import pgnet
from pgnet import writing as outputs
from pgnet.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from pgnet.cli.eval import main as eval_main
from pgnet.cli.predict import main as predict_main
from pgnet.data.io import ImageTooLargeError, probe_image_size, read_image, read_mask, set_max_pixels
from pgnet.data.registry import known_dataset_names
from pgnet.data.synthetic import make_sample
from pgnet.predict.files import predict_files
from pgnet.predict.output_plan import plan_outputs
from pgnet.predict.predictor import Predictor
from pgnet.writing import NoSpaceError, OverwriteError, write_image

REPO = Path(__file__).resolve().parents[1]
SIZE = 64


@pytest.fixture(scope="module")
def tiny(tiny_checkpoint) -> tuple[Path, dict]:
    """(checkpoint path, its state) of a tiny model without EMA weights: the shared one (conftest.py)."""
    return tiny_checkpoint, load_checkpoint(tiny_checkpoint)


@pytest.fixture(scope="module")
def predictor(tiny) -> Predictor:
    return Predictor.from_checkpoint(tiny[0], device="cpu", size=SIZE, optimize=False)


@pytest.fixture
def limit():
    yield set_max_pixels
    os.environ.pop("PGNET_MAX_PIXELS", None)


def write_pair(image_path: Path, mask_path: Path, size=(48, 40), seed=0) -> None:
    image, mask = make_sample(seed, size)
    write_image(image_path, image)
    write_image(mask_path, mask)


def huge_png(path: Path, side: int = 20000) -> Path:
    """A small PNG whose header claims side×side pixels (its data is that of an 8×8 picture)."""
    data = bytearray(cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))[1].tobytes())
    data[16:24] = struct.pack(">II", side, side)
    path.write_bytes(bytes(data))
    return path


# --------------------------------------------------------------------------------------------------
# 1-2. No output over an input or over another output


def test_eval_save_preds_never_overwrites_ground_truth(tiny, tmp_path, capsys):
    gt, images = tmp_path / "sp" / "m" / "d", tmp_path / "images"
    for index in range(2):
        write_pair(images / f"a{index}.jpg", gt / f"a{index}.png", seed=index)
    before = {path: path.read_bytes() for path in gt.iterdir()}
    status = eval_main(["-c", str(tiny[0]), "--name", "m", "--gt", f"d={gt}", "--images", f"d={images}",
                        "--save-preds", str(tmp_path / "sp"), "-o", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err
    assert status == 2 and "overwrite input files" in err and str(gt / "a0.png") in err
    assert {path: path.read_bytes() for path in gt.iterdir()} == before


def test_predict_outputs_of_two_folders_with_the_same_names_keep_their_folders(tmp_path):
    for folder in ("d1", "d2"):
        for name in ("a.jpg", "b.png"):
            write_image(tmp_path / folder / name, make_sample(0, (32, 32))[0])
    jobs = plan_outputs([tmp_path / "d1", tmp_path / "d2"], tmp_path / "out")
    assert sorted(job.output.relative_to(tmp_path / "out").as_posix() for job in jobs) == [
        "d1/a.png", "d1/b.png", "d2/a.png", "d2/b.png"]
    with pytest.raises(OverwriteError, match=r"would be written more than once.*x\.png"):
        outputs.check_overwrites([(tmp_path / "x.png", tmp_path / "1.jpg"), (tmp_path / "x.png", tmp_path / "2.jpg")],
                                 [])


def test_cache_refuses_copies_over_its_sources(tmp_path):
    from pgnet.data.cache import build_cache, cache_dir_for

    root = tmp_path / "data"
    write_pair(root / "image" / "a.jpg", root / "mask" / "a.png", size=(80, 60))
    # A pair whose files sit where the first pair's cached copies go.
    cache = cache_dir_for(root, 32)
    write_pair(cache / "image" / "a.jpg.jpg", cache / "mask" / "a.png.png", size=(80, 60))
    before = (cache / "image" / "a.jpg.jpg").read_bytes()
    pairs = [(root / "image" / "a.jpg", root / "mask" / "a.png"),
             (cache / "image" / "a.jpg.jpg", cache / "mask" / "a.png.png")]
    with pytest.raises(OverwriteError, match=r"a\.jpg\.jpg \(from .*a\.jpg\)"):
        build_cache(root, pairs, 32)
    assert (cache / "image" / "a.jpg.jpg").read_bytes() == before


# --------------------------------------------------------------------------------------------------
# 3. Bounded decoding


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".webp", ".bmp", ".tif"])
def test_header_sizes_match_the_decoded_sizes(tmp_path, suffix):
    path = write_image(tmp_path / f"p{suffix}", make_sample(1, (37, 53))[0])
    assert probe_image_size(path) == read_image(path).shape[:2] == (37, 53)


def test_pictures_over_the_pixel_limit_are_skipped_undecoded(tmp_path, monkeypatch, limit):
    big = huge_png(tmp_path / "big.png")
    monkeypatch.setattr(cv2, "imdecode", lambda *a: pytest.fail("decoded a picture over the limit"))
    with pytest.raises(ImageTooLargeError, match=r"big\.png: 20000x20000 pixels \(400 MP\) is over the pixel limit"):
        read_image(big)
    with pytest.raises(ImageTooLargeError, match=r"big\.png"):
        read_mask(big)
    monkeypatch.undo()
    small = write_image(tmp_path / "small.png", np.zeros((40, 30), np.uint8))
    limit(1000)
    with pytest.raises(ImageTooLargeError, match=r"30x40 pixels"):
        read_mask(small)
    limit(0)  # no limit
    assert read_mask(small).shape == (40, 30)


def test_predict_files_skips_a_huge_picture_and_writes_the_rest(predictor, tmp_path):
    (tmp_path / "in").mkdir()
    huge_png(tmp_path / "in" / "big.png")
    write_image(tmp_path / "in" / "ok.jpg", make_sample(2, (50, 70))[0])
    lines = []
    report = predict_files(predictor, plan_outputs([tmp_path / "in"], tmp_path / "out"), progress=False,
                           log=lines.append, workers=1)
    assert [path.name for path in report.written] == ["ok.png"]
    assert len(lines) == 1 and "big.png" in lines[0] and "20000x20000" in lines[0]


def test_training_dataset_skips_a_huge_picture(tmp_path):
    from pgnet.data.datasets import SODDataset
    from pgnet.data.transforms import build_eval_transform

    write_pair(tmp_path / "image" / "a.jpg", tmp_path / "mask" / "a.png")
    huge_png(tmp_path / "image" / "b.png")
    write_image(tmp_path / "mask" / "b.png", np.zeros((8, 8), np.uint8))
    pairs = [(tmp_path / "image" / "a.jpg", tmp_path / "mask" / "a.png"),
             (tmp_path / "image" / "b.png", tmp_path / "mask" / "b.png")]
    dataset = SODDataset(pairs, build_eval_transform(SIZE), name="t")
    assert dataset[0] is not None and dataset[1] is None and dataset.skipped == 1


# --------------------------------------------------------------------------------------------------
# 4. Atomic outputs on a full disk


def full_disk(monkeypatch):
    real_fsync = os.fsync

    def fsync(descriptor):
        if os.path.isfile(f"/proc/self/fd/{descriptor}") or not os.path.exists("/proc/self/fd"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(descriptor)

    monkeypatch.setattr(outputs.os, "fsync", fsync)


def test_full_disk_is_named_and_leaves_nothing_truncated(tiny, tmp_path, monkeypatch, capsys):
    old = write_image(tmp_path / "keep.png", np.zeros((4, 4), np.uint8))
    before = old.read_bytes()
    full_disk(monkeypatch)
    with pytest.raises(NoSpaceError, match=f"no space left on device while writing {tmp_path / 'keep.png'}"):
        write_image(old, np.full((4, 4), 255, np.uint8))
    with pytest.raises(NoSpaceError, match=r"while writing .*last\.pth"):
        save_checkpoint({"step": 1}, tmp_path / "last.pth")
    from pgnet.metrics.report import EvaluationReport, MethodResult

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
    monkeypatch.setattr(outputs.os, "statvfs", lambda folder: os.statvfs_result((4096,) * 2 + (0,) * 8))
    with pytest.raises(NoSpaceError, match=r"no space left on device while writing .*last\.pth"):
        save_checkpoint({"step": 2}, tmp_path / "last.pth")
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "last.pth")["step"] == 1 and len(list(tmp_path.iterdir())) == 1


def test_files_get_the_umask_permissions_and_the_folder_is_synced(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(outputs.os, "fsync", lambda fd: synced.append(os.path.isdir(f"/proc/self/fd/{fd}"))
                        or real_fsync(fd))
    old_umask = os.umask(0o022)
    try:
        assert save_checkpoint({"step": 1}, tmp_path / "a.pth").stat().st_mode & 0o777 == 0o644
        os.umask(0o077)
        assert save_checkpoint({"step": 1}, tmp_path / "b.pth").stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(old_umask)
    assert synced == [False, True, False, True]  # the file, then its folder, each time


# --------------------------------------------------------------------------------------------------
# 5. One checkpoint reader, one line per problem


def expect_checkpoint_error(path: Path, pattern: str, **kwargs) -> None:
    with pytest.raises(CheckpointError, match=pattern) as raised:
        pgnet.load_model(path, **kwargs)
    assert "\n" not in str(raised.value) and str(path) in str(raised.value)


def test_every_bad_checkpoint_gives_one_line_naming_the_file(tiny, tmp_path):
    path, state = tiny
    (tmp_path / "zero.pth").write_bytes(b"")
    expect_checkpoint_error(tmp_path / "zero.pth", "empty file")
    (tmp_path / "cut.pth").write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    expect_checkpoint_error(tmp_path / "cut.pth", "truncated or corrupt")
    (tmp_path / "photo.pth").write_bytes(cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))[1].tobytes())
    expect_checkpoint_error(tmp_path / "photo.pth", "not a PyTorch file, it is a JPEG image")
    for missing in ("model_config",):
        broken = {k: v for k, v in state.items() if k != missing}
        expect_checkpoint_error(save_checkpoint(broken, tmp_path / "no_config.pth"), "missing field model_config")
    typed = {**state, "model_config": {**state["model_config"], "width": "64", "graft_points": "r5-s2"}}
    expect_checkpoint_error(save_checkpoint(typed, tmp_path / "typed.pth"),
                            r"wrongly typed model_config values: width = '64' \(str\), expected an integer; graft")
    expect_checkpoint_error(path, r"no 'ema' weights \(it has: model\)", weights="ema")
    shaped = {**state, "model": {**state["model"], "head_pred.weight": torch.zeros(3, 3)}}
    expect_checkpoint_error(save_checkpoint(shaped, tmp_path / "shaped.pth"),
                            r"wrong shapes: head_pred\.weight \(file \(3, 3\), model")


def test_resume_conversion_and_backbone_errors_are_one_line(tiny, tmp_path, capsys):
    from pgnet.checkpoint import require_fields
    from pgnet.cli.convert import main as convert_main
    from pgnet.models.backbones import read_state_dict

    path, state = tiny
    with pytest.raises(CheckpointError, match=r"last\.pth: missing field rng \(it has: "):
        require_fields(state, "runs/x/last.pth", ("model", "rng"))
    assert convert_main([str(path), str(tmp_path / "again.pth")]) == 2  # a bad source: a usage error (issue 14)
    assert "already a pgnet checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "again.pth").exists()
    (tmp_path / "swin.pth").write_bytes(path.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match=r"pretrained weights .*swin\.pth: truncated or corrupt"):
        read_state_dict(tmp_path / "swin.pth")


def test_commands_print_checkpoint_errors_without_a_traceback(tiny, tmp_path, capsys):
    from pgnet.cli.export import main as export_main

    path, state = tiny
    shaped = save_checkpoint({**state, "model": {**state["model"], "head_pred.weight": torch.zeros(3, 3)}},
                             tmp_path / "shaped.pth")
    assert export_main([str(shaped), str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: checkpoint ") and "wrong shapes" in err and "Traceback" not in err
    write_image(tmp_path / "in" / "a.png", make_sample(0, (32, 32))[0])
    for command in (predict_main, eval_main):
        args = ([str(tmp_path / "in"), "-o", str(tmp_path / "o")] if command is predict_main else
                ["--gt", f"d={tmp_path / 'in'}", "--images", f"d={tmp_path / 'in'}", "-o", str(tmp_path / "r")])
        assert command([*args, "-c", str(path), "--weights", "ema", "--no-progress"]) == 2
        assert "no 'ema' weights (it has: model)" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------
# 6. Evaluation roots as datasets/README.md lays them out


def test_readme_evaluation_command_with_the_readme_layout(tmp_path, capsys):
    data, preds = tmp_path / "data", tmp_path / "preds"
    folders = {"DUTS-TE": ("DUTS/DUTS-TE/DUTS-TE-Image", "DUTS/DUTS-TE/DUTS-TE-Mask"),
               "HRSOD-TE": ("HRSOD/HRSOD_release/HRSOD_test", "HRSOD/HRSOD_release/HRSOD_test_mask"),
               "DAVIS-S": ("DAVIS-S/image", "DAVIS-S/mask")}
    for index, (name, (images, masks)) in enumerate(folders.items()):
        write_pair(data / images / "x.jpg", data / masks / "x.png", seed=index)
        write_image(preds / "m" / name / "x.png", read_mask(data / masks / "x.png"))
    os.chdir(tmp_path)
    assert eval_main(["--pred-root", "preds", "--datasets", "DUTS-TE", "HRSOD-TE", "--data-root", "data",
                      "-o", "results/cmp", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert out.count("DUTS-TE") == 2 and out.count("HRSOD-TE") == 2  # its own table, then the full one
    config = tmp_path / "dh.yaml"
    config.write_text("_base_: %s\ndata:\n  val:\n    - {name: HRSOD-TE, root: data/HRSOD}\n"
                      "    - {name: DAVIS-S, root: data/DAVIS-S}\n" % (REPO / "configs" / "pgnet_dh.yaml"))
    assert eval_main(["--pred-root", "preds", "--config", str(config), "-o", "results/cfg", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "HRSOD-TE" in out and "DAVIS-S" in out and "DUTS-TE" not in out


# --------------------------------------------------------------------------------------------------
# 8. Smaller items


def test_eval_prints_a_single_dataset_table_once(tmp_path, capsys):
    write_pair(tmp_path / "image" / "x.jpg", tmp_path / "mask" / "x.png")
    write_image(tmp_path / "pred" / "x.png", read_mask(tmp_path / "mask" / "x.png"))
    assert eval_main(["--preds", f"m={tmp_path / 'pred'}", "--gt", f"d={tmp_path / 'mask'}",
                      "-o", str(tmp_path / "r"), "--no-progress"]) == 0
    assert capsys.readouterr().out.count("MAE") == 1


def test_an_unreadable_path_in_a_list_gives_none_and_a_warning(predictor, tmp_path):
    good = write_image(tmp_path / "good.png", make_sample(0, (30, 40))[0])
    (tmp_path / "bad.jpg").write_bytes(b"garbage")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        masks = predictor([good, tmp_path / "bad.jpg", good])
    assert masks[1] is None and masks[0].shape == (30, 40) and np.array_equal(masks[0], masks[2])
    assert any("bad.jpg" in str(w.message) for w in caught)
    with pytest.raises(ValueError, match=r"bad\.jpg"):
        predictor(tmp_path / "bad.jpg")


def test_compile_says_it_is_compiling(tmp_path, monkeypatch, capsys):
    from pgnet.predict import files as file_prediction
    from pgnet.predict import predictor as inference

    class Fake:
        batch_size, size = 1, SIZE

    monkeypatch.setattr(inference.Predictor, "from_checkpoint", classmethod(lambda cls, *a, **k: Fake()))
    monkeypatch.setattr(file_prediction, "predict_files",
                        lambda *a, **k: file_prediction.PredictionReport([Path("x")]))
    write_image(tmp_path / "a.png", np.zeros((8, 8, 3), np.uint8))
    assert predict_main([str(tmp_path / "a.png"), "-c", "x.pth", "-o", str(tmp_path / "o"), "--compile"]) == 0
    assert "compiling (the first call of each size can take a minute)" in capsys.readouterr().err


def test_help_and_argument_errors_do_not_import_torch():
    code = ("import sys\nfrom pgnet.cli import predict, eval\n"
            "for main, argv in ((predict.main, ['--help']), (eval.main, ['--help']), (eval.main, ['--bogus'])):\n"
            "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
            "print('torch' in sys.modules, 'timm' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.stdout.strip().splitlines()[-1] == "False False", result.stderr[-2000:]


def test_known_dataset_names_include_synthetic():
    assert known_dataset_names()[-1] == "synthetic" and "DUTS-TR" in known_dataset_names()


def test_load_checkpoint_still_reads_plain_files(tmp_path):
    assert load_checkpoint(save_checkpoint({"a": torch.ones(2)}, tmp_path / "x.pth"))["a"].sum() == 2
