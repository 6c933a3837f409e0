"""Output modes of ``pgnet.predict.compose`` on arrays and PIL images, input alpha, foreground estimation."""

import cv2
import numpy as np
import pytest

from pgnet.data.io import read_image, read_image_with_alpha
from pgnet.data.synthetic import make_soft_composite
from pgnet.predict.compose import Composer, blurred_background, compose, mask_to_uint8, resize_to_cover
from pgnet.predict.foreground import estimate_foreground

Image = pytest.importorskip("PIL.Image")


def texture(height, width, cell, base, seed):
    """Smooth random colours around ``base`` (float32, 0-255)."""
    small = np.random.default_rng(seed).integers(0, 256, (height // cell + 2, width // cell + 2, 3), dtype=np.uint8)
    noise = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC).astype(np.float32)
    return np.clip(0.5 * noise + 0.5 * np.asarray(base, np.float32), 0, 255)


def picture_and_mask(height=40, width=50):
    image = texture(height, width, 4, (120, 120, 120), seed=3).astype(np.uint8)
    mask = np.random.default_rng(4).random((height, width), dtype=np.float32)
    return image, mask


def test_foreground_estimate_removes_the_old_background_at_soft_edges():
    composite, alpha, truth, _ = make_soft_composite(0, (128, 160))
    estimate = estimate_foreground(composite, alpha)
    edge = (alpha > 0.05) & (alpha < 0.95)
    raw_error = np.abs(composite.astype(np.float32) - truth)[edge].mean()  # 41.4 (0-255 scale)
    estimate_error = np.abs(estimate.astype(np.float32) - truth)[edge].mean()  # 8.1
    assert estimate_error < 0.35 * raw_error, (raw_error, estimate_error)
    inside = alpha == 1.0
    assert np.abs(estimate[inside].astype(int) - composite[inside]).max() <= 1  # the subject itself is kept
    # uint8 alpha gives the same estimate as float alpha at the same levels
    alpha8 = mask_to_uint8(alpha)
    np.testing.assert_array_equal(estimate_foreground(composite, alpha8), estimate_foreground(composite, alpha8 / 255))


def test_refined_cutout_and_background_use_the_estimated_colours():
    composite, alpha, _, _ = make_soft_composite(0, (128, 160))
    estimate = estimate_foreground(composite, mask_to_uint8(alpha))
    rgba = compose(composite, alpha, "rgba", refine_foreground=True)
    np.testing.assert_array_equal(rgba[..., :3], estimate)
    np.testing.assert_array_equal(rgba[..., 3], mask_to_uint8(alpha))
    on_black = compose(composite, alpha, "color", color="#000000", refine_foreground=True)
    weight = mask_to_uint8(alpha)[..., None] / 255.0
    assert np.abs(on_black - estimate * weight).max() <= 0.5 + 1e-6


def test_rgba_keeps_the_inputs_own_transparency():
    image, mask = picture_and_mask()
    alpha = np.zeros(mask.shape, np.uint8)
    alpha[:, 20:35] = 128
    alpha[:, 35:] = 255
    rgba = compose(np.dstack((image, alpha)), mask, "rgba")
    mask8 = mask_to_uint8(mask)
    assert rgba[:, :20, 3].max() == 0  # transparent input pixels stay transparent
    np.testing.assert_array_equal(rgba[:, 35:, 3], mask8[:, 35:])  # opaque ones take the mask
    expected = np.rint(mask8[:, 20:35].astype(np.float32) * 128 / 255)
    np.testing.assert_array_equal(rgba[:, 20:35, 3], expected)  # product of the two alphas
    np.testing.assert_array_equal(rgba[..., :3], image)
    # the same through a PIL RGBA image, and on a plain colour the transparent part is the colour
    pil = Image.fromarray(np.dstack((image, alpha)), "RGBA")
    np.testing.assert_array_equal(compose(pil, mask, "rgba"), rgba)
    on_green = np.asarray(compose(pil, mask, "color", "#00ff00"))
    assert (on_green[:, :20] == (0, 255, 0)).all()


def test_rgba_png_file_alpha_is_read_with_its_orientation(tmp_path):
    image, _ = picture_and_mask(30, 44)
    alpha = np.tile(np.linspace(0, 255, 44).astype(np.uint8), (30, 1))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90° clockwise on display
    Image.fromarray(np.dstack((image, alpha)), "RGBA").save(tmp_path / "a.png", exif=exif.tobytes())
    Image.fromarray(image).save(tmp_path / "plain.png")
    read = read_image_with_alpha(tmp_path / "a.png")
    np.testing.assert_array_equal(read[..., :3], read_image(tmp_path / "a.png"))
    np.testing.assert_array_equal(read[..., 3], np.rot90(alpha, -1))
    assert read_image_with_alpha(tmp_path / "plain.png").shape == (30, 44, 3)


def test_compose_accepts_pil_images_and_hex_colours():
    image, mask = picture_and_mask()
    for mode, color in (("color", "#0000ff"), ("overlay", "#00ff00"), ("color", "10, 20,30")):
        from_pil = compose(Image.fromarray(image), mask, mode, color)
        rgb = tuple(int(color[i : i + 2], 16) for i in (1, 3, 5)) if color.startswith("#") else (10, 20, 30)
        np.testing.assert_array_equal(np.asarray(from_pil), compose(image, mask, mode, rgb))
    gray = Image.fromarray(image[..., 0])
    np.testing.assert_array_equal(np.asarray(compose(gray, mask, "rgba"))[..., 0], image[..., 0])
    with pytest.raises(ValueError, match="#12345"):
        compose(image, mask, "color", "#12345")
    with pytest.raises(ValueError, match="background picture"):
        compose(image, mask, "background")
    for blur in (0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="positive, finite sigma"):
            compose(image, mask, "blur", blur=blur)


def test_pil_in_pil_out_array_in_array_out():
    image, mask = picture_and_mask()
    for mode, pil_mode in (("mask", "L"), ("rgba", "RGBA"), ("overlay", "RGB"), ("blur", "RGB")):
        out = compose(Image.fromarray(image), mask, mode)
        assert isinstance(out, Image.Image) and out.mode == pil_mode and out.size == (image.shape[1], image.shape[0])
        np.testing.assert_array_equal(np.asarray(out), compose(image, mask, mode))
    assert isinstance(compose(image, mask, "rgba"), np.ndarray)


@pytest.mark.parametrize("sigma", [1e9, 1e4])
def test_a_blur_wider_than_the_picture_leaves_its_mean_background(sigma):
    """A sigma far beyond the picture (1e9 made OpenCV's kernel size overflow) gives the background's
    mean colour, as a Gaussian over the reflected picture tends to."""
    image, _ = picture_and_mask(64, 80)
    mask = np.zeros((64, 80), np.float32)
    mask[16:48, 20:60] = 1.0
    out = compose(image, mask, "blur", blur=sigma)
    np.testing.assert_array_equal(out[mask == 1], image[mask == 1])
    expected = image[mask == 0].astype(np.float64).mean(axis=0)
    assert np.abs(out[mask == 0] - expected).max() <= 1.0


def test_blur_mode_blurs_only_what_is_behind_the_subject():
    image, _ = picture_and_mask(64, 80)
    mask = np.zeros((64, 80), np.float32)
    mask[16:48, 20:60] = 1.0
    out = compose(image, mask, "blur", blur=6)
    np.testing.assert_array_equal(out[mask == 1], image[mask == 1])
    behind = mask == 0
    assert out[behind].astype(float).std() < 0.7 * image[behind].astype(float).std()
    # the subject's colour does not leak into the blurred background: a white subject on black
    white = np.zeros((64, 80, 3), np.uint8)
    white[mask == 1] = 255
    assert blurred_background(white, mask[..., None], 6.0)[behind].max() < 1.0


def test_background_picture_is_resized_to_cover_and_centred(tmp_path):
    wide = np.zeros((20, 80, 3), np.uint8)
    wide[:, 35:45] = 255  # a white band in the middle
    covered = resize_to_cover(wide, (40, 40))
    assert covered.shape == (40, 40, 3)
    assert covered[:, 20].min() == 255 and covered[:, 0].max() == 0  # centre kept, sides cropped
    image, _ = picture_and_mask(40, 40)
    mask = np.zeros((40, 40), np.float32)
    mask[10:30, 10:30] = 1.0
    cv2.imwrite(str(tmp_path / "bg.png"), cv2.cvtColor(wide, cv2.COLOR_RGB2BGR))
    out = compose(image, mask, "background", background=tmp_path / "bg.png")
    np.testing.assert_array_equal(out[mask == 0], covered[mask == 0])
    np.testing.assert_array_equal(out[mask == 1], image[mask == 1])
    composer = Composer("background", background=Image.fromarray(wide))
    np.testing.assert_array_equal(composer(image, mask), out)
    assert composer.background_for((40, 40)) is composer.background_for((40, 40))  # cached per size
