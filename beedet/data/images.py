"""Reading image files the way a person sees them.

Every image in beedet goes through this module, so that the pixels a detector trains on, the
size a reader checks labels against, and the size a viewer displays all agree:

* EXIF orientation is applied (phones store portrait photos as rotated landscape pixels plus an
  orientation tag; labeling tools draw boxes on the displayed, rotated picture).
* Whatever the file's pixel format, the result is uint8 RGB of shape (H, W, 3): grayscale,
  bilevel, palette, RGBA (alpha dropped), CMYK and 16-bit images are converted.

Errors raise :class:`ImageError`, whose message names the file and says what is wrong.
``ImageFile.LOAD_TRUNCATED_IMAGES`` is deliberately left False: a truncated JPEG decodes to a
grey lower half that still "loads", and a detector trained on it learns nothing good.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps

from beedet.data.records import DataError

# Orientations 5-8 rotate by 90 degrees, so the displayed width is the stored height.
_SWAPPING_ORIENTATIONS = frozenset({5, 6, 7, 8})
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N"})


class ImageError(DataError):
    """An image file is missing, not an image, or corrupt. ``str()`` is ``"<path>: <reason>"``."""

    def __init__(self, path: Path | str, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


#: File suffixes beedet treats as images when it lists a folder (compared lower-case).
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})


def find_images(folder: Path | str) -> list[Path]:
    """The image files under ``folder``, searched recursively, sorted by path."""
    return sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def load_image(path: Path | str) -> np.ndarray:
    """Decode ``path`` to uint8 RGB of shape (H, W, 3), as displayed (EXIF orientation applied).

    16-bit images are scaled to 8 bits (65535 -> 255, 32768 -> 128), not clipped.
    """
    with _open(path) as img:
        try:
            img.load()
            ImageOps.exif_transpose(img, in_place=True)
        except (OSError, SyntaxError, ValueError, struct.error) as exc:
            raise ImageError(path, f"corrupt or truncated image ({exc})") from exc
        return _to_rgb_array(img)


def read_image_size(path: Path | str) -> tuple[int, int]:
    """``(width, height)`` as displayed (after EXIF orientation), from the file header only.

    Cheap (no pixel decoding), so it cannot notice a file truncated inside its pixel data; use
    :func:`verify_image` for that.
    """
    with _open(path) as img:
        width, height = img.size
        try:
            orientation = _header_orientation(img, Path(path))
        except (OSError, SyntaxError, ValueError, struct.error) as exc:
            raise ImageError(path, f"corrupt image header ({exc})") from exc
    return (height, width) if orientation in _SWAPPING_ORIENTATIONS else (width, height)


def verify_image(path: Path | str) -> tuple[int, int]:
    """Decode every byte of ``path`` and return ``(width, height)`` as displayed.

    Raises :class:`ImageError` when the file is missing, not an image, truncated or corrupt.
    JPEGs are decoded at 1/8 scale (``Image.draft``): the DCT scaling still has to walk the whole
    entropy-coded stream, so truncation and corruption are found at a fraction of the cost.
    """
    with _open(path) as img:
        width, height = img.size
        try:
            if img.format == "JPEG":
                img.draft("RGB", (max(1, width // 8), max(1, height // 8)))
            img.load()
            orientation = img.getexif().get(ExifTags.Base.Orientation, 1)
        except (OSError, SyntaxError, ValueError, struct.error) as exc:
            raise ImageError(path, f"corrupt or truncated image ({exc})") from exc
    return (height, width) if orientation in _SWAPPING_ORIENTATIONS else (width, height)


def _open(path: Path | str) -> Image.Image:
    path = Path(path)
    if not path.is_file():
        raise ImageError(path, "image file not found" if not path.exists() else "not a regular file")
    try:
        return Image.open(path)
    except Image.UnidentifiedImageError as exc:
        raise ImageError(path, "not an image (unrecognised file format)") from exc
    except Image.DecompressionBombError as exc:
        raise ImageError(path, f"image too large to decode safely ({exc})") from exc
    except (OSError, SyntaxError, ValueError, struct.error) as exc:
        raise ImageError(path, f"cannot read image header ({exc})") from exc


def _header_orientation(img: Image.Image, path: Path) -> int:
    """The EXIF orientation tag without decoding pixels.

    Pillow only finds a PNG ``eXIf`` chunk that follows the pixel data by decoding the whole
    image, so for PNG the chunk list is walked instead (seeking past the pixel data).
    """
    if img.format == "PNG" and "exif" not in img.info:
        raw = _png_trailing_exif(path)
        if raw is None:
            return 1
        exif = Image.Exif()
        exif.load(raw)
        return int(exif.get(ExifTags.Base.Orientation, 1))
    return int(img.getexif().get(ExifTags.Base.Orientation, 1))


def _png_trailing_exif(path: Path) -> bytes | None:
    with path.open("rb") as f:
        f.seek(8)  # PNG signature
        while True:
            head = f.read(8)
            if len(head) < 8:
                return None
            length, chunk_type = struct.unpack(">I4s", head)
            if chunk_type == b"eXIf":
                return f.read(length)
            if chunk_type == b"IEND":
                return None
            f.seek(length + 4, 1)  # chunk data + CRC


def _to_rgb_array(img: Image.Image) -> np.ndarray:
    if img.mode == "RGB":
        return np.asarray(img, dtype=np.uint8)
    if img.mode in _SIXTEEN_BIT_MODES or img.mode in ("I", "F"):
        gray = _scale_to_uint8(np.asarray(img), img.mode)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if img.mode == "P" and "transparency" in img.info:
        # Going through RGBA is how Pillow wants palette transparency resolved (no warning).
        img = img.convert("RGBA")
    # L, LA, 1, P, PA, RGBA, RGBa, CMYK, YCbCr, LAB, HSV: Pillow's conversions drop alpha.
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def _scale_to_uint8(values: np.ndarray, mode: str) -> np.ndarray:
    """Scale a single-channel high-bit-depth image to 0..255 by its nominal range.

    16-bit data (modes ``I;16*``, and mode ``I`` holding values within 0..65535, which is how
    Pillow may present 16-bit PNGs) maps 0..65535 onto 0..255 with rounding. Wider integer or
    float data falls back to its own min..max, since it has no nominal range.
    """
    values = values.astype(np.float64)
    if mode == "F" and values.size and values.min() >= 0.0 and values.max() <= 1.0:
        low, high = 0.0, 1.0
    elif mode != "F" and values.size and values.min() >= 0 and values.max() <= 65535:
        low, high = 0.0, 65535.0
    else:
        low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 1.0)
        high = max(high, low + 1e-12)
    scaled = np.floor((values - low) * (255.0 / (high - low)) + 0.5)
    return np.clip(scaled, 0, 255).astype(np.uint8)
