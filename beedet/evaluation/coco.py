"""COCO box metrics with pycocotools semantics, computed by faster-coco-eval.

faster-coco-eval runs pycocotools' matching and accumulation in C++ and fills the same
``eval["precision"]`` array (T x R x K x A x M: IoU thresholds x 101 recall thresholds x
categories x area ranges x maxDets) and the same 12 ``stats``; ``tests/test_metrics.py`` proves
that every number here equals pycocotools on random data.

Conventions shared with ``beedet.data.coco.to_coco_dict``:

* COCO image id = record index + 1; COCO category id = class id + 1 (class id 0 is the first real
  class, e.g. "bee", not background).
* COCO boxes are ``[x, y, w, h]`` in pixels; beedet boxes are xyxy in pixels.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from beedet.data.records import ImageRecord

#: The 12 pycocotools summary numbers, in the order of ``COCOeval.stats``.
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

# Indices into eval["precision"] / eval["scores"]: area range "all", maxDets 100, IoU 0.5.
_AREA_ALL = 0
_MAX_DETS_100 = -1
_IOU_50 = 0

_DETECTION_KEYS = ("image_id", "category_id", "bbox", "score")
_GT_ANNOTATION_KEYS = ("id", "image_id", "category_id", "bbox", "area")


class CocoFormatError(ValueError):
    """COCO ground truth or detections that cannot be evaluated. The message names the source."""


@dataclass(frozen=True)
class PRCurve:
    """Interpolated precision of one class at IoU 0.5 (area all, maxDets 100), as pycocotools
    stores it: ``precision[i]`` is the precision at recall >= ``recall[i]`` and ``scores[i]`` the
    detection score where that recall is reached (0 where the recall is never reached).
    All three arrays have shape (101,)."""

    recall: np.ndarray
    precision: np.ndarray
    scores: np.ndarray
    #: Non-crowd ground-truth objects of the class: turns recall into true-positive counts.
    num_gt: int = 0


@dataclass
class CocoMetrics:
    """COCO box metrics.

    ``stats`` has the keys of :data:`STAT_KEYS` with pycocotools' values, including -1 for an
    area bucket without ground truth. ``per_class_AP`` (AP@[.5:.95]) and ``per_class_AP50`` map
    class name -> AP, or None for a class without (non-crowd) ground truth. ``pr_curves`` holds
    the IoU-0.5 curve of every class that has ground truth.
    """

    stats: dict[str, float]
    per_class_AP: dict[str, float | None]
    per_class_AP50: dict[str, float | None]
    pr_curves: dict[str, PRCurve] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary: the stats at top level plus ``per_class_AP`` and ``per_class_AP50``."""
        return {
            **{key: float(value) for key, value in self.stats.items()},
            "per_class_AP": {name: _optional_float(ap) for name, ap in self.per_class_AP.items()},
            "per_class_AP50": {name: _optional_float(ap) for name, ap in self.per_class_AP50.items()},
        }


def evaluate_coco(
    ground_truth: dict,
    detections: list[dict],
    *,
    class_names: Sequence[str] | None = None,
) -> CocoMetrics:
    """Evaluate COCO-format detections against COCO-format ground truth (bbox IoU).

    ``ground_truth`` has ``images``, ``annotations`` (with ``id, image_id, category_id, bbox
    [x, y, w, h], area``, optional ``iscrowd``) and ``categories``. ``detections`` is a list of
    ``{image_id, category_id, bbox [x, y, w, h], score}``; an empty list is fine (AP 0 for every
    class with ground truth). ``class_names[k]`` names the k-th category in ascending id order;
    by default the categories' own names. Neither input is modified.
    """
    check_ground_truth(ground_truth)
    categories = sorted(ground_truth["categories"], key=lambda c: c["id"])
    names = _class_names(categories, class_names)
    check_detections(
        detections,
        image_ids={image["id"] for image in ground_truth["images"]},
        category_ids={c["id"] for c in categories},
    )
    evaluator = _run_faster_coco_eval(ground_truth, detections)
    num_gt = [sum(1 for a in ground_truth["annotations"] if a["category_id"] == c["id"] and not a.get("iscrowd", 0)) for c in categories]
    return _metrics_from_eval(evaluator.eval, evaluator.stats, evaluator.params.recThrs, names, num_gt)


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
        boxes = _to_numpy(prediction["boxes"]).astype(np.float64).reshape(-1, 4)
        scores = _to_numpy(prediction["scores"]).astype(np.float64).reshape(-1)
        labels = _to_numpy(prediction["labels"]).astype(np.int64).reshape(-1)
        if not len(boxes) == len(scores) == len(labels):
            raise ValueError(
                f"prediction for image id {image_id}: {len(boxes)} boxes, {len(scores)} scores, {len(labels)} labels"
            )
        xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
        for bbox, score, label in zip(xywh.tolist(), scores.tolist(), labels.tolist()):
            results.append({"image_id": int(image_id), "category_id": label + 1, "bbox": bbox, "score": score})
    return results


