"""Datasets from disk: bad files are skipped with a warning naming them, never ending the run;
datasets with nothing to train on fail at build time, naming the path; repeat mixing; the cache."""

import logging
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from helpers import make_folder, write

from pgnet import config
from pgnet.data.cache import build_cache, find_cache
from pgnet.data.datasets import EmptyDatasetError, SODDataset, build_dataset, build_train_dataset
from pgnet.data.entry import DatasetEntry
from pgnet.data.loader import build_train_loader
from pgnet.data.registry import pair_files
from pgnet.data.synthetic import SyntheticDataset, make_sample
from pgnet.data.transforms import build_eval_transform, build_train_transform


def generic(root: Path, **extra) -> dict:
    return {"name": "generic", "root": str(root), **extra}


def test_items_have_the_documented_layout(tmp_path):
    dataset = build_dataset(generic(make_folder(tmp_path)), build_train_transform(size=32))
    assert isinstance(dataset, SODDataset) and len(dataset) == 4
    item = dataset[2]
    assert item["image"].dtype == torch.float32 and item["image"].shape[0] == 3
    assert item["mask"].dtype == torch.float32 and item["mask"].shape == (1, *item["image"].shape[1:])
    assert 0 <= item["mask"].min() and item["mask"].max() <= 1
    assert item["name"] == "s02" and item["size"] == (48, 64)


