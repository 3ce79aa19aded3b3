"""pycocotools' box evaluation (``COCOeval.evaluate`` + ``accumulate``, ``iouType="bbox"``,
``useCats=1``) on numpy arrays, without a Python loop over images or boxes.

:func:`evaluate_boxes` takes the boxes of all images at once and returns pycocotools' accumulated
arrays (:class:`Accumulated`: ``precision`` and ``scores`` T x R x K x A x M, ``recall``
T x K x A x M; -1 where a category has no ground truth in an area range).
``beedet.evaluation.coco_metrics`` reads its summary numbers from them. The rules are
pycocotools', step by step:

* Per (image, category): detections sorted by score, highest first, ties in input order (a stable
  sort); only the best ``max(max_dets)`` count.
* IoU as ``maskApi.c``'s ``bbIou`` computes it, in the same float64 operations: boxes are
  ``[x, y, w, h]``, the right edge is ``x + w``; for a crowd ground truth the union is the
  detection's area.
* Greedy matching per IoU threshold t and area range: each detection, best first, takes the
  still-free ground truth with the highest IoU >= min(t, 1 - 1e-10) (equal IoUs: the later ground
  truth in input order), preferring ground truth that is not ignored (crowd, or area outside the
  range); crowd ground truth stays free. A match with ground truth of id 0 counts as no match, as
  in pycocotools (it stores ground-truth ids and tests them for non-zero).
* Unmatched detections whose area lies outside the range are ignored.
* Accumulation per category, area range and maxDets: the detections of all images, sorted by
  score (ties: image order, then rank in the image), cumulative TP/FP counts, precision made
  monotone from the right, read at the 101 recall thresholds with ``searchsorted(side="left")``.

Matching is sequential only within one (image, category): a detection's outcome depends on the
better-scored detections of the same image and category that compete for the same ground truth.
So the engine first keeps only the (detection, ground truth) pairs with IoU >= the lowest
threshold (a detection without any is unmatched at every threshold), then steps through the
k-th such detection of every (image, category) at once, for all thresholds and area ranges
together. The number of steps is the largest number of overlapping detections in one
(image, category), not the number of images or detections.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: pycocotools' ``Params.iouThrs`` and ``Params.recThrs`` (the same linspace calls, so the same floats).
IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
RECALL_THRESHOLDS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)

# (detection, ground truth) candidate pairs whose IoU is computed in one numpy pass: bounds the
# temporary arrays (about 10 float64 arrays of this length) whatever the images' box counts.
_IOU_CHUNK_PAIRS = 1 << 21
_EPS = np.spacing(1)  # pycocotools' precision denominator guard


@dataclass(frozen=True)
class GroundTruthBoxes:
    """Ground truth of all images, one row per box, in input order (the order matters for ties,
    as in pycocotools).

    ``image``: int64 (N,) image index in ``[0, num_images)``, numbered in ascending COCO image id
    order; ``category``: int64 (N,) category index in ``[0, num_categories)``, ascending COCO
    category id order; ``xywh``: float64 (N, 4) ``[x, y, w, h]`` pixels; ``area``: float64 (N,)
    (COCO's ``area`` field, which decides the area ranges); ``crowd``: bool (N,) ``iscrowd``;
    ``id_nonzero``: bool (N,), False where the COCO annotation id is 0 (see the module docstring).
    """

    image: np.ndarray
    category: np.ndarray
    xywh: np.ndarray
    area: np.ndarray
    crowd: np.ndarray
    id_nonzero: np.ndarray

    def __post_init__(self) -> None:
        _check_rows(self, ("image", "category", "area", "crowd", "id_nonzero"))


@dataclass(frozen=True)
class DetectionBoxes:
    """Detections of all images, one row per box, in input order (ties in score keep it).
    ``image``, ``category`` and ``xywh`` as in :class:`GroundTruthBoxes`; ``score``: float64 (N,).
    A detection's area is ``w * h``, as pycocotools' ``loadRes`` sets it."""

    image: np.ndarray
    category: np.ndarray
    xywh: np.ndarray
    score: np.ndarray

    def __post_init__(self) -> None:
        _check_rows(self, ("image", "category", "score"))


@dataclass(frozen=True)
class Accumulated:
    """pycocotools' ``COCOeval.eval`` arrays: ``precision`` and ``scores`` (T, R, K, A, M),
    ``recall`` (T, K, A, M) for IoU thresholds x recall thresholds x categories x area ranges x
    maxDets; -1 where a category has no (non-ignored) ground truth in an area range."""

    precision: np.ndarray
    recall: np.ndarray
    scores: np.ndarray


def evaluate_boxes(
    ground_truth: GroundTruthBoxes,
    detections: DetectionBoxes,
    *,
    num_images: int,
    num_categories: int,
    area_ranges: Sequence[tuple[float, float]],
    max_dets: Sequence[int],
    iou_thresholds: np.ndarray = IOU_THRESHOLDS,
    recall_thresholds: np.ndarray = RECALL_THRESHOLDS,
) -> Accumulated:
    """pycocotools' ``evaluate()`` + ``accumulate()`` for ``area_ranges`` (``[lo, hi]`` px^2, both
    ends inclusive) and ``max_dets`` (ascending, as pycocotools sorts them). See the module
    docstring for the rules."""
    num_categories = int(num_categories)
    for boxes in (ground_truth, detections):
        if len(boxes.category) and not 0 <= boxes.category.min() <= boxes.category.max() < num_categories:
            raise ValueError(f"{type(boxes).__name__}: category indices must lie in [0, {num_categories})")
    ranges = np.asarray(area_ranges, dtype=np.float64).reshape(-1, 2)
    max_dets = sorted(int(m) for m in max_dets)
    # pycocotools matches at IoU >= min(t, 1 - 1e-10), so that t = 1 still matches a perfect box.
    thresholds = np.minimum(np.asarray(iou_thresholds, dtype=np.float64), 1 - 1e-10)
    dets = _ranked_detections(detections, num_categories, max_dets[-1])
    gts = _grouped_ground_truth(ground_truth, num_categories)

    gt_ignored = gts["crowd"][None, :] | _outside(gts["area"], ranges)  # (A, G)
    det_outside = _outside(dets["area"], ranges)  # (A, D)
    edge_det, edge_gt, edge_iou = _overlaps(dets, gts, float(thresholds.min()))
    matched, ignored = _match(dets, gts, gt_ignored, det_outside, edge_det, edge_gt, edge_iou, thresholds)
    return _accumulate(dets, gts, gt_ignored, matched, ignored, num_categories, max_dets, recall_thresholds, len(thresholds))


@dataclass(frozen=True)
class MatchedDetections:
    """pycocotools' matching at one IoU threshold, area range "all": one row per detection that
    counts (at most ``max_det`` per image and category, the best-scored), in accumulation order
    (by category, then score, highest first). ``category`` int64 (D,), ``score`` float64 (D,),
    ``matched`` bool (D,): matched to a (non-crowd) ground-truth box of its category;
    ``ignored`` bool (D,): matched to a crowd region (neither a true nor a false positive).
    ``num_gt`` int64 (K,): non-crowd ground-truth boxes per category."""

    category: np.ndarray
    score: np.ndarray
    matched: np.ndarray
    ignored: np.ndarray
    num_gt: np.ndarray


def match_detections(
    ground_truth: GroundTruthBoxes,
    detections: DetectionBoxes,
    *,
    num_categories: int,
    iou_threshold: float,
    max_det: int,
) -> MatchedDetections:
    """Which detections pycocotools counts as true positives at ``iou_threshold`` (area "all",
    ``max_det`` detections per image and category): the matching behind AP at that IoU, so
    precision and recall at a score threshold agree with COCO's curves. See the module
    docstring for the rules."""
    num_categories = int(num_categories)
    dets = _ranked_detections(detections, num_categories, int(max_det))
    gts = _grouped_ground_truth(ground_truth, num_categories)
    thresholds = np.minimum(np.asarray([iou_threshold], dtype=np.float64), 1 - 1e-10)
    everything = np.array([[0.0, 1e5**2]])  # pycocotools' area range "all"
    gt_ignored = gts["crowd"][None, :] | _outside(gts["area"], everything)
    det_outside = _outside(dets["area"], everything)
    edge_det, edge_gt, edge_iou = _overlaps(dets, gts, float(thresholds[0]))
    matched, ignored = _match(dets, gts, gt_ignored, det_outside, edge_det, edge_gt, edge_iou, thresholds)
    num_gt = np.bincount(gts["category"][~gt_ignored[0]], minlength=num_categories).astype(np.int64)
    return MatchedDetections(dets["category"], dets["score"], matched[0, 0], ignored[0, 0], num_gt)


def _check_rows(boxes: GroundTruthBoxes | DetectionBoxes, columns: tuple[str, ...]) -> None:
    xywh = boxes.xywh
    if xywh.ndim != 2 or xywh.shape[1] != 4:
        raise ValueError(f"{type(boxes).__name__}: xywh must have shape (N, 4), got {xywh.shape}")
    for column in columns:
        if getattr(boxes, column).shape != (len(xywh),):
            raise ValueError(f"{type(boxes).__name__}: {column} must have shape ({len(xywh)},), got {getattr(boxes, column).shape}")


def _outside(area: np.ndarray, ranges: np.ndarray) -> np.ndarray:
    """bool (A, N): area outside each [lo, hi] (pycocotools: ``area < lo or area > hi``)."""
    return (area[None, :] < ranges[:, :1]) | (area[None, :] > ranges[:, 1:])


def _ranked_detections(detections: DetectionBoxes, num_categories: int, max_det: int) -> dict[str, np.ndarray]:
    """The detections that count: per (image, category) pair the ``max_det`` best (``rank`` is the
    place in the pair: by score, equal scores in input order), in accumulation order: by category,
    then score (highest first), then image, then rank. That is the order of pycocotools' stable
    sort of the per-image lists concatenated in image order, so accumulation reads each
    category's detections as one slice, and matching finds a pair's detections by ``rank``."""
    pair = detections.image.astype(np.int64) * num_categories + detections.category.astype(np.int64)
    by_pair = np.lexsort((-detections.score, pair))  # lexsort is stable: equal scores keep input order
    rank = _rank_in_runs(pair[by_pair])
    kept, rank = by_pair[rank < max_det], rank[rank < max_det]
    image, category = detections.image[kept].astype(np.int64), detections.category[kept].astype(np.int64)
    score = detections.score[kept].astype(np.float64)
    order = np.lexsort((rank, image, -score, category))
    kept, rank, image, category, score = kept[order], rank[order], image[order], category[order], score[order]
    xywh = detections.xywh[kept].astype(np.float64)
    return {
        "pair": image * num_categories + category,
        "rank": rank,
        "image": image,
        "category": category,
        "xywh": xywh,
        "area": xywh[:, 2] * xywh[:, 3],
        "score": score,
    }


def _grouped_ground_truth(ground_truth: GroundTruthBoxes, num_categories: int) -> dict[str, np.ndarray]:
    """Ground truth grouped by (image, category) pair, each pair in input order."""
    pair = ground_truth.image.astype(np.int64) * num_categories + ground_truth.category.astype(np.int64)
    order = np.argsort(pair, kind="stable")
    return {
        "pair": pair[order],
        "category": ground_truth.category[order].astype(np.int64),
        "xywh": ground_truth.xywh[order].astype(np.float64),
        "area": ground_truth.area[order].astype(np.float64),
        "crowd": ground_truth.crowd[order].astype(bool),
        "id_nonzero": ground_truth.id_nonzero[order].astype(bool),
    }


def _rank_in_runs(sorted_keys: np.ndarray) -> np.ndarray:
    """int64: 0, 1, 2, ... within each run of equal consecutive keys."""
    n = len(sorted_keys)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
    run_start = np.repeat(starts, np.diff(np.r_[starts, n]))
    return np.arange(n, dtype=np.int64) - run_start


def _overlaps(dets: dict, gts: dict, min_iou: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(detection, ground truth) pairs of the same image and category with IoU >= ``min_iou``,
    grouped by detection (ascending): their indices and IoUs.

    Crowd regions are searched apart from the other ground truth: they are usually much wider
    than the objects, and the search window below grows with the widest box searched."""
    found = [
        _overlaps_among(dets, gts, np.flatnonzero(gts["crowd"] == crowd), min_iou)
        for crowd in (False, True)
        if np.any(gts["crowd"] == crowd)
    ]
    if not found:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    det, gt, iou = (np.concatenate(parts) for parts in zip(*found))
    order = np.argsort(det, kind="stable")
    return det[order], gt[order], iou[order]


