"""Registered layouts resolve on fake folder trees; files pair by stem."""

from pathlib import Path

import pytest

from pgnet.data.registry import (
    LAYOUTS,
    DatasetNotFoundError,
    detect_datasets,
    get_layout,
    known_dataset_names,
    pair_dataset,
    pair_files,
    resolve_dataset,
)


def make_layout(root: Path, image_dir: str, mask_dir: str, stems=("a", "b")) -> tuple[Path, Path]:
    images, masks = root / image_dir, root / mask_dir
    images.mkdir(parents=True)
    masks.mkdir(parents=True)
    for stem in stems:
        (images / f"{stem}.jpg").write_bytes(b"")
        (masks / f"{stem}.png").write_bytes(b"")
    return images, masks


# (name, image folder, mask folder) as each dataset is usually unpacked under its root.
OFFICIAL_LAYOUTS = [
    ("DUTS-TR", "DUTS-TR/DUTS-TR-Image", "DUTS-TR/DUTS-TR-Mask"),
    ("DUTS-TE", "DUTS-TE/DUTS-TE-Image", "DUTS-TE/DUTS-TE-Mask"),
    ("HRSOD-TR", "HRSOD_release/HRSOD_train", "HRSOD_release/HRSOD_train_mask"),
    ("HRSOD-TE", "HRSOD_release/HRSOD_test", "HRSOD_release/HRSOD_test_mask"),
    ("UHRSD-TR", "UHRSD_TR/image", "UHRSD_TR/mask"),
    ("UHRSD-TE", "UHRSD_TE/image", "UHRSD_TE/mask"),
    ("UHRSD-TR-2K", "UHRSD_TR_2K/image", "UHRSD_TR_2K/mask"),
    ("UHRSD-TE-2K", "UHRSD_TE_2K/image", "UHRSD_TE_2K/mask"),
    ("DAVIS-S", "DAVIS-S/images", "DAVIS-S/masks"),
    ("DUT-OMRON", "DUT-OMRON-image", "pixelwiseGT-new-PNG"),
    ("ECSSD", "images", "ground_truth_mask"),
    ("HKU-IS", "imgs", "gt"),
    ("PASCAL-S", "datasets/imgs/pascal", "datasets/masks/pascal"),
    ("DIS-TR", "DIS-TR/im", "DIS-TR/gt"),
    ("DIS-VD", "DIS-VD/im", "DIS-VD/gt"),
    ("DIS-TE1", "DIS-TE1/im", "DIS-TE1/gt"),
    ("DIS-TE4", "DIS-TE4/im", "DIS-TE4/gt"),
    ("generic", "image", "mask"),
]


@pytest.mark.parametrize(("name", "image_dir", "mask_dir"), OFFICIAL_LAYOUTS)
def test_official_layouts_resolve(tmp_path, name, image_dir, mask_dir):
    root = tmp_path / name  # e.g. data/HKU-IS: the root's name tells imgs/ + gt/ from a generic layout
    images, masks = make_layout(root, image_dir, mask_dir)
    spec = resolve_dataset(name, root)
    assert (spec.image_dir, spec.mask_dir) == (images, masks)
    assert spec.name == name and spec.root == root
    assert [spec.name for spec in detect_datasets(root)] == [name]


def test_expected_counts_of_the_releases():
    expected = {
        "DUTS-TR": 10553,
        "DUTS-TE": 5019,
        "HRSOD-TR": 1610,
        "HRSOD-TE": 400,
        "UHRSD-TR": 4932,
        "UHRSD-TE": 988,
        "DAVIS-S": 92,
        "DUT-OMRON": 5168,
        "ECSSD": 1000,
        "HKU-IS": 4447,
        "PASCAL-S": 850,
        "DIS-TR": 3000,
        "DIS-VD": 470,
        "DIS-TE1": 500,
        "DIS-TE2": 500,
        "DIS-TE3": 500,
        "DIS-TE4": 500,
        "DIS-TE": 2000,
    }
    assert {name: LAYOUTS[name].expected_count for name in expected} == expected
    assert LAYOUTS["generic"].expected_count is None


