"""The typed results of evaluation: :class:`CocoMetrics` with its :class:`PRCurve` per class and
:class:`SizeBin` per extra area bin, the names of the 12 summary numbers, and
:class:`ValidationResult`, one validation pass (COCO metrics and count errors together).

``beedet.evaluation.coco_metrics`` and ``beedet.evaluation.counting`` fill them; training,
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


@dataclass(frozen=True)
class ValidationResult:
    """What one validation pass over the whole validation set found (``DetectionModule``'s
    ``last_validation``; what ``beedet.reporting.report_run`` writes).

    ``metrics``: COCO metrics, per class, per size bin, with PR curves at IoU 0.5. ``counts``:
    count errors at the threshold in use. ``oracle_counts``: those at the best threshold for these
    very images (the same object when the threshold in use was chosen on them).
    """

    metrics: CocoMetrics
    counts: CountMetrics
    oracle_counts: CountMetrics