def test_bad_files_are_skipped_with_a_warning_naming_them(tmp_path, caplog):
    root = make_folder(tmp_path, count=7)
    dataset = build_dataset(generic(root), build_train_transform(size=32))
    images, masks = root / "image", root / "mask"
    (images / "s00.jpg").write_bytes(b"not a jpeg at all")  # unreadable
    jpeg = (images / "s01.jpg").read_bytes()
    (images / "s01.jpg").write_bytes(jpeg[: len(jpeg) // 2])  # truncated
    (masks / "s02.png").unlink()  # mask missing after pairing
    write(masks / "s03.png", np.zeros((40, 64), np.uint8))  # size mismatch
    (masks / "s04.png").write_bytes(b"")  # empty mask file
    caplog.set_level(logging.WARNING)
    items = [dataset[index] for index in range(7)]
    assert items[:5] == [None] * 5 and all(item is not None for item in items[5:])
    assert dataset.skipped == 5
    for name in ("s00.jpg", "s01.jpg", "s02.png", "s03", "s04.png"):
        assert any(name in message for message in caplog.messages), name
    loader = build_train_loader(dataset, batch_size=7, num_workers=0, sizes=(32,), drop_last=False)
    (batch,) = list(loader)
    assert batch["skipped"] == 5 and batch["image"].shape[0] == 2


def test_odd_but_valid_files_are_converted(tmp_path):
    root = tmp_path / "odd"
    mask = np.zeros((40, 40), np.uint8)
    cv2.circle(mask, (20, 20), 12, 255, -1)
    gray = np.full((40, 40), 90, np.uint8)
    write(root / "image" / "gray.png", gray)
    write(root / "mask" / "gray.png", mask)
    write(root / "image" / "rgba.png", np.dstack([gray, gray, gray, np.full_like(gray, 128)]))
    write(root / "mask" / "rgba.png", np.dstack([mask, mask, mask]))  # RGB mask
    write(root / "image" / "deep.png", np.dstack([gray, gray, gray]).astype(np.uint16) * 257)
    write(root / "mask" / "deep.png", mask.astype(np.uint16) * 257)  # 16-bit mask
    write(root / "image" / "noisy.png", np.dstack([gray, gray, gray]))
    write(root / "mask" / "noisy.jpg", mask, cv2.IMWRITE_JPEG_QUALITY, 40)  # JPEG mask with compression noise
    dataset = build_dataset(generic(root), build_eval_transform(None, resize_mask=True))
    for index in range(len(dataset)):
        item = dataset[index]
        assert item is not None and item["image"].shape == (3, 40, 40)
        assert set(item["mask"].unique().tolist()) == {0.0, 1.0}  # binarised at > 128
        assert (item["mask"][0].numpy() == (mask > 0)).mean() > 0.99
    assert dataset.skipped == 0


def test_unpaired_images_are_left_out_with_a_warning(tmp_path, caplog):
    root = make_folder(tmp_path, count=3)
    write(root / "image" / "lonely.jpg", np.zeros((8, 8, 3), np.uint8))
    caplog.set_level(logging.WARNING)
    dataset = build_dataset(generic(root))
    assert len(dataset) == 3
    assert any("lonely.jpg" in message and "no mask" in message for message in caplog.messages)


def test_datasets_with_nothing_to_train_on_fail_at_build_naming_the_path(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        build_dataset(generic(missing))
    with pytest.raises(FileNotFoundError, match="nowhere"):
        build_train_dataset([{"name": "DUTS-TR", "root": str(missing)}])
    empty = tmp_path / "empty"
    (empty / "image").mkdir(parents=True)
    (empty / "mask").mkdir()
    with pytest.raises(EmptyDatasetError, match=str(empty / "image")):
        build_dataset(generic(empty))
    broken = make_folder(tmp_path / "broken", count=3)
    for path in (broken / "image").iterdir():
        path.write_bytes(b"garbage")
    with pytest.raises(EmptyDatasetError, match="no readable") as caught:
        build_dataset(generic(broken))
    assert str(broken / "image") in str(caught.value)
    assert len(build_dataset(generic(broken), check=False)) == 3


def test_config_errors_are_clear(tmp_path):
    root = make_folder(tmp_path)
    with pytest.raises(KeyError, match="known datasets"):
        build_dataset({"name": "NOT-A-SET", "root": str(root)})
    with pytest.raises(ValueError, match="roots"):
        build_dataset(generic(root, roots="x"))
    with pytest.raises(ValueError, match="missing root"):
        build_dataset({"name": "DUTS-TR"})
    with pytest.raises(ValueError, match="repeat"):
        build_dataset(generic(root, repeat=2))
    assert len(build_dataset(generic(root, repeat=1))) == 4  # a val entry may carry repeat: 1
    explicit = build_dataset({"image_dir": str(root / "image"), "mask_dir": str(root / "mask")})
    assert len(explicit) == 4


def test_repeat_factors_mix_datasets(tmp_path):
    duts = make_folder(tmp_path / "DUTS" / "DUTS-TR", count=5, seed=1)
    (duts / "image").rename(duts / "DUTS-TR-Image")
    (duts / "mask").rename(duts / "DUTS-TR-Mask")
    make_folder(tmp_path / "HRSOD" / "HRSOD-TR", count=2, seed=2)
    mix = build_train_dataset(
        [
            {"name": "DUTS-TR", "root": str(tmp_path / "DUTS"), "repeat": 1},
            {"name": "HRSOD-TR", "root": str(tmp_path / "HRSOD"), "repeat": 4},
            {"name": "synthetic", "n": 3, "size": 32, "seed": 0, "repeat": 2},
            {"name": "ECSSD", "root": str(tmp_path / "absent"), "repeat": 0},  # 0: left out, not even resolved
        ],
        build_train_transform(size=32),
    )
    assert len(mix) == 5 + 4 * 2 + 2 * 3
    names = [mix[index]["name"] for index in range(len(mix))]
    assert sum(name.startswith("s") and name[1:].isdigit() for name in names) == 5 + 8
    assert names.count("synthetic_000000") == 2
    with pytest.raises(ValueError, match="repeat"):
        build_train_dataset([{"name": "synthetic", "repeat": 1.5}])
    with pytest.raises(EmptyDatasetError, match="no training data"):
        build_train_dataset([])


def test_synthetic_by_name():
    dataset = build_dataset({"name": "synthetic", "n": 5, "size": 40, "seed": 3}, build_train_transform(size=32))
    assert isinstance(dataset, SyntheticDataset) and len(dataset) == 5 and dataset.seed == 3
    with pytest.raises(ValueError, match="root"):
        build_dataset({"name": "synthetic", "root": "x"})


def test_dict_entries_take_the_config_schema_defaults(tmp_path):
    entry = DatasetEntry("synthetic")
    assert config.DatasetEntry is DatasetEntry  # one schema, re-exported by the config loader
    synthetic = build_dataset({"name": "synthetic"})
    assert (len(synthetic), synthetic.size, synthetic.seed) == (entry.n, (entry.size, entry.size), entry.seed)
    root = make_folder(tmp_path, count=10)
    held_out = build_dataset(generic(root, split="val"))
    explicit = build_dataset(generic(root, split="val", val_fraction=entry.val_fraction, split_seed=entry.split_seed))
    assert held_out.pairs == explicit.pairs and 0 < len(held_out) < 10


def test_reduced_decode_keeps_the_original_size_and_alignment(tmp_path):
    root = make_folder(tmp_path, count=1, size=(256, 320))
    pairs = pair_files(root / "image", root / "mask").pairs
    transform = build_eval_transform(64, resize_mask=True, fast_decode=True)
    reduced = SODDataset(pairs, transform)
    image, mask, original = reduced.load_pair(0)
    assert image.shape == (64, 80, 3) and mask.shape == (64, 80) and original == (256, 320)  # 1/4 decode
    full = SODDataset(pairs, transform, reduced_decode=False)
    assert full.load_pair(0)[0].shape == (256, 320, 3)
    assert (reduced[0]["mask"] - full[0]["mask"]).abs().mean() < 0.02
    assert reduced[0]["size"] == (256, 320)
    eval_item = SODDataset(pairs, build_eval_transform(64))[0]
    assert eval_item["mask"].shape == (1, 256, 320)  # evaluation scores against the original mask


def test_cache_is_used_transparently_and_ignored_when_stale(tmp_path):
    root = make_folder(tmp_path / "set", count=3, size=(120, 160))
    pairs = pair_files(root / "image", root / "mask").pairs
    report = build_cache(root, pairs, long_side=80)
    assert report.written == 3 and not report.failed
    again = build_cache(root, pairs, long_side=80)
    assert again.fresh == 3 and again.written == 0

    # The official protocol decodes every picture at full size: no cache, no reduced decode.
    assert build_dataset(generic(root), build_eval_transform(64, resize_mask=True)).cache is None
    dataset = build_dataset(generic(root), build_eval_transform(64, resize_mask=True, fast_decode=True))
    assert dataset.cache is not None and dataset.cache.long_side == 80
    image, mask, original = dataset.load_pair(0)
    assert image.shape[:2] == mask.shape == (60, 80) and original == (120, 160)
    uncached = build_dataset(generic(root, cache=False), build_eval_transform(64, resize_mask=True, fast_decode=True))
    assert uncached.cache is None
    assert (dataset[0]["mask"] - uncached[0]["mask"]).abs().mean() < 0.05
    assert (dataset[0]["image"] - uncached[0]["image"]).abs().mean() < 0.2

    cached_copy = dataset.cache.lookup(*pairs[0]).image  # prove the copy is what gets read
    write(cached_copy, np.full((60, 80, 3), (0, 0, 255), np.uint8))  # pure red, BGR
    assert dataset.load_pair(0)[0][..., 0].min() > 240

    source = pairs[0][0]
    write(source, cv2.imread(str(source)))  # re-encoded: new mtime and size
    os.utime(source, ns=(1, 1))
    assert dataset.cache.lookup(*pairs[0]) is None  # stale: the source is read again
    assert dataset.load_pair(0)[0].shape == (120, 160, 3)  # the source at full size (1/2 would be < 64)

    assert find_cache(root, 81) is None  # a cache smaller than the training size is not used
    assert build_dataset(generic(root), build_eval_transform(96, fast_decode=True)).cache is None
    assert build_dataset(generic(root), build_eval_transform(None)).cache is None