def test_names_are_case_and_punctuation_insensitive(tmp_path):
    make_layout(tmp_path, "DUTS-TE/DUTS-TE-Image", "DUTS-TE/DUTS-TE-Mask")
    for spelling in ("duts-te", "DUTS_TE", "DutsTe"):
        assert resolve_dataset(spelling, tmp_path).name == "DUTS-TE"
    assert get_layout("folder").name == "generic"


def test_root_pointing_at_the_split_folder(tmp_path):
    make_layout(tmp_path, "DUTS-TR-Image", "DUTS-TR-Mask")
    assert resolve_dataset("DUTS-TR", tmp_path).image_dir == tmp_path / "DUTS-TR-Image"
    make_layout(tmp_path / "HRSOD-TR", "image", "mask")
    assert resolve_dataset("HRSOD-TR", tmp_path / "HRSOD-TR").image_dir == tmp_path / "HRSOD-TR" / "image"


def test_train_and_test_splits_under_one_root(tmp_path):
    make_layout(tmp_path, "UHRSD_TR/image", "UHRSD_TR/mask")
    make_layout(tmp_path, "UHRSD_TE/image", "UHRSD_TE/mask")
    make_layout(tmp_path, "UHRSD_TR_2K/image", "UHRSD_TR_2K/mask")
    assert resolve_dataset("UHRSD-TR", tmp_path).image_dir == tmp_path / "UHRSD_TR" / "image"
    assert resolve_dataset("UHRSD-TE", tmp_path).image_dir == tmp_path / "UHRSD_TE" / "image"
    assert resolve_dataset("UHRSD-TR-2K", tmp_path).image_dir == tmp_path / "UHRSD_TR_2K" / "image"
    assert sorted(spec.name for spec in detect_datasets(tmp_path)) == ["UHRSD-TE", "UHRSD-TR", "UHRSD-TR-2K"]


def test_plain_image_mask_root_is_detected_as_generic_only(tmp_path):
    make_layout(tmp_path / "mine", "image", "mask")
    make_layout(tmp_path / "HKU-IS", "imgs", "gt")
    assert [spec.name for spec in detect_datasets(tmp_path / "mine")] == ["generic"]
    assert [spec.name for spec in detect_datasets(tmp_path / "HKU-IS")] == ["HKU-IS"]
    assert resolve_dataset("HKU-IS", tmp_path / "mine").image_dir == tmp_path / "mine" / "image"  # fallback


def test_unknown_name_lists_the_known_ones(tmp_path):
    with pytest.raises(KeyError, match="DUTS-TR") as caught:
        resolve_dataset("NOPE-SET", tmp_path)
    assert "NOPE-SET" in str(caught.value)
    assert "ECSSD" in known_dataset_names()


def test_missing_root_and_missing_layout_name_the_path(tmp_path):
    missing = tmp_path / "not_there"
    with pytest.raises(FileNotFoundError, match="not_there"):
        resolve_dataset("DUTS-TR", missing)
    (tmp_path / "DUTS-TR" / "DUTS-TR-Image").mkdir(parents=True)  # masks missing
    with pytest.raises(FileNotFoundError, match=r"DUTS-TR/DUTS-TR-Image \+ DUTS-TR/DUTS-TR-Mask") as caught:
        resolve_dataset("DUTS-TR", tmp_path)
    assert str(tmp_path) in str(caught.value)


def test_pair_files_by_stem(tmp_path):
    images, masks = make_layout(tmp_path, "image", "mask", stems=("a", "b", "c"))
    (images / "only_image.jpg").write_bytes(b"")
    (masks / "only_mask.png").write_bytes(b"")
    (images / "b.png").write_bytes(b"")  # same stem as b.jpg: the .jpg wins
    (images / "d.JPEG").write_bytes(b"")  # upper-case suffix
    (masks / "d.bmp").write_bytes(b"")
    (masks / "e.jpg").write_bytes(b"")  # a JPEG mask still pairs
    (images / "e.tif").write_bytes(b"")
    (images / "notes.txt").write_bytes(b"")
    (images / "._a.jpg").write_bytes(b"")  # macOS resource fork: ignored
    pairing = pair_files(images, masks)
    assert [(i.name, m.name) for i, m in pairing.pairs] == [
        ("a.jpg", "a.png"),
        ("b.jpg", "b.png"),
        ("c.jpg", "c.png"),
        ("d.JPEG", "d.bmp"),
        ("e.tif", "e.jpg"),
    ]
    assert [p.name for p in pairing.unpaired_images] == ["only_image.jpg"]
    assert [p.name for p in pairing.unpaired_masks] == ["only_mask.png"]
    assert [p.name for p in pairing.duplicates] == ["b.png"]


