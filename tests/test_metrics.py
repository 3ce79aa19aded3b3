"""beedet.evaluation.coco_metrics must report exactly what pycocotools reports, only faster."""

from __future__ import annotations

import contextlib
import copy
import io
import json

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from beedet.data.records import ImageRecord
from beedet.evaluation.coco_json import CocoFormatError
from beedet.evaluation.coco_metrics import detections_to_coco, evaluate_coco, evaluate_records
from beedet.evaluation.results import STAT_KEYS, CocoMetrics, stat_keys
from beedet.evaluation.size_bins import record_box_areas, resolve_size_bins, size_bin_edges, size_bin_ranges

TOLERANCE = 1e-6


def random_case(seed: int) -> tuple[dict, list[dict]]:
    """Random COCO ground truth and detections that exercise every corner of COCO evaluation:
    small/medium/large boxes, crowd boxes, images without ground truth or without detections, a
    category without ground truth, misclassified and duplicate detections, and images with more
    than 100 detections (maxDets)."""
    rng = np.random.default_rng(seed)
    num_images = int(rng.integers(30, 201))
    num_categories = int(rng.integers(1, 6))
    categories = [{"id": k + 1, "name": f"class{k}"} for k in range(num_categories + 1)]
    no_gt_category = int(rng.integers(1, num_categories + 2))  # detections only, never ground truth
    gt_categories = [c["id"] for c in categories if c["id"] != no_gt_category]

    images, annotations, detections = [], [], []
    for image_id in range(1, num_images + 1):
        width, height = (int(v) for v in rng.integers(64, 1400, size=2))
        images.append({"id": image_id, "width": width, "height": height, "file_name": f"{image_id}.jpg"})
        num_gt = 0 if rng.random() < 0.2 else int(rng.integers(1, 16))
        boxes = [_random_box(rng, width, height) for _ in range(num_gt)]
        for box in boxes:
            annotations.append({
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": int(rng.choice(gt_categories)),
                "bbox": box,
                "area": box[2] * box[3],
                "iscrowd": int(rng.random() < 0.04),
            })
        if rng.random() < 0.15:
            continue  # an image the detector found nothing in
        image_gt = annotations[len(annotations) - num_gt :]
        detections += _random_detections(rng, image_id, image_gt, width, height, [c["id"] for c in categories])
    return {"images": images, "annotations": annotations, "categories": categories}, detections


def _random_box(rng: np.random.Generator, width: int, height: int) -> list[float]:
    side = float(np.exp(rng.uniform(np.log(4), np.log(700))))  # sqrt(area) spans all COCO ranges
    aspect = float(np.exp(rng.uniform(-0.7, 0.7)))
    w, h = min(side * aspect, width - 1.0), min(side / aspect, height - 1.0)
    x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
    return [float(x), float(y), float(w), float(h)]


def _random_detections(rng, image_id, image_gt, width, height, category_ids) -> list[dict]:
    dets = []
    for gt in image_gt:
        for _ in range(int(rng.choice([0, 1, 1, 1, 2]))):  # misses, hits and duplicates
            x, y, w, h = gt["bbox"]
            jitter = rng.normal(0, rng.uniform(0.0, 0.1), size=4) * [w, h, w, h]  # IoUs across 0.5..0.95
            category = gt["category_id"] if rng.random() < 0.9 else int(rng.choice(category_ids))
            box = [x + jitter[0], y + jitter[1], max(w + jitter[2], 1.0), max(h + jitter[3], 1.0)]
            dets.append((category, box, rng.uniform(0.2, 1.0)))
    crowded = rng.random() < 0.08
    num_false = int(rng.integers(100, 160)) if crowded else int(rng.integers(0, 8))
    for _ in range(num_false):
        dets.append((int(rng.choice(category_ids)), _random_box(rng, width, height), rng.uniform(0.0, 0.6)))
    return [
        {"image_id": image_id, "category_id": category, "bbox": [float(v) for v in box], "score": float(score)}
        for category, box, score in dets
    ]


