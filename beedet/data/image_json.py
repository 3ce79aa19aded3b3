"""The "image format" of SageMaker's built-in Object Detection algorithm: image channels
(``train``, ``validation``) beside annotation channels (``train_annotation``,
``validation_annotation``) holding one JSON file per image::

    {"file": "bees/frame_0001.jpg",
     "image_size": [{"width": 1920, "height": 1080, "depth": 3}],
     "annotations": [{"class_id": 0, "left": 111, "top": 134, "width": 61, "height": 128}],
     "categories": [{"class_id": 0, "name": "bee"}]}

Boxes are pixels of the image (left, top, width, height); class ids are 0-based with no background,
as beedet's are. The image is found in the images folder by ``file``, then by its base name, then
by the JSON file's own stem (the built-in algorithm pairs ``x.json`` with ``x.jpg``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from beedet.data.images import find_images
from beedet.data.manifest import boxes_from_annotations, image_size_of
from beedet.data.records import DataError, ImageRecord, LabelSet, Problem
from beedet.data.roots import OutsideRoot, confined

ANNOTATION_SUFFIX = "_annotation"


def default_images_dir(annotations_dir: Path) -> Path:
    """``train`` for ``train_annotation`` (the channels' names), else the annotations folder itself."""
    annotations_dir = Path(annotations_dir)
    if annotations_dir.name.endswith(ANNOTATION_SUFFIX):
        sibling = annotations_dir.with_name(annotations_dir.name[: -len(ANNOTATION_SUFFIX)])
        if sibling.is_dir():
            return sibling
    return annotations_dir


def read_image_json(annotations_dir: Path, images_dir: Path | None = None, *,
                    allow_outside_root: bool = False) -> LabelSet:
    """Read every ``*.json`` under ``annotations_dir`` (recursively, sorted) into records (boxes
    xyxy pixels, 0-based class ids). ``images_dir`` defaults to :func:`default_images_dir`.

    Class names come from the files' ``categories`` (a name that differs between files for one id
    is a problem of the later file, which is skipped); ids without a name are ``class_<i>``.
    A file that is not a usable annotation is a :class:`Problem` naming it, and is skipped; so is
    one whose ``file`` leads outside ``images_dir``, unless ``allow_outside_root``
    (:mod:`beedet.data.roots`).
    """
    annotations_dir = Path(annotations_dir)
    if not annotations_dir.is_dir():
        raise DataError(f"{annotations_dir}: annotation folder not found")
    images_dir = Path(images_dir) if images_dir is not None else default_images_dir(annotations_dir)
    by_stem: dict[str, list[Path]] = {}
    for image in find_images(images_dir) if images_dir.is_dir() else []:
        by_stem.setdefault(image.stem, []).append(image)

    records: list[ImageRecord] = []
    problems: list[Problem] = []
    names: dict[int, str] = {}
    max_label = -1
    for json_path in sorted(annotations_dir.rglob("*.json")):
        where = str(json_path)
        try:
            obj = _load(json_path)
            file_classes = _categories(obj)
            clash = [i for i, name in file_classes.items() if names.get(i, name) != name]
            if clash:
                raise ValueError(f"categories say class {clash[0]} is '{file_classes[clash[0]]}', but earlier "
                                 f"files say '{names[clash[0]]}'")
            width, height = image_size_of(obj)
            annotations = obj.get("annotations", [])
            if not isinstance(annotations, list):
                raise ValueError("'annotations' is not a list")
            boxes, labels = boxes_from_annotations(annotations, "annotations")
            image_path = _find_image(obj.get("file"), json_path, images_dir, by_stem, allow_outside_root)
        except ValueError as exc:
            problems.append(Problem(where, str(exc), "skipped"))
            continue
        names.update(file_classes)
        records.append(ImageRecord(image_path, width, height, boxes=boxes, labels=labels, source=where))
        if len(labels):
            max_label = max(max_label, int(labels.max()))
    count = max([max_label, *names]) + 1 if names or max_label >= 0 else 0
    return LabelSet(records=records, class_names=[names.get(i, f"class_{i}") for i in range(count)],
                    problems=problems)


def _load(path: Path) -> dict[str, Any]:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read ({exc})") from exc
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object with file, image_size and annotations, got {type(obj).__name__}")
    return obj


def _categories(obj: dict[str, Any]) -> dict[int, str]:
    raw = obj.get("categories", [])
    if not isinstance(raw, list):
        raise ValueError("'categories' is not a list")
    names = {}
    for i, item in enumerate(raw):
        try:
            class_id, name = item["class_id"], str(item["name"])
        except (TypeError, KeyError) as exc:
            raise ValueError(f"categories[{i}] needs class_id and name; got {item!r}") from exc
        if isinstance(class_id, bool) or not isinstance(class_id, int) or class_id < 0:
            raise ValueError(f"categories[{i}].class_id is {class_id!r}, not a class id >= 0")
        names[class_id] = name
    return names


def _find_image(file: Any, json_path: Path, images_dir: Path, by_stem: dict[str, list[Path]],
                allow_outside_root: bool) -> Path:
    tried = []
    outside: OutsideRoot | None = None
    if isinstance(file, str) and file:
        try:
            named = confined(images_dir / file, [images_dir], named=file, allow_outside_root=allow_outside_root)
        except OutsideRoot as exc:
            # Not looked at; the base name and the stem below stay inside images_dir.
            named, outside = None, exc
        base = Path(file).name
        by_name = images_dir / base if base not in ("", ".", "..") else None
        for candidate in (named, by_name):
            if candidate is None:
                continue
            if candidate.is_file():
                return candidate
            tried.append(str(candidate))
    same_stem = by_stem.get(json_path.stem, [])
    if len(same_stem) == 1:
        return same_stem[0]
    if len(same_stem) > 1:
        raise ValueError(f"several images named {json_path.stem}.* in {images_dir}: "
                         f"{', '.join(p.name for p in same_stem)}; set 'file' to the one meant")
    if outside is not None:
        raise outside
    tried.append(f"{images_dir / json_path.stem}.<image suffix>")
    raise ValueError(f"no image for this annotation: looked for {', '.join(tried)}")

