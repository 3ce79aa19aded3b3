"""Precision, recall and F1 at a score threshold, the F1-confidence curve and the confusion matrix:
how a detector does at the operating point where it counts, and which classes it confuses.

COCO's AP averages over every score threshold; a user keeps the detections above *one* threshold
(the count threshold) and asks: what share of what I keep is right (precision), what share of the
bees do I find (recall), and does it call drones bees? These are Ultralytics' and Detectron2's
validation numbers beside AP.

Contracts (the ``DetectionModule``'s validation outputs, arrays or tensors):

* ground truth per image: ``{"boxes": float (N, 4) xyxy pixels, "labels": int (N,) 0-based class
  ids}`` (0 is the first real class, e.g. "bee"; there is no background id);
* predictions per image: ``{"boxes": float (M, 4) xyxy pixels of the same image, "scores": (M,),
  "labels": int (M,) 0-based class ids}``; a detection is *kept* when ``score >= threshold``, as
  ``beedet.evaluation.counting`` counts it.

Two matchings, each the one its number is known by:

* precision, recall, F1 and the F1 curve match **per class, by score**, exactly as COCO's AP50
  does (``beedet.evaluation.coco_engine.match_detections``: each detection, best first, takes the
  free ground-truth box of its class with the highest IoU >= 0.5, at most ``max_detections`` per
  image and class). Because better-scored detections match first, raising the threshold only
  drops the lowest-scored ones and never changes the others' outcome: one matching serves every
  threshold, and recall at threshold 0 is COCO's recall at IoU 0.5.
* the confusion matrix matches **across classes, by IoU** (as Ultralytics' ``ConfusionMatrix``):
  among kept detections, the (ground truth, detection) pairs with IoU >= 0.5 are taken greedily
  from the highest IoU down, each box used once, whatever the classes; then each pair counts in
  (true class, predicted class). A drone detected as a bee is then one bee-for-drone confusion,
  where the per-class matching sees a missed drone and a false bee. Ultralytics drops duplicate
  pairs with two ``np.unique`` passes, which can leave a detection unmatched whose best box was
  taken although its second-best was free; the greedy pass here matches it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from beedet.evaluation.coco_engine import DetectionBoxes, GroundTruthBoxes, MatchedDetections, match_detections
from beedet.evaluation.counting import class_ids, to_numpy
from beedet.evaluation.results import (
    DEFAULT_MAX_DETECTIONS,
    MATCH_IOU,
    CocoMetrics,
    ConfusionMatrix,
    DetectionQuality,
    F1Curve,
    PrecisionRecall,
    ScoreCurve,
)

#: Score thresholds of the F1-confidence curve: 0.00, 0.01, ..., 1.00.
CURVE_THRESHOLDS: np.ndarray = np.round(np.linspace(0.0, 1.0, 101), 2)


# ---- matching ---------------------------------------------------------------------------------


def match_by_class(
    truths: Sequence[Mapping[str, Any]],
    predictions: Sequence[Mapping[str, Any]],
    num_classes: int,
    *,
    iou_threshold: float = MATCH_IOU,
    max_detections: int = DEFAULT_MAX_DETECTIONS,
) -> MatchedDetections:
    """COCO's per-class matching of ``predictions[i]`` to ``truths[i]`` (see the module docstring
    for both contracts) at ``iou_threshold``, for every detection whatever its score."""
    if len(truths) != len(predictions):
        raise ValueError(f"{len(truths)} ground-truth images but {len(predictions)} predictions")
    truth_boxes, truth_labels, truth_image = _rows(truths, "ground truth", num_classes)
    boxes, labels, image = _rows(predictions, "predictions", num_classes)
    scores = np.concatenate([to_numpy(p["scores"]).astype(np.float64).reshape(-1) for p in predictions] + [np.zeros(0)])
    if len(scores) != len(labels):
        raise ValueError(f"predictions: {len(scores)} scores for {len(labels)} labels")
    truth_xywh = _xywh(truth_boxes)
    n = len(truth_labels)
    ground_truth = GroundTruthBoxes(truth_image, truth_labels, truth_xywh, truth_xywh[:, 2] * truth_xywh[:, 3],
                                    np.zeros(n, bool), np.ones(n, bool))
    found = DetectionBoxes(image, labels, _xywh(boxes), scores)
    return match_detections(ground_truth, found, num_categories=num_classes, iou_threshold=iou_threshold,
                            max_det=max_detections)


# ---- precision, recall, F1 --------------------------------------------------------------------


def precision_recall(
    matches: MatchedDetections, class_names: Sequence[str], threshold: float
) -> tuple[PrecisionRecall, dict[str, PrecisionRecall]]:
    """Over all classes pooled, and per class: true and false positives among the detections
    scoring ``>= threshold`` and the ground-truth boxes they leave unmatched."""
    tp, fp = _true_false_positives(matches, [threshold], len(class_names))
    per_class = {
        name: PrecisionRecall(int(tp[0, k]), int(fp[0, k]), int(matches.num_gt[k] - tp[0, k]))
        for k, name in enumerate(class_names)
    }
    overall = PrecisionRecall(int(tp[0].sum()), int(fp[0].sum()), int(matches.num_gt.sum() - tp[0].sum()))
    return overall, per_class


def f1_curve(matches: MatchedDetections, class_names: Sequence[str], thresholds: np.ndarray = CURVE_THRESHOLDS) -> F1Curve:
    """P, R and F1 at every threshold of ``thresholds`` (increasing), per class and pooled."""
    thresholds = np.asarray(thresholds, dtype=np.float64)
    tp, fp = _true_false_positives(matches, thresholds, len(class_names))  # (T, K)
    fn = matches.num_gt[None, :] - tp
    per_class = {name: _score_curve(tp[:, k], fp[:, k], fn[:, k]) for k, name in enumerate(class_names)}
    overall = _score_curve(tp.sum(axis=1), fp.sum(axis=1), fn.sum(axis=1))
    return F1Curve(thresholds.copy(), overall, per_class)


def _true_false_positives(
    matches: MatchedDetections, thresholds: Sequence[float], num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """int64 (T, K) true and false positives among the detections scoring >= each threshold."""
    counted = ~matches.ignored  # matched to a crowd region: neither (pycocotools' dtIg)
    tp = np.zeros((len(thresholds), num_classes), dtype=np.int64)
    fp = np.zeros_like(tp)
    for t, threshold in enumerate(thresholds):
        kept = counted & (matches.score >= threshold)
        tp[t] = np.bincount(matches.category[kept & matches.matched], minlength=num_classes)
        fp[t] = np.bincount(matches.category[kept & ~matches.matched], minlength=num_classes)
    return tp, fp


def _score_curve(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> ScoreCurve:
    """:class:`PrecisionRecall`'s definitions on arrays, NaN where it gives None."""
    tp, fp, fn = (np.asarray(v, dtype=np.float64) for v in (tp, fp, fn))
    with np.errstate(divide="ignore", invalid="ignore"):
        kept, instances, f1_denominator = tp + fp, tp + fn, 2 * tp + fp + fn
        precision = np.where(kept > 0, tp / kept, np.where(instances > 0, 0.0, np.nan))
        recall = np.where(instances > 0, tp / instances, np.nan)
        f1 = np.where(f1_denominator > 0, 2 * tp / f1_denominator, np.nan)
    return ScoreCurve(precision, recall, f1)


