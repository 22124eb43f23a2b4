"""Preprocessing against expected arrays computed here with numpy alone."""

import numpy as np
import pytest
from PIL import Image

from vmamba_rt.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess, load_rgb

MEAN = np.array(IMAGENET_MEAN, np.float32)
STD = np.array(IMAGENET_STD, np.float32)


def normalise(rgb_u8):
    """(H, W, 3) uint8 -> (3, H, W) float32, the official normalisation."""
    return ((rgb_u8.astype(np.float32) / 255.0 - MEAN) / STD).transpose(2, 0, 1)


def rand_rgb(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_crop_path_without_resampling_is_a_plain_center_crop():
    # Shorter side already int(256/224*224) = 256: no resize; crop offsets round((256-224)/2), round((300-224)/2).
    arr = rand_rgb(256, 300)
    got = Preprocess()(arr)
    assert got.shape == (3, 224, 224)
    np.testing.assert_allclose(got, normalise(arr[16:240, 38:262]), rtol=0, atol=1e-6)


def test_constant_image_of_any_size_and_orientation():
    for h, w in [(10, 37), (500, 333), (224, 224), (3, 3)]:
        arr = np.full((h, w, 3), (200, 30, 90), np.uint8)
        want = normalise(np.full((224, 224, 3), (200, 30, 90), np.uint8))
        np.testing.assert_allclose(Preprocess()(arr), want, rtol=0, atol=1e-5)


def test_resize_follows_the_spec_formula():
    # 300 x 400 (w x h): shorter side 300 -> 256, longer int(256 * 400 / 300) = 341, then crop.
    arr = rand_rgb(400, 300, seed=1)
    resized = np.asarray(Image.fromarray(arr).resize((256, 341), Image.BICUBIC))
    top, left = int(round((341 - 224) / 2)), int(round((256 - 224) / 2))
    want = normalise(resized[top : top + 224, left : left + 224])
    np.testing.assert_allclose(Preprocess()(arr), want, rtol=0, atol=1e-6)


def test_squash_to_input_size_is_identity_at_that_size():
    arr = rand_rgb(64, 64, seed=2)
    p = Preprocess(input_size=64, resize="squash")
    np.testing.assert_allclose(p(arr), normalise(arr), rtol=0, atol=1e-6)


def test_grayscale_palette_rgba_and_16_bit(tmp_path):
    p = Preprocess(input_size=32, resize="squash")
    gray = np.random.default_rng(3).integers(0, 256, (32, 32), dtype=np.uint8)
    rgb = np.repeat(gray[..., None], 3, axis=2)
    want = normalise(rgb)
    np.testing.assert_allclose(p(gray), want, atol=1e-6)
    # 16-bit PNG holding v * 257 reads as v.
    Image.fromarray((gray.astype(np.uint16) * 257)).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    np.testing.assert_allclose(p(tmp_path / "g16.png"), want, atol=1e-6)
    # RGBA: alpha is dropped, as the reference loader's convert("RGB") does.
    rgba = np.concatenate([rgb, np.full((32, 32, 1), 7, np.uint8)], axis=2)
    Image.fromarray(rgba).save(tmp_path / "a.png")
    np.testing.assert_allclose(p(tmp_path / "a.png"), want, atol=1e-6)
    # Palette image: indices into a palette, looked up here with numpy.
    pal = np.random.default_rng(4).integers(0, 256, (256, 3), dtype=np.uint8)
    idx = np.random.default_rng(5).integers(0, 256, (32, 32), dtype=np.uint8)
    im = Image.fromarray(idx, "P")
    im.putpalette(pal.tobytes())
    im.save(tmp_path / "p.png")
    np.testing.assert_allclose(p(tmp_path / "p.png"), normalise(pal[idx]), atol=1e-6)


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_exif_orientation_is_applied(tmp_path, fmt):
    arr = np.zeros((40, 60, 3), np.uint8)
    arr[:20, :, 0] = 255  # top half red
    arr[:, :30, 2] = 255  # left half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: display needs a 90-degree clockwise turn
    path = tmp_path / f"r.{fmt}"
    Image.fromarray(arr).save(path, exif=exif, quality=100)
    shown = np.rot90(arr, k=-1)  # what a viewer displays
    got = np.asarray(load_rgb(path))
    assert got.shape == shown.shape
    if fmt == "png":
        assert np.array_equal(got, shown)
    else:  # lossy: compare the four colour quadrants' means
        quad = lambda a: a.reshape(2, 30, 2, 20, 3).astype(float).mean(axis=(1, 3))  # noqa: E731
        assert np.abs(quad(got) - quad(shown)).max() < 10


def test_bad_images_name_the_problem(tmp_path):
    (tmp_path / "x.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="cannot read image"):
        load_rgb(tmp_path / "x.png")
    with pytest.raises(TypeError, match="uint8"):
        load_rgb(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ValueError, match="shape"):
        load_rgb(np.zeros((4, 4, 2), np.uint8))


def _write_test_images(d):
    rng = np.random.default_rng(7)
    smooth = lambda h, w: (np.add.outer(np.arange(h) * 3, np.arange(w) * 2)[..., None] + [0, 60, 120]) % 256  # noqa: E731
    imgs = {
        "big.png": Image.fromarray(smooth(480, 640).astype(np.uint8)),
        "tall.png": Image.fromarray(rng.integers(0, 256, (300, 170, 3), dtype=np.uint8)),
        "tiny.png": Image.fromarray(rng.integers(0, 256, (9, 13, 3), dtype=np.uint8)),
        "gray.png": Image.fromarray(rng.integers(0, 256, (100, 120), dtype=np.uint8)),
        "rgba.png": Image.fromarray(rng.integers(0, 256, (64, 80, 4), dtype=np.uint8)),
    }
    paths = []
    for name, im in imgs.items():
        im.save(d / name)
        paths.append(d / name)
    exif = Image.Exif()
    exif[0x0112] = 8
    imgs["tall.png"].save(d / "rotated.png", exif=exif)
    return paths + [d / "rotated.png"]


@pytest.mark.parametrize("settings", [
    Preprocess(),
    Preprocess(input_size=64, resize="squash"),
    Preprocess(input_size=96, resize="crop", interpolation="bilinear"),
], ids=["imagenet-224", "squash-64", "bilinear-96"])
def test_rust_preprocessing_agrees_with_python_within_one_level(tmp_path, settings):
    from vmamba_rt import _native

    std = np.asarray(settings.std, np.float32)[:, None, None]
    for path in _write_test_images(tmp_path):
        want = settings(path)
        got = _native.preprocess_file(str(path), settings.to_json())
        levels = np.abs(got - want) * std * 255  # difference in 8-bit pixel levels
        assert levels.max() <= 1.0 + 1e-3, f"{path.name}: {levels.max():.3f} levels"


@pytest.mark.parametrize("subsampling,bound", [(0, 2.0), (2, 4.0)])
def test_jpeg_differs_only_by_the_decoders(tmp_path, subsampling, bound):
    """libjpeg-turbo (Pillow) and zune-jpeg (Rust) round the IDCT and upsample chroma
    differently, by a level or two; resampling can carry that to a few levels.
    Documented in the README."""
    from vmamba_rt import _native

    arr = (np.add.outer(np.arange(250) * 3, np.arange(333) * 2)[..., None] + [0, 60, 120]) % 256
    Image.fromarray(arr.astype(np.uint8)).save(tmp_path / "p.jpg", quality=95, subsampling=subsampling)
    p = Preprocess()
    levels = np.abs(_native.preprocess_file(str(tmp_path / "p.jpg"), p.to_json()) - p(tmp_path / "p.jpg"))
    assert (levels * np.asarray(p.std, np.float32)[:, None, None] * 255).max() <= bound + 1e-3
