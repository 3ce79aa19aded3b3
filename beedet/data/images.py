"""Reading image files the way a person sees them.

Every image in beedet goes through this module, so that the pixels a detector trains on, the
size a reader checks labels against, and the size a viewer displays all agree:

* EXIF orientation is applied (phones store portrait photos as rotated landscape pixels plus an
  orientation tag; labeling tools draw boxes on the displayed, rotated picture).
* Whatever the file's pixel format, the result is uint8 RGB of shape (H, W, 3): grayscale,
  bilevel, palette, RGBA (alpha dropped), CMYK and 16-bit images are converted.

Errors raise :class:`ImageError`, whose message names the file and says what is wrong
(:class:`ImageTooLarge` when its pixel count is over a limit). Bytes held in memory (a request
body) decode through :func:`decode_image`, with the same rules as a file.
``ImageFile.LOAD_TRUNCATED_IMAGES`` is deliberately left False: a truncated JPEG decodes to a
grey lower half that still "loads", and a detector trained on it learns nothing good.

One pixel limit, :data:`DEFAULT_MAX_PIXELS`, guards every decode (training, ``beedet.predict``,
``beedet.data.inspect``, serving): each decoding function takes ``max_pixels`` and refuses a larger
image from its header, before a single pixel is decoded. A few KB of PNG can announce a 50000 x
50000 image; decoded, that is 7.5 GB of RGB. ``None`` leaves only Pillow's own limit
(``Image.MAX_IMAGE_PIXELS``, about 179 MP refused, 89 MP warned), which still applies above ours.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps

from beedet.data.records import DataError

# Orientations 5-8 rotate by 90 degrees, so the displayed width is the stored height.
_SWAPPING_ORIENTATIONS = frozenset({5, 6, 7, 8})
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N"})

#: The most pixels (width x height) any decode accepts unless told otherwise. 40 MP: a 4K frame is
#: 8.3 MP and a 48 MP phone photo is refused. Decoded, 40 MP is 120 MB of uint8 and 480 MB as the
#: float tensor the network reads; a DataLoader worker or a server thread holds several at once.
DEFAULT_MAX_PIXELS = 40_000_000


class ImageError(DataError):
    """An image file is missing, not an image, or corrupt. ``str()`` is ``"<path>: <reason>"``."""

    def __init__(self, path: Path | str, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class ImageTooLarge(ImageError):
    """The image has more pixels than allowed (``max_pixels`` of the decoding function, by default
    :data:`DEFAULT_MAX_PIXELS`, or Pillow's own decompression-bomb limit): refused from its header,
    before its pixels are decoded."""


#: File suffixes beedet treats as images when it lists a folder (compared lower-case).
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})


def find_images(folder: Path | str) -> list[Path]:
    """The image files under ``folder``, searched recursively, sorted by path."""
    return sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def load_image(path: Path | str, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode ``path`` to uint8 RGB of shape (H, W, 3), as displayed (EXIF orientation applied).

    16-bit images are scaled to 8 bits (65535 -> 255, 32768 -> 128), not clipped. More than
    ``max_pixels`` pixels: :class:`ImageTooLarge`, from the header (module docstring).
    """
    with _open(path, max_pixels) as img:
        return _decode(img, path)


#: JPEG DCT scaling factors libjpeg offers (and Pillow's ``Image.draft`` picks from).
_DCT_SCALES = (8, 4, 2, 1)


def load_image_reduced(path: Path | str, min_size: tuple[int, int], *,
                       max_pixels: int | None = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode ``path`` as :func:`load_image` does, but a JPEG at the smallest size that is still at
    least ``min_size`` = (width, height) as displayed; also return the full displayed (width, height).

    For a training pipeline that first resizes every frame to a fixed input (a 1920x1080 frame to
    300x300), most decoded pixels are thrown away at once. libjpeg can instead produce the image at
    1/2, 1/4 or 1/8 scale while decoding (DCT scaling: each 8x8 block is inverse-transformed to 4x4,
    2x2 or 1x1 pixels), which costs less than the full decode and skips the copy of pixels the
    resize would discard. The largest factor s with ``ceil(side / s) >= min`` for both sides is
    used (1920x1080 -> 960x540 for 300x300: 1/4 would leave 270 rows); other formats, and JPEGs
    already no larger than ``min_size``, decode at full size.

    The result is an area-averaged reduction, not the exact full decode: callers map boxes by the
    decoded/full size ratio of each axis (``pixels.shape`` vs the returned full size).
    ``tests/test_fast_decode.py`` states how close a resize of it is to a resize of the full decode.
    ``max_pixels`` counts the full stored image, not the reduced decode: the limit is one number
    for every path, whatever the augmentation.
    """
    with _open(path, max_pixels) as img:
        try:
            orientation = _header_orientation(img, Path(path))
        except (OSError, SyntaxError, ValueError, struct.error) as exc:
            raise ImageError(path, f"corrupt image header ({exc})") from exc
        swap = orientation in _SWAPPING_ORIENTATIONS
        stored_w, stored_h = img.size
        if img.format == "JPEG":
            # min_size is for the displayed image; the decoder works on the stored one.
            need_w, need_h = (min_size[1], min_size[0]) if swap else min_size
            scale = next(s for s in _DCT_SCALES if s == 1 or (-(-stored_w // s) >= need_w and -(-stored_h // s) >= need_h))
            if scale > 1:
                # Pillow picks the largest s in (8, 4, 2, 1) with s <= side // requested: asking for
                # side // scale makes that exactly `scale`; it then decodes ceil(side / scale).
                img.draft("RGB", (stored_w // scale, stored_h // scale))
        pixels = _decode(img, path)
    return pixels, ((stored_h, stored_w) if swap else (stored_w, stored_h))


def decode_image(data: bytes, name: str = "<image bytes>", *, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                 formats: Sequence[str] | None = None) -> np.ndarray:
    """Decode an encoded image held in memory exactly as :func:`load_image` decodes a file.

    ``name`` stands for the file in error messages. ``max_pixels``: raise :class:`ImageTooLarge`
    from the header alone, before decoding, when width * height is larger (module docstring).
    ``formats``: Pillow format names to try (e.g. ``("JPEG", "PNG")``); None: every format Pillow
    knows.
    """
    if not data:
        raise ImageError(name, "empty (0 bytes)")
    with _open_stream(io.BytesIO(data), name, formats, max_pixels) as img:
        return _decode(img, name)


def read_image_size(path: Path | str, *, max_pixels: int | None = None) -> tuple[int, int]:
    """``(width, height)`` as displayed (after EXIF orientation), from the file header only.

    Cheap (no pixel decoding), so it cannot notice a file truncated inside its pixel data; use
    :func:`verify_image` for that. Reading a header is safe at any size, so there is no limit by
    default; with ``max_pixels`` a larger image raises :class:`ImageTooLarge`, as a decode would
    (:func:`beedet.data.checks.check_records` refuses such images before anything decodes them).
    """
    with _open(path, max_pixels) as img:
        width, height = img.size
        try:
            orientation = _header_orientation(img, Path(path))
        except (OSError, SyntaxError, ValueError, struct.error) as exc:
            raise ImageError(path, f"corrupt image header ({exc})") from exc
    return (height, width) if orientation in _SWAPPING_ORIENTATIONS else (width, height)


def verify_image(path: Path | str, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """Decode every byte of ``path`` and return ``(width, height)`` as displayed.

    Raises :class:`ImageError` when the file is missing, empty, not an image, truncated or corrupt,
    and :class:`ImageTooLarge` (from the header, before decoding) above ``max_pixels``.
    JPEGs are decoded at 1/8 scale (``Image.draft``): the DCT scaling still has to walk the whole
    entropy-coded stream, so truncation and corruption are found at a fraction of the cost.
    """
    with _open(path, max_pixels) as img:
        width, height = img.size
        try:
            if img.format == "JPEG":
                img.draft("RGB", (max(1, width // 8), max(1, height // 8)))
            img.load()
            orientation = img.getexif().get(ExifTags.Base.Orientation, 1)
        except (OSError, SyntaxError, ValueError, struct.error) as exc:
            raise ImageError(path, f"corrupt or truncated image ({exc})") from exc
    return (height, width) if orientation in _SWAPPING_ORIENTATIONS else (width, height)


def _open(path: Path | str, max_pixels: int | None) -> Image.Image:
    path = Path(path)
    if not path.is_file():
        raise ImageError(path, "image file not found" if not path.exists() else "not a regular file")
    # Said plainly: Pillow would call a 0-byte file an "unrecognised file format", which sends
    # people looking for a codec problem instead of a failed download or copy.
    if path.stat().st_size == 0:
        raise ImageError(path, "empty file (0 bytes)")
    return _open_stream(path, path, None, max_pixels)


def _open_stream(source: Path | io.BytesIO, name: Path | str, formats: Sequence[str] | None,
                 max_pixels: int | None) -> Image.Image:
    """The opened image (header read, no pixels decoded yet), refused when over ``max_pixels``."""
    # Pillow's own check runs inside open(): above ~89 MP it warns first, even when ours refuses
    # just below. Not silenced: warnings.catch_warnings is process-global, and serving decodes in
    # threads.
    try:
        img = Image.open(source, formats=None if formats is None else list(formats))
    except Image.UnidentifiedImageError as exc:
        known = "" if formats is None else f" of {', '.join(formats)}"
        raise ImageError(name, f"not an image (unrecognised file format{known})") from exc
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(name, f"image too large to decode safely ({exc})") from exc
    except (OSError, SyntaxError, ValueError, struct.error) as exc:
        raise ImageError(name, f"cannot read image header ({exc})") from exc
    if max_pixels is not None and img.width * img.height > max_pixels:
        img.close()
        raise ImageTooLarge(name, f"{img.width}x{img.height} is {img.width * img.height} pixels, "
                                  f"more than the {max_pixels} allowed (max_pixels)")
    return img


def _decode(img: Image.Image, name: Path | str) -> np.ndarray:
    try:
        img.load()
        ImageOps.exif_transpose(img, in_place=True)
    except Image.DecompressionBombError as exc:  # an animation frame larger than the header said
        raise ImageTooLarge(name, f"image too large to decode safely ({exc})") from exc
    except (OSError, SyntaxError, ValueError, struct.error) as exc:
        raise ImageError(name, f"corrupt or truncated image ({exc})") from exc
    return _to_rgb_array(img)


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