# ---- confusion matrix -------------------------------------------------------------------------


def confusion_matrix(
    truths: Sequence[Mapping[str, Any]],
    predictions: Sequence[Mapping[str, Any]],
    class_names: Sequence[str],
    threshold: float,
    *,
    iou_threshold: float = MATCH_IOU,
) -> ConfusionMatrix:
    """The class-agnostic confusion matrix of the detections scoring ``>= threshold`` (see
    :class:`~beedet.evaluation.results.ConfusionMatrix` for its layout and the module docstring
    for the matching)."""
    if len(truths) != len(predictions):
        raise ValueError(f"{len(truths)} ground-truth images but {len(predictions)} predictions")
    k = len(class_names)
    matrix = np.zeros((k + 1, k + 1), dtype=np.int64)
    for i, (truth, prediction) in enumerate(zip(truths, predictions)):
        truth_boxes = to_numpy(truth["boxes"]).astype(np.float64).reshape(-1, 4)
        truth_labels = class_ids(truth["labels"], k, f"ground truth of image {i}")
        kept = to_numpy(prediction["scores"]).astype(np.float64).reshape(-1) >= threshold
        boxes = to_numpy(prediction["boxes"]).astype(np.float64).reshape(-1, 4)[kept]
        labels = class_ids(prediction["labels"], k, f"predictions of image {i}")[kept]
        truth_of, detection_of = _greedy_pairs(box_iou(truth_boxes, boxes), iou_threshold)
        np.add.at(matrix, (truth_labels[truth_of], labels[detection_of]), 1)
        missed = np.ones(len(truth_labels), bool)
        missed[truth_of] = False
        np.add.at(matrix, (truth_labels[missed], k), 1)
        false = np.ones(len(labels), bool)
        false[detection_of] = False
        np.add.at(matrix, (k, labels[false]), 1)
    return ConfusionMatrix(list(class_names), matrix, float(threshold), float(iou_threshold))


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """float64 (N, M) IoU of xyxy boxes ``a`` (N, 4) and ``b`` (M, 4); 0 where boxes do not overlap
    (and for boxes without area)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    width = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    height = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.clip(width, 0, None) * np.clip(height, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(inter > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def _greedy_pairs(iou: np.ndarray, iou_threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns of ``iou`` paired greedily from the highest IoU >= ``iou_threshold`` down,
    each row and column at most once (equal IoUs: lower row, then lower column first)."""
    rows, cols = np.nonzero(iou >= iou_threshold)
    order = np.lexsort((cols, rows, -iou[rows, cols]))
    used_rows, used_cols = set(), set()
    pairs_rows, pairs_cols = [], []
    # Only the pairs above the IoU threshold are visited: about one or two per ground-truth box.
    for r, c in zip(rows[order].tolist(), cols[order].tolist()):
        if r not in used_rows and c not in used_cols:
            used_rows.add(r)
            used_cols.add(c)
            pairs_rows.append(r)
            pairs_cols.append(c)
    return np.array(pairs_rows, dtype=np.int64), np.array(pairs_cols, dtype=np.int64)


