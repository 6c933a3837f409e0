"""The dataset check (pgnet.data.verify) and the dataset commands (pgnet.cli.verify_dataset, cache_dataset,
make_synthetic) through their scripts datasets/verify.py, datasets/cache.py and datasets/make_synthetic.py:
exit codes, summaries, round trips."""

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import script, write_pair

from pgnet.cli.make_synthetic import parse_size
from pgnet.data.datasets import build_dataset
from pgnet.data.registry import find_datasets
from pgnet.data.synthetic import make_sample, sample_seed, write_synthetic_dataset
from pgnet.data.transforms import build_train_transform
from pgnet.data.verify import check_dataset, format_report, format_summary

REPO = Path(__file__).resolve().parents[2]


def verify(root: Path, name: str | None = None, strict_counts: bool = False) -> tuple[bool, str]:
    """What ``datasets/verify.py ROOT [--name NAME]`` checks and prints: (errors found, the printout)."""
    reports = [check_dataset(spec, strict_counts=strict_counts) for spec in find_datasets(root, name and [name])]
    text = "\n".join([*(format_report(report) for report in reports), format_summary(reports)])
    return any(report.errors for report in reports), text


@pytest.fixture
def synthetic_root(tmp_path) -> Path:
    return write_synthetic_dataset(tmp_path / "synthetic", 5, (60, 80), jobs=1)


def test_make_synthetic_writes_the_generic_layout(tmp_path):
    make_synthetic = script("make_synthetic")
    synthetic_root = tmp_path / "synthetic"
    assert make_synthetic["main"]([str(synthetic_root), "--n", "5", "--size", "80x60", "--jobs", "1"]) == 0
    images = sorted((synthetic_root / "image").iterdir())
    masks = sorted((synthetic_root / "mask").iterdir())
    assert [p.name for p in images] == [f"synthetic_{i:06d}.jpg" for i in range(5)]
    assert [p.name for p in masks] == [f"synthetic_{i:06d}.png" for i in range(5)]
    _, expected_mask = make_sample(sample_seed(0, 3), (60, 80))
    assert np.array_equal(cv2.imread(str(masks[3]), cv2.IMREAD_UNCHANGED), expected_mask)
    assert cv2.imread(str(images[3])).shape == (60, 80, 3)
    assert parse_size("3840x2160") == (2160, 3840) and parse_size("64") == (64, 64)


def test_verify_passes_a_clean_dataset(synthetic_root):
    errors, out = verify(synthetic_root)
    assert not errors
    assert "generic" in out and "pairs: 5" in out and "-> OK" in out
    assert "1 dataset(s) checked, 0 with errors" in out


def test_verify_reports_every_problem_and_fails(synthetic_root):
    images, masks = synthetic_root / "image", synthetic_root / "mask"
    (images / "synthetic_000000.jpg").write_bytes(b"broken")
    (masks / "synthetic_000001.png").unlink()
    (masks / "extra.png").write_bytes(cv2.imencode(".png", np.zeros((60, 80), np.uint8))[1].tobytes())
    cv2.imwrite(str(masks / "synthetic_000002.png"), np.zeros((61, 80), np.uint8))
    cv2.imwrite(str(masks / "synthetic_000003.png"), np.full((60, 80), 100, np.uint8))  # soft: a note only
    errors, out = verify(synthetic_root)
    assert errors
    for expected in (
        "ERROR: unreadable: 1",
        "synthetic_000000.jpg",
        "ERROR: image without mask: 1",
        "synthetic_000001.jpg",
        "ERROR: mask without image: 1",
        "extra.png",
        "ERROR: size mismatch: 1",
        "synthetic_000002",
        "warning: soft mask: 1",
        "-> ERRORS",
        "1 with errors: generic",
    ):
        assert expected in out, expected


def test_verify_checks_the_count_of_a_named_release(tmp_path):
    root = write_synthetic_dataset(tmp_path / "ECSSD", 2, 32, jobs=1)
    (root / "image").rename(root / "images")
    (root / "mask").rename(root / "ground_truth_mask")
    errors, out = verify(root, "ECSSD")
    assert not errors  # a clean partial copy passes
    assert "warning: partial copy: 1" in out and "2 of the release's 1000 pairs" in out and "-> OK" in out
    errors, out = verify(root, "ECSSD", strict_counts=True)
    assert errors and "ERROR: pair count: 1" in out
    errors, out = verify(root, strict_counts=True)  # detected by its folder names
    assert errors and "ECSSD" in out


