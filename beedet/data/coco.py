"""COCO object-detection JSON, read and written.

COCO boxes are ``[x, y, width, height]`` in pixels and category ids are arbitrary positive
integers. Records use xyxy pixels and contiguous 0-based class ids: categories sorted by their
COCO id become 0, 1, 2, ... (so class 0 is the first real category, not background).

:func:`to_coco_dict` is also how ground truth reaches the COCO metrics: image id = record index
+ 1 and category id = class id + 1.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from beedet.data.records import DataError, ImageRecord, LabelSet, Problem
from beedet.data.roots import confined


def read_coco(path: Path, *, image_root: Path | None = None, allow_outside_root: bool = False) -> LabelSet:
    """Read a COCO detection JSON into records (boxes xyxy pixels, 0-based contiguous class ids).

    ``file_name`` is relative to ``image_root``; by default to the JSON's folder, or its
    ``images/`` subfolder where the file is found there. Crowd annotations (``iscrowd: 1``)
    mark a region of many objects, not one box, so they are dropped with a problem noted.
    An image whose ``file_name`` leads outside ``image_root`` (by default the JSON's folder) is a
    problem and skipped, unless ``allow_outside_root`` (:mod:`beedet.data.roots`).
    """
    path = Path(path)
    data = _load_json(path)
    categories = sorted(data.get("categories") or [], key=lambda c: c["id"])
    class_of_category = {c["id"]: i for i, c in enumerate(categories)}
    class_names = [str(c.get("name", f"class_{i}")) for i, c in enumerate(categories)]
    problems: list[Problem] = []

    annotations_of_image: dict[Any, list[dict[str, Any]]] = {}
    images = [image for image in data.get("images", []) if isinstance(image, dict)]
    problems.extend(Problem(str(path), f"image entry {image!r} is not a JSON object", "skipped")
                    for image in data.get("images", []) if not isinstance(image, dict))
    image_ids = {image.get("id") for image in images}
    for ann in data.get("annotations", []):
        if not isinstance(ann, dict):
            problems.append(Problem(str(path), f"annotation {ann!r} is not a JSON object", "dropped box"))
            continue
        if ann.get("image_id") not in image_ids:
            problems.append(Problem(str(path), f"annotation {ann.get('id')} refers to unknown image id "
                                               f"{ann.get('image_id')!r}", "dropped box"))
            continue
        annotations_of_image.setdefault(ann["image_id"], []).append(ann)

    records = []
    for image in images:
        try:
            record, dropped = _record(path, image, annotations_of_image.get(image.get("id"), []),
                                      class_of_category, image_root, allow_outside_root)
        except ValueError as exc:
            problems.append(Problem(str(path), str(exc), "skipped"))
            continue
        problems.extend(dropped)
        records.append(record)
    return LabelSet(records=records, class_names=class_names, problems=problems)


def to_coco_dict(
    records: Sequence[ImageRecord], class_names: Sequence[str], *, image_root: Path | None = None
) -> dict[str, Any]:
    """A COCO detection dict for ``records``: image id = index + 1, category id = class id + 1.

    Boxes become ``[x, y, w, h]`` pixels with ``area = w * h`` and ``iscrowd = 0``.
    ``file_name`` is relative to ``image_root`` when given, else absolute.
    """
    images, annotations = [], []
    for index, record in enumerate(records):
        image_id = index + 1
        images.append({"id": image_id, "file_name": _file_name(record.image_path, image_root),
                       "width": int(record.width), "height": int(record.height)})
        for box, label in zip(record.boxes, record.labels):
            x1, y1, x2, y2 = (float(v) for v in box)
            w, h = x2 - x1, y2 - y1
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": int(label) + 1,
                                "bbox": [_num(x1), _num(y1), _num(w), _num(h)], "area": _num(w * h),
                                "iscrowd": 0})
    categories = [{"id": i + 1, "name": name, "supercategory": "none"} for i, name in enumerate(class_names)]
    return {"info": {"description": "written by beedet"}, "licenses": [], "images": images,
            "annotations": annotations, "categories": categories}


def write_coco(label_set: LabelSet, path: Path, *, image_root: Path | None = None) -> None:
    """Write ``label_set`` as COCO JSON; ``file_name`` is relative to ``image_root``, by default
    the JSON's folder, so :func:`read_coco` finds the images again wherever the pair is moved."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    coco = to_coco_dict(label_set.records, label_set.class_names,
                        image_root=image_root if image_root is not None else path.parent)
    path.write_text(json.dumps(coco), encoding="utf-8")


