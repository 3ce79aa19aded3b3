"""`python -m beedet.cocoeval GT.json DETS.json` reports what the API and pycocotools report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_metrics import STAT_KEYS, TOLERANCE, assert_matches_pycocotools, pycocotools_eval, random_case

from beedet.cocoeval import main
from beedet.evaluation.coco_metrics import evaluate_coco
from beedet.evaluation.results import CocoMetrics

REPO = Path(__file__).resolve().parents[1]


def _write(path: Path, data) -> Path:
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
def case_files(tmp_path: Path) -> tuple[dict, list[dict], Path, Path]:
    ground_truth, detections = random_case(11)
    gt_file, dets_file = _write(tmp_path / "gt.json", ground_truth), _write(tmp_path / "dets.json", detections)
    return ground_truth, detections, gt_file, dets_file


def test_cli_equals_api_and_pycocotools(case_files, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ground_truth, detections, gt_file, dets_file = case_files
    out_file = tmp_path / "reports" / "metrics.json"

    assert main([str(gt_file), str(dets_file), "--iou-type", "bbox", "--out", str(out_file)]) == 0
    printed = json.loads(capsys.readouterr().out)

    assert printed == evaluate_coco(ground_truth, detections).to_dict()
    assert json.loads(out_file.read_text()) == printed
    metrics = CocoMetrics(
        stats={key: printed[key] for key in STAT_KEYS},
        per_class_AP=printed["per_class_AP"],
        per_class_AP50=printed["per_class_AP50"],
    )
    assert_matches_pycocotools(metrics, pycocotools_eval(ground_truth, detections))


def test_cli_accepts_detections_wrapped_in_annotations(case_files, tmp_path, capsys) -> None:
    ground_truth, detections, gt_file, _ = case_files
    wrapped = _write(tmp_path / "wrapped.json", {"images": ground_truth["images"], "annotations": detections})

    assert main([str(gt_file), str(wrapped)]) == 0
    expected = evaluate_coco(ground_truth, detections).stats["mAP"]
    assert json.loads(capsys.readouterr().out)["mAP"] == pytest.approx(expected, abs=TOLERANCE)


def test_cli_runs_as_a_module(case_files) -> None:
    _, _, gt_file, dets_file = case_files
    result = subprocess.run(
        [sys.executable, "-m", "beedet.cocoeval", str(gt_file), str(dets_file)],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert set(json.loads(result.stdout)) == {*STAT_KEYS, "per_class_AP", "per_class_AP50"}


@pytest.mark.parametrize(
    ("gt_text", "dets_text", "blamed", "message"),
    [
        ("{not json", "[]", "gt.json", "not valid JSON"),
        (None, "[]", "gt.json", "cannot read"),
        ('{"images": [], "annotations": []}', "[]", "gt.json", "missing top-level key"),
        ("GT", '{"results": []}', "dets.json", "needs an 'annotations' list"),
        ("GT", '[{"image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5]}]', "dets.json", "missing key(s) ['score']"),
        ("GT", '[{"image_id": 404, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 1}]', "dets.json", "[404]"),
    ],
)
def test_cli_names_the_bad_file(tmp_path, capsys, gt_text, dets_text, blamed, message) -> None:
    good_gt = {
        "images": [{"id": 1, "width": 10, "height": 10}],
        "annotations": [],
        "categories": [{"id": 1, "name": "bee"}],
    }
    gt_file, dets_file = tmp_path / "gt.json", tmp_path / "dets.json"
    if gt_text is not None:
        gt_file.write_text(json.dumps(good_gt) if gt_text == "GT" else gt_text)
    dets_file.write_text(dets_text)

    assert main([str(gt_file), str(dets_file)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert f"error: {tmp_path / blamed}" in captured.err and message in captured.err
