"""COCO box metrics with pycocotools semantics, computed by faster-coco-eval.

faster-coco-eval runs pycocotools' matching and accumulation in C++ and fills the same
``eval["precision"]`` array (T x R x K x A x M: IoU thresholds x 101 recall thresholds x
categories x area ranges x maxDets); the 12 summary numbers are read from those arrays exactly as
pycocotools' ``summarize`` reads them. ``tests/test_metrics.py`` proves that every number here
equals pycocotools on random data, also with extra size bins and a larger maxDets.

Two extensions of the COCO protocol, both off by default:

* ``max_detections`` sets ``params.maxDets = [1, 10, max_detections]``: detections beyond the
  ``max_detections`` best-scoring ones of an image are ignored. pycocotools' 100 silently drops
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

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
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
    by default the categories' own names. Neither input is modified.

    ``area_bins``: inner edges in px^2 (increasing) of extra size bins reported in
    ``CocoMetrics.size_bins`` (see :func:`size_bin_ranges`, :func:`size_bin_edges`); None or
    empty: none. ``max_detections`` (> 10): the best-scoring detections per image that count,
    pycocotools' ``maxDets = [1, 10, max_detections]``; the key ``AR100`` becomes
    ``AR<max_detections>``.
    """
    if int(max_detections) <= 10:
        raise ValueError(f"max_detections must be > 10 (COCO's maxDets are [1, 10, max_detections]), got {max_detections}")
    bins = size_bin_ranges(area_bins) if area_bins else []
    check_ground_truth(ground_truth)
    categories = sorted(ground_truth["categories"], key=lambda c: c["id"])
    names = _class_names(categories, class_names)
    check_detections(
        detections,
        image_ids={image["id"] for image in ground_truth["images"]},
        category_ids={c["id"] for c in categories},
    )
    evaluator = _run_faster_coco_eval(ground_truth, detections, bins, int(max_detections))
    counted = [a for a in ground_truth["annotations"] if not a.get("iscrowd", 0)]
    num_gt = [sum(1 for a in counted if a["category_id"] == c["id"]) for c in categories]
    bin_num_gt = [sum(1 for a in counted if lo <= a["area"] <= hi) for _, lo, hi in bins]
    return _metrics_from_eval(evaluator.eval, evaluator.params, names, num_gt, bins, bin_num_gt)


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
    *,
    area_bins: Sequence[float] | None = None,
    max_detections: int = DEFAULT_MAX_DETECTIONS,
) -> CocoMetrics:
    """COCO metrics of ``predictions[i]`` (see :func:`detections_to_coco`) against ``records[i]``,
    in the records' own pixel coordinates. ``area_bins`` and ``max_detections``: see
    :func:`evaluate_coco`."""
    from beedet.data.coco import to_coco_dict  # the data package is not needed to evaluate plain COCO

    if len(records) != len(predictions):
        raise ValueError(f"{len(records)} records but {len(predictions)} predictions")
    ground_truth = to_coco_dict(records, class_names, image_root=None)
    detections = detections_to_coco(predictions, [index + 1 for index in range(len(records))])
    return evaluate_coco(
        ground_truth, detections, class_names=class_names, area_bins=area_bins, max_detections=max_detections
    )


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


def _run_faster_coco_eval(
    ground_truth: dict, detections: list[dict], bins: Sequence[tuple[str, float, float]], max_detections: int
) -> Any:
    """Run evaluate + accumulate with COCO's area ranges followed by ``bins`` and
    ``maxDets = [1, 10, max_detections]``. ``summarize`` is not called: :func:`_summary_stats`
    reads the numbers by area label and maxDets, whatever ranges were added."""
    from faster_coco_eval import COCO, COCOeval_faster

    # The evaluator writes into annotation dicts ("ignore", "segmentation", ids): give it copies.
    gt = {**ground_truth, "annotations": [a.copy() for a in ground_truth["annotations"]]}
    results = [d.copy() for d in detections]
    coco_gt = COCO(gt, print_function=_silent)
    coco_dt = coco_gt.loadRes(results)
    evaluator = COCOeval_faster(coco_gt, coco_dt, iouType="bbox", print_function=_silent)
    ranges = [*_COCO_AREA_RANGES, *bins]
    evaluator.params.areaRng = [[lo, hi] for _, lo, hi in ranges]
    evaluator.params.areaRngLbl = [name for name, _, _ in ranges]
    evaluator.params.maxDets = [1, 10, max_detections]
    evaluator.evaluate()
    evaluator.accumulate()
    return evaluator


def _summary_stats(coco_eval: dict, params: Any) -> np.ndarray:
    """The 12 numbers of pycocotools' ``summarize`` (``_summarizeDets``), read from the
    accumulated arrays by area label, with its "maxDets 100" read at the largest maxDets.
    Each is the mean over entries > -1, or -1 where there are none."""
    precision = np.asarray(coco_eval["precision"])  # (T, R, K, A, M)
    recall = np.asarray(coco_eval["recall"])  # (T, K, A, M)
    iou_thrs = np.asarray(params.iouThrs)
    labels = list(params.areaRngLbl)

    def summarize(ap: bool, iou: float | None = None, area: str = "all", max_dets_index: int = _MAX_DETS_LAST) -> float:
        values = (precision if ap else recall)[..., labels.index(area), max_dets_index]
        if iou is not None:
            values = values[np.flatnonzero(np.isclose(iou_thrs, iou))]
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
    coco_eval: dict,
    params: Any,
    names: list[str],
    num_gt: list[int],
    bins: Sequence[tuple[str, float, float]],
    bin_num_gt: list[int],
) -> CocoMetrics:
    """Read pycocotools-layout arrays: precision/scores are [T, R, K, A, M], recall [T, K, A, M],
    -1 where a category has no ground truth (in that area range)."""
    max_detections = int(params.maxDets[_MAX_DETS_LAST])
    precision = np.asarray(coco_eval["precision"])[:, :, :, _AREA_ALL, _MAX_DETS_LAST]  # (T, R, K)
    scores = np.asarray(coco_eval["scores"])[_IOU_50, :, :, _AREA_ALL, _MAX_DETS_LAST]  # (R, K)
    per_class_ap: dict[str, float | None] = {}
    per_class_ap50: dict[str, float | None] = {}
    pr_curves: dict[str, PRCurve] = {}
    for k, name in enumerate(names):
        per_class_ap[name] = _mean_valid(precision[:, :, k])
        per_class_ap50[name] = _mean_valid(precision[_IOU_50, :, k])
        if per_class_ap[name] is not None:
            pr_curves[name] = PRCurve(
                recall=np.array(params.recThrs, dtype=np.float64),
                precision=precision[_IOU_50, :, k].astype(np.float64),
                scores=scores[:, k].astype(np.float64),
                num_gt=num_gt[k],
            )
    all_precision = np.asarray(coco_eval["precision"])
    all_recall = np.asarray(coco_eval["recall"])
    size_bins = []
    for (name, lo, hi), count in zip(bins, bin_num_gt):
        a = list(params.areaRngLbl).index(name)
        size_bins.append(
            SizeBin(
                name=name,
                min_area=lo,
                max_area=hi,
                AP=_mean_valid(all_precision[:, :, :, a, _MAX_DETS_LAST]),
                AP50=_mean_valid(all_precision[_IOU_50, :, :, a, _MAX_DETS_LAST]),
                recall50=_mean_valid(all_recall[_IOU_50, :, a, _MAX_DETS_LAST]),
                num_gt=count,
            )
        )
    stats = _summary_stats(coco_eval, params)
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
