"""Image loading: every pixel format and EXIF orientation ends up as displayed uint8 RGB (H, W, 3)."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from beedet.data.images import ImageError, load_image, read_image_size, verify_image

ORIENTATION = 0x0112


def _two_colour(width: int = 40, height: int = 20) -> np.ndarray:
    """Left half red, right half blue: big flat blocks survive JPEG, and any rotation shows."""
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[:, : width // 2] = (255, 0, 0)
    pixels[:, width // 2 :] = (0, 0, 255)
    return pixels


def _assert_rgb(image: np.ndarray, height: int, width: int) -> None:
    assert image.dtype == np.uint8
    assert image.shape == (height, width, 3)


def test_grayscale_becomes_three_equal_channels(tmp_path: Path) -> None:
    gray = np.tile(np.arange(0, 250, 10, dtype=np.uint8), (6, 1))  # (6, 25)
    Image.fromarray(gray, mode="L").save(tmp_path / "g.png")
    image = load_image(tmp_path / "g.png")
    _assert_rgb(image, 6, 25)
    for channel in range(3):
        np.testing.assert_array_equal(image[:, :, channel], gray)


@pytest.mark.parametrize("mode", ["LA", "1", "P", "CMYK"])
def test_other_modes_load_as_rgb(tmp_path: Path, mode: str) -> None:
    path = tmp_path / ("x.jpg" if mode == "CMYK" else "x.png")
    Image.fromarray(_two_colour()).convert(mode).save(path)
    _assert_rgb(load_image(path), 20, 40)


def test_rgba_drops_alpha_and_keeps_colour(tmp_path: Path) -> None:
    rgba = np.zeros((5, 7, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2], rgba[..., 3] = 10, 200, 30, 0  # fully transparent
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    image = load_image(tmp_path / "a.png")
    _assert_rgb(image, 5, 7)
    assert (image == np.array([10, 200, 30], dtype=np.uint8)).all()


def test_16_bit_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    values = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")  # really a 16-bit file
    image = load_image(tmp_path / "deep.png")
    _assert_rgb(image, 1, 4)
    np.testing.assert_array_equal(image[0, :, 0], [0, 1, 128, 255])
    np.testing.assert_array_equal(image[..., 0], image[..., 2])


def test_exif_rotated_jpeg_is_loaded_as_displayed(tmp_path: Path) -> None:
    stored = _two_colour(40, 20)
    exif = Image.Exif()
    exif[ORIENTATION] = 6  # "rotate 90 CW to display": a phone held upright
    Image.fromarray(stored).save(tmp_path / "phone.jpg", exif=exif.tobytes(), quality=95)

    assert read_image_size(tmp_path / "phone.jpg") == (20, 40)
    assert verify_image(tmp_path / "phone.jpg") == (20, 40)
    image = load_image(tmp_path / "phone.jpg")
    _assert_rgb(image, 40, 20)
    displayed = np.rot90(stored, k=-1)  # clockwise: the stored left (red) half becomes the top
    assert np.abs(image.astype(int) - displayed.astype(int)).mean() < 8
    assert image[5, 10, 0] > 200 and image[35, 10, 2] > 200


def test_png_exif_after_pixel_data_is_found_from_the_header(tmp_path: Path) -> None:
    """Pillow only sees an eXIf chunk placed after IDAT by decoding; the size read must not miss it."""
    path = tmp_path / "late_exif.png"
    Image.fromarray(_two_colour(40, 20)).save(path)
    exif = Image.Exif()
    exif[ORIENTATION] = 8
    payload = exif.tobytes()[6:] if exif.tobytes().startswith(b"Exif\x00\x00") else exif.tobytes()
    chunk = struct.pack(">I", len(payload)) + b"eXIf" + payload
    chunk += struct.pack(">I", zlib.crc32(b"eXIf" + payload) & 0xFFFFFFFF)
    data = path.read_bytes()
    iend = data.rindex(b"IEND") - 4
    path.write_bytes(data[:iend] + chunk + data[iend:])
    with Image.open(path) as img:
        assert "exif" not in img.info  # really after the pixel data, out of the header's sight

    assert read_image_size(path) == (20, 40)
    assert verify_image(path) == (20, 40)
    image = load_image(path)
    _assert_rgb(image, 40, 20)
    np.testing.assert_array_equal(image, np.rot90(_two_colour(40, 20), k=1))  # orientation 8: 90 CCW


def test_missing_and_non_image_files_raise_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / "notes.jpg").write_text("these are field notes, not a photo")
    for name, why in (("absent.jpg", "not found"), ("notes.jpg", "not an image")):
        for read in (load_image, read_image_size, verify_image):
            with pytest.raises(ImageError, match=why) as info:
                read(tmp_path / name)
            assert name in str(info.value)


def test_truncated_jpeg_is_caught_by_verify_but_not_by_the_header(tmp_path: Path) -> None:
    noise = np.random.default_rng(0).integers(0, 256, (128, 160, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "full.jpg", quality=90)
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "half.jpg").write_bytes(data[: len(data) // 2])

    assert read_image_size(tmp_path / "half.jpg") == (160, 128)  # the header survives truncation
    with pytest.raises(ImageError, match="truncated") as info:
        verify_image(tmp_path / "half.jpg")
    assert "half.jpg" in str(info.value)
    with pytest.raises(ImageError, match="truncated"):
        load_image(tmp_path / "half.jpg")
