"""COCO box metrics with pycocotools semantics, computed from arrays.

``beedet.evaluation.coco_engine`` runs pycocotools' matching and accumulation in numpy, straight
from box arrays (no per-box dicts, no COCO index objects), and fills the same ``precision`` array
(T x R x K x A x M: IoU thresholds x 101 recall thresholds x categories x area ranges x maxDets);
the 12 summary numbers are read from those arrays exactly as pycocotools' ``summarize`` reads them.
``tests/test_metrics.py`` proves that every number here equals pycocotools on random data, also
with extra size bins and a larger maxDets; ``bench/eval_engine.py`` measures the speed.

Two extensions of the COCO protocol, both off by default:

* ``max_detections`` sets ``params.maxDets = [1, 10, max_detections]``: detections beyond the
  ``max_detections`` best-scoring ones of an image and class are ignored. pycocotools' 100 silently drops
  bees on crowded hive frames (hundreds of bees). Every AP and every AR at "maxDets 100" in
  pycocotools is read at ``max_detections`` instead, and the summary key ``AR100`` is named
  ``AR<max_detections>`` (:func:`stat_keys`). pycocotools' own ``summarize`` hard-codes 100 for
  ``stats[0]`` and reports -1 there for any other maxDets; here mAP is read at ``max_detections``.
* ``area_bins`` adds area ranges after COCO's all/small/medium/large (whose 32 px / 96 px edges
  suit COCO objects, not bees): AP, AP50 and recall at IoU 0.5 per bin (:class:`SizeBin`). Each
  area range is evaluated on its own in COCO, so the standard numbers do not change.

Conventions shared with ``beedet.data.coco.to_coco_dict``:

* COCO image id = record index + 1; COCO category id = class id + 1 (class id 0 is the first real
  class, e.g. "bee", not background).
* COCO boxes are ``[x, y, w, h]`` in pixels; beedet boxes are xyxy in pixels.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from beedet.evaluation.coco_engine import (
    IOU_THRESHOLDS,
    RECALL_THRESHOLDS,
    Accumulated,
    DetectionBoxes,
    GroundTruthBoxes,
    evaluate_boxes,
)

if TYPE_CHECKING:
    import torch

    from beedet.data.records import ImageRecord

#: The 12 pycocotools summary numbers, in the order of ``COCOeval.stats``, for the default
#: ``max_detections=100``; :func:`stat_keys` gives them for another one.
STAT_KEYS: tuple[str, ...] = (
    "mAP",
    "AP50",
    "AP75",
    "AP_small",
    "AP_medium",
    "AP_large",
    "AR1",
    "AR10",
    "AR100",
    "AR_small",
    "AR_medium",
    "AR_large",
)

# Indices into eval["precision"] / eval["scores"]: area range "all", the largest maxDets
# (``max_detections``, pycocotools' 100 by default), IoU 0.5.
_AREA_ALL = 0
_MAX_DETS_LAST = -1
_IOU_50 = 0

# pycocotools' area ranges (px^2); 1e5^2 is its "no upper limit".
_COCO_AREA_RANGES: tuple[tuple[str, float, float], ...] = (
    ("all", 0.0, 1e5**2),
    ("small", 0.0, 32.0**2),
    ("medium", 32.0**2, 96.0**2),
    ("large", 96.0**2, 1e5**2),
)
_NO_UPPER_AREA = 1e5**2
DEFAULT_MAX_DETECTIONS = 100

_DETECTION_KEYS = ("image_id", "category_id", "bbox", "score")
_GT_ANNOTATION_KEYS = ("id", "image_id", "category_id", "bbox", "area")


def stat_keys(max_detections: int = DEFAULT_MAX_DETECTIONS) -> tuple[str, ...]:
    """The 12 summary keys for ``maxDets = [1, 10, max_detections]``: :data:`STAT_KEYS` with
    ``AR100`` named ``AR<max_detections>`` (AR1 and AR10 keep their names)."""
    return tuple(f"AR{max_detections}" if key == "AR100" else key for key in STAT_KEYS)


class CocoFormatError(ValueError):
    """COCO ground truth or detections that cannot be evaluated. The message names the source."""


@dataclass(frozen=True)
class PRCurve:
    """Interpolated precision of one class at IoU 0.5 (area all, maxDets ``max_detections``), as pycocotools
    stores it: ``precision[i]`` is the precision at recall >= ``recall[i]`` and ``scores[i]`` the
    detection score where that recall is reached (0 where the recall is never reached).
    All three arrays have shape (101,)."""

    recall: np.ndarray
    precision: np.ndarray
    scores: np.ndarray
    #: Non-crowd ground-truth objects of the class: turns recall into true-positive counts.
    num_gt: int = 0


@dataclass(frozen=True)
class SizeBin:
    """AP and recall of the ground truth whose area lies in ``[min_area, max_area]`` (px^2 of the
    stored images; COCO's ranges include both ends, so a box exactly on an edge counts in both
    bins). Detections outside the range that match nothing are ignored, as in COCO's small/medium/
    large. ``AP`` is AP@[.5:.95], ``AP50`` AP at IoU 0.5, ``recall50`` the recall at IoU 0.5 with
    ``max_detections`` per image; each is averaged over the classes with ground truth in the bin
    (pycocotools' AP/AR), None where the bin has no ground truth. ``num_gt`` counts its
    (non-crowd) boxes over all classes."""

    name: str
    min_area: float
    max_area: float
    AP: float | None
    AP50: float | None
    recall50: float | None
    num_gt: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "min_area": float(self.min_area),
            "max_area": float(self.max_area),
            "AP": _optional_float(self.AP),
            "AP50": _optional_float(self.AP50),
            "recall50": _optional_float(self.recall50),
            "num_gt": int(self.num_gt),
        }


@dataclass
class CocoMetrics:
    """COCO box metrics.

    ``stats`` has the keys of ``stat_keys(max_detections)`` (:data:`STAT_KEYS` for the default
    100) with pycocotools' values, including -1 for an area bucket without ground truth.
    ``per_class_AP`` (AP@[.5:.95]) and ``per_class_AP50`` map class name -> AP, or None for a
    class without (non-crowd) ground truth. ``pr_curves`` holds the IoU-0.5 curve of every class
    that has ground truth. ``size_bins`` holds one :class:`SizeBin` per requested area bin, from
    the smallest boxes up (empty without ``area_bins``). Every number uses ``max_detections``
    detections per image.
    """

    stats: dict[str, float]
    per_class_AP: dict[str, float | None]
    per_class_AP50: dict[str, float | None]
    pr_curves: dict[str, PRCurve] = field(default_factory=dict)
    size_bins: list[SizeBin] = field(default_factory=list)
    max_detections: int = DEFAULT_MAX_DETECTIONS

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary: the stats at top level plus ``per_class_AP`` and ``per_class_AP50``;
        with size bins also ``size_bins`` (a list of :meth:`SizeBin.to_dict`), and with another
        maxDets than pycocotools' 100 also ``max_detections``. Plain COCO evaluation gives the
        same keys as pycocotools' summary."""
        summary: dict[str, Any] = {
            **{key: float(value) for key, value in self.stats.items()},
            "per_class_AP": {name: _optional_float(ap) for name, ap in self.per_class_AP.items()},
            "per_class_AP50": {name: _optional_float(ap) for name, ap in self.per_class_AP50.items()},
        }
        if self.size_bins:
            summary["size_bins"] = [size_bin.to_dict() for size_bin in self.size_bins]
        if self.max_detections != DEFAULT_MAX_DETECTIONS:
            summary["max_detections"] = int(self.max_detections)
        return summary


def size_bin_edges(areas: Sequence[float] | np.ndarray, n_bins: int = 3) -> list[float]:
    """Inner edges (px^2) that split box ``areas`` into ``n_bins`` bins holding equal shares of
    the boxes (terciles for 3): the (k / n_bins)-quantiles for k = 1..n_bins-1.

    Pass the *training* boxes' areas in pixels of the stored images (:func:`record_box_areas`),
    so that the bins describe the bee sizes the model was trained on and stay fixed across
    evaluations. Repeated edges (many boxes of one size) are merged, so fewer than
    ``n_bins - 1`` edges can come back; no areas give no edges (a single bin, "all").
    """
    if n_bins < 1:
        raise ValueError(f"size bins: n_bins must be >= 1, got {n_bins}")
    values = np.asarray(areas, dtype=np.float64).reshape(-1)
    values = values[np.isfinite(values) & (values > 0)]
    if values.size == 0 or n_bins == 1:
        return []
    edges = np.quantile(values, np.arange(1, n_bins) / n_bins)
    return [float(edge) for edge in np.unique(edges) if edge > 0]


def resolve_size_bins(spec: int | Sequence[float] | None, training_areas: Sequence[float] | np.ndarray) -> list[float] | None:
    """The inner area edges (px^2) that a size-bin setting asks for (``evaluation.size_bins``): an
    int n gives :func:`size_bin_edges` of the training boxes' areas with n bins, a list gives
    itself (fixed edges, checked by :func:`size_bin_ranges`), None gives None (no size bins)."""
    if spec is None:
        return None
    if isinstance(spec, bool):
        raise TypeError(f"size bins: expected an int, a list of areas or null, got {spec!r}")
    if isinstance(spec, (int, np.integer)):
        return size_bin_edges(training_areas, int(spec))
    edges = [float(edge) for edge in spec]
    size_bin_ranges(edges)  # raises on edges that are not increasing positive areas
    return edges


def record_box_areas(records: Iterable[ImageRecord]) -> np.ndarray:
    """float64 (N,): the area ``w * h`` in px^2 of every box of ``records`` (xyxy pixels of the
    stored images), the same area their COCO ground truth gets (``beedet.data.coco``)."""
    parts = [np.asarray(r.boxes, dtype=np.float64).reshape(-1, 4) for r in records]
    boxes = np.concatenate(parts) if parts else np.zeros((0, 4))
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def size_bin_ranges(area_bins: Sequence[float]) -> list[tuple[str, float, float]]:
    """``(name, min_area, max_area)`` of the bins that the inner edges ``area_bins`` (px^2,
    increasing) make: [0, e1], [e1, e2], ..., [ek, no limit]. Names give the box side
    sqrt(area) in pixels: ``0-31px``, ``31-52px``, ``over52px``."""
    edges = [float(edge) for edge in area_bins]
    if any(not np.isfinite(edge) or edge <= 0 for edge in edges) or any(b <= a for a, b in zip(edges, edges[1:])):
        raise ValueError(f"area_bins must be increasing positive areas in px^2, got {list(area_bins)}")
    if not edges:
        return []
    # Whole pixels unless two edges round to the same side length.
    for decimals in range(4):
        sides = [f"{np.sqrt(edge):.{decimals}f}" for edge in edges]
        if len(set(sides)) == len(sides):
            break
    else:
        raise ValueError(f"area_bins edges are too close to name apart: {edges}")
    names = [f"{lo}-{hi}px" for lo, hi in zip(["0", *sides], sides)] + [f"over{sides[-1]}px"]
    bounds = [0.0, *edges, _NO_UPPER_AREA]
    return list(zip(names, bounds, bounds[1:]))


def evaluate_coco(
    ground_truth: dict,
    detections: list[dict],
    *,
    class_names: Sequence[str] | None = None,
    area_bins: Sequence[float] | None = None,
    max_detections: int = DEFAULT_MAX_DETECTIONS,
) -> CocoMetrics:
    """Evaluate COCO-format detections against COCO-format ground truth (bbox IoU).

    ``ground_truth`` has ``images``, ``annotations`` (with ``id, image_id, category_id, bbox
    [x, y, w, h], area``, optional ``iscrowd``) and ``categories``. ``detections`` is a list of
    ``{image_id, category_id, bbox [x, y, w, h], score}``; an empty list is fine (AP 0 for every
    class with ground truth). ``class_names[k]`` names the k-th category in ascending id order;
    by default the categories' own names. Neither input is modified. Annotations of a category
    that ``categories`` lacks are ignored, as pycocotools ignores them.

    ``area_bins``: inner edges in px^2 (increasing) of extra size bins reported in
    ``CocoMetrics.size_bins`` (see :func:`size_bin_ranges`, :func:`size_bin_edges`); None or
    empty: none. ``max_detections`` (> 10): the best-scoring detections per image and class that
    count, pycocotools' ``maxDets = [1, 10, max_detections]``; the key ``AR100`` becomes
    ``AR<max_detections>``.
    """
    bins = _check_settings(area_bins, max_detections)
    truth, image_index, category_index, category_names = _coco_ground_truth(ground_truth)
    names = _class_names(category_names, class_names)
    found = _coco_detections(detections, image_index, category_index)
    return _evaluate(truth, found, len(image_index), names, bins, int(max_detections))


def detections_to_coco(predictions: Sequence[dict], image_ids: Sequence[int]) -> list[dict]:
    """Turn per-image predictions into COCO results.

    ``predictions[i]`` belongs to COCO image ``image_ids[i]`` and holds ``boxes`` (N, 4) xyxy in
    pixels, ``scores`` (N,) and ``labels`` (N,) 0-based class ids, as Tensors or arrays. Each box
    becomes ``{image_id, category_id: label + 1, bbox: [x, y, w, h], score}`` of Python floats.
    """
    if len(predictions) != len(image_ids):
        raise ValueError(f"{len(predictions)} predictions but {len(image_ids)} image ids")
    results: list[dict] = []
    for prediction, image_id in zip(predictions, image_ids):
        xywh, scores, labels = _prediction_arrays(prediction, f"prediction for image id {image_id}")
        for bbox, score, label in zip(xywh.tolist(), scores.tolist(), labels.tolist()):
            results.append({"image_id": int(image_id), "category_id": label + 1, "bbox": bbox, "score": score})
    return results


def evaluate_records(
    records: Sequence[ImageRecord],
    predictions: Sequence[dict],
    class_names: Sequence[str],
    *,
    area_bins: Sequence[float] | None = None,
    max_detections: int = DEFAULT_MAX_DETECTIONS,
) -> CocoMetrics:
    """COCO metrics of ``predictions[i]`` (``boxes`` (N, 4) xyxy pixels, ``scores`` (N,),
    ``labels`` (N,) 0-based class ids, Tensors or arrays) against ``records[i]``, in the records'
    own pixel coordinates. ``area_bins`` and ``max_detections``: see :func:`evaluate_coco`.

    The numbers are those of :func:`evaluate_coco` on ``beedet.data.coco.to_coco_dict(records)``
    and :func:`detections_to_coco(predictions) <detections_to_coco>`, computed straight from the
    arrays: COCO image id = record index + 1, category id = class id + 1, ground-truth
    ``[x1, y1, x2 - x1, y2 - y1]`` and area ``w * h`` in float64 from the records' float32 boxes
    (to_coco_dict's JSON rounding to 4 decimals is not applied), no crowd boxes.
    """
    if len(records) != len(predictions):
        raise ValueError(f"{len(records)} records but {len(predictions)} predictions")
    bins = _check_settings(area_bins, max_detections)
    names = _class_names([str(name) for name in class_names], None)
    truth = _record_ground_truth(records, len(names))
    found = _prediction_detections(predictions, len(names))
    return _evaluate(truth, found, len(records), names, bins, int(max_detections))


def check_ground_truth(ground_truth: Any, *, where: str = "ground truth") -> None:
    """Raise :class:`CocoFormatError` naming ``where`` unless ``ground_truth`` is an evaluable
    COCO dict (images, annotations and categories with the keys the evaluation reads)."""
    _check_ground_truth_header(ground_truth, where)
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


def _check_ground_truth_header(ground_truth: Any, where: str) -> None:
    """Everything :func:`check_ground_truth` checks except the (many) annotations one by one."""
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


def _check_settings(area_bins: Sequence[float] | None, max_detections: int) -> list[tuple[str, float, float]]:
    """The extra area ranges of ``area_bins``; raises on settings COCO evaluation cannot use."""
    if int(max_detections) <= 10:
        raise ValueError(f"max_detections must be > 10 (COCO's maxDets are [1, 10, max_detections]), got {max_detections}")
    return size_bin_ranges(area_bins) if area_bins else []


def _class_names(category_names: Sequence[str], class_names: Sequence[str] | None) -> list[str]:
    names = [str(n) for n in (category_names if class_names is None else class_names)]
    if len(names) != len(category_names):
        raise ValueError(f"{len(names)} class names for {len(category_names)} ground-truth categories")
    if len(set(names)) != len(names):
        raise ValueError(f"class names must be unique to report per-class AP, got {names}")
    return names


# ---- inputs as engine arrays ---------------------------------------------------------------------
# Each reader walks the entries once with plain list comprehensions (a KeyError or TypeError is
# the check); only when that fails do the check_* functions walk them again, to name the entry.


def _coco_ground_truth(ground_truth: Any, where: str = "ground truth") -> tuple[GroundTruthBoxes, dict, dict, list[str]]:
    """The annotations as engine arrays, the image id -> image index and category id -> category
    index maps (ascending ids, as pycocotools numbers them) and the category names."""
    _check_ground_truth_header(ground_truth, where)
    categories = sorted(ground_truth["categories"], key=lambda c: c["id"])
    category_index = {category["id"]: k for k, category in enumerate(categories)}
    image_index = {image_id: i for i, image_id in enumerate(sorted({image["id"] for image in ground_truth["images"]}))}
    annotations = ground_truth["annotations"]
    try:
        image = np.array([image_index[a["image_id"]] for a in annotations], dtype=np.int64)
        category = np.array([category_index.get(a["category_id"], -1) for a in annotations], dtype=np.int64)
        xywh = _box_rows([a["bbox"] for a in annotations])
        area = np.array([a["area"] for a in annotations], dtype=np.float64)
        crowd = np.array([bool(a.get("iscrowd", 0)) for a in annotations], dtype=bool)
        id_nonzero = np.array([a["id"] != 0 for a in annotations], dtype=bool)
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        check_ground_truth(ground_truth, where=where)
        raise CocoFormatError(f"{where}: annotations cannot be evaluated ({error!r})") from error
    known = category >= 0  # pycocotools ignores annotations of categories it does not list
    truth = GroundTruthBoxes(image[known], category[known], xywh[known], area[known], crowd[known], id_nonzero[known])
    return truth, image_index, category_index, [str(category["name"]) for category in categories]


def _coco_detections(detections: Any, image_index: dict, category_index: dict, where: str = "detections") -> DetectionBoxes:
    if not isinstance(detections, list):
        raise CocoFormatError(f"{where}: expected a list of detections, got {type(detections).__name__}")
    try:
        image = np.array([image_index[d["image_id"]] for d in detections], dtype=np.int64)
        category = np.array([category_index[d["category_id"]] for d in detections], dtype=np.int64)
        xywh = _box_rows([d["bbox"] for d in detections])
        score = np.array([d["score"] for d in detections], dtype=np.float64)
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        check_detections(detections, image_ids=image_index, category_ids=category_index, where=where)
        raise CocoFormatError(f"{where}: cannot be evaluated ({error!r})") from error
    return DetectionBoxes(image, category, xywh, score)


def _box_rows(boxes: list) -> np.ndarray:
    """float64 (N, 4) from N ``[x, y, w, h]`` lists; ValueError for any other shape."""
    rows = np.array(boxes, dtype=np.float64)
    if not boxes:
        return rows.reshape(0, 4)
    if rows.shape != (len(boxes), 4):
        raise ValueError(f"bbox must be [x, y, w, h]; got rows of shape {rows.shape[1:]}")
    return rows


def _record_ground_truth(records: Sequence[ImageRecord], num_classes: int) -> GroundTruthBoxes:
    """Records' boxes (xyxy float32 pixels, 0-based labels) as engine arrays: image index = record
    index, category index = class id."""
    counts = np.array([len(record.labels) for record in records], dtype=np.int64)
    boxes = np.concatenate([record.boxes for record in records]).astype(np.float64) if records else np.zeros((0, 4))
    labels = np.concatenate([record.labels for record in records]) if records else np.zeros(0, np.int64)
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad.size:
        record = records[int(np.searchsorted(np.cumsum(counts), bad[0], side="right"))]
        raise ValueError(
            f"{record.source or record.image_path}: label {int(labels[bad[0]])} is not a class id 0..{num_classes - 1}"
        )
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
    n = len(labels)
    return GroundTruthBoxes(
        np.repeat(np.arange(len(records)), counts), labels, xywh, xywh[:, 2] * xywh[:, 3], np.zeros(n, bool), np.ones(n, bool)
    )


def _prediction_detections(predictions: Sequence[dict], num_classes: int) -> DetectionBoxes:
    """Per-image predictions as engine arrays: image index = prediction index, category = label."""
    counts = [_num_rows(prediction, i) for i, prediction in enumerate(predictions)]
    boxes = _concatenate([prediction["boxes"] for prediction in predictions], (-1, 4), np.float64)
    scores = _concatenate([prediction["scores"] for prediction in predictions], (-1,), np.float64)
    labels = _concatenate([prediction["labels"] for prediction in predictions], (-1,), np.int64)
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        raise CocoFormatError(
            f"detections: category id(s) {sorted(set((labels[bad] + 1).tolist()))[:10]} are not ground-truth "
            f"category ids {list(range(1, num_classes + 1))} (labels must be 0-based class ids)"
        )
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
    return DetectionBoxes(np.repeat(np.arange(len(predictions)), counts), labels, xywh, scores)


def _concatenate(values: list, shape: tuple[int, ...], dtype: type) -> np.ndarray:
    """Tensors or arrays joined into one ``dtype`` array of ``shape``. Tensors are joined by torch
    first: one conversion instead of one per image."""
    if values and all(hasattr(value, "detach") for value in values):
        import torch  # only here: the values are tensors, so torch is loaded already

        joined = torch.cat([value.detach().cpu().reshape(shape) for value in values])
        return joined.numpy().astype(dtype)
    if not values:
        return np.zeros((0, *shape[1:]), dtype=dtype)
    return np.concatenate([_to_numpy(value).astype(dtype).reshape(shape) for value in values])


def _num_rows(prediction: dict, index: int) -> int:
    """The number of detections of one image; ValueError unless boxes, scores and labels agree."""
    sizes = [math.prod(np.shape(prediction[key])) for key in ("boxes", "scores", "labels")]
    if not sizes[0] // 4 == sizes[1] == sizes[2] or sizes[0] % 4:
        raise ValueError(
            f"prediction for image id {index + 1}: {sizes[0] / 4:g} boxes, {sizes[1]} scores, {sizes[2]} labels"
        )
    return sizes[1]


def _prediction_arrays(prediction: dict, where: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image's ``boxes`` xyxy -> float64 (N, 4) ``[x, y, w, h]``, ``scores`` float64 (N,),
    ``labels`` int64 (N,)."""
    boxes = _to_numpy(prediction["boxes"]).astype(np.float64).reshape(-1, 4)
    scores = _to_numpy(prediction["scores"]).astype(np.float64).reshape(-1)
    labels = _to_numpy(prediction["labels"]).astype(np.int64).reshape(-1)
    if not len(boxes) == len(scores) == len(labels):
        raise ValueError(f"{where}: {len(boxes)} boxes, {len(scores)} scores, {len(labels)} labels")
    return np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1), scores, labels


# ---- evaluation and the numbers read from it -----------------------------------------------------


def _evaluate(
    truth: GroundTruthBoxes,
    found: DetectionBoxes,
    num_images: int,
    names: list[str],
    bins: Sequence[tuple[str, float, float]],
    max_detections: int,
) -> CocoMetrics:
    """Run the engine with COCO's area ranges followed by ``bins`` and ``maxDets = [1, 10,
    max_detections]``, and read the metrics."""
    ranges = [*_COCO_AREA_RANGES, *bins]
    accumulated = evaluate_boxes(
        truth,
        found,
        num_images=num_images,
        num_categories=len(names),
        area_ranges=[(lo, hi) for _, lo, hi in ranges],
        max_dets=[1, 10, max_detections],
    )
    counted = ~truth.crowd
    num_gt = np.bincount(truth.category[counted], minlength=len(names)).tolist()
    areas = truth.area[counted]
    bin_num_gt = [int(np.count_nonzero((lo <= areas) & (areas <= hi))) for _, lo, hi in bins]
    return _metrics_from_eval(accumulated, [name for name, _, _ in ranges], max_detections, names, num_gt, bins, bin_num_gt)


def _summary_stats(accumulated: Accumulated, area_labels: list[str]) -> np.ndarray:
    """The 12 numbers of pycocotools' ``summarize`` (``_summarizeDets``), read from the
    accumulated arrays by area label, with its "maxDets 100" read at the largest maxDets.
    Each is the mean over entries > -1, or -1 where there are none."""
    precision = accumulated.precision  # (T, R, K, A, M)
    recall = accumulated.recall  # (T, K, A, M)

    def summarize(ap: bool, iou: float | None = None, area: str = "all", max_dets_index: int = _MAX_DETS_LAST) -> float:
        values = (precision if ap else recall)[..., area_labels.index(area), max_dets_index]
        if iou is not None:
            values = values[np.flatnonzero(np.isclose(IOU_THRESHOLDS, iou))]
        mean = _mean_valid(values)
        return -1.0 if mean is None else mean

    return np.array(
        [
            summarize(True),
            summarize(True, iou=0.5),
            summarize(True, iou=0.75),
            summarize(True, area="small"),
            summarize(True, area="medium"),
            summarize(True, area="large"),
            summarize(False, max_dets_index=0),
            summarize(False, max_dets_index=1),
            summarize(False, max_dets_index=2),
            summarize(False, area="small"),
            summarize(False, area="medium"),
            summarize(False, area="large"),
        ]
    )


def _metrics_from_eval(
    accumulated: Accumulated,
    area_labels: list[str],
    max_detections: int,
    names: list[str],
    num_gt: list[int],
    bins: Sequence[tuple[str, float, float]],
    bin_num_gt: list[int],
) -> CocoMetrics:
    """Read pycocotools-layout arrays: precision/scores are [T, R, K, A, M], recall [T, K, A, M],
    -1 where a category has no ground truth (in that area range)."""
    precision = accumulated.precision[:, :, :, _AREA_ALL, _MAX_DETS_LAST]  # (T, R, K)
    scores = accumulated.scores[_IOU_50, :, :, _AREA_ALL, _MAX_DETS_LAST]  # (R, K)
    per_class_ap: dict[str, float | None] = {}
    per_class_ap50: dict[str, float | None] = {}
    pr_curves: dict[str, PRCurve] = {}
    for k, name in enumerate(names):
        per_class_ap[name] = _mean_valid(precision[:, :, k])
        per_class_ap50[name] = _mean_valid(precision[_IOU_50, :, k])
        if per_class_ap[name] is not None:
            pr_curves[name] = PRCurve(
                recall=RECALL_THRESHOLDS.copy(),
                precision=precision[_IOU_50, :, k].astype(np.float64),
                scores=scores[:, k].astype(np.float64),
                num_gt=num_gt[k],
            )
    size_bins = []
    for (name, lo, hi), count in zip(bins, bin_num_gt):
        a = area_labels.index(name)
        size_bins.append(
            SizeBin(
                name=name,
                min_area=lo,
                max_area=hi,
                AP=_mean_valid(accumulated.precision[:, :, :, a, _MAX_DETS_LAST]),
                AP50=_mean_valid(accumulated.precision[_IOU_50, :, :, a, _MAX_DETS_LAST]),
                recall50=_mean_valid(accumulated.recall[_IOU_50, :, a, _MAX_DETS_LAST]),
                num_gt=count,
            )
        )
    stats = _summary_stats(accumulated, area_labels)
    return CocoMetrics(
        stats={key: float(value) for key, value in zip(stat_keys(max_detections), stats)},
        per_class_AP=per_class_ap,
        per_class_AP50=per_class_ap50,
        pr_curves=pr_curves,
        size_bins=size_bins,
        max_detections=max_detections,
    )


def _mean_valid(values: np.ndarray) -> float | None:
    """Mean over entries > -1 (pycocotools' marker for "no ground truth"), None if there are none."""
    valid = values[values > -1]
    return float(valid.mean()) if valid.size else None


def _optional_float(value: float | None) -> float | None:
    return None if value is None else float(value)


def _to_numpy(values: Any) -> np.ndarray:
    if hasattr(values, "detach"):  # torch.Tensor, possibly on an accelerator
        return values.detach().cpu().numpy()
    return np.asarray(values)


def pr_curve_plot(curves: Mapping[str, PRCurve], *, size_inches: float = 4.5, dpi: int = 100) -> "torch.Tensor":
    """Precision against recall at IoU 0.5, one line per class with ground truth (AP50 in the
    legend). Returns uint8 (3, H, W) for ``beedet.visualize.save_image`` and TensorBoard.

    Drawn with matplotlib's Agg canvas directly: no pyplot, no global backend switch.
    """
    import torch
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(size_inches, size_inches), dpi=dpi)
    canvas = FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for name, curve in curves.items():
        if curve.num_gt <= 0:
            continue
        precision = np.clip(curve.precision, 0.0, 1.0)  # pycocotools' -1: recall never reached
        axes.plot(curve.recall, precision, linewidth=1.5, label=f"{name} (AP50 {precision.mean():.3f}, {curve.num_gt} gt)")
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1.02)
    axes.set_xlabel("recall")
    axes.set_ylabel("precision")
    axes.set_title("precision-recall at IoU 0.5", fontsize=9)
    if axes.lines:
        axes.legend(loc="lower left", fontsize=7)
    figure.tight_layout()
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())
    return torch.from_numpy(np.ascontiguousarray(rgba[..., :3])).permute(2, 0, 1).contiguous()