# ---- all of it, and the per-class table -------------------------------------------------------


def detection_quality(
    truths: Sequence[Mapping[str, Any]],
    predictions: Sequence[Mapping[str, Any]],
    class_names: Sequence[str],
    threshold: float,
    *,
    matches: MatchedDetections | None = None,
    iou_threshold: float = MATCH_IOU,
    max_detections: int = DEFAULT_MAX_DETECTIONS,
) -> DetectionQuality:
    """Precision, recall, F1 (overall and per class) and the confusion matrix at ``threshold``.
    ``matches``: :func:`match_by_class` of the same inputs, when already at hand (it serves every
    threshold)."""
    if matches is None:
        matches = match_by_class(truths, predictions, len(class_names), iou_threshold=iou_threshold,
                                 max_detections=max_detections)
    overall, per_class = precision_recall(matches, class_names, threshold)
    confusion = confusion_matrix(truths, predictions, class_names, threshold, iou_threshold=iou_threshold)
    return DetectionQuality(float(threshold), overall, per_class, confusion, float(iou_threshold))


def class_table(quality: DetectionQuality, metrics: CocoMetrics | None = None) -> dict[str, dict[str, Any]]:
    """The per-class table (Ultralytics' validation table): per class name ``instances``,
    ``precision``, ``recall``, ``F1`` at ``quality.threshold``, and with ``metrics`` also
    ``AP50`` and ``AP`` (AP@[.5:.95]); values None where undefined. JSON-able; the layout of
    ``metrics.json``'s ``detection_quality.per_class`` that :func:`class_table_markdown` reads."""
    table: dict[str, dict[str, Any]] = {}
    for name, values in quality.per_class.items():
        row = values.to_dict()
        if metrics is not None:
            row["AP50"] = metrics.per_class_AP50.get(name)
            row["AP"] = metrics.per_class_AP.get(name)
        table[name] = row
    return table


def class_table_markdown(table: Mapping[str, Mapping[str, Any]], overall: Mapping[str, Any] | None = None,
                         metrics: Mapping[str, Any] | None = None) -> list[str]:
    """A markdown table of :func:`class_table` rows: class, instances, P, R, F1, AP50, AP@[.5:.95];
    first an ``all`` row from ``overall`` (a :meth:`PrecisionRecall.to_dict`) with ``AP50`` and
    ``mAP`` from ``metrics`` (COCO stats) when given. Undefined values read ``n/a``."""

    def cell(value: Any) -> str:
        return "n/a" if value is None or (isinstance(value, float) and (value != value or value < 0)) else f"{value:.3f}"

    lines = ["| class | instances | P | R | F1 | AP50 | AP@[.5:.95] |", "|---|---|---|---|---|---|---|"]
    if overall is not None:
        stats = metrics or {}
        lines.append(f"| all | {overall['instances']} | {cell(overall['precision'])} | {cell(overall['recall'])} | "
                     f"{cell(overall['F1'])} | {cell(stats.get('AP50'))} | {cell(stats.get('mAP'))} |")
    for name, row in table.items():
        lines.append(f"| {name} | {row['instances']} | {cell(row['precision'])} | {cell(row['recall'])} | "
                     f"{cell(row['F1'])} | {cell(row.get('AP50'))} | {cell(row.get('AP'))} |")
    return lines


# ---- inputs -----------------------------------------------------------------------------------


def _rows(items: Sequence[Mapping[str, Any]], what: str, num_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All images' boxes float64 (N, 4) xyxy, labels int64 (N,) and image index int64 (N,)."""
    boxes = [to_numpy(item["boxes"]).astype(np.float64).reshape(-1, 4) for item in items]
    labels = [class_ids(item["labels"], num_classes, f"{what} of image {i}") for i, item in enumerate(items)]
    for i, (b, l) in enumerate(zip(boxes, labels)):
        if len(b) != len(l):
            raise ValueError(f"{what} of image {i}: {len(b)} boxes but {len(l)} labels")
    image = np.repeat(np.arange(len(items), dtype=np.int64), [len(l) for l in labels])
    return (np.concatenate(boxes + [np.zeros((0, 4))]), np.concatenate(labels + [np.zeros(0, np.int64)]), image)


def _xywh(boxes: np.ndarray) -> np.ndarray:
    return np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