def test_verify_compares_full_size_headers_and_prints_real_sizes(synthetic_root):
    # A JPEG exactly 4x its mask decodes reduced to the mask's size: only its header tells.
    image, _ = make_sample(sample_seed(0, 9), (240, 320))
    cv2.imwrite(str(synthetic_root / "image" / "synthetic_000001.jpg"), image)
    errors, out = verify(synthetic_root)
    assert errors
    assert "ERROR: size mismatch: 1" in out and "synthetic_000001.jpg is 320x240 but its mask" in out
    assert "80x60" in out and "reduced" not in out


def test_verify_cannot_check_a_missing_root_or_unknown_name(tmp_path, capsys):
    main = script("verify")["main"]
    assert main([str(tmp_path / "absent")]) == 2
    assert "absent" in capsys.readouterr().err
    assert main([str(tmp_path), "--name", "NOPE"]) == 2
    assert "known datasets" in capsys.readouterr().err
    assert main([str(tmp_path)]) == 2  # exists, but holds no dataset
    assert "no known dataset layout" in capsys.readouterr().err


def test_verify_exit_code_from_the_command_line(synthetic_root):
    (synthetic_root / "image" / "synthetic_000004.jpg").unlink()
    result = subprocess.run(
        [sys.executable, str(REPO / "datasets" / "verify.py"), str(synthetic_root), "--jobs", "1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result.stderr
    assert "mask without image: 1" in result.stdout and "synthetic_000004.png" in result.stdout


def test_cache_script_round_trip(synthetic_root, capsys):
    cache_main = script("cache")["main"]
    assert cache_main([str(synthetic_root), "--long-side", "40", "--jobs", "1"]) == 0
    assert "5 written" in capsys.readouterr().out
    cache_dir = synthetic_root / ".pgnet_cache" / "long40"
    assert len(list((cache_dir / "image").iterdir())) == 5 and (cache_dir / "manifest.json").is_file()
    dataset = build_dataset({"name": "generic", "root": str(synthetic_root)}, build_train_transform(size=32))
    assert dataset.cache is not None and dataset.cache.directory == cache_dir
    image, mask, original = dataset.load_pair(1)
    assert image.shape == (30, 40, 3) and mask.shape == (30, 40) and original == (60, 80)
    item = dataset[1]
    assert item["size"] == (60, 80) and item["image"].shape[1] <= 32
    assert cache_main([str(synthetic_root), "--long-side", "40", "--jobs", "1"]) == 0
    assert "0 written, 5 already cached" in capsys.readouterr().out
    (synthetic_root / "image" / "synthetic_000002.jpg").write_bytes(b"broken")
    assert cache_main([str(synthetic_root), "--long-side", "40", "--jobs", "1"]) == 1
    assert "failed: " in capsys.readouterr().out
    assert cache_main([str(synthetic_root / "absent")]) == 2


def test_verify_knows_the_dis5k_release_and_its_counts(tmp_path, capsys):
    """DIS5K as released (DIS5K/<set>/{im,gt}): every set found, each against its release count, and
    DIS-TE (DIS-TE1..4 together) by name."""
    release = tmp_path / "data" / "DIS5K"
    for index, name in enumerate(("DIS-TR", "DIS-VD", "DIS-TE1", "DIS-TE2", "DIS-TE3", "DIS-TE4")):
        write_pair(release / name / "im" / f"{name}#a.jpg", release / name / "gt" / f"{name}#a.png", seed=index)
    main = script("verify")["main"]
    assert main([str(release), "--jobs", "1"]) == 0
    out = capsys.readouterr().out
    for name, count in (("DIS-TR", 3000), ("DIS-VD", 470), ("DIS-TE1", 500), ("DIS-TE4", 500)):
        assert f"{name}: {release / name / 'im'} + {release / name / 'gt'}\n  pairs: 1 (release: {count})" in out
    assert "6 dataset(s) checked, 0 with errors" in out
    assert main([str(tmp_path / "data"), "--name", "DIS-TE", "--jobs", "1"]) == 0
    out = capsys.readouterr().out
    assert "DIS-TE: " in out and "pairs: 4 (release: 2000)" in out and "partial copy" in out
    assert main([str(tmp_path / "data"), "--name", "DIS-TE", "--strict-counts", "--jobs", "1"]) == 1