def pycocotools_eval(
    ground_truth: dict,
    detections: list[dict],
    extra_area_ranges: list[tuple[str, float, float]] = (),
    max_detections: int = 100,
) -> COCOeval:
    """The reference: plain pycocotools, console output swallowed, with ``extra_area_ranges``
    appended to its area ranges and ``maxDets = [1, 10, max_detections]``. pycocotools' loadRes
    crashes on an empty result list, so an empty result set is built by hand as loadRes would."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(ground_truth)
        coco_gt.createIndex()
        if detections:
            coco_dt = coco_gt.loadRes(copy.deepcopy(detections))
        else:
            coco_dt = COCO()
            coco_dt.dataset = {**copy.deepcopy(ground_truth), "annotations": []}
            coco_dt.createIndex()
        evaluator = COCOeval(coco_gt, coco_dt, "bbox")
        evaluator.params.areaRng = [*evaluator.params.areaRng, *([lo, hi] for _, lo, hi in extra_area_ranges)]
        evaluator.params.areaRngLbl = [*evaluator.params.areaRngLbl, *(name for name, _, _ in extra_area_ranges)]
        evaluator.params.maxDets = [1, 10, max_detections]
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


def reference_per_class(evaluator: COCOeval, iou_index: slice | int) -> list[float | None]:
    """Per-class AP from pycocotools' precision[T, R, K, A, M]: mean over IoU and recall
    thresholds at area "all" and maxDets 100, excluding -1 (no ground truth)."""
    precision = evaluator.eval["precision"][iou_index, ..., 0, -1]
    per_class = []
    for k in range(precision.shape[-1]):
        values = precision[..., k]
        values = values[values > -1]
        per_class.append(float(values.mean()) if values.size else None)
    return per_class


def assert_matches_pycocotools(metrics: CocoMetrics, evaluator: COCOeval) -> None:
    for key, expected in zip(STAT_KEYS, evaluator.stats):
        assert metrics.stats[key] == pytest.approx(expected, abs=TOLERANCE), key
    for ours, expected in [
        (metrics.per_class_AP, reference_per_class(evaluator, slice(None))),
        (metrics.per_class_AP50, reference_per_class(evaluator, 0)),
    ]:
        assert list(ours) == [f"class{k}" for k in range(len(expected))]
        for name, want in zip(ours, expected):
            assert (ours[name] is None) == (want is None), name
            if want is not None:
                assert ours[name] == pytest.approx(want, abs=TOLERANCE), name


@pytest.mark.parametrize(("seed", "tied_scores"), [(0, False), (1, False), (2, False), (3, True), (4, True)])
def test_every_number_equals_pycocotools_on_random_data(seed: int, tied_scores: bool) -> None:
    ground_truth, detections = random_case(seed)
    if tied_scores:  # equal scores must be ranked as pycocotools' stable sort ranks them
        for detection in detections:
            detection["score"] = round(detection["score"], 1)
    images_with_many = np.bincount([d["image_id"] for d in detections]).max()
    assert images_with_many > 100, "the case must exercise maxDets=100"

    metrics = evaluate_coco(ground_truth, detections)
    reference = pycocotools_eval(ground_truth, detections)

    assert_matches_pycocotools(metrics, reference)
    assert metrics.stats["mAP"] > 0.1, "a near-trivial case would prove little"
    no_gt = [name for name, ap in metrics.per_class_AP.items() if ap is None]
    assert len(no_gt) == 1 and no_gt[0] not in metrics.pr_curves
    for k, name in enumerate(metrics.per_class_AP):
        if name in metrics.pr_curves:
            curve = metrics.pr_curves[name]
            np.testing.assert_allclose(curve.recall, reference.params.recThrs)
            np.testing.assert_allclose(curve.precision, reference.eval["precision"][0, :, k, 0, -1], atol=TOLERANCE)
            np.testing.assert_allclose(curve.scores, reference.eval["scores"][0, :, k, 0, -1], atol=TOLERANCE)


def test_inputs_are_not_modified() -> None:
    ground_truth, detections = random_case(5)
    before = copy.deepcopy((ground_truth, detections))
    evaluate_coco(ground_truth, detections)
    assert (ground_truth, detections) == before


def test_empty_detections_give_zero_ap_where_ground_truth_exists() -> None:
    ground_truth, _ = random_case(6)
    metrics = evaluate_coco(ground_truth, [])

    assert_matches_pycocotools(metrics, pycocotools_eval(ground_truth, []))
    assert metrics.stats["mAP"] == 0.0 and metrics.stats["AR100"] == 0.0
    assert sorted(set(metrics.per_class_AP.values()), key=str) == [0.0, None]
    assert all(np.all(curve.precision == 0) for curve in metrics.pr_curves.values())


def _one_box_ground_truth() -> dict:
    return {
        "images": [{"id": 1, "width": 200, "height": 100}, {"id": 2, "width": 50, "height": 50}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 20, 40, 30], "area": 1200, "iscrowd": 0}
        ],
        "categories": [{"id": 1, "name": "bee"}, {"id": 2, "name": "drone"}],
    }


def test_single_perfect_detection_gives_ap_one() -> None:
    detections = [{"image_id": 1, "category_id": 1, "bbox": [10, 20, 40, 30], "score": 0.9}]
    metrics = evaluate_coco(_one_box_ground_truth(), detections)

    assert metrics.stats["mAP"] == pytest.approx(1.0)
    assert metrics.stats["AP_medium"] == pytest.approx(1.0)
    assert metrics.stats["AP_small"] == -1.0 and metrics.stats["AP_large"] == -1.0
    assert metrics.per_class_AP == {"bee": pytest.approx(1.0), "drone": None}
    assert list(metrics.pr_curves) == ["bee"]
    np.testing.assert_allclose(metrics.pr_curves["bee"].scores, 0.9)


def test_class_names_follow_category_id_order() -> None:
    ground_truth = _one_box_ground_truth()
    ground_truth["categories"].reverse()
    detections = [{"image_id": 1, "category_id": 1, "bbox": [10, 20, 40, 30], "score": 0.9}]

    assert evaluate_coco(ground_truth, detections).per_class_AP == {"bee": pytest.approx(1.0), "drone": None}
    renamed = evaluate_coco(ground_truth, detections, class_names=["worker", "male"])
    assert renamed.per_class_AP == {"worker": pytest.approx(1.0), "male": None}
    with pytest.raises(ValueError, match="1 class names for 2"):
        evaluate_coco(ground_truth, detections, class_names=["bee"])


def test_to_dict_is_plain_json() -> None:
    ground_truth, detections = random_case(7)
    summary = evaluate_coco(ground_truth, detections).to_dict()

    assert json.loads(json.dumps(summary)) == summary
    assert set(summary) == {*STAT_KEYS, "per_class_AP", "per_class_AP50"}  # pycocotools' keys only
    assert all(type(summary[key]) is float for key in STAT_KEYS)
    assert all(v is None or type(v) is float for v in summary["per_class_AP"].values())


def test_evaluation_prints_nothing(capfd: pytest.CaptureFixture[str]) -> None:
    ground_truth, detections = random_case(8)
    evaluate_coco(ground_truth, detections)
    evaluate_coco(ground_truth, [])
    assert capfd.readouterr().out == ""


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda gt, dets: gt.pop("categories"), r"ground truth: missing top-level key\(s\) \['categories'\]"),
        (lambda gt, dets: gt["annotations"][0].pop("area"), r"annotations\[0\]: missing key\(s\) \['area'\]"),
        (lambda gt, dets: dets[0].pop("score"), r"detections\[0\]: missing key\(s\) \['score'\]"),
        (lambda gt, dets: dets[0].update(image_id=99), r"detections: image id\(s\) \[99\]"),
        (lambda gt, dets: dets[0].update(category_id=0), r"detections: category id\(s\) \[0\]"),
        (lambda gt, dets: dets[0].update(bbox=[1, 2, 3]), r"bbox must be \[x, y, w, h\]"),
    ],
)
def test_unusable_input_is_named(change, message: str) -> None:
    ground_truth = _one_box_ground_truth()
    detections = [{"image_id": 1, "category_id": 1, "bbox": [10, 20, 40, 30], "score": 0.9}]
    change(ground_truth, detections)
    with pytest.raises(CocoFormatError, match=message):
        evaluate_coco(ground_truth, detections)


def test_detections_to_coco_converts_xyxy_labels_and_types() -> None:
    predictions = [
        {
            "boxes": torch.tensor([[10.0, 20.0, 50.0, 50.0], [0.5, 1.5, 2.5, 4.5]]),
            "scores": torch.tensor([0.9, 0.25]),
            "labels": torch.tensor([0, 2]),
        },
        {"boxes": np.zeros((0, 4)), "scores": np.zeros(0), "labels": np.zeros(0, dtype=np.int64)},
        {"boxes": np.array([[1, 2, 3, 4]]), "scores": np.array([0.5]), "labels": np.array([1])},
    ]
    results = detections_to_coco(predictions, [7, 8, 9])

    assert results == [
        {"image_id": 7, "category_id": 1, "bbox": [10.0, 20.0, 40.0, 30.0], "score": pytest.approx(0.9)},
        {"image_id": 7, "category_id": 3, "bbox": [0.5, 1.5, 2.0, 3.0], "score": 0.25},
        {"image_id": 9, "category_id": 2, "bbox": [1.0, 2.0, 2.0, 2.0], "score": 0.5},
    ]
    assert json.loads(json.dumps(results))[0]["category_id"] == 1
    with pytest.raises(ValueError, match="3 predictions but 2 image ids"):
        detections_to_coco(predictions, [1, 2])


def test_evaluate_records_uses_record_pixels_and_class_names() -> None:
    records = [
        ImageRecord("a.jpg", 640, 480, boxes=[[10, 10, 60, 40], [300, 200, 500, 470]], labels=[0, 1]),
        ImageRecord("b.jpg", 320, 240),
        ImageRecord("c.jpg", 320, 240, boxes=[[5, 5, 25, 30]], labels=[0]),
    ]
    predictions = [
        {
            "boxes": torch.tensor([[10.0, 10, 60, 40], [300, 200, 500, 470]]),
            "scores": torch.tensor([0.8, 0.7]),
            "labels": torch.tensor([0, 1]),
        },
        {"boxes": torch.tensor([[0.0, 0, 30, 30]]), "scores": torch.tensor([0.6]), "labels": torch.tensor([0])},
        {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)},
    ]
    class_names = ["bee", "queen", "varroa"]
    metrics = evaluate_records(records, predictions, class_names)

    # bee: one hit ranked above one false positive, one miss -> precision 1 up to recall 0.5.
    assert metrics.per_class_AP == {"bee": pytest.approx(51 / 101), "queen": pytest.approx(1.0), "varroa": None}
    from beedet.data.coco import to_coco_dict

    expected = evaluate_coco(
        to_coco_dict(records, class_names, image_root=None), detections_to_coco(predictions, [1, 2, 3])
    )
    assert metrics.to_dict() == expected.to_dict()
    with pytest.raises(ValueError, match="3 records but 2 predictions"):
        evaluate_records(records, predictions[:2], class_names)


# ---- size bins and maxDets ---------------------------------------------------------------------


def _reference_mean(values: np.ndarray) -> float | None:
    valid = values[values > -1]
    return float(valid.mean()) if valid.size else None


@pytest.mark.parametrize(("seed", "max_detections"), [(0, 500), (3, 500), (9, 100), (10, 150)])
def test_size_bins_and_max_detections_equal_pycocotools(seed: int, max_detections: int) -> None:
    ground_truth, detections = random_case(seed)
    areas = [a["area"] for a in ground_truth["annotations"]]
    edges = size_bin_edges(areas, n_bins=3)
    bins = size_bin_ranges(edges)
    metrics = evaluate_coco(ground_truth, detections, area_bins=edges, max_detections=max_detections)
    reference = pycocotools_eval(ground_truth, detections, bins, max_detections)

    keys = stat_keys(max_detections)
    assert list(metrics.stats) == list(keys) and metrics.max_detections == max_detections
    # pycocotools' summarize reads stats[0] at a hard-coded maxDets of 100 (-1 for any other);
    # every other summary number it reads at maxDets[2], as beedet reads all twelve.
    precision, recall = reference.eval["precision"], reference.eval["recall"]
    assert metrics.stats["mAP"] == pytest.approx(_reference_mean(precision[:, :, :, 0, -1]), abs=TOLERANCE)
    if max_detections == 100:
        assert metrics.stats["mAP"] == pytest.approx(reference.stats[0], abs=TOLERANCE)
    for key, expected in list(zip(keys, reference.stats))[1:]:
        assert metrics.stats[key] == pytest.approx(expected, abs=TOLERANCE), key
    for k, name in enumerate(metrics.per_class_AP):
        want = _reference_mean(precision[:, :, k, 0, -1])
        assert (metrics.per_class_AP[name] is None) == (want is None)
        if want is not None:
            assert metrics.per_class_AP[name] == pytest.approx(want, abs=TOLERANCE)

    assert [b.name for b in metrics.size_bins] == [name for name, _, _ in bins]
    for a, size_bin in enumerate(metrics.size_bins, start=4):  # after all/small/medium/large
        assert size_bin.AP == pytest.approx(_reference_mean(precision[:, :, :, a, -1]), abs=TOLERANCE)
        assert size_bin.AP50 == pytest.approx(_reference_mean(precision[0, :, :, a, -1]), abs=TOLERANCE)
        assert size_bin.recall50 == pytest.approx(_reference_mean(recall[0, :, a, -1]), abs=TOLERANCE)
        inside = [x for x in ground_truth["annotations"] if not x["iscrowd"] and size_bin.min_area <= x["area"] <= size_bin.max_area]
        assert size_bin.num_gt == len(inside) > 0
    assert metrics.size_bins[0].min_area == 0.0 and metrics.size_bins[-1].max_area == 1e10


def test_size_bins_leave_the_standard_numbers_unchanged() -> None:
    ground_truth, detections = random_case(11)
    plain = evaluate_coco(ground_truth, detections)
    edges = size_bin_edges([a["area"] for a in ground_truth["annotations"]], n_bins=4)
    binned = evaluate_coco(ground_truth, detections, area_bins=edges)

    assert len(edges) == 3 and len(binned.size_bins) == 4
    assert binned.stats == plain.stats
    assert binned.per_class_AP == plain.per_class_AP and binned.per_class_AP50 == plain.per_class_AP50
    for name, curve in plain.pr_curves.items():
        np.testing.assert_array_equal(binned.pr_curves[name].precision, curve.precision)
    summary = binned.to_dict()
    assert json.loads(json.dumps(summary)) == summary
    assert [b["name"] for b in summary["size_bins"]] == [b.name for b in binned.size_bins]
    assert set(summary["size_bins"][0]) == {"name", "min_area", "max_area", "AP", "AP50", "recall50", "num_gt"}
    assert "max_detections" not in summary
    wide = evaluate_coco(ground_truth, detections, max_detections=300).to_dict()
    assert wide["max_detections"] == 300 and "AR300" in wide and "size_bins" not in wide


def test_more_detections_per_image_find_more_objects() -> None:
    # A crowded frame: 150 bees on a grid, each found exactly; maxDets 100 keeps only 100 of them.
    boxes = [[20.0 * (i % 15), 20.0 * (i // 15), 10.0, 10.0] for i in range(150)]
    ground_truth = {
        "images": [{"id": 1, "width": 400, "height": 400}],
        "annotations": [
            {"id": i + 1, "image_id": 1, "category_id": 1, "bbox": box, "area": 100.0, "iscrowd": 0}
            for i, box in enumerate(boxes)
        ],
        "categories": [{"id": 1, "name": "bee"}],
    }
    detections = [{"image_id": 1, "category_id": 1, "bbox": box, "score": 1.0 - i / 1000} for i, box in enumerate(boxes)]
    capped = evaluate_coco(ground_truth, detections)
    full = evaluate_coco(ground_truth, detections, max_detections=500)

    assert "AR100" in capped.stats and "AR500" not in capped.stats
    assert "AR500" in full.stats and "AR100" not in full.stats
    assert capped.stats["AR100"] == pytest.approx(100 / 150) and full.stats["AR500"] == pytest.approx(1.0)
    assert full.stats["mAP"] == pytest.approx(1.0) and capped.stats["mAP"] < 0.7
    assert full.stats["AR10"] == capped.stats["AR10"] == pytest.approx(10 / 150)
    with pytest.raises(ValueError, match="max_detections must be > 10"):
        evaluate_coco(ground_truth, detections, max_detections=10)


def test_size_bin_edges_split_training_areas_into_equal_shares() -> None:
    rng = np.random.default_rng(0)
    areas = rng.uniform(20, 80, size=300) ** 2
    edges = size_bin_edges(areas, n_bins=3)
    counts = np.histogram(areas, bins=[0, *edges, np.inf])[0]
    assert counts.tolist() == [100, 100, 100]
    assert size_bin_edges([1.0, 2, 3, 4, 5, 6, 7], n_bins=2) == [4.0]
    assert size_bin_edges([100.0] * 10, n_bins=3) == [100.0]  # repeated edges merge
    assert size_bin_edges([], n_bins=3) == [] and size_bin_edges(areas, n_bins=1) == []


def test_size_bin_ranges_names_and_checks() -> None:
    assert size_bin_ranges([31.0**2, 52.0**2]) == [
        ("0-31px", 0.0, 961.0),
        ("31-52px", 961.0, 2704.0),
        ("over52px", 2704.0, 1e10),
    ]
    names = [n for n, _, _ in size_bin_ranges([100.0, 110.0])]
    assert names == ["0-10.0px", "10.0-10.5px", "over10.5px"]
    assert size_bin_ranges([]) == []
    for bad in ([0.0, 5.0], [5.0, 5.0], [9.0, 4.0], [float("nan")]):
        with pytest.raises(ValueError, match="increasing positive"):
            size_bin_ranges(bad)


def test_record_box_areas_are_coco_areas() -> None:
    records = [
        ImageRecord("a.jpg", 640, 480, boxes=[[10, 10, 60, 40], [0, 0, 2, 3]], labels=[0, 1]),
        ImageRecord("b.jpg", 320, 240),
    ]
    np.testing.assert_allclose(record_box_areas(records), [1500.0, 6.0])
    assert record_box_areas([]).shape == (0,)


def test_resolve_size_bins_reads_the_evaluation_setting() -> None:
    areas = np.arange(1.0, 10.0)
    assert resolve_size_bins(3, areas) == size_bin_edges(areas, 3) and len(resolve_size_bins(3, areas)) == 2
    assert resolve_size_bins([1024, 4096], areas) == [1024.0, 4096.0]  # fixed edges ignore the data
    assert resolve_size_bins(None, areas) is None
    with pytest.raises(ValueError, match="increasing positive"):
        resolve_size_bins([4096, 1024], areas)