def _overlaps_among(dets: dict, gts: dict, members: np.ndarray, min_iou: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`_overlaps` for the ground truth ``members`` (ascending indices) only.

    Only ground truth whose x-interval can overlap the detection's is tried: per pair, ground
    truth sorted by x, searched in ``(x_det - widest_gt, x_det + w_det)`` (widened by one unit
    so that float rounding of the search keys cannot drop a candidate). Boxes that do not overlap
    in x have IoU 0 (``bbIou``'s ``w <= 0``), so nothing with IoU >= ``min_iou`` > 0 is lost."""
    g_pair, g_xywh = gts["pair"][members], gts["xywh"][members]
    gx, gw, dx, dw = g_xywh[:, 0], g_xywh[:, 2], dets["xywh"][:, 0], dets["xywh"][:, 2]
    # Widest ground truth of each pair, for the pair of each detection.
    pair_starts = np.flatnonzero(np.r_[True, g_pair[1:] != g_pair[:-1]])
    widest = np.maximum.reduceat(np.maximum(gw, 0.0), pair_starts)
    slot = np.minimum(np.searchsorted(g_pair[pair_starts], dets["pair"]), len(pair_starts) - 1)
    has_gt = g_pair[pair_starts][slot] == dets["pair"]
    det_widest = np.where(has_gt, widest[slot], 0.0)
    # Search keys: pair * stride + x offset, with every offset clipped into [0, span].
    finite = np.isfinite
    x_min = float(min(gx[finite(gx)].min(initial=0.0), dx[finite(dx)].min(initial=0.0)))
    span = float(max(gx[finite(gx)].max(initial=0.0), dx[finite(dx)].max(initial=0.0)) - x_min) + 1.0
    stride = 2.0 * span + 4.0
    offset = np.clip(np.nan_to_num(gx - x_min, nan=0.0), 0.0, span)  # NaN boxes overlap nothing anyway
    by_x = np.lexsort((offset, g_pair))
    keys = g_pair[by_x] * stride + offset[by_x]
    base = dets["pair"] * stride
    lo_key = base + np.clip(np.nan_to_num(dx - det_widest - 1.0 - x_min, nan=0.0), 0.0, span)
    hi_key = base + np.clip(np.nan_to_num(dx + np.maximum(dw, 0.0) + 1.0 - x_min, nan=span), 0.0, span)
    first = np.searchsorted(keys, lo_key, side="left")
    count = np.where(has_gt, np.searchsorted(keys, hi_key, side="right") - first, 0)
    found_det, found_gt, found_iou = [], [], []
    ends = np.cumsum(count)
    lo = int(np.searchsorted(ends, 0, side="right"))  # skip detections without candidates
    while lo < len(count):
        # Detections [lo, hi) whose candidate pairs fit one chunk (at least one detection).
        hi = max(lo + 1, int(np.searchsorted(ends, ends[lo] - count[lo] + _IOU_CHUNK_PAIRS, side="right")))
        n = count[lo:hi]
        det = np.repeat(np.arange(lo, hi), n)
        within = np.arange(len(det)) - np.repeat(np.cumsum(n) - n, n)
        gt = members[by_x[np.repeat(first[lo:hi], n) + within]]
        iou = _bbox_iou(dets["xywh"][det], gts["xywh"][gt], gts["crowd"][gt])
        keep = iou >= min_iou
        found_det.append(det[keep])
        found_gt.append(gt[keep])
        found_iou.append(iou[keep])
        lo = hi
    if not found_det:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    return np.concatenate(found_det), np.concatenate(found_gt), np.concatenate(found_iou)


def _bbox_iou(d: np.ndarray, g: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """Row-wise IoU of detection ``d[i]`` with ground truth ``g[i]`` (both (N, 4) xywh), in
    ``maskApi.c`` ``bbIou``'s float64 operations; crowd ground truth: intersection / detection area."""
    det_area = d[:, 2] * d[:, 3]
    gt_area = g[:, 2] * g[:, 3]
    w = np.minimum(d[:, 2] + d[:, 0], g[:, 2] + g[:, 0]) - np.maximum(d[:, 0], g[:, 0])
    h = np.minimum(d[:, 3] + d[:, 1], g[:, 3] + g[:, 1]) - np.maximum(d[:, 1], g[:, 1])
    overlap = (w > 0) & (h > 0)
    inter = w * h
    union = np.where(crowd, det_area, det_area + gt_area - inter)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(overlap, inter / np.where(overlap, union, 1.0), 0.0)


def _match(
    dets: dict,
    gts: dict,
    gt_ignored: np.ndarray,
    det_outside: np.ndarray,
    edge_det: np.ndarray,
    edge_gt: np.ndarray,
    edge_iou: np.ndarray,
    thresholds: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """pycocotools' greedy matching for every area range and IoU threshold at once.

    Returns ``matched`` and ``ignored``, bool (A, T, D): the detection counts as matched (``dtm``
    non-zero) / is ignored (``dtIg``)."""
    num_ranges, num_dets, num_thresholds = det_outside.shape[0], len(dets["pair"]), len(thresholds)
    matched = np.zeros((num_ranges, num_thresholds, num_dets), dtype=bool)
    ignored = np.repeat(det_outside[:, None, :], num_thresholds, axis=1)
    if len(edge_det) == 0:
        return matched, ignored
    taken = np.zeros((num_ranges, num_thresholds, len(gts["pair"])), dtype=bool)

    # Step k handles the k-th overlapping detection of every (image, category): the detections
    # of one step never share ground truth, and earlier steps hold the better-scored ones.
    candidates, edge_candidate = np.unique(edge_det, return_inverse=True)  # edges are grouped by detection, ascending
    candidate_pair, candidate_rank = dets["pair"][candidates], dets["rank"][candidates]
    by_pair = np.lexsort((candidate_rank, candidate_pair))
    step_of_candidate = np.empty(len(candidates), dtype=np.int64)
    step_of_candidate[by_pair] = _rank_in_runs(candidate_pair[by_pair])
    edge_step = step_of_candidate[edge_candidate]
    by_step = np.argsort(edge_step, kind="stable")  # keeps each detection's edges together
    edge_det, edge_gt, edge_iou, edge_step = edge_det[by_step], edge_gt[by_step], edge_iou[by_step], edge_step[by_step]
    bounds = np.searchsorted(edge_step, np.arange(step_of_candidate.max() + 2))
    crowd, id_nonzero = gts["crowd"], gts["id_nonzero"]
    above = edge_iou[None, :] >= thresholds[:, None]  # (T, E)

    for lo, hi in itertools.pairwise(bounds):
        det, gt, iou = edge_det[lo:hi], edge_gt[lo:hi], edge_iou[lo:hi]
        starts = np.flatnonzero(np.r_[True, det[1:] != det[:-1]])  # each detection's first edge
        owner = np.cumsum(np.r_[True, det[1:] != det[:-1]]) - 1  # edge -> its detection in `starts`
        ign = gt_ignored[:, gt][:, None, :]  # (A, 1, E)
        eligible = above[None, :, lo:hi] & (~taken[:, :, gt] | crowd[gt])  # (A, T, E)
        # Ground truth that is not ignored wins if any is eligible; else the ignored may match.
        has_regular = np.logical_or.reduceat(eligible & ~ign, starts, axis=2)
        candidate = eligible & (ign ^ has_regular[:, :, owner])
        value = np.where(candidate, iou, -1.0)
        best = np.maximum.reduceat(value, starts, axis=2)
        is_best = candidate & (value == best[:, :, owner])
        # Equal IoUs: the later ground truth in input order (pycocotools' `>=` while scanning);
        # ground-truth indices follow input order within a pair.
        chosen = np.maximum.reduceat(np.where(is_best, gt, -1), starts, axis=2)
        a, t, j = np.nonzero(chosen >= 0)
        g = chosen[a, t, j]
        d = det[starts[j]]
        taken[a, t, g] = True
        matched[a, t, d] = id_nonzero[g]
        ignored[a, t, d] = gt_ignored[a, g] | (~id_nonzero[g] & det_outside[a, d])
    return matched, ignored


def _accumulate(
    dets: dict,
    gts: dict,
    gt_ignored: np.ndarray,
    matched: np.ndarray,
    ignored: np.ndarray,
    num_categories: int,
    max_dets: list[int],
    recall_thresholds: np.ndarray,
    num_thresholds: int,
) -> Accumulated:
    """pycocotools' ``accumulate``: the precision/recall curves of every category, area range and
    maxDets, read at the recall thresholds."""
    num_ranges = gt_ignored.shape[0]
    shape = (num_thresholds, len(recall_thresholds), num_categories, num_ranges, len(max_dets))
    precision = -np.ones(shape)
    scores = -np.ones(shape)
    recall = -np.ones((num_thresholds, num_categories, num_ranges, len(max_dets)))
    # Non-ignored ground truth per category and area range (pycocotools' npig).
    npig = np.stack([np.bincount(gts["category"][~gt_ignored[a]], minlength=num_categories) for a in range(num_ranges)], axis=1)
    # Detections come in accumulation order (see _ranked_detections): a category is a slice.
    true_positive = matched & ~ignored  # (A, T, D)
    rank, score = dets["rank"], dets["score"]
    bounds = np.searchsorted(dets["category"], np.arange(num_categories + 1))
    for k in range(num_categories):
        for m, max_det in enumerate(max_dets):
            selected: slice | np.ndarray = slice(bounds[k], bounds[k + 1])
            if max_det < max_dets[-1]:  # fewer detections per image: a subsequence, same order
                selected = bounds[k] + np.flatnonzero(rank[selected] < max_det)
            for a in range(num_ranges):
                if npig[k, a] > 0:  # else -1: no ground truth to recall
                    curve = _curves(true_positive[a][:, selected], ignored[a][:, selected], score[selected], npig[k, a], recall_thresholds)
                    precision[:, :, k, a, m], scores[:, :, k, a, m], recall[:, k, a, m] = curve
    return Accumulated(precision=precision, recall=recall, scores=scores)


def _curves(
    true_positive: np.ndarray, ignored: np.ndarray, sorted_scores: np.ndarray, npig: int, recall_thresholds: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Interpolated precision and scores (T, R) and final recall (T,) of one category, area range
    and maxDets from its detections in score order: ``true_positive`` / ``ignored`` bool (T, n).

    pycocotools computes ``tp_sum / npig`` and ``tp_sum / (fp_sum + tp_sum + eps)`` at every
    detection, makes precision non-increasing from the right and reads it where recall first
    reaches each threshold. Recall rises only at true positives, and from any detection on the
    largest precision is found at a true positive (false positives lower it, ignored detections
    repeat it), so the same floats come out of the true positives alone: the k-th true positive at
    place p has ``tp_sum = k`` and ``fp_sum = p + 1 - k - (ignored up to p)``. The one exception
    is a recall threshold <= 0, reached at the first detection whatever it is (its score)."""
    num_thresholds, n = true_positive.shape
    precision = np.zeros((num_thresholds, len(recall_thresholds)))
    scores = np.zeros((num_thresholds, len(recall_thresholds)))
    recall = np.zeros(num_thresholds)
    if n == 0:
        return precision, scores, recall
    # Flat indices t * n + p, by threshold then place (flatnonzero of a contiguous copy is several
    # times faster than a 2-D nonzero of the strided view).
    tp_flat = np.flatnonzero(np.ascontiguousarray(true_positive))
    ignored_flat = np.flatnonzero(np.ascontiguousarray(ignored))
    t_tp = tp_flat // n
    p_tp = tp_flat - t_tp * n
    ignored_up_to = np.searchsorted(ignored_flat, tp_flat, side="right") - np.searchsorted(ignored_flat, t_tp * n)
    k = _rank_in_runs(t_tp) + 1
    tp_sum = k.astype(float)
    fp_sum = (p_tp + 1 - k - ignored_up_to).astype(float)
    rc = tp_sum / npig
    pr = tp_sum / (fp_sum + tp_sum + _EPS)
    runs = np.searchsorted(t_tp, np.arange(num_thresholds + 1))
    at_start = recall_thresholds <= 0
    for t in range(num_thresholds):
        run = slice(runs[t], runs[t + 1])
        rc_t, places = rc[run], p_tp[run]
        if len(rc_t) == 0:
            precision[t, at_start] = 0.0
            scores[t, at_start] = sorted_scores[0]
            continue
        pr_t = np.maximum.accumulate(pr[run][::-1])[::-1]
        recall[t] = rc_t[-1]
        inds = np.searchsorted(rc_t, recall_thresholds, side="left")
        reached = inds < len(rc_t)
        precision[t, reached] = pr_t[inds[reached]]
        scores[t, reached] = sorted_scores[places[inds[reached]]]
        precision[t, at_start] = pr_t[0]
        scores[t, at_start] = sorted_scores[0]
    return precision, scores, recall
