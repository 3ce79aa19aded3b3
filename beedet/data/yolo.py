"""YOLO txt labels (the Ultralytics / Roboflow export layout), read and written.

Layout: ``SPLIT/images/NAME.jpg`` with ``SPLIT/labels/NAME.txt``, one object per line::

    class cx cy w h                 # box, normalised to [0, 1] by the displayed image size
    class x1 y1 x2 y2 x3 y3 ...     # polygon (segmentation export), normalised; its bounding box is used

A missing label file means an image with no objects (the YOLO convention), as does an empty one.
Class names come from a ``data.yaml`` (``names:`` as a list or an id -> name mapping) in the
split folder or the dataset folder above it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import yaml

from beedet.data.images import ImageError, find_images, read_image_size
from beedet.data.records import DataError, ImageRecord, LabelSet, Problem

class _LineError(ValueError):
    """One label line is unusable; the message is the reason shown to the user."""


def read_yolo(
    images_dir: Path, labels_dir: Path | None = None, *, class_names: Sequence[str] | None = None
) -> LabelSet:
    """Read a YOLO split into records (boxes xyxy pixels of the displayed image, 0-based ids).

    ``labels_dir`` defaults to the sibling ``labels/`` of an ``images/`` folder, else to
    ``images_dir`` itself (labels beside images). Class names: ``class_names`` when given, else a
    ``data.yaml`` beside ``images_dir``'s parent or one level higher, else ``class_<i>`` for every
    id seen. Image sizes are read from the image headers (normalised coordinates need them).
    """
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise DataError(f"{images_dir}: YOLO images folder not found")
    labels_dir = Path(labels_dir) if labels_dir is not None else _default_labels_dir(images_dir)

    records: list[ImageRecord] = []
    problems: list[Problem] = []
    image_paths = find_images(images_dir)
    for image_path in image_paths:
        label_path = labels_dir / image_path.relative_to(images_dir).with_suffix(".txt")
        record = _read_one(image_path, label_path, problems)
        if record is not None:
            records.append(record)
    problems.extend(_orphan_labels(images_dir, labels_dir, image_paths))

    names = list(class_names) if class_names is not None else _names_from_yaml(images_dir)
    if names is None:
        max_label = max((int(r.labels.max()) for r in records if r.num_boxes), default=-1)
        names = [f"class_{i}" for i in range(max_label + 1)]
    return LabelSet(records=records, class_names=names, problems=problems)


def write_yolo(label_set: LabelSet, out_dir: Path, *, image_mode: str = "symlink") -> None:
    """Write ``out_dir/images/`` (``image_mode``: ``"symlink"`` or ``"copy"``), ``out_dir/labels/*.txt``
    (boxes as normalised ``class cx cy w h``; an empty file for an image without objects) and
    ``out_dir/data.yaml`` with the class names. Images sharing a file name get a ``_<n>`` suffix."""
    if image_mode not in ("symlink", "copy"):
        raise ValueError(f"image_mode must be 'symlink' or 'copy', got {image_mode!r}")
    out_dir = Path(out_dir)
    images_out, labels_out = out_dir / "images", out_dir / "labels"
    images_out.mkdir(parents=True, exist_ok=True)
    labels_out.mkdir(parents=True, exist_ok=True)
    used_names: set[str] = set()
    for record in label_set.records:
        name = _unique_name(record.image_path, used_names)
        _place_image(record.image_path, images_out / name, image_mode)
        (labels_out / Path(name).with_suffix(".txt")).write_text(_label_text(record), encoding="utf-8")
    data_yaml = {"nc": len(label_set.class_names), "names": list(label_set.class_names)}
    (out_dir / "data.yaml").write_text(yaml.safe_dump(data_yaml, sort_keys=False), encoding="utf-8")


# --- reading -------------------------------------------------------------------------------------


def _default_labels_dir(images_dir: Path) -> Path:
    return images_dir.parent / "labels" if images_dir.name == "images" else images_dir


def _read_one(image_path: Path, label_path: Path, problems: list[Problem]) -> ImageRecord | None:
    source = str(label_path) if label_path.exists() else str(image_path)
    try:
        width, height = read_image_size(image_path)
    except ImageError as exc:
        problems.append(Problem(source, f"image {image_path}: {exc.reason}", "skipped"))
        return None
    try:
        lines = label_path.read_text(encoding="utf-8").splitlines() if label_path.exists() else []
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(Problem(source, f"cannot read label file ({exc})", "skipped"))
        return None

    boxes, labels = [], []
    for line_no, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            label, box = _parse_line(line)
        except _LineError as exc:
            # One bad line makes the whole image's labels untrustworthy: a bee left unlabelled
            # would be taught as background.
            problems.append(Problem(f"{label_path}:{line_no}", str(exc), "skipped"))
            return None
        labels.append(label)
        boxes.append(box * np.array([width, height, width, height], dtype=np.float64))
    return ImageRecord(
        image_path=image_path,
        width=width,
        height=height,
        boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        labels=np.asarray(labels, dtype=np.int64),
        source=source,
    )


def _parse_line(line: str) -> tuple[int, np.ndarray]:
    """``(class id, normalised xyxy box)`` from a box or polygon line."""
    parts = line.split()
    try:
        class_value = float(parts[0])
        numbers = np.array([float(v) for v in parts[1:]], dtype=np.float64)
    except ValueError as exc:
        raise _LineError(f"not numbers: {line.strip()!r}") from exc
    if not class_value.is_integer() or class_value < 0:
        raise _LineError(f"class id {parts[0]!r} is not an integer >= 0")
    if len(numbers) == 4:
        cx, cy, w, h = numbers
        return int(class_value), np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
    if len(numbers) >= 6 and len(numbers) % 2 == 0:
        xs, ys = numbers[0::2], numbers[1::2]
        return int(class_value), np.array([xs.min(), ys.min(), xs.max(), ys.max()])
    raise _LineError(
        f"{len(numbers)} numbers after the class id; expected 4 (cx cy w h) or an even count >= 6 "
        f"(polygon x1 y1 x2 y2 ...)"
    )


def _orphan_labels(images_dir: Path, labels_dir: Path, image_paths: list[Path]) -> list[Problem]:
    """Label files with no image: usually a renamed or deleted image, worth telling the user."""
    if not labels_dir.is_dir() or labels_dir == images_dir:
        return []
    expected = {p.relative_to(images_dir).with_suffix(".txt") for p in image_paths}
    return [
        Problem(str(label), "label file has no image of the same name", "skipped")
        for label in sorted(labels_dir.rglob("*.txt"))
        if label.relative_to(labels_dir) not in expected
    ]


def _names_from_yaml(images_dir: Path) -> list[str] | None:
    for folder in (images_dir.parent, images_dir.parent.parent):
        data_yaml = folder / "data.yaml"
        if data_yaml.is_file():
            return _read_names(data_yaml)
    return None


def _read_names(data_yaml: Path) -> list[str]:
    try:
        names = (yaml.safe_load(data_yaml.read_text(encoding="utf-8")) or {}).get("names")
    except (yaml.YAMLError, AttributeError) as exc:
        raise DataError(f"{data_yaml}: not a YOLO data.yaml mapping with 'names' ({exc})") from exc
    if isinstance(names, list):
        return [str(n) for n in names]
    if isinstance(names, dict) and all(isinstance(k, int) and k >= 0 for k in names):
        return [str(names.get(i, f"class_{i}")) for i in range(max(names, default=-1) + 1)]
    raise DataError(f"{data_yaml}: 'names' must be a list or a mapping of class id to name, got {names!r}")


# --- writing -------------------------------------------------------------------------------------


def _unique_name(image_path: Path, used: set[str]) -> str:
    name, n = image_path.name, 1
    while name.lower() in used:
        name = f"{image_path.stem}_{n}{image_path.suffix}"
        n += 1
    used.add(name.lower())
    return name


def _place_image(src: Path, dst: Path, image_mode: str) -> None:
    if dst.is_symlink() or dst.exists():
        dst.unlink()
    if image_mode == "symlink":
        dst.symlink_to(os.path.abspath(src))
    else:
        shutil.copy2(src, dst)


def _label_text(record: ImageRecord) -> str:
    lines = []
    for box, label in zip(record.boxes.astype(np.float64), record.labels):
        x1, y1, x2, y2 = box
        cx, cy = (x1 + x2) / 2 / record.width, (y1 + y2) / 2 / record.height
        w, h = (x2 - x1) / record.width, (y2 - y1) / record.height
        lines.append(f"{int(label)} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}\n")
    return "".join(lines)
