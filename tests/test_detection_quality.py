"""Precision, recall, F1, the F1-confidence curve and the confusion matrix
(beedet/evaluation/detection_quality.py) on cases counted by hand, against COCO's matching, and
their charts and table."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from beedet.evaluation.coco_engine import DetectionBoxes, GroundTruthBoxes, evaluate_boxes
from beedet.evaluation.detection_quality import (
    _greedy_pairs,
    box_iou,
    class_table_markdown,
    confusion_matrix,
    detection_quality,
    f1_curve,
    match_by_class,
    precision_recall,
)
from beedet.evaluation.plots import confusion_matrix_plot, f1_curve_plot
from beedet.evaluation.results import PrecisionRecall

NAMES = ["bee", "drone", "queen"]


def _truth(boxes: list, labels: list) -> dict[str, np.ndarray]:
    return {"boxes": np.array(boxes, dtype=np.float32).reshape(-1, 4), "labels": np.array(labels, dtype=np.int64)}


def _pred(boxes: list, scores: list, labels: list) -> dict[str, np.ndarray]:
    return {**_truth(boxes, labels), "scores": np.array(scores, dtype=np.float32)}


# Image 0: three bees and a drone.
#   bee A [0,0,10,10]  found by a 0.9 bee (exact) and again by a 0.8 bee (a duplicate: a false positive)
#   bee B [20,0,30,10] found by a 0.7 bee slightly shifted (IoU 9/11 = 0.82)
#   bee C [40,0,50,10] found only by a 0.3 bee (below the 0.5 threshold)
#   drone D [0,20,10,30] detected as a bee at 0.6 (class confusion) and missed as a drone
#   a 0.55 queen on empty ground [60,60,70,70] (a false positive)
# Image 1: one queen Q [0,0,20,20] detected as a queen at 0.95; a 0.4 drone elsewhere (below 0.5).
TRUTHS = [
    _truth([[0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10], [0, 20, 10, 30]], [0, 0, 0, 1]),
    _truth([[0, 0, 20, 20]], [2]),
]
PREDICTIONS = [
    _pred([[0, 0, 10, 10], [0, 0, 10, 10], [21, 0, 31, 10], [40, 0, 50, 10], [0, 20, 10, 30], [60, 60, 70, 70]],
          [0.9, 0.8, 0.7, 0.3, 0.6, 0.55], [0, 0, 0, 0, 0, 2]),
    _pred([[0, 0, 20, 20], [50, 50, 60, 60]], [0.95, 0.4], [2, 1]),
]


def test_precision_recall_and_f1_at_a_threshold_counted_by_hand():
    matches = match_by_class(TRUTHS, PREDICTIONS, len(NAMES))
    overall, per_class = precision_recall(matches, NAMES, 0.5)
    # Kept bees: 0.9 (A), 0.8 (duplicate of A), 0.7 (B), 0.6 (on the drone: no bee there).
    assert per_class["bee"] == PrecisionRecall(true_positives=2, false_positives=2, false_negatives=1)
    assert (per_class["bee"].precision, per_class["bee"].recall) == (0.5, pytest.approx(2 / 3))
    assert per_class["bee"].f1 == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    # The drone: nothing kept is a drone (the 0.4 one is below the threshold): precision 0, not None.
    assert per_class["drone"] == PrecisionRecall(0, 0, 1)
    assert (per_class["drone"].precision, per_class["drone"].recall, per_class["drone"].f1) == (0.0, 0.0, 0.0)
    # The queen: found (0.95), plus the 0.55 queen on empty ground.
    assert per_class["queen"] == PrecisionRecall(1, 1, 0)
    # All classes pooled: 3 TP, 3 FP, 2 missed (C, D).
    assert overall == PrecisionRecall(3, 3, 2)
    assert (overall.precision, overall.recall, overall.f1) == (0.5, 0.6, pytest.approx(6 / 11))
    assert overall.instances == 5

    # At 0.3 bee C counts, and at 0.96 nothing is kept.
    assert precision_recall(matches, NAMES, 0.3)[1]["bee"] == PrecisionRecall(3, 2, 0)
    nothing = precision_recall(matches, NAMES, 0.96)[0]
    assert nothing == PrecisionRecall(0, 0, 5) and nothing.precision == 0.0 and nothing.f1 == 0.0


def test_undefined_values_are_none_not_zero():
    empty = PrecisionRecall(0, 0, 0)
    assert (empty.precision, empty.recall, empty.f1) == (None, None, None)
    only_false = PrecisionRecall(0, 3, 0)  # a class without ground truth that was "detected"
    assert (only_false.precision, only_false.recall, only_false.f1) == (0.0, None, 0.0)
    assert only_false.to_dict() == {"precision": 0.0, "recall": None, "F1": 0.0, "instances": 0,
                                    "true_positives": 0, "false_positives": 3, "false_negatives": 0}


def test_confusion_matrix_counted_by_hand():
    confusion = confusion_matrix(TRUTHS, PREDICTIONS, NAMES, 0.5)
    expected = np.array([
        # predicted: bee, drone, queen, background (missed)
        [2, 0, 0, 1],  # true bee: A and B found, C missed (its detection scores 0.3)
        [1, 0, 0, 0],  # true drone: detected as a bee
        [0, 0, 1, 0],  # true queen: found
        [1, 0, 1, 0],  # background: the duplicate bee on A, the queen on empty ground
    ])
    np.testing.assert_array_equal(confusion.matrix, expected)
    assert confusion.labels == [*NAMES, "background"] and confusion.threshold == 0.5
    # Row sums are the ground truth per class; column sums the kept detections per class.
    assert confusion.matrix[:3].sum(axis=1).tolist() == [3, 1, 1]
    assert confusion.matrix[:, :3].sum(axis=0).tolist() == [4, 0, 2]
    # A lower threshold moves bee C from missed to found and adds the 0.4 drone as a false positive.
    low = confusion_matrix(TRUTHS, PREDICTIONS, NAMES, 0.3).matrix
    assert low[0].tolist() == [3, 0, 0, 0] and low[3].tolist() == [1, 1, 1, 0]


def test_confusion_matching_is_greedy_by_iou_across_classes():
    # Detection 0 overlaps truth 0 best (0.9); detection 1 prefers truth 0 (0.8) but also overlaps
    # truth 1 (0.7). Ultralytics' two np.unique passes would leave detection 1 and truth 1
    # unmatched; the greedy pass pairs them.
    iou = np.array([[0.9, 0.8], [0.0, 0.7]])
    rows, cols = _greedy_pairs(iou, 0.5)
    assert sorted(zip(rows.tolist(), cols.tolist())) == [(0, 0), (1, 1)]
    # Nothing at or above the threshold: no pairs.
    assert [len(a) for a in _greedy_pairs(np.array([[0.49]]), 0.5)] == [0, 0]


def test_box_iou_by_hand():
    iou = box_iou(np.array([[0, 0, 10, 10]]), np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30], [0, 0, 0, 0]]))
    np.testing.assert_allclose(iou, [[1.0, 50 / 150, 0.0, 0.0]])


def test_recall_at_threshold_zero_is_cocos_recall_at_iou_50():
    rng = np.random.default_rng(3)
    truths, predictions = [], []
    for _ in range(12):
        n, m = rng.integers(0, 8), rng.integers(0, 12)
        xy = rng.uniform(0, 200, (n, 2))
        truths.append(_truth(np.c_[xy, xy + rng.uniform(8, 40, (n, 2))].tolist(), rng.integers(0, 3, n).tolist()))
        # Detections: jittered copies of some ground truth plus random boxes, random classes and scores.
        copies = truths[-1]["boxes"][: m // 2] + rng.normal(0, 3, (min(n, m // 2), 4))
        xy = rng.uniform(0, 200, (m - len(copies), 2))
        boxes = np.r_[copies, np.c_[xy, xy + rng.uniform(8, 40, (len(xy), 2))]]
        labels = np.r_[truths[-1]["labels"][: len(copies)], rng.integers(0, 3, len(xy))]
        predictions.append(_pred(boxes.tolist(), rng.uniform(0, 1, len(boxes)).tolist(), labels.tolist()))
    matches = match_by_class(truths, predictions, 3)
    _, per_class = precision_recall(matches, NAMES, 0.0)

    def rows(items, with_scores):
        image = np.repeat(np.arange(len(items)), [len(i["labels"]) for i in items])
        boxes = np.concatenate([i["boxes"] for i in items]).astype(np.float64)
        xywh = np.c_[boxes[:, :2], boxes[:, 2:] - boxes[:, :2]]
        labels = np.concatenate([i["labels"] for i in items])
        if with_scores:
            return DetectionBoxes(image, labels, xywh, np.concatenate([i["scores"] for i in items]).astype(np.float64))
        return GroundTruthBoxes(image, labels, xywh, xywh[:, 2] * xywh[:, 3], np.zeros(len(labels), bool), np.ones(len(labels), bool))

    coco = evaluate_boxes(rows(truths, False), rows(predictions, True), num_images=len(truths), num_categories=3,
                          area_ranges=[(0.0, 1e10)], max_dets=[1, 10, 100])
    for k, name in enumerate(NAMES):
        assert per_class[name].recall == pytest.approx(float(coco.recall[0, k, 0, -1])), name
    assert sum(v.instances for v in per_class.values()) == sum(len(t["labels"]) for t in truths)


def test_f1_curve_agrees_with_the_numbers_at_each_threshold():
    matches = match_by_class(TRUTHS, PREDICTIONS, len(NAMES))
    curve = f1_curve(matches, NAMES)
    assert curve.thresholds.shape == (101,) and curve.thresholds[0] == 0.0 and curve.thresholds[-1] == 1.0
    for t in (0.0, 0.3, 0.5, 0.61, 0.9, 1.0):
        index = int(np.flatnonzero(np.isclose(curve.thresholds, t))[0])
        overall, per_class = precision_recall(matches, NAMES, t)
        assert curve.overall.f1[index] == pytest.approx(overall.f1)
        assert curve.overall.precision[index] == pytest.approx(overall.precision)
        assert curve.per_class["bee"].recall[index] == pytest.approx(per_class["bee"].recall)
    # Best overall F1 (2 TP / (2 TP + FP + FN)): at 0.56..0.60 the kept are the 0.95 queen, 0.9 (A),
    # 0.8 (duplicate), 0.7 (B) and 0.6 (on the drone): 3 TP, 2 FP, 2 FN -> 0.6; from 0.61 the false
    # bee on the drone goes (3, 1, 2) -> 2/3; from 0.71 B goes (2, 1, 3) -> 1/2; from 0.81 the
    # duplicate goes (2, 0, 3) -> 4/7; at 0.3 everything counts (4, 4, 1) -> 8/13.
    assert curve.best() == (pytest.approx(0.61), pytest.approx(2 / 3))


def test_detection_quality_bundles_it_all_and_serialises():
    quality = detection_quality(TRUTHS, PREDICTIONS, NAMES, 0.5)
    assert quality.overall == PrecisionRecall(3, 3, 2) and quality.confusion.matrix[1, 0] == 1
    as_dict = quality.to_dict()
    assert as_dict["threshold"] == 0.5 and as_dict["iou_threshold"] == 0.5
    assert as_dict["per_class"]["queen"]["precision"] == 0.5
    assert as_dict["confusion_matrix"]["counts"][3] == [1, 0, 1, 0]


def test_class_table_markdown_reads_undefined_values_as_na():
    table = {"bee": {"instances": 3, "precision": 0.5, "recall": 2 / 3, "F1": 0.571, "AP50": 0.7, "AP": 0.4},
             "queen": {"instances": 0, "precision": None, "recall": None, "F1": None, "AP50": None, "AP": None}}
    lines = class_table_markdown(table, {"instances": 3, "precision": 0.5, "recall": 2 / 3, "F1": 0.571},
                                 {"AP50": 0.7, "mAP": 0.4})
    assert lines[0] == "| class | instances | P | R | F1 | AP50 | AP@[.5:.95] |"
    assert lines[2] == "| all | 3 | 0.500 | 0.667 | 0.571 | 0.700 | 0.400 |"
    assert lines[4] == "| queen | 0 | n/a | n/a | n/a | n/a | n/a |"


def test_quality_charts_render_without_touching_pyplot():
    import matplotlib

    backend = matplotlib.get_backend()
    quality = detection_quality(TRUTHS, PREDICTIONS, NAMES, 0.5)
    curve = f1_curve(match_by_class(TRUTHS, PREDICTIONS, len(NAMES)), NAMES)
    for picture in (confusion_matrix_plot(quality.confusion), f1_curve_plot(curve, {"count threshold": 0.5})):
        assert picture.dtype == torch.uint8 and picture.ndim == 3 and picture.shape[0] == 3
        assert min(picture.shape[1:]) >= 300 and picture.float().std() > 10
    assert matplotlib.get_backend() == backend


def test_inputs_with_bad_class_ids_are_refused():
    with pytest.raises(ValueError, match="class ids must be 0-based"):
        match_by_class([_truth([[0, 0, 1, 1]], [3])], [_pred([], [], [])], len(NAMES))
    with pytest.raises(ValueError, match="2 ground-truth images but 1 predictions"):
        confusion_matrix(TRUTHS, PREDICTIONS[:1], NAMES, 0.5)
