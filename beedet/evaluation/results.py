"""The typed results of evaluation: :class:`CocoMetrics` with its :class:`PRCurve` per class and
:class:`SizeBin` per extra area bin, the names of the 12 summary numbers, precision / recall / F1
at a score threshold (:class:`DetectionQuality` with its :class:`ConfusionMatrix`, and the
:class:`F1Curve` over all thresholds), and :class:`ValidationResult`, one validation pass (all of
them and the count errors together).

``beedet.evaluation.coco_metrics``, ``beedet.evaluation.detection_quality`` and
``beedet.evaluation.counting`` fill them; training,
reporting and the ``cocoeval`` command read them. This module computes no metrics.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from beedet.evaluation.counting import CountMetrics

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

#: pycocotools' largest maxDets; ``evaluation.max_detections`` replaces it.
DEFAULT_MAX_DETECTIONS = 100


def stat_keys(max_detections: int = DEFAULT_MAX_DETECTIONS) -> tuple[str, ...]:
    """The 12 summary keys for ``maxDets = [1, 10, max_detections]``: :data:`STAT_KEYS` with
    ``AR100`` named ``AR<max_detections>`` (AR1 and AR10 keep their names)."""
    return tuple(f"AR{max_detections}" if key == "AR100" else key for key in STAT_KEYS)


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


def _optional_float(value: float | None) -> float | None:
    return None if value is None else float(value)


#: The IoU at which precision, recall, F1 and the confusion matrix match detections to ground truth
#: (COCO's AP50 threshold, Ultralytics' confusion-matrix threshold).
MATCH_IOU = 0.5


def _ratio(numerator: int, denominator: int) -> float | None:
    return float(numerator) / denominator if denominator > 0 else None


@dataclass(frozen=True)
class PrecisionRecall:
    """Detections scoring at least a threshold, matched to ground truth at IoU :data:`MATCH_IOU`
    (``beedet.evaluation.detection_quality``): ``true_positives`` kept detections matched to a
    ground-truth box of their class, ``false_positives`` the other kept detections,
    ``false_negatives`` the ground-truth boxes no kept detection matched.

    ``precision`` = TP / (TP + FP), 0 when nothing is kept but there is ground truth (nothing was
    found), None when there is neither; ``recall`` = TP / (TP + FN), None without ground truth;
    ``f1`` = 2 TP / (2 TP + FP + FN), the harmonic mean of the two, None when all counts are 0.
    """

    true_positives: int
    false_positives: int
    false_negatives: int

    @property
    def instances(self) -> int:
        """Ground-truth boxes (TP + FN)."""
        return self.true_positives + self.false_negatives

    @property
    def precision(self) -> float | None:
        kept = self.true_positives + self.false_positives
        if kept == 0:
            return 0.0 if self.instances else None
        return self.true_positives / kept

    @property
    def recall(self) -> float | None:
        return _ratio(self.true_positives, self.instances)

    @property
    def f1(self) -> float | None:
        return _ratio(2 * self.true_positives, 2 * self.true_positives + self.false_positives + self.false_negatives)

    def to_dict(self) -> dict[str, Any]:
        return {
            "precision": self.precision,
            "recall": self.recall,
            "F1": self.f1,
            "instances": int(self.instances),
            "true_positives": int(self.true_positives),
            "false_positives": int(self.false_positives),
            "false_negatives": int(self.false_negatives),
        }


@dataclass(frozen=True)
class ScoreCurve:
    """Precision, recall and F1 (:class:`PrecisionRecall`'s definitions) of the detections scoring
    at least each threshold of :attr:`F1Curve.thresholds`: float64 arrays of shape (T,), NaN where
    a value is undefined (None in :class:`PrecisionRecall`)."""

    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray


@dataclass(frozen=True)
class F1Curve:
    """The F1-confidence curve (Ultralytics' F1_curve.png): P, R and F1 against the score
    threshold, at IoU :data:`MATCH_IOU`. ``thresholds`` float64 (T,) increasing in [0, 1];
    ``overall`` pools the detections and ground truth of every class (micro average);
    ``per_class`` has one :class:`ScoreCurve` per class name, in class-id order."""

    thresholds: np.ndarray
    overall: ScoreCurve
    per_class: dict[str, ScoreCurve]

    def best(self) -> tuple[float, float] | None:
        """(threshold, F1) where the overall F1 is highest (the lowest such threshold), or None
        when F1 is undefined everywhere (no ground truth and no detections)."""
        f1 = self.overall.f1
        if not np.isfinite(f1).any():
            return None
        index = int(np.nanargmax(f1))
        return float(self.thresholds[index]), float(f1[index])


@dataclass(frozen=True)
class ConfusionMatrix:
    """Counts of (true class, predicted class) pairs at IoU ``iou_threshold`` among detections
    scoring at least ``threshold``, matched class-agnostically (``beedet.evaluation.
    detection_quality.confusion_matrix``).

    ``matrix``: int64 (K + 1, K + 1) for the K ``class_names``. Rows are the true class 0..K-1 and,
    last, *background* (no ground-truth box: row K counts false positives by predicted class);
    columns are the predicted class 0..K-1 and, last, *background* (no detection: column K counts
    missed boxes by true class). ``matrix[K, K]`` is always 0. Row sums 0..K-1 are the ground-truth
    boxes of each class; column sums 0..K-1 the kept detections of each class.
    """

    class_names: list[str]
    matrix: np.ndarray
    threshold: float
    iou_threshold: float = MATCH_IOU

    @property
    def labels(self) -> list[str]:
        """Row and column names: the class names, then ``"background"``."""
        return [*self.class_names, "background"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "threshold": float(self.threshold),
            "iou_threshold": float(self.iou_threshold),
            "rows": "true class, then background (false positives)",
            "columns": "predicted class, then background (missed)",
            "labels": self.labels,
            "counts": self.matrix.astype(int).tolist(),
        }


@dataclass(frozen=True)
class DetectionQuality:
    """Precision, recall, F1 and the confusion matrix of the detections scoring at least
    ``threshold`` (a count threshold), at IoU ``iou_threshold``. ``overall`` pools every class
    (micro average: all true and false positives and misses together); ``per_class`` maps every
    class name, in class-id order, to its :class:`PrecisionRecall`. Per-class matching is COCO's
    (by score, within the class), so ``per_class[k].recall`` at threshold 0 is COCO's recall at
    IoU 0.5; the ``confusion`` matrix matches across classes (see :class:`ConfusionMatrix`)."""

    threshold: float
    overall: PrecisionRecall
    per_class: dict[str, PrecisionRecall]
    confusion: ConfusionMatrix
    iou_threshold: float = MATCH_IOU

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: ``threshold``, ``iou_threshold``, ``all`` and ``per_class``
        (:meth:`PrecisionRecall.to_dict`) and ``confusion_matrix`` (:meth:`ConfusionMatrix.to_dict`)."""
        return {
            "threshold": float(self.threshold),
            "iou_threshold": float(self.iou_threshold),
            "all": self.overall.to_dict(),
            "per_class": {name: values.to_dict() for name, values in self.per_class.items()},
            "confusion_matrix": self.confusion.to_dict(),
        }


@dataclass(frozen=True)
class ValidationResult:
    """What one validation pass over the whole validation set found (``DetectionModule``'s
    ``last_validation``; what ``beedet.reporting.run_report.report_run`` writes).

    ``metrics``: COCO metrics, per class, per size bin, with PR curves at IoU 0.5. ``counts``:
    count errors at the threshold in use. ``oracle_counts``: those at the best threshold for these
    very images (the same object when the threshold in use was chosen on them).

    ``quality``: precision, recall, F1 and the confusion matrix at the threshold in use
    (``counts.threshold``: what the checkpoint keeps and ``beedet.predict`` counts with).
    ``f1_curve``: the same numbers at every score threshold.

    ``fixed_counts`` and ``fixed_quality``: count errors and quality at the *fixed* threshold the
    per-epoch TensorBoard curves use (``DetectionModule.fixed_count_threshold``: the configured
    count threshold, else :data:`beedet.evaluation.counting.FIXED_COUNT_THRESHOLD`), so that epochs
    compare; the same objects as ``counts`` and ``quality`` when the thresholds agree.

    ``loss``: the detection loss on the validation images (``classification``, ``box`` and their
    sum ``total``, each summed over the images and divided by their positive anchors, as the
    training loss is per batch); None for a network without torchvision SSD's loss.

    The fields after ``oracle_counts`` are None for results built without them (tests, callers
    that only count).
    """

    metrics: CocoMetrics
    counts: CountMetrics
    oracle_counts: CountMetrics
    quality: DetectionQuality | None = None
    f1_curve: F1Curve | None = None
    fixed_counts: CountMetrics | None = None
    fixed_quality: DetectionQuality | None = None
    loss: dict[str, float] | None = None

