"""Pictures of boxes: ground truth, detections, augmented samples.

Used by the TensorBoard callbacks (``beedet.callbacks``), ``beedet.predict`` and ``evaluate.py``.

Tensor contracts:

* images are (3, H, W), either float in [0, 1] (a dataset sample) or uint8; every function here
  returns uint8 (3, H, W), ready for ``SummaryWriter.add_image`` or ``save_image``.
* boxes are float (N, 4) **xyxy in pixels of the image they are drawn on**; labels are int64 (N,)
  **0-based class ids** (0 is the first real class, e.g. "bee"; there is no background id).

Colours: each class id has a fixed colour (``class_color``), the same in every picture and every
run; ground truth is always green (``GT_COLOR``), which no class uses, so in an overlay a green box
with no coloured box on it is a miss and a coloured box with no green one is a false positive.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image, ImageFont
from torch import Tensor
from torchvision.utils import draw_bounding_boxes, make_grid

RGB = tuple[int, int, int]

GT_COLOR: RGB = (0, 255, 0)
# Distinct, saturated colours that stay visible on hive footage, and no green (ground truth). The
# first class (usually "bee", most boxes) is magenta: it differs from green for red-green colour
# blindness too, unlike red.
CLASS_PALETTE: tuple[RGB, ...] = (
    (255, 0, 255),  # magenta
    (0, 148, 255),  # blue
    (255, 157, 0),  # orange
    (255, 56, 56),  # red
    (0, 255, 255),  # cyan
    (255, 255, 0),  # yellow
    (148, 0, 255),  # violet
    (255, 128, 192),  # pink
    (160, 96, 32),  # brown
    (255, 255, 255),  # white
)
IMAGE_SUFFIXES = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}


def class_color(class_id: int) -> RGB:
    """The fixed colour of a 0-based class id (the palette repeats after 10 classes)."""
    return CLASS_PALETTE[int(class_id) % len(CLASS_PALETTE)]


def to_uint8(image: Tensor) -> Tensor:
    """A (3, H, W) float image in [0, 1] or uint8 image as uint8 on the CPU."""
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"expected an image of shape (3, H, W), got {tuple(image.shape)}")
    image = image.detach().cpu()
    if image.dtype == torch.uint8:
        return image
    if not image.is_floating_point():
        raise ValueError(f"expected a float image in [0, 1] or uint8, got {image.dtype}")
    return (image.clamp(0, 1) * 255).round().to(torch.uint8)


def draw_boxes(
    image: Tensor,
    boxes: Tensor,
    labels: Tensor,
    class_names: Sequence[str],
    scores: Tensor | None = None,
    *,
    color: str | RGB | None = None,
    width: int = 2,
    text: bool = True,
) -> Tensor:
    """Draw boxes on an image; returns uint8 (3, H, W).

    Args:
        image: float (3, H, W) in [0, 1] or uint8.
        boxes: (N, 4) xyxy pixels of ``image``.
        labels: (N,) 0-based class ids; each box takes its class colour unless ``color`` is given.
        class_names: name of each class id.
        scores: optional (N,) confidences, shown after the name ("bee 0.87").
        color: one colour for every box (a PIL colour name, "#rrggbb" or an RGB tuple).
        width: line width in pixels.
        text: write "name [score]" inside each box. A box too small to hold its text gets none,
            so crowded frames of small bees stay readable.
    """
    canvas = to_uint8(image)
    boxes = boxes.detach().cpu().float().reshape(-1, 4)
    labels = labels.detach().cpu().reshape(-1)
    if len(boxes) != len(labels):
        raise ValueError(f"{len(boxes)} boxes but {len(labels)} labels")
    if scores is not None and len(scores) != len(boxes):
        raise ValueError(f"{len(boxes)} boxes but {len(scores)} scores")
    if len(boxes) == 0:
        return canvas

    colors = [color] * len(boxes) if color is not None else [class_color(c) for c in labels.tolist()]
    captions = None
    if text:
        font = ImageFont.load_default()  # the font draw_bounding_boxes uses when given none
        score_list = scores.detach().cpu().tolist() if scores is not None else [None] * len(boxes)
        captions = []
        for box, class_id, score in zip(boxes.tolist(), labels.tolist(), score_list):
            caption = _caption(class_id, class_names, score)
            captions.append(caption if _fits(caption, box, font, width) else None)
    return draw_bounding_boxes(
        canvas, boxes, labels=captions, colors=colors, width=width, fill_labels=True, label_colors="black"
    )


def _caption(class_id: int, class_names: Sequence[str], score: float | None) -> str:
    name = class_names[class_id] if 0 <= class_id < len(class_names) else f"class {class_id}"
    return name if score is None else f"{name} {score:.2f}"


def _fits(caption: str, box: Sequence[float], font: ImageFont.ImageFont | ImageFont.FreeTypeFont, width: int) -> bool:
    left, top, right, bottom = font.getbbox(caption)
    margin = 2 * (width + 1)  # draw_bounding_boxes insets the text by width + 1 from the corner
    return (box[2] - box[0]) >= (right - left) + margin and (box[3] - box[1]) >= (bottom - top) + margin


def overlay_predictions(
    image: Tensor,
    target: dict[str, Tensor] | None,
    prediction: dict[str, Tensor],
    class_names: Sequence[str],
    score_threshold: float = 0.3,
    *,
    max_side: int | None = None,
    width: int = 2,
    text: bool = True,
) -> Tensor:
    """Ground truth (green) under the detections (class colours, "bee 0.87"); returns uint8 (3, H, W).

    Args:
        image: float (3, H, W) in [0, 1] or uint8.
        target: ``{"boxes", "labels"}`` ground truth in ``image`` pixels, or None (no labels known).
        prediction: ``{"boxes", "scores", "labels"}`` in ``image`` pixels, labels 0-based.
        score_threshold: detections scoring below it are not drawn.
        max_side: shrink the picture (and its boxes) so that its longer side is at most this,
            which keeps TensorBoard event files small; None draws at full size.
    """
    canvas = to_uint8(image)
    scale = 1.0
    if max_side is not None and max(canvas.shape[1:]) > max_side:
        scale = max_side / max(canvas.shape[1:])
        canvas = _resize(canvas, round(canvas.shape[1] * scale), round(canvas.shape[2] * scale))

    if target is not None:
        # Wider and drawn first: a detection on top of its ground truth leaves a green rim.
        canvas = draw_boxes(canvas, target["boxes"].cpu() * scale, target["labels"], class_names,
                            color=GT_COLOR, width=width + 1, text=False)
    keep = prediction["scores"].detach().cpu() >= score_threshold
    return draw_boxes(
        canvas,
        prediction["boxes"].detach().cpu()[keep] * scale,
        prediction["labels"].detach().cpu()[keep],
        class_names,
        prediction["scores"].detach().cpu()[keep],
        width=width,
        text=text,
    )


def image_grid(images: Sequence[Tensor], nrow: int | None = None, padding: int = 2) -> Tensor:
    """Images of any sizes in one uint8 (3, H, W) grid with ``nrow`` images per row (None: as
    square a grid as the count allows).

    Every image is scaled to fit a common cell (the largest height by the largest width) with its
    aspect ratio kept, and centred on black (letterboxing), so boxes drawn on it stay true.
    """
    if not images:
        raise ValueError("image_grid needs at least one image")
    tiles = [to_uint8(img) for img in images]
    cell_h = max(t.shape[1] for t in tiles)
    cell_w = max(t.shape[2] for t in tiles)
    if nrow is None:
        nrow = math.ceil(math.sqrt(len(tiles)))
    return make_grid([_letterbox(t, cell_h, cell_w) for t in tiles], nrow=nrow, padding=padding)


def _letterbox(image: Tensor, height: int, width: int) -> Tensor:
    scale = min(height / image.shape[1], width / image.shape[2])
    new_h = max(1, min(height, round(image.shape[1] * scale)))
    new_w = max(1, min(width, round(image.shape[2] * scale)))
    resized = _resize(image, new_h, new_w)
    top, left = (height - new_h) // 2, (width - new_w) // 2
    return F.pad(resized, (left, width - new_w - left, top, height - new_h - top))


def _resize(image: Tensor, height: int, width: int) -> Tensor:
    """Resize a uint8 (3, H, W) image (antialiased, so thin box lines survive shrinking)."""
    if tuple(image.shape[1:]) == (height, width):
        return image
    resized = F.interpolate(image[None].float(), size=(height, width), mode="bilinear",
                            antialias=True, align_corners=False)[0]
    return resized.round().clamp(0, 255).to(torch.uint8)


def save_image(image: Tensor, path: str | Path) -> Path:
    """Write a (3, H, W) float [0, 1] or uint8 image as PNG or JPEG (chosen by the suffix).

    Creates missing parent folders. Returns the path written.
    """
    path = Path(path)
    fmt = IMAGE_SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"{path}: unsupported image suffix {path.suffix!r}; use one of {sorted(IMAGE_SUFFIXES)}")
    array = to_uint8(image).permute(1, 2, 0).contiguous().numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    options = {"quality": 92} if fmt == "JPEG" else {}
    Image.fromarray(array).save(path, format=fmt, **options)
    return path


def write_overlays(detector: Any, dataset: Any, records: Sequence[Any], folder: str | Path, count: int,
                   score_threshold: float) -> list[Path]:
    """Overlays (:func:`overlay_predictions`) of the first ``count`` images of ``dataset`` whose
    ``records`` hold objects, written as ``folder/<index>_<file stem>.jpg`` (the index first:
    images from different folders may share a name): misses and false positives at a glance.
    ``detector`` has ``detect(images)`` and ``class_names`` (``beedet.system.DetectionModule``);
    ``dataset[i]`` gives ``(image, target)`` for ``records[i]``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for i in [i for i, record in enumerate(records) if record.num_boxes][:count]:
        image, target = dataset[i]
        (prediction,) = detector.detect([image])
        drawn = overlay_predictions(image, target, prediction, detector.class_names, score_threshold)
        written.append(save_image(drawn, folder / f"{i:05d}_{Path(records[i].image_path).stem}.jpg"))
    return written