def evaluate_records(
    records: Sequence[ImageRecord],
    predictions: Sequence[dict],
    class_names: Sequence[str],
) -> CocoMetrics:
    """COCO metrics of ``predictions[i]`` (see :func:`detections_to_coco`) against ``records[i]``,
    in the records' own pixel coordinates."""
    from beedet.data.coco import to_coco_dict  # the data package is not needed to evaluate plain COCO

    if len(records) != len(predictions):
        raise ValueError(f"{len(records)} records but {len(predictions)} predictions")
    ground_truth = to_coco_dict(records, class_names, image_root=None)
    detections = detections_to_coco(predictions, [index + 1 for index in range(len(records))])
    return evaluate_coco(ground_truth, detections, class_names=class_names)


def check_ground_truth(ground_truth: Any, *, where: str = "ground truth") -> None:
    """Raise :class:`CocoFormatError` naming ``where`` unless ``ground_truth`` is an evaluable
    COCO dict (images, annotations and categories with the keys the evaluation reads)."""
    if not isinstance(ground_truth, dict):
        raise CocoFormatError(f"{where}: expected a COCO dict, got {type(ground_truth).__name__}")
    missing = [key for key in ("images", "annotations", "categories") if key not in ground_truth]
    if missing:
        raise CocoFormatError(f"{where}: missing top-level key(s) {missing}")
    _check_entries(ground_truth["images"], ("id", "width", "height"), f"{where}: images")
    _check_entries(ground_truth["categories"], ("id", "name"), f"{where}: categories")
    _check_entries(ground_truth["annotations"], _GT_ANNOTATION_KEYS, f"{where}: annotations")
    for key in ("id", "name"):  # per-class results are keyed by name, and categories by id
        values = [category[key] for category in ground_truth["categories"]]
        if len(set(values)) != len(values):
            raise CocoFormatError(f"{where}: categories: duplicate {key}s in {values}")
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


def _class_names(categories: list[dict], class_names: Sequence[str] | None) -> list[str]:
    names = [str(c["name"]) for c in categories] if class_names is None else [str(n) for n in class_names]
    if len(names) != len(categories):
        raise ValueError(f"{len(names)} class names for {len(categories)} ground-truth categories")
    if len(set(names)) != len(names):
        raise ValueError(f"class names must be unique to report per-class AP, got {names}")
    return names


def _silent(*args: Any, **kwargs: Any) -> None:
    """Print function for faster-coco-eval: library calls must not write to the console."""


def _run_faster_coco_eval(ground_truth: dict, detections: list[dict]) -> Any:
    from faster_coco_eval import COCO, COCOeval_faster

    # The evaluator writes into annotation dicts ("ignore", "segmentation", ids): give it copies.
    gt = {**ground_truth, "annotations": [a.copy() for a in ground_truth["annotations"]]}
    results = [d.copy() for d in detections]
    coco_gt = COCO(gt, print_function=_silent)
    coco_dt = coco_gt.loadRes(results)
    evaluator = COCOeval_faster(coco_gt, coco_dt, iouType="bbox", print_function=_silent)
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    return evaluator


def _metrics_from_eval(coco_eval: dict, stats: np.ndarray, rec_thrs: np.ndarray, names: list[str], num_gt: list[int]) -> CocoMetrics:
    """Read pycocotools-layout arrays: precision/scores are [T, R, K, A, M], -1 where a category
    has no ground truth."""
    precision = np.asarray(coco_eval["precision"])[:, :, :, _AREA_ALL, _MAX_DETS_100]  # (T, R, K)
    scores = np.asarray(coco_eval["scores"])[_IOU_50, :, :, _AREA_ALL, _MAX_DETS_100]  # (R, K)
    per_class_ap: dict[str, float | None] = {}
    per_class_ap50: dict[str, float | None] = {}
    pr_curves: dict[str, PRCurve] = {}
    for k, name in enumerate(names):
        per_class_ap[name] = _mean_valid(precision[:, :, k])
        per_class_ap50[name] = _mean_valid(precision[_IOU_50, :, k])
        if per_class_ap[name] is not None:
            pr_curves[name] = PRCurve(
                recall=np.array(rec_thrs, dtype=np.float64),
                precision=precision[_IOU_50, :, k].astype(np.float64),
                scores=scores[:, k].astype(np.float64),
                num_gt=num_gt[k],
            )
    return CocoMetrics(
        stats={key: float(value) for key, value in zip(STAT_KEYS, stats)},
        per_class_AP=per_class_ap,
        per_class_AP50=per_class_ap50,
        pr_curves=pr_curves,
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
