"""bench/eval_engine.py in its smallest size: it runs, writes a well-formed result file, and on its
bee-like workload (crowd regions, tied scores, four classes) beedet's numbers equal pycocotools'.
How fast each engine is stays the benchmark's business, not the tests'."""

from __future__ import annotations

import importlib
import json

import pytest
from helpers import REPO
from test_metrics import STAT_KEYS, TOLERANCE, pycocotools_eval, reference_per_class

from beedet.evaluation.coco_metrics import evaluate_coco, evaluate_records
from beedet.evaluation.results import CocoMetrics, stat_keys
from beedet.evaluation.size_bins import record_box_areas, size_bin_edges, size_bin_ranges


def assert_equals_pycocotools(metrics: CocoMetrics, evaluator) -> None:
    """The 12 stats, per-class AP and AP50, and the IoU-0.5 PR curves (precision and scores)."""
    for key, expected in zip(STAT_KEYS, evaluator.stats):
        assert metrics.stats[key] == pytest.approx(expected, abs=TOLERANCE), key
    assert list(metrics.per_class_AP.values()) == pytest.approx(reference_per_class(evaluator, slice(None)), abs=TOLERANCE)
    assert list(metrics.per_class_AP50.values()) == pytest.approx(reference_per_class(evaluator, 0), abs=TOLERANCE)
    for k, name in enumerate(metrics.per_class_AP):
        if name not in metrics.pr_curves:
            continue  # a class without ground truth (precision -1)
        curve = metrics.pr_curves[name]
        assert curve.precision == pytest.approx(evaluator.eval["precision"][0, :, k, 0, -1], abs=TOLERANCE)
        assert curve.scores == pytest.approx(evaluator.eval["scores"][0, :, k, 0, -1], abs=TOLERANCE)


@pytest.fixture
def bench(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(REPO / "bench"))  # bench scripts import their sibling `machine`
    return importlib.import_module("eval_engine")


def test_smallest_size_writes_well_formed_results(bench, tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.main(["--images", "24", "--repeats", "1", "--out", str(tmp_path), "--device-name", "test"]) == 0

    results = json.loads((tmp_path / "eval_engine-test.json").read_text())
    assert results["benchmark"] == "eval_engine" and results["mode"] == "custom"
    assert results["device"] and results["machine"]["torch"] and results["versions"]["pycocotools"]
    workload = results["workload"]
    assert workload["images"] == 24 and workload["crowd_regions"] > 0
    assert workload["distinct_scores"] < workload["detections"]  # tied scores
    assert set(workload["gt_boxes_per_class"]) == {"bee", "pollenbee", "drone", "queen"}
    assert set(results["comparisons"]) == {"validation", "coco"}
    for comparison in results["comparisons"].values():
        assert len(comparison["pycocotools"]["stats"]) == 12
        for engine in ("pycocotools", "beedet", "faster_coco_eval"):
            assert comparison[engine]["wall_s"] > 0 and comparison[engine]["cpu_s"] >= 0
        for engine in ("beedet", "faster_coco_eval"):
            assert comparison[engine]["x_pycocotools_wall"] > 0
        assert comparison["beedet"]["max_abs_stat_diff"] <= TOLERANCE
    assert results["beedet_validation_settings"]["wall_s"] > 0
    printed = capsys.readouterr().out
    assert "x pycocotools" in printed and "wrote" in printed


def test_every_number_on_the_bench_workload_equals_pycocotools(bench) -> None:
    frames = bench.make_workload(24, seed=1)
    with_crowd = bench.coco_inputs(frames, crowd=True)
    assert any(a["iscrowd"] for a in with_crowd[0]["annotations"])
    assert_equals_pycocotools(evaluate_coco(*with_crowd), pycocotools_eval(*with_crowd))

    # The validation path (records and prediction tensors), also with validation's settings.
    records, predictions = bench.validation_inputs(frames)
    plain = bench.coco_inputs(frames, crowd=False)
    assert_equals_pycocotools(evaluate_records(records, predictions, bench.CLASS_NAMES), pycocotools_eval(*plain))
    edges = size_bin_edges(record_box_areas(records), 3)
    wide = evaluate_records(records, predictions, bench.CLASS_NAMES, area_bins=edges, max_detections=1000)
    reference = pycocotools_eval(*plain, size_bin_ranges(edges), 1000)
    for key, expected in list(zip(stat_keys(1000), reference.stats))[1:]:  # pycocotools' stats[0] is -1 at maxDets 1000
        assert wide.stats[key] == pytest.approx(expected, abs=TOLERANCE), key
    for a, size_bin in enumerate(wide.size_bins, start=4):  # after COCO's all/small/medium/large
        ap50 = reference.eval["precision"][0, :, :, a, -1]
        assert size_bin.AP50 == pytest.approx(ap50[ap50 > -1].mean(), abs=TOLERANCE), size_bin.name
