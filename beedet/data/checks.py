"""Checking records against their images before anything trains on them.

Readers check what a label file says; this module checks it against the image files: that each
image exists and decodes, that its displayed size is the size the labels were drawn on, and that
every box is a real box inside the image with a known class.

What happens to a bad record is chosen for the detector's sake. A box partly outside the image is
clipped and the record kept. Any other bad box skips the whole record rather than just the box:
dropping one box would leave a bee unlabelled, and an unlabelled bee teaches the detector that bees
are background. The good boxes a skipped record held are lost with it, and counted
(``Problem.valid_boxes``, summed in the data report), so a user sees what the skip cost.

Images with more than ``max_pixels`` pixels are refused here, from their headers, by name: nothing
later decodes them (``beedet.data.images.DEFAULT_MAX_PIXELS``).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np

from beedet.data.images import DEFAULT_MAX_PIXELS, ImageError, read_image_size, verify_image
from beedet.data.records import ImageRecord, LabelSet, Problem

# Float rounding in normalised formats (YOLO) overshoots edges by ~1e-4 px; that is not a
# labelling mistake worth a message.
_EDGE_TOLERANCE_PX = 0.01
# Decoding releases the GIL, so threads overlap file reads and decoding even on few cores.
_MAX_WORKERS = 8


def check_records(label_set: LabelSet, *, verify_images: bool = True,
                  max_pixels: int | None = DEFAULT_MAX_PIXELS) -> LabelSet:
    """The records that pass every check, with the same class names and the problems extended.

    ``verify_images`` decodes every image fully (finds truncated and corrupt files); otherwise
    only headers are read (finds missing files and wrong sizes, cheaply). Either way an image of
    more than ``max_pixels`` pixels is refused from its header (None: only Pillow's own limit).
    A skipped record's problem counts the valid boxes lost with it (``Problem.valid_boxes``).
    """
    measure = partial(verify_image if verify_images else read_image_size, max_pixels=max_pixels)
    sizes = _measure_all({r.image_path for r in label_set.records}, measure)

    records: list[ImageRecord] = []
    problems = list(label_set.problems)
    num_classes = len(label_set.class_names)
    for record in label_set.records:
        size = sizes[record.image_path]
        if isinstance(size, ImageError):
            problems.append(Problem(record.source, f"image {record.image_path}: {size.reason}", "skipped",
                                    valid_boxes=_valid_box_count(record, num_classes)))
            continue
        if size != (record.width, record.height):
            problems.append(Problem(
                record.source,
                f"image {record.image_path}: labels are for a {record.width}x{record.height} image but the "
                f"image is {size[0]}x{size[1]} as displayed (EXIF orientation applied)",
                "skipped",
                valid_boxes=_valid_box_count(record, num_classes),
            ))
            continue
        checked, record_problems = _check_boxes(record, num_classes)
        problems.extend(record_problems)
        if checked is not None:
            records.append(checked)
    return LabelSet(records=records, class_names=list(label_set.class_names), problems=problems)


def _measure_all(
    paths: set[Path], measure: Callable[[Path], tuple[int, int]]
) -> dict[Path, tuple[int, int] | ImageError]:
    def one(path: Path) -> tuple[int, int] | ImageError:
        try:
            return measure(path)
        except ImageError as exc:
            return exc

    ordered = sorted(paths)
    if len(ordered) < 2:
        return {path: one(path) for path in ordered}
    with ThreadPoolExecutor(max_workers=min(_MAX_WORKERS, len(ordered))) as pool:
        return dict(zip(ordered, pool.map(one, ordered)))


def _check_boxes(record: ImageRecord, num_classes: int) -> tuple[ImageRecord | None, list[Problem]]:
    """The record with partly-outside boxes clipped, or None when one box makes it unusable."""
    if record.num_boxes == 0:
        return record, []
    boxes = record.boxes.astype(np.float64)
    fatal = _fatal_box_reasons(record, num_classes)
    if fatal:
        shown = "; ".join(fatal[:3]) + (f"; and {len(fatal) - 3} more" if len(fatal) > 3 else "")
        return None, [Problem(record.source, f"image {record.image_path}: {shown}", "skipped",
                              valid_boxes=record.num_boxes - len(fatal))]

    limits = np.array([record.width, record.height, record.width, record.height], dtype=np.float64)
    clipped = np.clip(boxes, 0.0, limits)
    problems = [
        Problem(
            record.source,
            f"image {record.image_path}: box {i} xyxy {_fmt(boxes[i])} reaches outside the "
            f"{record.width}x{record.height} image; clipped to {_fmt(clipped[i])}",
            "clipped box",
        )
        for i in range(record.num_boxes)
        if np.abs(clipped[i] - boxes[i]).max() > _EDGE_TOLERANCE_PX
    ]
    if np.array_equal(clipped, boxes):
        return record, problems
    return record.replace(boxes=clipped.astype(np.float32)), problems


def _fatal_box_reasons(record: ImageRecord, num_classes: int) -> list[str]:
    """Why each unusable box of ``record`` is unusable (empty when every box is fine)."""
    boxes = record.boxes.astype(np.float64)
    return [reason for i in range(record.num_boxes)
            if (reason := _fatal_box_reason(i, boxes[i], int(record.labels[i]), record, num_classes))]


def _valid_box_count(record: ImageRecord, num_classes: int) -> int:
    """The boxes of ``record`` that pass every box check (as drawn: clipping would keep them)."""
    return record.num_boxes - len(_fatal_box_reasons(record, num_classes))


def _fatal_box_reason(i: int, box: np.ndarray, label: int, record: ImageRecord, num_classes: int) -> str:
    """Why box ``i`` makes its record unusable, or "" when it is fine (perhaps after clipping)."""
    x1, y1, x2, y2 = box
    if not np.isfinite(box).all():
        return f"box {i} has non-finite coordinates xyxy {_fmt(box)}"
    if not 0 <= label < num_classes:
        known = f"ids 0..{num_classes - 1}" if num_classes else "none"
        return f"box {i} has class id {label}, not a known class ({num_classes} classes: {known})"
    if x2 <= x1 or y2 <= y1:
        return f"box {i} xyxy {_fmt(box)} has zero or negative area"
    if x2 <= 0 or y2 <= 0 or x1 >= record.width or y1 >= record.height:
        return f"box {i} xyxy {_fmt(box)} lies wholly outside the {record.width}x{record.height} image"
    return ""


def _fmt(box: np.ndarray) -> str:
    return "[" + ", ".join(f"{v:g}" for v in np.round(box, 1)) + "]"
