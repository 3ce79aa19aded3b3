"""Seeded synthetic bees: the embedded default dataset, so beedet trains with no download.

``generate_split`` draws JPEG frames of small, crowded, striped bees on hive-like backgrounds and
writes them with a SageMaker Ground Truth manifest, the same format a real labeling job produces,
so the synthetic data goes through exactly the reader the real data goes through.

Design (sizes are for ``image_size=256`` and scale with ``image_size / 256``):

* **Bees** are drawn analytically (anti-aliased ellipses evaluated on a small pixel patch with
  numpy) at a random orientation: a striped abdomen, a hairy thorax, a dark head, six thin legs,
  a soft shadow and two translucent wings lying over the abdomen. Body length is about 14-44 px
  (boxes about 10-35 px a side, median about 17): small, like a real bee in a tile of a
  1920x1080 hive-entrance frame squashed 2.5x, yet with class cues a CNN can see.
* **Classes** ``bee, drone, pollenbee, queen`` (ids 0..3, as in the real honeybee data) differ
  by cues a small CNN can see at that size: a *pollenbee* is a worker with two bright orange or
  yellow pollen loads beside its waist; a *drone* is 1.25x longer, much wider and rounder,
  darker, with big dark eyes; a *queen* is 1.5x longer with a slim, long, orange abdomen
  with few, faint stripes. Object shares are about 70 / 10 / 15 / 5 % (bee / drone / pollenbee /
  queen), imbalanced like a real hive entrance yet with enough rare objects to learn from.
* **Crowds**: about 8 % of images are empty (they teach what background looks like), most hold
  3-20 bees, about 15 % are crowded with 30-60 (then the camera is "further away": bees are a
  little smaller). Bees may touch and overlap, but no two boxes overlap with IoU above 0.3.
* **Backgrounds** are textured: wood grain, honeycomb, painted plastic boards, outdoor
  greenery; with soft blobs, an illumination gradient, sometimes a blur, and sensor noise.
* **Distractors that are not labelled**: straight bars painted with bee-like stripes, plain
  sticks and rectangles, yellow/orange dots and small flowers (pollen look-alikes), dark
  elongated blobs (leaves, shadows). A detector must learn the bee's shape, not just its colours.
* **Boxes** are the tight axis-aligned box of the drawn body: head, thorax, abdomen and (for a
  pollenbee) the pollen loads; *not* the wings, legs or shadow, which annotators of the real data
  also leave out when they stick out. The box is computed analytically from the ellipses (the
  0.5-coverage contour of the anti-aliased drawing), clipped to the image. A bee cut by the
  border is kept (labelled with its visible part) only when at least 40 % of its box is visible;
  less visible bees are not drawn at all, so every bee in an image is labelled.

Generation is deterministic: every image has its own RNG derived from ``(seed, split, index)``,
so the same arguments give the same bytes, train and val differ, and images can be drawn in any
order. It is cached and safe to race (several DDP ranks starting at once): see ``generate_split``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from beedet.data.manifest import write_manifest
from beedet.data.records import ImageRecord, LabelSet

try:  # POSIX advisory locks; elsewhere the temporary-folder-and-rename protocol stands alone.
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

CLASS_NAMES: tuple[str, ...] = ("bee", "drone", "pollenbee", "queen")
# Share of objects per class id: workers dominate, rare castes are rare but learnable.
CLASS_PROBS = np.array([0.70, 0.10, 0.15, 0.05])
LABEL_ATTRIBUTE = "bee-boxes"
# The prefix written into each manifest line's source-ref; SyntheticSource maps it back onto the root.
SYNTHETIC_S3_PREFIX = "s3://beedet-synthetic/"
# Bump when the drawing changes, so cached datasets from an older generator are redrawn.
GENERATOR_VERSION = 3
JPEG_QUALITY = 90
MIN_VISIBLE_FRACTION = 0.4
MAX_PAIR_IOU = 0.3
PLACEMENT_TRIES = 40

RGB = tuple[float, float, float]
Ellipse = tuple[float, float, float, float]  # centre u, centre v, half-length (along u), half-width


# ---- public entry point ---------------------------------------------------------------------------
def generate_split(root: Path, split: str, num_images: int, image_size: int, seed: int) -> Path:
    """Write ``root/<split>/images/*.jpg`` and ``root/<split>.manifest``; return the manifest path.

    Idempotent: when ``root/<split>.synthetic.json`` records these exact parameters (it is written
    last, as the completion marker), nothing is drawn. Otherwise the split is drawn into a
    temporary sibling folder and renamed into place, under an exclusive lock on
    ``root/.<split>.lock`` (POSIX), so concurrent callers (DDP ranks) wait for one another and
    never see a half-written dataset; a crashed run leaves only a staging folder that the next
    run deletes.
    """
    if not split or Path(split).name != split:
        raise ValueError(f"synthetic split name {split!r} must be a plain folder name, like 'train'")
    if num_images < 1 or image_size < 32 or seed < 0:
        raise ValueError(
            f"synthetic split {split!r}: need num_images >= 1, image_size >= 32 and seed >= 0, "
            f"got num_images={num_images}, image_size={image_size}, seed={seed}"
        )
    root = Path(root)
    manifest_path = root / f"{split}.manifest"
    marker_path = root / f"{split}.synthetic.json"
    params = {
        "generator": "beedet.data.synthetic",
        "version": GENERATOR_VERSION,
        "split": split,
        "num_images": int(num_images),
        "image_size": int(image_size),
        "seed": int(seed),
    }
    if _is_complete(marker_path, manifest_path, params):
        return manifest_path

    root.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(root / f".{split}.lock"):
        if _is_complete(marker_path, manifest_path, params):  # another process finished first
            return manifest_path
        _remove_stale_staging(root, split)
        staging = Path(tempfile.mkdtemp(prefix=f".{split}.staging-", dir=root))
        try:
            _draw_split(staging, split, num_images, image_size, seed)
            (staging / marker_path.name).write_text(json.dumps(params, indent=2) + "\n")
            _install(staging, root, split, manifest_path, marker_path)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return manifest_path


def image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The RNG of one image: independent of every other image, and different per split."""
    split_key = int.from_bytes(hashlib.sha256(split.encode("utf-8")).digest()[:8], "little")
    return np.random.default_rng(np.random.SeedSequence([seed, split_key, index]))


def draw_image(rng: np.random.Generator, image_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One synthetic frame: uint8 (S, S, 3) RGB, boxes float32 (N, 4) xyxy pixels, labels int64 (N,)."""
    scale = image_size / 256.0
    canvas = _background(rng, image_size)
    for _ in range(rng.poisson(5)):
        _draw_distractor(canvas, rng, scale)
    boxes, labels = _draw_bees(canvas, rng, scale)
    canvas = _finish(canvas, rng, scale)
    return canvas, boxes, labels


# ---- caching and installation ---------------------------------------------------------------------
def _is_complete(marker_path: Path, manifest_path: Path, params: dict) -> bool:
    try:
        stored = json.loads(marker_path.read_text())
    except (OSError, ValueError):
        return False
    return stored == params and manifest_path.is_file() and (marker_path.parent / params["split"]).is_dir()


@contextlib.contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    if fcntl is None:
        yield
        return
    # flock is held per open file, so threads of one process exclude each other too, and the
    # kernel drops it when a process dies: a crash never leaves a stale lock behind.
    with open(path, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _remove_stale_staging(root: Path, split: str) -> None:
    if fcntl is None:  # without the lock another process may be drawing into its staging folder
        return
    for leftover in root.glob(f".{split}.staging-*"):
        shutil.rmtree(leftover, ignore_errors=True)


def _install(staging: Path, root: Path, split: str, manifest_path: Path, marker_path: Path) -> None:
    # The marker goes first and comes back last: between the two, readers see "not complete".
    marker_path.unlink(missing_ok=True)
    images_dir = root / split
    if images_dir.exists():
        os.replace(images_dir, staging / "previous")  # deleted with the staging folder
    os.replace(staging / split, images_dir)
    os.replace(staging / manifest_path.name, manifest_path)
    os.replace(staging / marker_path.name, marker_path)


def _draw_split(staging: Path, split: str, num_images: int, image_size: int, seed: int) -> None:
    images_dir = staging / split / "images"
    images_dir.mkdir(parents=True)
    records = []
    for index in range(num_images):
        pixels, boxes, labels = draw_image(image_rng(seed, split, index), image_size)
        path = images_dir / f"{index:05d}.jpg"
        # 4:4:4 chroma keeps the colour of 3-pixel pollen loads, the pollenbee's only cue.
        Image.fromarray(pixels).save(path, quality=JPEG_QUALITY, subsampling=0)
        records.append(
            ImageRecord(path, image_size, image_size, boxes, labels, source=f"{split}/images/{path.name}")
        )
    write_manifest(
        LabelSet(records, list(CLASS_NAMES)),
        staging / f"{split}.manifest",
        label_attribute=LABEL_ATTRIBUTE,
        s3_prefix=SYNTHETIC_S3_PREFIX,
        image_root=staging,
    )


# ---- bees ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Look:
    """Body plan of one class. Lengths are in units of the body length L, u runs from the tail
    (-L/2) to the head (+L/2) and v across the body."""

    length: float  # body length relative to a worker's
    head: Ellipse
    thorax: Ellipse
    abdomen: Ellipse
    stripes: float  # dark bands along the abdomen
    stripe_contrast: float
    light: RGB
    dark: RGB
    thorax_colour: RGB
    head_colour: RGB
    wing_length: float
    eyes: Ellipse | None = None  # drawn on both sides (v and -v)
    pollen: Ellipse | None = None  # drawn on both sides (v and -v)


_WORKER = _Look(
    length=1.0,
    head=(0.41, 0.0, 0.09, 0.11),
    thorax=(0.20, 0.0, 0.13, 0.15),
    abdomen=(-0.19, 0.0, 0.31, 0.18),
    stripes=3.0,
    stripe_contrast=0.85,
    light=(205, 150, 60),
    dark=(55, 35, 20),
    thorax_colour=(120, 82, 45),
    head_colour=(45, 32, 22),
    wing_length=0.42,
)
_LOOKS: tuple[_Look, ...] = (
    _WORKER,
    _Look(  # drone: big, round, dark, with eyes that almost cover the head
        length=1.25,
        head=(0.40, 0.0, 0.10, 0.16),
        thorax=(0.19, 0.0, 0.15, 0.20),
        abdomen=(-0.20, 0.0, 0.30, 0.25),
        stripes=2.5,
        stripe_contrast=0.5,
        light=(120, 85, 45),
        dark=(40, 28, 18),
        thorax_colour=(85, 60, 35),
        head_colour=(35, 25, 20),
        wing_length=0.45,
        eyes=(0.41, 0.085, 0.085, 0.075),
    ),
    # pollenbee: a worker with a pollen load on each hind leg, beside the waist
    dataclasses.replace(_WORKER, pollen=(0.0, 0.235, 0.095, 0.095)),
    _Look(  # queen: long slim orange abdomen with faint stripes, short wings
        length=1.5,
        head=(0.43, 0.0, 0.07, 0.09),
        thorax=(0.25, 0.0, 0.12, 0.13),
        abdomen=(-0.14, 0.0, 0.36, 0.13),
        stripes=1.0,
        stripe_contrast=0.3,
        light=(230, 120, 35),
        dark=(150, 70, 25),
        thorax_colour=(125, 75, 40),
        head_colour=(60, 38, 25),
        wing_length=0.32,
    ),
)
_POLLEN_COLOURS: tuple[RGB, ...] = ((245, 170, 20), (250, 205, 40), (240, 130, 25), (235, 215, 70))


def _bee_count(rng: np.random.Generator) -> tuple[int, float]:
    """How many bees, and the camera's size factor for this frame."""
    roll = rng.random()
    if roll < 0.08:
        return 0, 1.0
    if roll < 0.23:
        return int(rng.integers(30, 61)), rng.uniform(0.75, 0.95)
    if roll < 0.28:
        return int(rng.integers(1, 3)), rng.uniform(0.85, 1.2)
    return int(rng.integers(3, 21)), rng.uniform(0.85, 1.2)


def _draw_bees(canvas: np.ndarray, rng: np.random.Generator, scale: float) -> tuple[np.ndarray, np.ndarray]:
    count, camera = _bee_count(rng)
    size = canvas.shape[0]
    boxes: list[np.ndarray] = []
    labels: list[int] = []
    for label in rng.choice(len(CLASS_NAMES), size=count, p=CLASS_PROBS):
        look = _LOOKS[label]
        length = float(np.clip(rng.uniform(19.0, 29.0) * camera * look.length, 14.0, 44.0)) * scale
        for _ in range(PLACEMENT_TRIES):
            centre = rng.uniform(-0.2 * length, size + 0.2 * length, size=2)
            angle = rng.uniform(0.0, 2.0 * np.pi)
            full = _body_box(look, centre, angle, length)
            box = np.clip(full, 0.0, size)
            visible = _area(box) / _area(full)
            if visible >= MIN_VISIBLE_FRACTION and (not boxes or _iou(box, np.stack(boxes)).max() <= MAX_PAIR_IOU):
                _paint_bee(canvas, rng, look, centre, angle, length)
                boxes.append(box)
                labels.append(int(label))
                break
    if not boxes:
        return np.zeros((0, 4), np.float32), np.zeros((0,), np.int64)
    return np.stack(boxes).astype(np.float32), np.asarray(labels, np.int64)


def _body_parts(look: _Look) -> list[Ellipse]:
    parts = [look.head, look.thorax, look.abdomen]
    for side_part in (look.eyes, look.pollen):
        if side_part is not None:
            u, v, a, b = side_part
            parts += [(u, v, a, b), (u, -v, a, b)]
    return parts


def _body_box(look: _Look, centre: np.ndarray, angle: float, length: float) -> np.ndarray:
    """Tight xyxy box of the union of the body ellipses (each axis-aligned with the body)."""
    cos, sin = np.cos(angle), np.sin(angle)
    x1 = y1 = np.inf
    x2 = y2 = -np.inf
    for u, v, a, b in _body_parts(look):
        cx = centre[0] + length * (u * cos - v * sin)
        cy = centre[1] + length * (u * sin + v * cos)
        hx = length * np.hypot(a * cos, b * sin)
        hy = length * np.hypot(a * sin, b * cos)
        x1, y1, x2, y2 = min(x1, cx - hx), min(y1, cy - hy), max(x2, cx + hx), max(y2, cy + hy)
    return np.array([x1, y1, x2, y2])


def _paint_bee(
    canvas: np.ndarray, rng: np.random.Generator, look: _Look, centre: np.ndarray, angle: float, length: float
) -> None:
    """Paint one bee: every part is an anti-aliased ellipse layer, composited in one pass."""
    patch = _patch(canvas.shape[0], centre, 0.62 * length + 2.0)
    if patch is None:
        return
    rows, cols, dx, dy = patch
    cos, sin = np.cos(angle), np.sin(angle)
    # Body coordinates in units of L: u along the body (towards the head), v across it.
    u = (dx * np.float32(cos) + dy * np.float32(sin)) / np.float32(length)
    v = (dy * np.float32(cos) - dx * np.float32(sin)) / np.float32(length)
    px = 1.0 / length  # one pixel in body units: the anti-aliasing width
    tint = rng.uniform(0.85, 1.15)

    # Rows: centre u, centre v, half-length, half-width, tilt, edge softness, opacity, colour
    # (None: painted per pixel below). Bottom to top: shadow (light from the top left), six legs,
    # the body, and the wings lying over the abdomen.
    layers: list[tuple[float, float, float, float, float, float, float, RGB | None]] = [
        (-0.05 + 0.06 * (cos + sin), 0.06 * (cos - sin), 0.5, look.abdomen[3] + 0.07, 0.0, 0.12, 0.3, (20, 15, 10)),
    ]
    for root_u, reach_u in ((0.25, 0.11), (0.17, 0.0), (0.09, -0.14)):
        for side in (1, -1):
            leg_u, leg_v = reach_u + rng.uniform(-0.04, 0.04), side * 0.14
            tilt = np.arctan2(leg_v, leg_u)
            mid_u, mid_v = root_u + leg_u / 2, side * 0.08 + leg_v / 2
            layers.append((mid_u, mid_v, np.hypot(leg_u, leg_v) / 2, 0.014, tilt, px, 0.7, (30, 22, 16)))
    body = len(layers)
    layers += [
        (*look.abdomen, 0.0, px, 1.0, None),
        (*look.thorax, 0.0, px, 1.0, None),
        (*look.head, 0.0, px, 1.0, tuple(tint * c for c in look.head_colour)),
    ]
    if look.eyes is not None:
        eu, ev, ea, eb = look.eyes
        layers += [(eu, side * ev, ea, eb, 0.0, px, 1.0, (22, 18, 18)) for side in (1, -1)]
    if look.pollen is not None:
        colour = _POLLEN_COLOURS[rng.integers(len(_POLLEN_COLOURS))]
        pu, pv, pa, pb = look.pollen
        layers += [(pu, side * pv, pa, pb, 0.0, px, 1.0, colour) for side in (1, -1)]
    spread, half = rng.uniform(0.15, 0.45), look.wing_length / 2
    for side in (1, -1):
        wu, wv = 0.17 - half * np.cos(spread), side * (0.04 + half * np.sin(spread))
        layers.append((wu, wv, half, 0.085, np.pi - side * spread, px, 0.3, (215, 222, 228)))

    params = np.array([row[:7] for row in layers], dtype=np.float32)
    alpha = _coverage(_ellipses_sd(u, v, params[:, :5]), params[:, 5, None, None]) * params[:, 6, None, None]
    colours = np.empty(alpha.shape + (3,), dtype=np.float32)
    for k, row in enumerate(layers):
        if row[7] is not None:
            colours[k] = row[7]
    colours[body] = _abdomen_colour(u, look, rng) * tint
    hair = 1.0 + 0.15 * rng.standard_normal(size=u.shape + (1,), dtype=np.float32)
    colours[body + 1] = _rgb(look.thorax_colour) * (tint * hair)
    _composite(canvas[rows, cols], alpha, colours)


def _abdomen_colour(u: np.ndarray, look: _Look, rng: np.random.Generator) -> np.ndarray:
    """Per-pixel abdomen colour: light and dark bands across the body, a dark tip, some fuzz."""
    cu, _, a, _ = look.abdomen
    t = np.clip((u - (cu - a)) / (2 * a), 0.0, 1.0)  # 0 at the tail, 1 at the waist
    band = np.clip(1.5 * np.cos(2 * np.pi * (look.stripes * t + rng.uniform(-0.15, 0.15))) + 0.5, 0.0, 1.0)
    band = np.maximum(band, t < 0.12)
    mix = (look.stripe_contrast * band)[..., None]
    fuzz = 1.0 + 0.08 * rng.standard_normal(size=mix.shape, dtype=np.float32)
    return (_rgb(look.light) * (1 - mix) + _rgb(look.dark) * mix) * fuzz


def _ellipses_sd(u: np.ndarray, v: np.ndarray, ellipses: np.ndarray) -> np.ndarray:
    """Approximate signed distances (K, H, W) to K ellipses (negative inside), in u/v units.

    ``ellipses`` rows are (centre u, centre v, half-length, half-width, tilt in radians)."""
    cu, cv, a, b, tilt = (ellipses[:, i, None, None] for i in range(5))
    du, dv = u - cu, v - cv
    cos, sin = np.cos(tilt), np.sin(tilt)
    p, q = (du * cos + dv * sin) / a, (dv * cos - du * sin) / b
    f = p * p + q * q - 1.0
    grad = 2.0 * np.sqrt((p / a) ** 2 + (q / b) ** 2) + 1e-6
    return f / grad


def _ellipse_sd(u: np.ndarray, v: np.ndarray, ellipse: Ellipse) -> np.ndarray:
    """Signed distance to one axis-aligned ellipse (see ``_ellipses_sd``)."""
    return _ellipses_sd(u, v, np.array([[*ellipse, 0.0]], dtype=np.float32))[0]


def _composite(region: np.ndarray, alpha: np.ndarray, colours: np.ndarray) -> None:
    """Paint K layers (alpha (K, H, W), colours (K, H, W, 3)) over ``region`` in order, in place.

    Layer k shows through the layers above it: weight_k = alpha_k * prod_{j > k} (1 - alpha_j)."""
    clear = 1.0 - alpha
    above = np.cumprod(clear[::-1], axis=0)[::-1]  # above[k] = prod_{j >= k} (1 - alpha_j)
    weights = alpha * np.concatenate([above[1:], np.ones_like(above[:1])])
    region *= above[0][..., None]
    region += np.einsum("khw,khwc->hwc", weights, colours)


def _coverage(signed_distance: np.ndarray, softness: float | np.ndarray) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] from a signed distance; ``softness`` is the edge width."""
    return np.clip(0.5 - signed_distance / softness, 0.0, 1.0).astype(np.float32)


def _rgb(colour: RGB) -> np.ndarray:
    return np.asarray(colour, dtype=np.float32)


def _blend(region: np.ndarray, colour: RGB | np.ndarray, alpha: np.ndarray) -> None:
    """Paint ``colour`` (RGB or per-pixel (H, W, 3)) over ``region`` in place with coverage ``alpha``."""
    alpha = alpha[..., None]
    region += alpha * (_rgb(colour) - region)


# ---- backgrounds, distractors, camera --------------------------------------------------------------
def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [0, 1] (bicubic upsampling of a small random grid)."""
    grid = Image.fromarray(rng.random((cells, cells), dtype=np.float32), mode="F")
    return np.asarray(grid.resize((size, size), Image.BICUBIC)).clip(0.0, 1.0)


def _patch(size: int, centre: np.ndarray, reach: float) -> tuple[slice, slice, np.ndarray, np.ndarray] | None:
    """The square around ``centre`` clipped to the image: row/column slices and the pixel-centre
    offsets from ``centre`` (dx as a row, dy as a column, for broadcasting)."""
    x0, y0 = (max(int(c - reach), 0) for c in centre)
    x1, y1 = (min(int(c + reach) + 1, size) for c in centre)
    if x1 <= x0 or y1 <= y0:
        return None
    dx = np.arange(x0, x1, dtype=np.float32)[None, :] + 0.5 - np.float32(centre[0])
    dy = np.arange(y0, y1, dtype=np.float32)[:, None] + 0.5 - np.float32(centre[1])
    return slice(y0, y1), slice(x0, x1), dx, dy


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A textured (S, S, 3) float32 frame: wood, honeycomb, a painted board or greenery."""
    xs = np.arange(size, dtype=np.float32)[None, :]
    ys = np.arange(size, dtype=np.float32)[:, None]
    kind = rng.choice(["wood", "comb", "board", "outdoor"], p=[0.3, 0.25, 0.3, 0.15])
    if kind == "wood":
        theta = rng.uniform(0, np.pi)
        along = xs * np.float32(np.cos(theta)) + ys * np.float32(np.sin(theta))
        warp = _smooth_noise(rng, size, 5) * np.float32(size / 5)
        grain = np.sin((along + warp) * np.float32(2 * np.pi / rng.uniform(5, 14) * 256 / size))
        plank = np.mod(along, rng.uniform(60, 140) * size / 256) < 2 * size / 256
        base = rng.choice([(170, 125, 80), (140, 100, 60), (190, 160, 115), (110, 85, 60)])
        shade = 0.9 + 0.1 * grain - 0.35 * plank
    elif kind == "comb":
        # Three plane waves 120 degrees apart sum to a hexagonal lattice: cells high, wax walls low.
        spacing = np.float32(2 * np.pi / (rng.uniform(7, 14) * size / 256))
        turn = rng.uniform(0, np.pi)
        directions = turn + np.arange(3) * 2 * np.pi / 3
        field = sum(np.cos(spacing * (xs * np.float32(np.cos(t)) + ys * np.float32(np.sin(t)))) for t in directions)
        inside = np.clip((field / 3 + 0.05) * 4, 0, 1)
        base = rng.choice([(215, 170, 90), (180, 130, 55), (120, 80, 35)])
        shade = 1.05 - 0.45 * inside * (0.6 + 0.6 * _smooth_noise(rng, size, 6))
    elif kind == "board":
        base = rng.choice([(225, 225, 220), (40, 80, 170), (200, 120, 50), (90, 140, 80), (150, 150, 150)])
        shade = 0.9 + 0.2 * _smooth_noise(rng, size, 3)
    else:
        base = rng.choice([(80, 120, 50), (110, 100, 60), (60, 90, 45)])
        shade = 0.6 + 0.8 * _smooth_noise(rng, size, 10)
    shade = shade + (rng.random((size, size), np.float32) - 0.5) * np.float32(0.1)  # fine texture
    canvas = shade[..., None] * (base * rng.uniform(0.85, 1.1, size=3)).astype(np.float32)
    for _ in range(rng.integers(0, 6)):  # soft stains, dirt, reflections
        axes = rng.uniform(8, 50, 2) * size / 256
        patch = _patch(size, rng.uniform(0, size, 2), axes.max() * 1.3)
        if patch is not None:
            rows, cols, dx, dy = patch
            blob = _coverage(_ellipse_sd(dx / np.float32(axes[0]), dy / np.float32(axes[1]), (0, 0, 1, 1)), 0.6)
            _blend(canvas[rows, cols], rng.uniform(20, 235, 3), rng.uniform(0.15, 0.5) * blob)
    return canvas


def _draw_distractor(canvas: np.ndarray, rng: np.random.Generator, scale: float) -> None:
    """Something bee-coloured or bee-shaped that is not a bee (and is not labelled)."""
    kind = rng.choice(["striped_bar", "stick", "dots", "flower", "dark_blob"], p=[0.25, 0.15, 0.2, 0.2, 0.2])
    patch = _patch(canvas.shape[0], rng.uniform(0, canvas.shape[0], 2), 24 * scale + 2)
    if patch is None:
        return
    rows, cols, dx, dy = patch
    region = canvas[rows, cols]
    angle = rng.uniform(0, np.pi)
    u = dx * np.float32(np.cos(angle)) + dy * np.float32(np.sin(angle))
    v = dy * np.float32(np.cos(angle)) - dx * np.float32(np.sin(angle))
    if kind in ("striped_bar", "stick"):
        half_length, half_width = rng.uniform(6, 20) * scale, rng.uniform(1.5, 4) * scale
        rect = _coverage(np.maximum(np.abs(u) - half_length, np.abs(v) - half_width), 1.0)
        if kind == "striped_bar":  # hard negative: bee colours, but straight, square-ended, headless
            band = (np.cos(u * np.float32(2 * np.pi / (rng.uniform(3, 6) * scale))) > 0)[..., None]
            colour = np.where(band, _rgb((55, 35, 20)), _rgb((205, 150, 60)))
        else:
            colour = rng.uniform(40, 200, 3)
        _blend(region, colour, rect)
    elif kind == "dots":  # pollen look-alikes: loose yellow/orange specks
        for _ in range(rng.integers(1, 7)):
            offset, radius = rng.uniform(-15, 15, 2) * scale, rng.uniform(1.2, 3.5) * scale
            dot = _coverage(np.hypot(dx - offset[0], dy - offset[1]) - radius, 1.0)
            _blend(region, _POLLEN_COLOURS[rng.integers(len(_POLLEN_COLOURS))], dot)
    elif kind == "flower":
        petal_radius, ring = rng.uniform(2.0, 4.0) * scale, rng.uniform(3.0, 5.5) * scale
        petal_colour = rng.choice([(250, 220, 60), (245, 245, 235), (240, 150, 40), (200, 120, 200)])
        for k in range(5):
            a = angle + 2 * np.pi * k / 5
            petal = _coverage(np.hypot(dx - ring * np.cos(a), dy - ring * np.sin(a)) - petal_radius, 1.0)
            _blend(region, petal_colour, petal)
        _blend(region, (200, 120, 20), _coverage(np.hypot(dx, dy) - 0.6 * ring, 1.0))
    else:  # leaves, shadows: dark elongated blobs
        half_length, half_width = rng.uniform(6, 22) * scale, rng.uniform(2, 6) * scale
        blob = _coverage(_ellipse_sd(u / half_length, v / half_width, (0, 0, 1, 1)) * half_width, 1.5)
        colour = rng.choice([(30, 50, 20), (45, 35, 25), (15, 15, 15), (60, 80, 30)])
        _blend(region, colour, rng.uniform(0.5, 0.9) * blob)


def _finish(canvas: np.ndarray, rng: np.random.Generator, scale: float) -> np.ndarray:
    """Camera effects over the whole frame: uneven light, focus blur, sensor noise; to uint8."""
    size = canvas.shape[0]
    ramp = np.linspace(-0.5, 0.5, size, dtype=np.float32)
    direction, strength = rng.uniform(0, 2 * np.pi), rng.uniform(-0.3, 0.3)
    along = ramp[None, :] * np.float32(np.cos(direction)) + ramp[:, None] * np.float32(np.sin(direction))
    light = 1.0 + np.float32(strength) * along
    canvas *= (light * np.float32(rng.uniform(0.8, 1.15)))[..., None]
    if rng.random() < 0.3:
        blurred = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8)).filter(
            ImageFilter.GaussianBlur(rng.uniform(0.4, 1.0) * scale)
        )
        canvas = np.asarray(blurred, dtype=np.float32)
    # Uniform integer noise: looks like sensor noise at this size and costs a fraction of normal draws.
    amplitude = int(rng.integers(2, 11))
    canvas = canvas + rng.integers(-amplitude, amplitude + 1, size=canvas.shape, dtype=np.int16)
    return np.clip(canvas, 0, 255).astype(np.uint8)


# ---- box arithmetic ----------------------------------------------------------------------------------
def _area(box: np.ndarray) -> float:
    return float(max(box[2] - box[0], 0.0) * max(box[3] - box[1], 0.0))


def _iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    lt = np.maximum(box[:2], others[:, :2])
    rb = np.minimum(box[2:], others[:, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=1)
    areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    return inter / (_area(box) + areas - inter)