def _load_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise DataError(f"{path}: COCO file not found") from exc
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read COCO file ({exc})") from exc
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DataError(f"{path}: not a COCO detection file (no 'images' list)")
    for category in data.get("categories") or []:
        if not isinstance(category, dict) or not isinstance(category.get("id"), int):
            raise DataError(f"{path}: category {category!r} has no integer 'id'")
    return data


def _record(
    path: Path,
    image: dict[str, Any],
    annotations: list[dict[str, Any]],
    class_of_category: dict[int, int],
    image_root: Path | None,
    allow_outside_root: bool,
) -> tuple[ImageRecord, list[Problem]]:
    """One image's record and the boxes dropped from it. ValueError: the image must be skipped."""
    file_name = image.get("file_name")
    if not isinstance(file_name, str) or not file_name:
        raise ValueError(f"image id {image.get('id')!r} has no file_name")
    try:
        width, height = int(image["width"]), int(image["height"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"image {file_name} has no integer width/height") from exc

    boxes, labels, dropped = [], [], []
    for ann in annotations:
        if ann.get("iscrowd", 0):
            dropped.append(Problem(str(path), f"image {file_name}: annotation {ann.get('id')} is a crowd "
                                              f"region (iscrowd=1), not one object", "dropped box"))
            continue
        if ann.get("category_id") not in class_of_category:
            raise ValueError(f"image {file_name}: annotation {ann.get('id')} has category_id "
                             f"{ann.get('category_id')!r}, which is not in 'categories'")
        bbox = ann.get("bbox")
        if not isinstance(bbox, list) or len(bbox) != 4 or not all(isinstance(v, (int, float)) for v in bbox):
            raise ValueError(f"image {file_name}: annotation {ann.get('id')} has bbox {bbox!r}, not [x, y, w, h]")
        x, y, w, h = (float(v) for v in bbox)
        boxes.append((x, y, x + w, y + h))
        labels.append(class_of_category[ann["category_id"]])

    record = ImageRecord(
        image_path=_image_path(path, file_name, image_root, allow_outside_root),
        width=width,
        height=height,
        boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        labels=np.asarray(labels, dtype=np.int64),
        source=str(path),
    )
    return record, dropped


def _image_path(path: Path, file_name: str, image_root: Path | None, allow_outside_root: bool) -> Path:
    """Where ``file_name`` points; OutsideRoot (a ValueError) when that leaves the data root."""
    if image_root is not None:
        return confined(Path(image_root) / file_name, [image_root], named=file_name, allow_outside_root=allow_outside_root)
    # Checked before either candidate is looked at: nothing outside the root is even stat'ed.
    beside = confined(path.parent / file_name, [path.parent], named=file_name, allow_outside_root=allow_outside_root)
    if beside.exists():
        return beside
    in_images = confined(path.parent / "images" / file_name, [path.parent], named=file_name,
                         allow_outside_root=allow_outside_root)
    # When neither exists, report the primary location: the image check says it is missing.
    return in_images if in_images.exists() else beside


def _file_name(image_path: Path, image_root: Path | None) -> str:
    if image_root is None:
        return os.path.abspath(image_path)
    return Path(os.path.relpath(image_path, image_root)).as_posix()


def _num(value: float) -> float:
    # float32 boxes print as 12.300000190734863; four decimals are far below a pixel.
    return round(float(value), 4)
