"""One bad record never stops a run: it is skipped (or its box clipped), named by file and line,
counted in the report, every other record survives intact, and strict mode refuses to go on."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from beedet.data.checks import check_records
from beedet.data.data_report import DataReport
from beedet.data.manifest import read_manifest
from beedet.data.records import DataError, ImageRecord, LabelSet, Problem
from beedet.data.yolo import read_yolo

WIDTH, HEIGHT = 96, 64
CLASS_MAP = {"0": "bee", "1": "drone"}
BAD_LINE = 3  # the bad record sits between good ones, so line numbers are really checked


def _line(name: str, boxes: list[tuple[int, float, float, float, float]],
          size: tuple[int, int] = (WIDTH, HEIGHT)) -> dict:
    """A Ground Truth line for images/NAME; boxes are (class_id, left, top, width, height)."""
    annotations = [{"class_id": c, "left": x, "top": y, "width": w, "height": h} for c, x, y, w, h in boxes]
    return {
        "source-ref": f"s3://field-bucket/hive-7/images/{name}",
        "bees": {"image_size": [{"width": size[0], "height": size[1], "depth": 3}], "annotations": annotations},
        "bees-metadata": {"objects": [{"confidence": 1.0} for _ in boxes], "class-map": CLASS_MAP,
                          "type": "groundtruth/object-detection", "job-name": "labeling-job/bees"},
    }


def _jpeg(path: Path, seed: int = 0, size: tuple[int, int] = (WIDTH, HEIGHT)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    noise = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(noise).save(path, quality=90)


def _read_with_bad_line(tmp_path: Path, bad: dict | str) -> tuple[LabelSet, Path, list[str]]:
    """Four good images with boxes around a bad line 3; returns the checked set, the manifest and the good names."""
    good = [f"good{i}.jpg" for i in range(4)]
    for i, name in enumerate(good):
        _jpeg(tmp_path / "images" / name, seed=i)
    lines = [json.dumps(_line(name, [(i % 2, 10 + i, 5, 20, 30), (0, 50, 20, 40, 40)])) for i, name in enumerate(good)]
    lines.insert(BAD_LINE - 1, bad if isinstance(bad, str) else json.dumps(bad))
    manifest = tmp_path / "hive.manifest"
    manifest.write_text("\n".join(lines) + "\n")
    label_set = check_records(read_manifest(manifest, local_root=tmp_path), verify_images=True)
    return label_set, manifest, good


def _assert_only_bad_record_lost(label_set: LabelSet, manifest: Path, good: list[str], *, mentions: str = "",
                                 action: str = "skipped") -> Problem:
    where = f"{manifest}:{BAD_LINE}"
    [problem] = label_set.problems
    assert (problem.where, problem.action) == (where, action), problem
    assert mentions in problem.reason, problem

    survivors = {r.image_path.name: r for r in label_set.records}
    for i, name in enumerate(good):
        boxes = [[10 + i, 5, 30 + i, 35], [50, 20, 90, 60]]
        expected = ImageRecord(name, WIDTH, HEIGHT, boxes=boxes, labels=[i % 2, 0])
        assert survivors[name].same_labels_as(expected), name

    report = DataReport.from_label_set(label_set, name="hive")
    assert report.problems_by_action[action] == [problem]
    assert report.to_dict()["problems"]["by_action"][action][0]["where"] == where
    assert where in str(report)

    label_set.raise_if_strict(False)
    with pytest.raises(DataError) as info:
        label_set.raise_if_strict(True)
    assert where in str(info.value) and mentions in str(info.value)
    return problem


def test_corrupt_jpeg(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "corrupt.jpg").write_bytes(np.random.default_rng(9).bytes(4096))
    label_set, manifest, good = _read_with_bad_line(tmp_path, _line("corrupt.jpg", [(0, 1, 1, 5, 5)]))
    problem = _assert_only_bad_record_lost(label_set, manifest, good, mentions="corrupt.jpg")
    assert "not an image" in problem.reason
    assert len(label_set.records) == 4


def test_truncated_jpeg(tmp_path: Path) -> None:
    _jpeg(tmp_path / "images" / "whole.jpg", seed=5)
    data = (tmp_path / "images" / "whole.jpg").read_bytes()
    (tmp_path / "images" / "cut.jpg").write_bytes(data[: len(data) // 2])
    label_set, manifest, good = _read_with_bad_line(tmp_path, _line("cut.jpg", [(0, 1, 1, 5, 5)]))
    problem = _assert_only_bad_record_lost(label_set, manifest, good, mentions="cut.jpg")
    assert "truncated" in problem.reason


def test_missing_image_file(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    label_set, manifest, good = _read_with_bad_line(tmp_path, _line("gone.jpg", [(0, 1, 1, 5, 5)]))
    _assert_only_bad_record_lost(label_set, manifest, good, mentions="gone.jpg")


def test_manifest_line_with_bad_json(tmp_path: Path) -> None:
    truncated_line = json.dumps(_line("x.jpg", [(0, 1, 1, 5, 5)]))[:-20]
    label_set, manifest, good = _read_with_bad_line(tmp_path, truncated_line)
    _assert_only_bad_record_lost(label_set, manifest, good, mentions="not valid JSON")


def test_manifest_line_missing_the_label_attribute(tmp_path: Path) -> None:
    _jpeg(tmp_path / "images" / "unlabelled.jpg")
    label_set, manifest, good = _read_with_bad_line(
        tmp_path, {"source-ref": "s3://field-bucket/hive-7/images/unlabelled.jpg"})
    _assert_only_bad_record_lost(label_set, manifest, good, mentions="no label attribute 'bees'")


def test_box_partly_outside_is_clipped_and_kept(tmp_path: Path) -> None:
    _jpeg(tmp_path / "images" / "edge.jpg")
    label_set, manifest, good = _read_with_bad_line(
        tmp_path, _line("edge.jpg", [(1, 80, 40, 30, 40), (0, 5, 5, 10, 10)]))
    problem = _assert_only_bad_record_lost(label_set, manifest, good, mentions="edge.jpg", action="clipped box")
    assert "clipped" in problem.reason
    [edge] = [r for r in label_set.records if r.image_path.name == "edge.jpg"]
    np.testing.assert_array_equal(edge.boxes, [[80, 40, WIDTH, HEIGHT], [5, 5, 15, 15]])
    assert edge.labels.tolist() == [1, 0] and len(label_set.records) == 5


def test_box_wholly_outside_skips_the_record(tmp_path: Path) -> None:
    _jpeg(tmp_path / "images" / "off.jpg")
    label_set, manifest, good = _read_with_bad_line(
        tmp_path, _line("off.jpg", [(0, 5, 5, 10, 10), (0, 200, 10, 20, 20)]))
    _assert_only_bad_record_lost(label_set, manifest, good, mentions="wholly outside")
    assert "off.jpg" not in {r.image_path.name for r in label_set.records}


def test_zero_area_box_skips_the_record(tmp_path: Path) -> None:
    _jpeg(tmp_path / "images" / "flat.jpg")
    label_set, manifest, good = _read_with_bad_line(tmp_path, _line("flat.jpg", [(0, 5, 5, 10, 0)]))
    problem = _assert_only_bad_record_lost(label_set, manifest, good, mentions="zero or negative area")
    assert "flat.jpg" in problem.reason


def test_unknown_class_id_skips_the_record(tmp_path: Path) -> None:
    _jpeg(tmp_path / "images" / "alien.jpg")
    label_set, manifest, good = _read_with_bad_line(tmp_path, _line("alien.jpg", [(5, 5, 5, 10, 10)]))
    problem = _assert_only_bad_record_lost(label_set, manifest, good, mentions="class id 5")
    assert "alien.jpg" in problem.reason and label_set.class_names == ["bee", "drone"]


def test_declared_size_differs_from_the_image(tmp_path: Path) -> None:
    _jpeg(tmp_path / "images" / "resized.jpg", size=(48, 32))
    label_set, manifest, good = _read_with_bad_line(tmp_path, _line("resized.jpg", [(0, 5, 5, 10, 10)]))
    _assert_only_bad_record_lost(label_set, manifest, good, mentions=f"{WIDTH}x{HEIGHT} image but the image is 48x32")


def test_bad_yolo_line_names_file_and_line(tmp_path: Path) -> None:
    for name in ("a", "b"):
        _jpeg(tmp_path / "images" / f"{name}.jpg")
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "a.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    (tmp_path / "labels" / "b.txt").write_text("0 0.5 0.5 0.2 0.2\n1 0.5 0.5\n")
    label_set = read_yolo(tmp_path / "images", class_names=["bee", "drone"])
    [problem] = label_set.problems
    assert problem.where == f"{tmp_path / 'labels' / 'b.txt'}:2" and problem.action == "skipped"
    assert [r.image_path.name for r in label_set.records] == ["a.jpg"]
    with pytest.raises(DataError, match="b.txt:2"):
        label_set.raise_if_strict(True)


def test_nan_box_skips_the_record(tmp_path: Path) -> None:
    _jpeg(tmp_path / "images" / "nan.jpg")
    # Python's json reads and writes the non-standard NaN literal, as some export scripts emit it.
    label_set, manifest, good = _read_with_bad_line(tmp_path, _line("nan.jpg", [(0, float("nan"), 5, 10, 10)]))
    _assert_only_bad_record_lost(label_set, manifest, good, mentions="non-finite")


@pytest.mark.parametrize(
    "replace, mentions",
    [
        (('"width": 1920', '"width": 1e400'), "image_size"),  # JSON parses it as infinity
        (('"class_id": 0', '"class_id": 100000000000000000000000'), "class_id"),  # overflows int64
        (('"left": 1', '"left": NaN'), "non-finite"),
    ],
)
def test_manifest_numbers_out_of_range_skip_the_line(tmp_path: Path, replace: tuple[str, str], mentions: str) -> None:
    _jpeg(tmp_path / "images" / "odd.jpg")
    line = json.dumps(_line("odd.jpg", [(0, 1, 1, 5, 5)], size=(1920, 1080)))
    assert replace[0] in line
    label_set, manifest, good = _read_with_bad_line(tmp_path, line.replace(*replace))
    _assert_only_bad_record_lost(label_set, manifest, good, mentions=mentions)


def test_coco_entries_that_are_not_objects_are_problems(tmp_path: Path) -> None:
    from beedet.data.coco import read_coco

    _jpeg(tmp_path / "a.jpg")
    coco = {
        "images": [{"id": 1, "file_name": "a.jpg", "width": WIDTH, "height": HEIGHT}, None, 7],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 2, 10, 10]}, None],
        "categories": [{"id": 1, "name": "bee"}],
    }
    path = tmp_path / "labels.json"
    path.write_text(json.dumps(coco))
    label_set = read_coco(path)
    assert [r.image_path.name for r in label_set.records] == ["a.jpg"] and label_set.records[0].num_boxes == 1
    assert sorted(p.action for p in label_set.problems) == ["dropped box", "skipped", "skipped"]
    assert all(p.where == str(path) for p in label_set.problems)