def test_known_dataset_names_include_synthetic():
    assert known_dataset_names()[-1] == "synthetic" and "DUTS-TR" in known_dataset_names()


DIS_SETS = ("DIS-TR", "DIS-VD", "DIS-TE1", "DIS-TE2", "DIS-TE3", "DIS-TE4")


def make_dis5k(data: Path, stems_per_set: int = 2) -> Path:
    """The DIS5K release layout under ``data``: DIS5K/<set>/im/*.jpg and DIS5K/<set>/gt/*.png."""
    for name in DIS_SETS:
        make_layout(data / "DIS5K", f"{name}/im", f"{name}/gt",
                    stems=[f"{name}#{index}" for index in range(stems_per_set)])
    return data / "DIS5K"


def test_dis5k_release_layout_resolves_from_the_data_root_and_the_release_folder(tmp_path):
    release = make_dis5k(tmp_path / "data")
    for root in (tmp_path / "data", release):
        for name in DIS_SETS:
            spec = resolve_dataset(name, root)
            assert (spec.image_dir, spec.mask_dir) == (release / name / "im", release / name / "gt")
            assert spec.metrics == ("HCE",) and not spec.parts
    assert [spec.name for spec in detect_datasets(release)] == list(DIS_SETS)  # DIS-TE (a union) not listed
    assert resolve_dataset("dis_te2", tmp_path / "data").name == "DIS-TE2"
    assert not get_layout("DUTS-TE").metrics  # HCE is DIS5K's only


def test_dis_te_is_the_union_of_the_four_test_sets(tmp_path):
    release = make_dis5k(tmp_path / "data", stems_per_set=3)
    spec = resolve_dataset("DIS-TE", tmp_path / "data")
    assert spec.name == "DIS-TE" and spec.expected_count == 2000 and spec.metrics == ("HCE",)
    assert [part.name for part in spec.parts] == ["DIS-TE1", "DIS-TE2", "DIS-TE3", "DIS-TE4"]
    assert spec.root == release and spec.folders == [(release / f"DIS-TE{i}" / "im", release / f"DIS-TE{i}" / "gt")
                                                     for i in range(1, 5)]
    pairing = pair_dataset(spec)
    assert len(pairing.pairs) == 12 and [mask.parent.parent.name for _, mask in pairing.pairs][::3] == [
        "DIS-TE1", "DIS-TE2", "DIS-TE3", "DIS-TE4"]
    assert "DIS-TE1/im + " in spec.describe() and "DIS-TE4/gt" in spec.describe()
    # a stem met in two parts is kept once (the first part's), the other listed as a duplicate
    (release / "DIS-TE3" / "im" / "DIS-TE1#0.jpg").write_bytes(b"")
    (release / "DIS-TE3" / "gt" / "DIS-TE1#0.png").write_bytes(b"")
    pairing = pair_dataset(spec)
    assert len(pairing.pairs) == 12 and {path.parent.parent.name for path in pairing.duplicates} == {"DIS-TE3"}


def test_dis_te_needs_every_part(tmp_path):
    release = make_dis5k(tmp_path / "data")
    for path in sorted((release / "DIS-TE3").rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    (release / "DIS-TE3").rmdir()
    with pytest.raises(DatasetNotFoundError, match=r"DIS-TE is the union of DIS-TE1, .*DIS-TE4: no DIS-TE3"):
        resolve_dataset("DIS-TE", tmp_path / "data")
    assert resolve_dataset("DIS-TE2", tmp_path / "data").name == "DIS-TE2"
