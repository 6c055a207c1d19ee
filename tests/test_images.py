"""The one image loader: every Pillow mode becomes correct 8-bit RGB (real photographs, round trips)."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from fcvit.data import ImageReader, expand_image_paths, load_image
from fcvit.errors import UserError
from real_photos import sample_photos


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """A real colour photograph, cut to 96 x 128 to keep the tests fast."""
    return sample_photos()["chelsea"][:96, :128].copy()


@pytest.fixture(scope="module")
def gray(photo) -> np.ndarray:
    return np.asarray(Image.fromarray(photo).convert("L"))


def _load(tmp_path, image: Image.Image, name: str) -> np.ndarray:
    path = tmp_path / name
    image.save(path)
    return np.asarray(load_image(path)).astype(np.int64)


def _assert_gray_equal(loaded: np.ndarray, gray: np.ndarray, tolerance: int = 1) -> None:
    assert loaded.shape == gray.shape + (3,)
    assert (loaded[..., 0] == loaded[..., 1]).all() and (loaded[..., 1] == loaded[..., 2]).all()
    assert np.abs(loaded[..., 0] - gray.astype(np.int64)).max() <= tolerance


@pytest.mark.parametrize("mode, name", [("I;16", "g16.png"), ("I;16B", "g16b.tif")])
def test_16_bit_photos_load_within_1_of_the_8_bit_original(tmp_path, gray, mode, name):
    wide = (gray.astype(np.uint16) * 257).astype(">u2" if mode.endswith("B") else np.uint16)
    image = Image.frombytes(mode, (gray.shape[1], gray.shape[0]), wide.tobytes())
    loaded = _load(tmp_path, image, name)
    assert Image.open(tmp_path / name).mode == mode
    _assert_gray_equal(loaded, gray)
    assert (loaded == 255).mean() < 0.05  # Pillow's own convert() clipped 99.6% of such pixels to white


def test_32_bit_integer_images_scale_by_their_range(tmp_path, gray):
    sixteen = Image.fromarray(gray.astype(np.int32) * 257)  # how Pillow holds 16-bit samples in mode I
    _assert_gray_equal(_load(tmp_path, sixteen, "i16.tif"), gray)
    full = Image.fromarray(gray.astype(np.int32) * (2 ** 23))  # 0..2**31 - 2**23: the whole 31-bit range
    _assert_gray_equal(_load(tmp_path, full, "i31.tif"), gray)
    signed = Image.fromarray((gray.astype(np.int64) * 2 ** 24 - 2 ** 31).astype(np.int32))
    _assert_gray_equal(_load(tmp_path, signed, "i32.tif"), gray)


def test_float_images_are_read_as_0_to_1_or_0_to_255(tmp_path, gray):
    unit = Image.fromarray(gray.astype(np.float32) / 255.0)
    _assert_gray_equal(_load(tmp_path, unit, "unit.tif"), gray)
    byte_range = Image.fromarray(gray.astype(np.float32))
    _assert_gray_equal(_load(tmp_path, byte_range, "bytes.tif"), gray)


def test_transparent_pixels_are_composited_on_white(tmp_path, photo):
    alpha = np.full(photo.shape[:2], 255, np.uint8)
    alpha[:, :40] = 0
    alpha[:, 40:80] = 128
    rgba = Image.fromarray(np.dstack([photo, alpha]))
    loaded = _load(tmp_path, rgba, "rgba.png")
    assert (loaded[:, :40] == 255).all()
    assert (loaded[:, 80:] == photo[:, 80:]).all()
    expected = (photo[:, 40:80].astype(np.float64) * 128 + 255 * 127) / 255
    assert np.abs(loaded[:, 40:80] - expected).max() <= 1

    la = Image.fromarray(np.dstack([np.asarray(Image.fromarray(photo).convert("L")), alpha]), mode="LA")
    loaded = _load(tmp_path, la, "la.png")
    assert (loaded[:, :40] == 255).all() and (loaded[:, 80:, 0] == np.asarray(la)[:, 80:, 0]).all()


def test_palette_transparency_is_composited_on_white(tmp_path, photo):
    palette = Image.fromarray(photo).quantize(16)
    indices = np.asarray(palette).copy()
    hidden = int(indices[0, 0])
    palette.info["transparency"] = hidden
    loaded = _load(tmp_path, palette, "p.png")
    assert (loaded[indices == hidden] == 255).all()
    shown = indices != hidden
    assert (loaded[shown] == np.asarray(palette.convert("RGB")).astype(np.int64)[shown]).all()


def test_cmyk_bilevel_and_gray_become_rgb(tmp_path, photo, gray):
    cmyk = Image.fromarray(photo).convert("CMYK")
    assert (_load(tmp_path, cmyk, "cmyk.tif") == photo).all()
    _assert_gray_equal(_load(tmp_path, Image.fromarray(gray), "l.png"), gray, tolerance=0)
    bilevel = Image.fromarray(gray).convert("1")
    loaded = _load(tmp_path, bilevel, "bw.png")
    assert set(np.unique(loaded)) <= {0, 255}
    assert (loaded[..., 0] == np.asarray(bilevel).astype(np.int64) * 255).all()


def test_reader_skips_bad_files_and_reports_each(tmp_path, photo, capsys):
    good = [tmp_path / "a.png", tmp_path / "c.png"]
    for path in good:
        Image.fromarray(photo).save(path)
    (tmp_path / "b.jpg").write_bytes(b"not a jpeg at all")
    (tmp_path / "notes.txt").write_text("ignored: not an image name")
    paths = expand_image_paths([tmp_path])
    assert [p.split("/")[-1] for p in paths] == ["a.png", "b.jpg", "c.png"]
    reader = ImageReader(paths)
    assert [p for p, _ in reader] == [str(p) for p in good]
    assert reader.exit_status() == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "b.jpg" in err[0] and "cannot be decoded" in err[0] and "1 of 3" in err[1]


def test_reader_raises_for_a_single_bad_image_or_when_none_can_be_read(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        ImageReader([tmp_path / "missing.png"])
    (tmp_path / "x.png").write_bytes(b"junk")
    (tmp_path / "y.png").write_bytes(b"junk")
    with pytest.raises(UserError, match="None of the 2 images"):
        ImageReader([tmp_path / "x.png", tmp_path / "y.png"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no images"):
        expand_image_paths([tmp_path / "empty"])
