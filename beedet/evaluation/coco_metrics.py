"""COCO box metrics with pycocotools semantics, computed from arrays: the adapters between beedet's
inputs (COCO dicts, or records and per-image predictions) and ``beedet.evaluation.coco_engine``,
and the reading of the engine's arrays into a :class:`~beedet.evaluation.results.CocoMetrics`.

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
  ``AR<max_detections>`` (:func:`beedet.evaluation.results.stat_keys`). pycocotools' own
  ``summarize`` hard-codes 100 for ``stats[0]`` and reports -1 there for any other maxDets; here
  mAP is read at ``max_detections``.
* ``area_bins`` adds area ranges after COCO's all/small/medium/large (whose 32 px / 96 px edges
  suit COCO objects, not bees): AP, AP50 and recall at IoU 0.5 per bin
  (:class:`~beedet.evaluation.results.SizeBin`; edges from ``beedet.evaluation.size_bins``). Each
  area range is evaluated on its own in COCO, so the standard numbers do not change.

Malformed COCO input raises ``beedet.evaluation.coco_json.CocoFormatError`` naming the entry.

Conventions shared with ``beedet.data.coco.to_coco_dict``:

* COCO image id = record index + 1; COCO category id = class id + 1 (class id 0 is the first real
  class, e.g. "bee", not background).
* COCO boxes are ``[x, y, w, h]`` in pixels; beedet boxes are xyxy in pixels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
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
from beedet.evaluation.coco_json import CocoFormatError, check_detections, check_ground_truth, check_ground_truth_header
from beedet.evaluation.results import DEFAULT_MAX_DETECTIONS, CocoMetrics, PRCurve, SizeBin, stat_keys
from beedet.evaluation.size_bins import size_bin_ranges

if TYPE_CHECKING:
    from beedet.data.records import ImageRecord

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
    ``CocoMetrics.size_bins`` (see ``beedet.evaluation.size_bins``); None or empty: none.
    ``max_detections`` (> 10): the best-scoring detections per image and class that count,
    pycocotools' ``maxDets = [1, 10, max_detections]``; the key ``AR100`` becomes
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
    check_ground_truth_header(ground_truth, where)
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


def _to_numpy(values: Any) -> np.ndarray:
    if hasattr(values, "detach"):  # torch.Tensor, possibly on an accelerator
        return values.detach().cpu().numpy()
    return np.asarray(values)


