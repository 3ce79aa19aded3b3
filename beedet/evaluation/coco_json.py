"""COCO JSON as evaluation reads it: whether ground truth and detections (the ``cocoeval``
command's two files, or dicts passed to ``beedet.evaluation.coco_metrics.evaluate_coco``) hold the
keys, ids and boxes that evaluation needs, and :class:`CocoFormatError`, which names the file and
the entry when they do not.

Reading and writing COCO *datasets* (records <-> COCO dicts) is ``beedet.data.coco``'s job.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

_DETECTION_KEYS = ("image_id", "category_id", "bbox", "score")
_GT_ANNOTATION_KEYS = ("id", "image_id", "category_id", "bbox", "area")


class CocoFormatError(ValueError):
    """COCO ground truth or detections that cannot be evaluated. The message names the source."""


def check_ground_truth(ground_truth: Any, *, where: str = "ground truth") -> None:
    """Raise :class:`CocoFormatError` naming ``where`` unless ``ground_truth`` is an evaluable
    COCO dict (images, annotations and categories with the keys the evaluation reads)."""
    check_ground_truth_header(ground_truth, where)
    _check_entries(ground_truth["annotations"], _GT_ANNOTATION_KEYS, f"{where}: annotations")
    image_ids = {image["id"] for image in ground_truth["images"]}
    _check_image_ids(ground_truth["annotations"], image_ids, f"{where}: annotations")


def check_detections(
    detections: Any,
    *,
    image_ids: Iterable[int],
    category_ids: Iterable[int],
    where: str = "detections",
) -> None:
    """Raise :class:`CocoFormatError` naming ``where`` unless ``detections`` is a list of COCO
    results whose image and category ids exist in the ground truth.

    pycocotools silently ignores unknown category ids; here they are an error, because they almost
    always mean 0-based labels were written where COCO category ids (label + 1) belong.
    """
    if not isinstance(detections, list):
        raise CocoFormatError(f"{where}: expected a list of detections, got {type(detections).__name__}")
    _check_entries(detections, _DETECTION_KEYS, where)
    _check_image_ids(detections, set(image_ids), where)
    known = set(category_ids)
    unknown = {d["category_id"] for d in detections} - known
    if unknown:
        raise CocoFormatError(
            f"{where}: category id(s) {sorted(unknown)[:10]} are not ground-truth category ids {sorted(known)}"
        )


def check_ground_truth_header(ground_truth: Any, where: str) -> None:
    """Everything :func:`check_ground_truth` checks except the (many) annotations one by one: what
    ``beedet.evaluation.coco_metrics`` checks before it reads the annotations in one pass."""
    if not isinstance(ground_truth, dict):
        raise CocoFormatError(f"{where}: expected a COCO dict, got {type(ground_truth).__name__}")
    missing = [key for key in ("images", "annotations", "categories") if key not in ground_truth]
    if missing:
        raise CocoFormatError(f"{where}: missing top-level key(s) {missing}")
    _check_entries(ground_truth["images"], ("id", "width", "height"), f"{where}: images")
    _check_entries(ground_truth["categories"], ("id", "name"), f"{where}: categories")
    if not isinstance(ground_truth["annotations"], list):
        raise CocoFormatError(f"{where}: annotations: expected a list, got {type(ground_truth['annotations']).__name__}")
    for key in ("id", "name"):  # per-class results are keyed by name, and categories by id
        values = [category[key] for category in ground_truth["categories"]]
        if len(set(values)) != len(values):
            raise CocoFormatError(f"{where}: categories: duplicate {key}s in {values}")


def _check_entries(entries: Any, keys: Sequence[str], where: str) -> None:
    if not isinstance(entries, list):
        raise CocoFormatError(f"{where}: expected a list, got {type(entries).__name__}")
    required = frozenset(keys)
    check_bbox = "bbox" in required
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise CocoFormatError(f"{where}[{index}]: expected an object, got {type(entry).__name__}")
        if not entry.keys() >= required:
            missing = [key for key in keys if key not in entry]
            raise CocoFormatError(f"{where}[{index}]: missing key(s) {missing}")
        if check_bbox and (not isinstance(entry["bbox"], (list, tuple)) or len(entry["bbox"]) != 4):
            raise CocoFormatError(f"{where}[{index}]: bbox must be [x, y, w, h], got {entry['bbox']!r}")


def _check_image_ids(entries: list[dict], image_ids: set[int], where: str) -> None:
    unknown = {entry["image_id"] for entry in entries} - image_ids
    if unknown:
        raise CocoFormatError(
            f"{where}: image id(s) {sorted(unknown)[:10]} ({len(unknown)} in all) are not in the ground-truth images"
        )
