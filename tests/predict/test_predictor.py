"""Predictor API, output pictures and the ``pgnet-predict`` command line, on a tiny model at 128 px."""

import hashlib
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pytest
import torch

import pgnet
from pgnet.cli.predict import main as predict_main
from pgnet.data.io import ImageReadError, read_image, read_mask
from pgnet.data.prefetch import prefetch
from pgnet.data.preprocessing import normalize, normalize_then_resize, resize_for_network
from pgnet.data.transforms import build_eval_transform
from pgnet.device import resolve_device as select_device
from pgnet.predict.compose import compose, mask_to_uint8, parse_color
from pgnet.predict.output_plan import plan_outputs
from pgnet.predict.predictor import Predictor, read_for_network

Image = pytest.importorskip("PIL.Image")

SMALL = dict(swin="swin_tiny_patch4_window7_224", resnet="resnet18", swin_input_size=64)
SIZE = 128


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint):
    return tiny_checkpoint  # the shared tiny trained model (conftest.py)


@pytest.fixture(scope="module")
def predictor(checkpoint):
    return Predictor.from_checkpoint(checkpoint, device="cpu", size=SIZE)


def random_image(height, width, seed=0):
    # Smooth noise: a plausible picture, and JPEG-friendly.
    small = np.random.default_rng(seed).integers(0, 256, (height // 8 + 2, width // 8 + 2, 3), dtype=np.uint8)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)


def write_jpeg(path, image, orientation=1):
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(image).save(path, exif=exif.tobytes(), quality=92)
    return path


def write_rgb_png(path, image):
    cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    return path


def file_digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------------
# Predictor


def test_preprocessing_equals_the_eval_transform():
    image = random_image(150, 203)
    mask = np.zeros(image.shape[:2], np.uint8)
    # --fast-decode: uint8 resize, then normalisation
    expected = build_eval_transform(SIZE, fast_decode=True)(image, mask)[0].permute(1, 2, 0)  # S×S×3, normalised
    ours = normalize(torch.from_numpy(resize_for_network(image, SIZE)).permute(2, 0, 1)[None])[0]
    np.testing.assert_allclose(ours.permute(1, 2, 0).numpy(), expected, atol=1e-5)
    # the default, official order: normalisation, then float resize
    expected = build_eval_transform(SIZE)(image, mask)[0].permute(1, 2, 0)
    np.testing.assert_allclose(normalize_then_resize(image, SIZE), expected, atol=1e-5)


def test_fast_decode_is_close_to_the_official_protocol(checkpoint, predictor, tmp_path):
    image = random_image(600, 520)
    path = write_jpeg(tmp_path / "large.jpg", image)
    fast = Predictor.from_checkpoint(checkpoint, device="cpu", size=SIZE, fast_decode=True)
    assert predictor.load(path)[0].shape[:2] == (600, 520)  # decoded at full size
    assert fast.load(path)[0].shape[:2] == (150, 130)  # decoded at 1/4
    official, reduced = predictor(path), fast(path)
    assert official.shape == reduced.shape == (600, 520)
    assert np.abs(official - reduced).max() > 0  # (an untrained network: the size of the gap means nothing)


def test_path_numpy_and_pil_give_the_same_mask_at_the_picture_size(predictor, tmp_path):
    assert pgnet.Predictor is Predictor
    image = random_image(151, 203)  # odd, non-square
    path = write_rgb_png(tmp_path / "odd.png", image)
    from_array = predictor(image)
    assert from_array.shape == (151, 203) and from_array.dtype == np.float32
    assert 0.0 <= from_array.min() and from_array.max() <= 1.0
    np.testing.assert_array_equal(predictor(path), from_array)
    np.testing.assert_array_equal(predictor(str(path)), from_array)
    with Image.open(path) as pil_image:
        np.testing.assert_array_equal(predictor(pil_image), from_array)


@pytest.mark.parametrize(
    "stored, orientation, reduced",
    [
        ((331, 601), 1, (166, 301)),  # decoded at 1/2 (both sides stay ≥ 128)
        ((331, 601), 6, (301, 166)),  # rotated 90°: the mask is 601×331
        ((333, 334), 8, (167, 167)),  # sides reduce to the same length: the EXIF header tells the rotation
        ((95, 141), 6, None),  # small: decoded at full size, rotated
    ],
)
def test_masks_have_the_exif_rotated_original_size(predictor, tmp_path, stored, orientation, reduced):
    path = write_jpeg(tmp_path / "photo.jpg", random_image(*stored), orientation)
    expected = tuple(read_image(path).shape[:2])
    assert expected == (stored if orientation == 1 else stored[::-1])
    image, original = read_for_network(path, SIZE)
    assert original == expected
    assert image.shape[:2] == (reduced or expected)
    assert predictor(path).shape == expected


def test_flip_tta_is_the_mean_of_the_two_passes(checkpoint, predictor):
    image = random_image(140, 181, seed=1)
    flipped = Predictor.from_checkpoint(checkpoint, device="cpu", size=SIZE, flip=True)
    plain = predictor(image)
    mirrored = predictor(np.ascontiguousarray(image[:, ::-1]))[:, ::-1]
    assert np.abs(plain - mirrored).max() > 1e-3  # the two passes differ, so the test can fail
    np.testing.assert_allclose(flipped(image), (plain + mirrored) / 2, atol=1e-4)


def test_batch_form_equals_single_calls(checkpoint, predictor, tmp_path):
    images = [
        random_image(150, 203, seed=2),
        random_image(97, 64, seed=3),
        write_rgb_png(tmp_path / "c.png", random_image(130, 131, seed=4)),
    ]
    batched = Predictor.from_checkpoint(checkpoint, device="cpu", size=SIZE, batch_size=2)(images)
    assert isinstance(batched, list) and len(batched) == 3
    for image, mask in zip(images, batched):
        single = predictor(image)
        assert mask.shape == single.shape
        np.testing.assert_allclose(mask, single, atol=1e-4)


def test_bf16_returns_float32_masks_close_to_fp32(checkpoint, predictor):
    image = random_image(120, 160, seed=5)
    bf16 = Predictor.from_checkpoint(checkpoint, device="cpu", size=SIZE, precision="bf16")
    assert bf16.precision == "bf16" and predictor.precision == "fp32"  # auto: the suite sets PGNET_CPU_BF16=0
    mask = bf16(image)
    assert mask.dtype == np.float32 and mask.shape == (120, 160)
    assert np.abs(mask - predictor(image)).mean() < 0.05


def test_device_selection():
    if not torch.cuda.is_available() and not torch.backends.mps.is_available():
        assert select_device(None) == torch.device("cpu")
        assert select_device("auto") == torch.device("cpu")
    assert select_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="cuda"):
            select_device("cuda")


def test_bad_inputs_are_named(predictor, tmp_path):
    with pytest.raises(TypeError, match="float32"):
        predictor(np.zeros((32, 32, 3), dtype=np.float32))
    with pytest.raises(ValueError, match=r"\(32, 32, 2\)"):
        predictor(np.zeros((32, 32, 2), dtype=np.uint8))
    missing = tmp_path / "missing.jpg"
    with pytest.raises(ImageReadError, match=r"missing\.jpg"):
        predictor(missing)
    with pytest.raises(ValueError, match="size"):
        Predictor(pgnet.create_model(**SMALL), size=8, device="cpu")


def test_prefetch_keeps_the_order_bounds_the_work_ahead_and_hands_over_errors():
    started = []

    def work(item):
        started.append(item)
        if item == 3:
            raise ValueError("three")
        return item * 10

    results = []
    with ThreadPoolExecutor(4) as pool:
        for item, future in prefetch(pool, work, range(6), depth=2):
            assert len(started) <= item + 2  # never more than ``depth`` calls ahead, the current one included
            try:
                results.append(future.result())
            except ValueError as error:
                results.append(str(error))
    assert results == [0, 10, 20, "three", 40, 50]


# ---------------------------------------------------------------------------------------------
# Output pictures


def test_compose_modes():
    image = random_image(40, 50, seed=6)
    mask = np.random.default_rng(7).random((40, 50), dtype=np.float32)
    mask8 = mask_to_uint8(mask)
    np.testing.assert_array_equal(compose(None, mask, "mask"), mask8)
    rgba = compose(image, mask, "rgba")
    assert rgba.shape == (40, 50, 4)
    np.testing.assert_array_equal(rgba[..., 3], mask8)
    np.testing.assert_array_equal(rgba[..., :3], image)
    weight = mask8[..., None] / 255.0
    on_blue = compose(image, mask, "color", color=(0, 0, 255))
    expected = image * weight + np.array([0, 0, 255]) * (1 - weight)
    assert np.abs(on_blue.astype(float) - expected).max() <= 0.5 + 1e-6
    overlay = compose(image, mask, "overlay")
    expected = image * (1 - weight / 2) + np.array([255, 0, 0]) * weight / 2
    assert np.abs(overlay.astype(float) - expected).max() <= 0.5 + 1e-6
    with pytest.raises(ValueError, match="rgba"):
        compose(image[:10], mask, "rgba")
    assert parse_color("#00ff80") == (0, 255, 128) and parse_color("1, 2,3") == (1, 2, 3)
    with pytest.raises(ValueError, match="300"):
        parse_color("300,0,0")


# ---------------------------------------------------------------------------------------------
# Command line


def run_cli(capsys, *args):
    status = predict_main([str(a) for a in args] + ["--no-progress", "--workers", "2"])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_cli_writes_rgba_cutouts_at_original_size_and_skips_unreadable_files(checkpoint, predictor, tmp_path, capsys):
    pictures = tmp_path / "pictures"
    (pictures / "sub").mkdir(parents=True)
    photo = write_jpeg(pictures / "photo.jpg", random_image(331, 601, seed=8), orientation=6)
    odd = write_rgb_png(pictures / "sub" / "odd.png", random_image(77, 91, seed=9))
    broken = pictures / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 this is not a picture")
    digests = {p: file_digest(p) for p in (photo, odd, broken)}
    output = tmp_path / "out"

    status, out, err = run_cli(
        capsys, pictures, "-r", "-c", checkpoint, "-o", output, "--size", SIZE, "--mode", "rgba", "-b", "2"
    )

    assert status == 0
    assert "broken.jpg" in err and "skipped 1" in out
    assert sorted(p.relative_to(output).as_posix() for p in output.rglob("*.png")) == ["photo.png", "sub/odd.png"]
    for source, written in ((photo, output / "photo.png"), (odd, output / "sub" / "odd.png")):
        rgba = cv2.imread(str(written), cv2.IMREAD_UNCHANGED)
        original = read_image(source)
        assert rgba.shape == (*original.shape[:2], 4)
        np.testing.assert_array_equal(rgba[..., 2::-1], original)  # BGRA on disk
        assert np.abs(rgba[..., 3].astype(int) - mask_to_uint8(predictor(source))).max() <= 1
    assert {p: file_digest(p) for p in digests} == digests  # inputs untouched


def test_cli_mask_mode_with_a_glob_and_name_collisions(checkpoint, predictor, tmp_path, capsys):
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    jpg = write_jpeg(pictures / "a.jpg", random_image(100, 150, seed=10))
    png = write_rgb_png(pictures / "a.png", random_image(90, 120, seed=11))
    output = tmp_path / "masks"
    status, _, _ = run_cli(capsys, pictures / "a.*", "-c", checkpoint, "-o", output, "--size", SIZE)
    assert status == 0
    assert sorted(p.name for p in output.iterdir()) == ["a.jpg.png", "a.png.png"]
    for source in (jpg, png):
        mask = read_mask(output / f"{source.name}.png")
        np.testing.assert_array_equal(mask, mask_to_uint8(predictor(source)))
    # The model as loaded (no folded BatchNorm, no channels_last) gives the same masks up to rounding.
    status, _, err = run_cli(capsys, jpg, "-c", checkpoint, "-o", tmp_path / "plain", "--size", SIZE, "--no-optimize")
    assert status == 0 and "optimize=False" in err
    plain = read_mask(tmp_path / "plain" / "a.png").astype(int)
    assert np.abs(plain - read_mask(output / "a.jpg.png").astype(int)).max() <= 1


def test_cli_refuses_to_write_over_an_input(checkpoint, tmp_path, capsys):
    picture = write_rgb_png(tmp_path / "picture.png", random_image(64, 64, seed=12))
    digest = file_digest(picture)
    status, _, err = run_cli(capsys, tmp_path, "-c", checkpoint, "-o", tmp_path, "--size", SIZE)
    assert status == 2 and "picture.png" in err and "overwrite" in err
    assert file_digest(picture) == digest


def test_cli_fails_when_nothing_could_be_processed(checkpoint, tmp_path, capsys):
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    (pictures / "empty.png").write_bytes(b"")
    (pictures / "garbage.jpg").write_bytes(b"garbage")
    status, out, err = run_cli(capsys, pictures, "-c", checkpoint, "-o", tmp_path / "out", "--size", SIZE)
    assert status == 1
    assert "empty.png" in err and "garbage.jpg" in err and "skipped 2" in out
    status, _, err = run_cli(capsys, tmp_path / "nothing-here", "-c", checkpoint, "-o", tmp_path / "out")
    assert status == 2 and "nothing-here" in err


def test_outputs_never_replace_pictures_in_a_searched_output_folder(tmp_path):
    write_rgb_png(tmp_path / "a.png", random_image(32, 32))
    (tmp_path / "masks").mkdir()
    inside = write_rgb_png(tmp_path / "masks" / "a.png", random_image(32, 32))  # a picture, or an earlier output
    with pytest.raises(FileExistsError, match="overwrite"):
        plan_outputs([tmp_path], tmp_path / "masks", recursive=True)
    jobs = plan_outputs([tmp_path], tmp_path / "masks", recursive=False)
    assert [(job.source.name, job.output) for job in jobs] == [("a.png", inside)]
    with pytest.raises(FileExistsError, match="a second run would read them"):  # inside the searched folder
        plan_outputs([tmp_path], tmp_path / "out", recursive=True)
    elsewhere = tmp_path.parent / f"{tmp_path.name}-out"
    jobs = plan_outputs([tmp_path], elsewhere, recursive=True)
    assert sorted(job.output.relative_to(elsewhere).as_posix() for job in jobs) == ["a.png", "masks/a.png"]
