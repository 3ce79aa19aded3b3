"""Pictures of boxes: ground truth, detections, augmented samples.

Used by the TensorBoard callbacks (``beedet.training.callbacks``), ``beedet.predict`` and ``evaluate.py``.

Tensor contracts:

* images are (3, H, W), either float in [0, 1] (a dataset sample) or uint8; every function here
  that draws returns uint8 (3, H, W), ready for ``SummaryWriter.add_image`` or ``save_image``
  (an overlay with its legend is taller than the picture: the strip is appended below).
* boxes are float (N, 4) **xyxy in pixels of the image they are drawn on**; labels are int64 (N,)
  **0-based class ids** (0 is the first real class, e.g. "bee"; there is no background id).

Colours: each class id has a fixed colour (``class_color``), the same in every picture and every
run; ground truth is always green (``GT_COLOR``), which no class uses.

Overlays (:func:`overlay_predictions`) tell a detector's outcomes apart. Detections scoring at least
the score threshold are matched to ground truth of their own class at IoU >= 0.5 (``MATCH_IOU``),
greedily from the highest score, each ground-truth box matched at most once
(:func:`match_detections`, COCO's rule at one IoU and one threshold). Then:

* **true positive**: a solid box in the class colour, captioned "bee 0.87";
* **false positive**: a *dashed* box in the class colour, captioned "FP bee 0.62" (a detection of
  the wrong class on an object is a false positive, and that object a miss);
* **miss** (ground truth no detection matched): a *thick solid green* frame just outside the
  object (a detection on it stays visible inside), captioned "miss bee";
* ground truth that was found: a thin green box under its detection.

Captions sit outside their box, so that tiny boxes get one too: a detection's above it, a miss's
below it (on an object both missed and wrongly detected the two do not cover each other), on the
other side when the picture's edge or an earlier caption is in the way. With more than
``max_captions`` boxes only false positives and misses are captioned. Small
pictures are enlarged (``min_side``) so that boxes and captions stay legible, and a legend strip
below the picture names the colours and styles, the threshold and the counts.
:func:`choose_hard_images` picks the images with the most misses and with the most false positives;
``beedet.training.callbacks.PredictionOverlays`` and :func:`write_overlays` (evaluate.py) draw them beside a
fixed set.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor
from torchvision.ops import box_iou
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
#: The IoU at which an overlay counts a detection as finding an object (COCO's AP50).
MATCH_IOU = 0.5
LEGEND_BACKGROUND: RGB = (24, 24, 24)


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


@dataclass(frozen=True)
class Matching:
    """One image's detections against its ground truth, at one score threshold and IoU.

    ``kept`` (D,) bool: the detection scores at least the threshold (only kept ones are judged);
    ``true_positive`` (D,) bool: kept and matched to a ground-truth box of its class;
    ``found`` (G,) bool: the ground-truth box was matched. Arrays follow the input order.
    """

    kept: np.ndarray
    true_positive: np.ndarray
    found: np.ndarray

    @property
    def num_true_positives(self) -> int:
        return int(self.true_positive.sum())

    @property
    def num_false_positives(self) -> int:
        return int((self.kept & ~self.true_positive).sum())

    @property
    def num_misses(self) -> int:
        return int((~self.found).sum())


def match_detections(
    target: dict[str, Tensor] | None,
    prediction: dict[str, Tensor],
    score_threshold: float,
    iou_threshold: float = MATCH_IOU,
) -> Matching:
    """Match the detections scoring >= ``score_threshold`` to ground truth (see the module
    docstring): from the highest score down, each takes the unmatched ground-truth box of its own
    class with the largest IoU, if that IoU is >= ``iou_threshold``. Boxes are xyxy in one image's
    pixels, labels 0-based; ``target`` None (no labels known) has no ground truth."""
    boxes = prediction["boxes"].detach().cpu().float().reshape(-1, 4)
    scores = prediction["scores"].detach().cpu().float().reshape(-1)
    labels = prediction["labels"].detach().cpu().reshape(-1)
    truth_boxes = torch.zeros(0, 4) if target is None else target["boxes"].detach().cpu().float().reshape(-1, 4)
    truth_labels = torch.zeros(0, dtype=torch.int64) if target is None else target["labels"].detach().cpu().reshape(-1)
    kept = (scores >= score_threshold).numpy()
    true_positive = np.zeros(len(boxes), dtype=bool)
    found = np.zeros(len(truth_boxes), dtype=bool)
    if len(truth_boxes) and kept.any():
        iou = box_iou(boxes, truth_boxes).numpy()
        same_class = (labels[:, None] == truth_labels[None, :]).numpy()
        # Stable sort: equal scores keep their input order, so the result is deterministic.
        for d in np.argsort(-scores.numpy(), kind="stable"):
            if not kept[d]:
                continue
            candidates = np.where(same_class[d] & ~found, iou[d], -1.0)
            g = int(np.argmax(candidates))
            if candidates[g] >= iou_threshold:
                true_positive[d], found[g] = True, True
    return Matching(kept, true_positive, found)


def choose_hard_images(
    misses: Sequence[int], false_positives: Sequence[int], count: int, exclude: Collection[int] = ()
) -> dict[str, list[int]]:
    """The hard images among candidates, given each one's misses and false positives (same order).

    Returns ``{"misses": [...], "false_positives": [...]}``: positions of up to ``count`` images
    with the most misses, then of up to ``count`` with the most false positives, each list hardest
    first (ties: the earlier position). An image with none of that error is never chosen, no image
    is in both lists (the misses list picks first), and positions in ``exclude`` (the fixed set
    already shown) are skipped.
    """
    if len(misses) != len(false_positives):
        raise ValueError(f"{len(misses)} miss counts but {len(false_positives)} false-positive counts")
    taken = set(exclude)
    chosen: dict[str, list[int]] = {}
    for kind, errors in (("misses", misses), ("false_positives", false_positives)):
        ranked = sorted((p for p, n in enumerate(errors) if n > 0 and p not in taken), key=lambda p: (-errors[p], p))
        chosen[kind] = ranked[:count]
        taken.update(chosen[kind])
    return chosen


def overlay_predictions(
    image: Tensor,
    target: dict[str, Tensor] | None,
    prediction: dict[str, Tensor],
    class_names: Sequence[str],
    score_threshold: float = 0.3,
    *,
    max_side: int | None = None,
    min_side: int | None = None,
    width: int = 2,
    text: bool = True,
    legend: bool = True,
    title: str | None = None,
    max_captions: int = 60,
    iou_threshold: float = MATCH_IOU,
) -> Tensor:
    """Detections judged against ground truth: true positives, false positives and misses drawn
    apart (module docstring); returns uint8 (3, H', W').

    Args:
        image: float (3, H, W) in [0, 1] or uint8.
        target: ``{"boxes", "labels"}`` ground truth in ``image`` pixels, or None (no labels known:
            nothing to judge against, every kept detection is drawn solid).
        prediction: ``{"boxes", "scores", "labels"}`` in ``image`` pixels, labels 0-based.
        score_threshold: detections scoring below it are neither drawn nor matched.
        max_side: shrink the picture (and its boxes) so that its longer side is at most this,
            which keeps TensorBoard event files small; None: no limit.
        min_side: enlarge a smaller picture (bilinear) so that its longer side is at least this,
            so that 256 px images get legible boxes and captions; None: never enlarge.
        width: line width in pixels of the output picture (misses get 2 more).
        text: caption boxes ("bee 0.87", "FP bee 0.62", "miss bee").
        legend: append a legend strip below the picture (H' then exceeds the scaled height).
        title: a first legend line, e.g. why this image was chosen.
        max_captions: with more boxes than this, only false positives and misses are captioned.
        iou_threshold: the IoU a detection needs to find an object.
    """
    canvas = to_uint8(image)
    height, width_px = canvas.shape[1:]
    scale = 1.0
    if max_side is not None and max(height, width_px) > max_side:
        scale = max_side / max(height, width_px)
    elif min_side is not None and max(height, width_px) < min_side:
        scale = min_side / max(height, width_px)
    if scale != 1.0:
        canvas = _resize(canvas, max(1, round(height * scale)), max(1, round(width_px * scale)))

    labelled = target is not None
    matching = match_detections(target, prediction, score_threshold, iou_threshold)
    boxes = (prediction["boxes"].detach().cpu().float().reshape(-1, 4) * scale).tolist()
    scores = prediction["scores"].detach().cpu().float().reshape(-1).tolist()
    labels = prediction["labels"].detach().cpu().reshape(-1).tolist()
    truth_boxes = [] if target is None else (target["boxes"].detach().cpu().float().reshape(-1, 4) * scale).tolist()
    truth_labels = [] if target is None else target["labels"].detach().cpu().reshape(-1).tolist()

    picture = Image.fromarray(canvas.permute(1, 2, 0).contiguous().numpy())
    draw = ImageDraw.Draw(picture)
    font = _font(_font_size(picture.width))
    captions: list[tuple[list[float], str, RGB, bool]] = []  # box, caption, colour, is an error
    # Found ground truth first and thin: its detection covers it, leaving a green rim.
    for box, found in zip(truth_boxes, matching.found):
        if found:
            draw.rectangle(_pil_box(box), outline=GT_COLOR, width=1)
    for d in np.flatnonzero(matching.true_positive if labelled else matching.kept):
        color = class_color(labels[d])
        draw.rectangle(_pil_box(boxes[d]), outline=color, width=width)
        captions.append((boxes[d], _caption(labels[d], class_names, scores[d]), color, False))
    for box, label, found in zip(truth_boxes, truth_labels, matching.found):
        if not found:
            # Just outside the object: a detection on the same spot stays visible inside it.
            grow = width + 2
            outset = [box[0] - grow, box[1] - grow, box[2] + grow, box[3] + grow]
            draw.rectangle(_pil_box(outset), outline=GT_COLOR, width=width + 2)
            captions.append((outset, "miss " + _caption(label, class_names, None), GT_COLOR, True))
    # Dashed false positives last, over the misses they may sit on.
    for d in np.flatnonzero(matching.kept & ~matching.true_positive) if labelled else []:
        color = class_color(labels[d])
        _dashed_rectangle(draw, boxes[d], color, width)
        captions.append((boxes[d], "FP " + _caption(labels[d], class_names, scores[d]), color, True))
    if text:
        crowded = len(captions) > max_captions
        placed: list[tuple[float, float, float, float]] = []
        for box, caption, color, error in captions:
            if error or not crowded:
                # Misses are captioned below their box, detections above: on an object both
                # missed and wrongly detected, the two captions do not cover each other.
                placed.append(_draw_caption(draw, box, caption, color, font, picture.size, placed,
                                            below=caption.startswith("miss ")))
    out = torch.from_numpy(np.asarray(picture).copy()).permute(2, 0, 1).contiguous()
    if not legend:
        return out
    counts = (f"{matching.num_true_positives} true positive(s), {matching.num_false_positives} false positive(s), "
              f"{matching.num_misses} missed" if labelled else f"{int(matching.kept.sum())} detections (no labels)")
    facts = f"score >= {score_threshold:.2f}, IoU >= {iou_threshold:.2f}: {counts}"
    return torch.cat([out, _legend(out.shape[2], class_names, [t for t in (title, facts) if t], width)], dim=1)


def _pil_box(box: Sequence[float]) -> list[float]:
    """PIL draws from x0 to x1 inclusive and refuses x1 < x0 (a degenerate box)."""
    x0, y0, x1, y1 = box
    return [x0, y0, max(x0, x1), max(y0, y1)]


def _dashed_rectangle(draw: ImageDraw.ImageDraw, box: Sequence[float], color: RGB, width: int) -> None:
    """A rectangle outline of dashes (3 line widths long, gaps of 2), each side starting with a
    dash so that the corners, and thus tiny boxes, always show."""
    x0, y0, x1, y1 = _pil_box(box)
    dash, gap = 3 * max(width, 1) + 1, 2 * max(width, 1) + 1
    for (ax, ay), (bx, by) in (((x0, y0), (x1, y0)), ((x1, y0), (x1, y1)), ((x1, y1), (x0, y1)), ((x0, y1), (x0, y0))):
        length = max(abs(bx - ax), abs(by - ay))  # sides are axis-parallel
        start = 0.0
        while True:
            end = min(start + dash, length)
            f0, f1 = (start / length, end / length) if length else (0.0, 1.0)
            draw.line([(ax + (bx - ax) * f0, ay + (by - ay) * f0), (ax + (bx - ax) * f1, ay + (by - ay) * f1)],
                      fill=color, width=width)
            start = end + gap
            if start >= length:
                break


def _font_size(picture_width: int) -> int:
    """Caption and legend text size: 13 px at 640 px wide, growing with the picture, 12 to 28 px."""
    return int(min(28, max(12, round(picture_width / 48))))


@functools.lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's bundled scalable font at ``size`` px (no system fonts needed); its bitmap font
    where Pillow was built without FreeType."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):
        return ImageFont.load_default()


def _text_color(background: RGB) -> RGB:
    """Black on light colours, white on dark ones (Rec. 601 luma)."""
    return (0, 0, 0) if 0.299 * background[0] + 0.587 * background[1] + 0.114 * background[2] >= 128 else (255, 255, 255)


def _draw_caption(draw: ImageDraw.ImageDraw, box: Sequence[float], caption: str, color: RGB,
                  font: ImageFont.ImageFont | ImageFont.FreeTypeFont, size: tuple[int, int],
                  placed: Sequence[tuple[float, float, float, float]] = (), *,
                  below: bool = False) -> tuple[float, float, float, float]:
    """``caption`` on a ``color`` label at the box's left edge, just outside it: above the box
    (``below``: under it), on the other side when the picture's edge or a caption already
    ``placed`` is in the way; kept inside the picture. Returns the label's (x0, y0, x1, y1)."""
    left, top, right, bottom = font.getbbox(caption)
    text_w, text_h = right - left + 4, bottom - top + 4
    x = min(max(0.0, box[0]), max(0.0, size[0] - text_w))
    above, under = box[1] - text_h, box[3] + 1
    fitting = [y for y in ((under, above) if below else (above, under)) if 0 <= y <= size[1] - text_h]
    y = next((y for y in fitting if not any(_overlap((x, y, x + text_w, y + text_h), other) for other in placed)),
             fitting[0] if fitting else max(0.0, min(above, size[1] - text_h)))
    draw.rectangle([x, y, x + text_w - 1, y + text_h - 1], fill=color)
    draw.text((x + 2 - left, y + 2 - top), caption, fill=_text_color(color), font=font)
    return (x, y, x + text_w, y + text_h)


def _overlap(a: Sequence[float], b: Sequence[float]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _legend(picture_width: int, class_names: Sequence[str], lines: Sequence[str], width: int) -> Tensor:
    """A uint8 (3, h, ``picture_width``) strip: ``lines`` of text, then one swatch per class and
    per outcome style, flowing onto more rows when the picture is narrow."""
    font = _font(_font_size(picture_width))
    left, top, right, bottom = font.getbbox("Ag")
    row_h, pad = bottom - top + 8, 6
    swatch_w = 2 * (bottom - top)
    items: list[tuple[str, str, RGB]] = [("solid", name, class_color(k)) for k, name in enumerate(class_names)]
    items += [("solid", "true positive", (200, 200, 200)), ("dashed", "false positive (FP)", (200, 200, 200)),
              ("miss", "missed object", GT_COLOR), ("thin", "labelled object, found", GT_COLOR)]
    # Lay the swatches out in rows first, to know the strip's height.
    rows: list[list[tuple[float, tuple[str, str, RGB]]]] = [[]]
    x = float(pad)
    for item in items:
        item_w = swatch_w + 6 + font.getlength(item[1]) + 3 * pad
        if rows[-1] and x + item_w > picture_width:
            rows.append([])
            x = float(pad)
        rows[-1].append((x, item))
        x += item_w
    strip = Image.new("RGB", (picture_width, (len(lines) + len(rows)) * row_h + pad), LEGEND_BACKGROUND)
    draw = ImageDraw.Draw(strip)
    for i, line in enumerate(lines):
        draw.text((pad, pad + i * row_h - top), line, fill=(255, 255, 255), font=font)
    for r, row in enumerate(rows):
        y0 = pad + (len(lines) + r) * row_h
        for x, (style, name, color) in row:
            box = [x, y0 + 1, x + swatch_w, y0 + row_h - 8]
            if style == "dashed":
                _dashed_rectangle(draw, box, color, width)
            else:
                draw.rectangle(box, outline=color, width={"thin": 1, "miss": width + 2}.get(style, width))
            draw.text((x + swatch_w + 6, y0 - top), name, fill=(255, 255, 255), font=font)
    return torch.from_numpy(np.asarray(strip).copy()).permute(2, 0, 1).contiguous()


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


@dataclass(frozen=True)
class Assessment:
    """One dataset image's detections judged against its ground truth (:func:`assess_images`):
    ``target`` and ``prediction`` (on the CPU) as :func:`overlay_predictions` takes them."""

    index: int
    target: dict[str, Tensor]
    prediction: dict[str, Tensor]
    matching: Matching


def spread_indices(size: int, count: int | None) -> list[int]:
    """``count`` indices spread evenly over ``range(size)`` (first and last included), all of them
    when ``count`` is None or at least ``size``: a pool that reaches every part of a dataset
    (every video of a split sorted by file) without looking at it all."""
    if count is None or count >= size:
        return list(range(size))
    if count < 1:
        return []
    return sorted({int(round(x)) for x in np.linspace(0, size - 1, count)})


def assess_images(detector: Any, dataset: Any, indices: Sequence[int], score_threshold: float,
                  batch_size: int = 8) -> list[Assessment]:
    """Detect ``dataset[i]`` for each of ``indices`` (``batch_size`` images per ``detect`` call) and
    match the detections to the ground truth (:func:`match_detections`). ``detector`` has
    ``detect(images)`` and ``device`` (``beedet.training.system.DetectionModule``); ``dataset[i]`` gives
    ``(image, target)``. Images are not kept: draw the chosen ones from the dataset again."""
    device = getattr(detector, "device", None)
    assessed: list[Assessment] = []
    for start in range(0, len(indices), batch_size):
        chunk = list(indices[start:start + batch_size])
        samples = [dataset[i] for i in chunk]
        detections = detector.detect([image if device is None else image.to(device) for image, _ in samples])
        for i, (_, target), detection in zip(chunk, samples, detections):
            prediction = {k: v.detach().cpu() for k, v in detection.items()}
            truth = {"boxes": target["boxes"], "labels": target["labels"]}
            assessed.append(Assessment(i, truth, prediction, match_detections(truth, prediction, score_threshold)))
    return assessed


def hard_assessments(assessed: Sequence[Assessment], count: int,
                     exclude: Collection[int] = ()) -> dict[str, list[Assessment]]:
    """:func:`choose_hard_images` over assessed images: ``{"misses": [...], "false_positives": [...]}``,
    hardest first, skipping dataset indices in ``exclude``."""
    excluded = set(exclude)
    positions = [p for p, a in enumerate(assessed) if a.index in excluded]
    chosen = choose_hard_images([a.matching.num_misses for a in assessed],
                                [a.matching.num_false_positives for a in assessed], count, positions)
    return {kind: [assessed[p] for p in found] for kind, found in chosen.items()}


#: Why a hard image was chosen, as file names and TensorBoard tags say it.
HARD_KINDS = {"misses": "most misses", "false_positives": "most false positives"}


def write_overlays(detector: Any, dataset: Any, records: Sequence[Any], folder: str | Path, count: int,
                   score_threshold: float, *, num_hard: int | None = None, pool: int | None = None,
                   min_side: int = 640) -> list[Path]:
    """Overlays (:func:`overlay_predictions`, enlarged to at least ``min_side``) written to
    ``folder`` as JPEGs whose names say why each image was chosen (the dataset index before the
    file stem: images from different folders may share a name):

    * ``most_misses_<rank>_<index>_<stem>.jpg``, ``most_false_positives_<rank>_<index>_<stem>.jpg``:
      up to ``num_hard`` (None: ``count // 2``, at least 1) images with the most misses, and with
      the most false positives, among ``pool`` images spread over the dataset (None: all of them,
      one more detection pass over the split); rank 1 is the hardest
      (:func:`choose_hard_images`);
    * ``first_<index>_<stem>.jpg``: the first ``count`` images whose ``records`` hold objects,
      besides the hard ones (the same ones for every checkpoint with the same errors).

    ``detector`` has ``detect(images)`` and ``class_names`` (``beedet.training.system.DetectionModule``);
    ``dataset[i]`` gives ``(image, target)`` for ``records[i]``. Returns the paths written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with_objects = [i for i, record in enumerate(records) if record.num_boxes]
    pool_indices = spread_indices(len(records), pool)
    assessed = {a.index: a for a in assess_images(detector, dataset, pool_indices, score_threshold)}
    hard = hard_assessments(list(assessed.values()), max(1, count // 2) if num_hard is None else num_hard)
    chosen: list[tuple[str | None, int, Assessment]] = [
        (kind, rank, a) for kind, found in hard.items() for rank, a in enumerate(found, 1)]
    taken = {a.index for _, _, a in chosen}
    first = [i for i in with_objects if i not in taken][:count]
    missing = [i for i in first if i not in assessed]  # outside the pool: detected now
    assessed.update({a.index: a for a in assess_images(detector, dataset, missing, score_threshold)})
    chosen += [(None, 0, assessed[i]) for i in first]
    written = []
    for kind, rank, a in chosen:
        image, _ = dataset[a.index]
        stem = Path(records[a.index].image_path).stem
        name, title = f"first_{a.index:05d}_{stem}.jpg", f"image {a.index} ({stem})"
        if kind is not None:
            name, title = f"most_{kind}_{rank}_{a.index:05d}_{stem}.jpg", f"{title}: #{rank} {HARD_KINDS[kind]}"
        drawn = overlay_predictions(image, a.target, a.prediction, detector.class_names, score_threshold,
                                    min_side=min_side, title=title)
        written.append(save_image(drawn, folder / name))
    return written
