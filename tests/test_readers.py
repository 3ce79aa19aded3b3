"""Readers and writers: the same bees come out of every format, and what is written reads back."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from beedet.data.coco import read_coco, to_coco_dict, write_coco
from beedet.data.manifest import read_manifest, write_manifest
from beedet.data.records import DataError, ImageRecord, LabelSet
from beedet.data.sources import SyntheticSource
from beedet.data.yolo import read_yolo, write_yolo

HONEYBEE_CLASSES = ["bee", "drone", "pollenbee", "queen"]
HONEYBEE_S3_PREFIX = "s3://beedet-example-bucket/honeybee-mini/"


def _by_image(label_set: LabelSet) -> dict[Path, ImageRecord]:
    return {r.image_path.resolve(): r for r in label_set.records}


def _unmatched_boxes(a: ImageRecord, b: ImageRecord, tol: float) -> int:
    """How many of a's boxes have no same-class box in b within ``tol`` px (each used once)."""
    free = list(range(b.num_boxes))
    unmatched = 0
    for box, label in zip(a.boxes, a.labels):
        hit = next((j for j in free if b.labels[j] == label and np.abs(b.boxes[j] - box).max() <= tol), None)
        if hit is None:
            unmatched += 1
        else:
            free.remove(hit)
    return unmatched


def _write_jpeg(path: Path, width: int, height: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (width, height), (120, 90, 40)).save(path)
    return path


# --- honeybee-mini: the manifest and the YOLO export describe the same bees ----------------------


@pytest.mark.parametrize("split", ["train", "valid"])
def test_manifest_and_yolo_give_identical_records(honeybee_mini: Path, split: str) -> None:
    manifest = read_manifest(honeybee_mini / f"{split}.manifest", local_root=honeybee_mini)
    yolo = read_yolo(honeybee_mini / split / "images", class_names=manifest.class_names)

    assert manifest.problems == [] and yolo.problems == []
    assert manifest.class_names == HONEYBEE_CLASSES == yolo.class_names
    from_manifest, from_yolo = _by_image(manifest), _by_image(yolo)
    assert len(from_manifest) == len(manifest.records) > 0
    assert set(from_manifest) == set(from_yolo)
    for path, m in from_manifest.items():
        y = from_yolo[path]
        assert (m.width, m.height) == (y.width, y.height), path.name
        assert m.num_boxes == y.num_boxes, path.name
        assert sorted(m.labels.tolist()) == sorted(y.labels.tolist()), path.name
        assert _unmatched_boxes(m, y, tol=1.0) == 0, path.name
        # Ground Truth keeps per-box labeler confidence; YOLO has none.
        assert m.confidences is not None and len(m.confidences) == m.num_boxes and y.confidences is None
        assert m.source.startswith(str(honeybee_mini / f"{split}.manifest") + ":")


def test_yolo_without_names_numbers_the_classes(honeybee_mini: Path) -> None:
    yolo = read_yolo(honeybee_mini / "train" / "images")
    assert yolo.class_names == ["class_0", "class_1", "class_2", "class_3"]
    assert any(r.num_boxes == 0 for r in yolo.records)  # empty label files are empty images


def test_explicit_s3_prefix_resolves_like_the_automatic_search(honeybee_mini: Path) -> None:
    auto = read_manifest(honeybee_mini / "valid.manifest", local_root=honeybee_mini)
    exact = read_manifest(honeybee_mini / "valid.manifest", local_root=honeybee_mini, s3_prefix=HONEYBEE_S3_PREFIX)
    assert [r.image_path for r in auto.records] == [r.image_path for r in exact.records]
    assert all(r.image_path.is_file() for r in exact.records)
    wrong = read_manifest(honeybee_mini / "valid.manifest", local_root=honeybee_mini, s3_prefix="s3://other/")
    assert wrong.records == [] and len(wrong.problems) == len(auto.records)
    assert "does not start with s3_prefix" in wrong.problems[0].reason


# --- manifests ---------------------------------------------------------------------------------------


def _gt_line(source_ref: str, attribute: str, boxes: list[tuple[int, int, int, int, int]],
             class_map: dict[str, str], size: tuple[int, int] = (64, 48)) -> dict:
    return {
        "source-ref": source_ref,
        attribute: {"image_size": [{"width": size[0], "height": size[1], "depth": 3}],
                    "annotations": [{"class_id": c, "left": x, "top": y, "width": w, "height": h}
                                    for c, x, y, w, h in boxes]},
        f"{attribute}-metadata": {"objects": [{"confidence": 0.5} for _ in boxes], "class-map": class_map,
                                  "type": "groundtruth/object-detection", "job-name": f"labeling-job/{attribute}"},
    }


def _write_lines(path: Path, lines: list[dict]) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def test_several_label_attributes_need_a_choice(tmp_path: Path) -> None:
    _write_jpeg(tmp_path / "a.jpg", 64, 48)
    line = _gt_line("a.jpg", "bees", [(0, 1, 2, 10, 10)], {"0": "bee"})
    line.update(_gt_line("a.jpg", "bees-adjusted", [(0, 2, 2, 10, 10)], {"0": "bee"}))
    manifest = _write_lines(tmp_path / "chained.manifest", [line])

    with pytest.raises(DataError, match="label_attribute") as info:
        read_manifest(manifest)
    assert "'bees'" in str(info.value) and "'bees-adjusted'" in str(info.value)
    adjusted = read_manifest(manifest, label_attribute="bees-adjusted")
    np.testing.assert_array_equal(adjusted.records[0].boxes, [[2, 2, 12, 12]])


def test_failed_and_expired_tasks_are_skipped_and_counted(tmp_path: Path) -> None:
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        _write_jpeg(tmp_path / name, 64, 48)
    # Ground Truth's output for data objects it could not label: metadata with failure-reason,
    # with or without a label attribute. Neither may become an empty (bee-free) frame.
    expired = {"source-ref": "b.jpg", "bees-metadata": {
        "failure-reason": "ClientError: Annotation tasks expired.", "retry-count": 1}}
    failed = _gt_line("c.jpg", "bees", [], {"0": "bee"})
    failed["bees-metadata"]["failure-reason"] = "ClientError: no consolidated annotation"
    manifest = _write_lines(tmp_path / "job.manifest", [
        _gt_line("a.jpg", "bees", [(0, 1, 2, 10, 10)], {"0": "bee"}), expired, failed])

    label_set = read_manifest(manifest)
    assert [r.image_path.name for r in label_set.records] == ["a.jpg"]
    assert [p.where for p in label_set.problems] == [f"{manifest}:2", f"{manifest}:3"]
    assert all(p.action == "skipped" and "failed or expired" in p.reason for p in label_set.problems)
    assert "Annotation tasks expired" in label_set.problems[0].reason
    with pytest.raises(DataError, match="job.manifest:2"):
        label_set.raise_if_strict(True)


def test_chained_job_lines_without_the_chosen_attribute_are_counted(tmp_path: Path) -> None:
    _write_jpeg(tmp_path / "a.jpg", 64, 48)
    _write_jpeg(tmp_path / "b.jpg", 64, 48)
    # An adjustment job run over part of the first job's output: only line 1 has both attributes.
    first = _gt_line("a.jpg", "bees", [(0, 1, 2, 10, 10)], {"0": "bee"})
    first.update(_gt_line("a.jpg", "bees-adjusted", [(0, 2, 2, 10, 10)], {"0": "bee"}))
    manifest = _write_lines(tmp_path / "chained.manifest", [
        first, _gt_line("b.jpg", "bees", [(0, 3, 3, 5, 5)], {"0": "bee"})])

    original = read_manifest(manifest, label_attribute="bees")
    assert len(original.records) == 2 and not original.problems
    adjusted = read_manifest(manifest, label_attribute="bees-adjusted")
    assert [r.image_path.name for r in adjusted.records] == ["a.jpg"]
    assert len(adjusted.problems) == 1 and "no label attribute 'bees-adjusted'" in adjusted.problems[0].reason


def test_class_map_gaps_and_plain_local_paths(tmp_path: Path) -> None:
    image = _write_jpeg(tmp_path / "imgs" / "a.jpg", 64, 48)
    manifest = _write_lines(tmp_path / "m.manifest", [
        _gt_line("imgs/a.jpg", "b", [(0, 1, 2, 10, 20)], {"0": "bee"}),
        _gt_line(str(image), "b", [(3, 4, 5, 6, 7)], {"3": "queen"}),
    ])
    label_set = read_manifest(manifest)
    assert label_set.class_names == ["bee", "class_1", "class_2", "queen"]
    assert [r.image_path for r in label_set.records] == [image, image]
    np.testing.assert_array_equal(label_set.records[1].boxes, [[4, 5, 10, 12]])
    np.testing.assert_allclose(label_set.records[0].confidences, [0.5])
    assert label_set.records[1].source == f"{manifest}:2"


def test_written_manifest_reads_back_exactly(tmp_path: Path) -> None:
    root = tmp_path / "synthetic"
    records = [
        ImageRecord(_write_jpeg(root / "train" / "images" / "00000.jpg", 64, 48), 64, 48,
                    boxes=[[1.25, 2.0, 30.5, 40.75], [3, 4, 5, 6]], labels=[2, 0], confidences=[0.9, 0.25]),
        ImageRecord(_write_jpeg(root / "train" / "images" / "00001.jpg", 64, 48), 64, 48),
    ]
    written = LabelSet(records, ["bee", "drone", "pollenbee"])
    manifest = root / "train.manifest"
    # Exactly how the synthetic generator writes and SyntheticSource reads.
    write_manifest(written, manifest, label_attribute="bee-boxes", s3_prefix="s3://beedet-synthetic/", image_root=root)
    line = json.loads(manifest.read_text().splitlines()[0])
    assert line["source-ref"] == "s3://beedet-synthetic/train/images/00000.jpg"
    assert line["bee-boxes"]["annotations"][1] == {"class_id": 0, "left": 3, "top": 4, "width": 2, "height": 2}
    assert line["bee-boxes-metadata"]["type"] == "groundtruth/object-detection"
    assert line["bee-boxes-metadata"]["class-map"] == {"0": "bee", "1": "drone", "2": "pollenbee"}

    read = read_manifest(manifest, local_root=root, s3_prefix="s3://beedet-synthetic/")
    assert read.problems == [] and read.class_names == written.class_names
    for before, after in zip(records, read.records, strict=True):
        assert after.image_path == before.image_path and after.same_labels_as(before)
    np.testing.assert_allclose(read.records[0].confidences, [0.9, 0.25])


def test_synthetic_source_reads_what_the_generator_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SyntheticSource's half of the contract with beedet.data.synthetic.generate_split."""
    calls = []

    def generate_split(root: Path, split: str, num_images: int, image_size: int, seed: int) -> Path:
        calls.append((root, split, num_images, image_size, seed))
        image = _write_jpeg(root / split / "images" / "00000.jpg", image_size, image_size)
        record = ImageRecord(image, image_size, image_size, boxes=[[1, 1, 9, 9]], labels=[3])
        path = root / f"{split}.manifest"
        write_manifest(LabelSet([record], ["bee", "drone", "pollenbee", "queen"]), path,
                       label_attribute="bee-boxes", s3_prefix="s3://beedet-synthetic/", image_root=root)
        return path

    monkeypatch.setitem(sys.modules, "beedet.data.synthetic", types.SimpleNamespace(generate_split=generate_split, SYNTHETIC_S3_PREFIX="s3://beedet-synthetic/"))
    source = SyntheticSource(root=str(tmp_path), split="val", num_images=1, image_size=32, seed=7)
    label_set = source.read()
    assert calls == [(tmp_path, "val", 1, 32, 7)]
    assert label_set.problems == [] and label_set.records[0].image_path == tmp_path / "val" / "images" / "00000.jpg"
    assert label_set.records[0].labels.tolist() == [3] and "val" in source.name


# --- COCO --------------------------------------------------------------------------------------------


def test_coco_categories_become_contiguous_and_crowds_are_dropped(tmp_path: Path) -> None:
    _write_jpeg(tmp_path / "images" / "a.jpg", 64, 48)  # found through the images/ fallback
    coco = {
        "images": [{"id": 10, "file_name": "a.jpg", "width": 64, "height": 48},
                   {"id": 11, "file_name": "b.jpg", "width": 64, "height": 48}],
        "annotations": [
            {"id": 1, "image_id": 10, "category_id": 7, "bbox": [1, 2, 10, 20], "iscrowd": 0},
            {"id": 2, "image_id": 10, "category_id": 3, "bbox": [5, 5, 4, 4], "iscrowd": 0},
            {"id": 3, "image_id": 10, "category_id": 3, "bbox": [0, 0, 60, 40], "iscrowd": 1},
        ],
        "categories": [{"id": 7, "name": "queen"}, {"id": 3, "name": "bee"}],
    }
    (tmp_path / "ann.json").write_text(json.dumps(coco))
    label_set = read_coco(tmp_path / "ann.json")

    assert label_set.class_names == ["bee", "queen"]  # sorted by category id: 3 -> 0, 7 -> 1
    a, b = label_set.records
    assert a.image_path == tmp_path / "images" / "a.jpg" and b.num_boxes == 0
    np.testing.assert_array_equal(a.boxes, [[1, 2, 11, 22], [5, 5, 9, 9]])
    assert a.labels.tolist() == [1, 0]
    [crowd] = label_set.problems
    assert crowd.action == "dropped box" and "a.jpg" in crowd.reason and "iscrowd" in crowd.reason


def test_to_coco_dict_ids_and_boxes_load_in_pycocotools(tmp_path: Path) -> None:
    from pycocotools.coco import COCO

    records = [ImageRecord(tmp_path / "x" / "a.jpg", 100, 50, boxes=[[10, 5, 30, 45]], labels=[1]),
               ImageRecord(tmp_path / "x" / "b.jpg", 100, 50)]
    coco_dict = to_coco_dict(records, ["bee", "drone"], image_root=tmp_path)
    assert [img["id"] for img in coco_dict["images"]] == [1, 2]
    assert coco_dict["images"][0]["file_name"] == "x/a.jpg"
    [ann] = coco_dict["annotations"]
    assert (ann["image_id"], ann["category_id"], ann["bbox"]) == (1, 2, [10, 5, 20, 40])
    assert (ann["area"], ann["iscrowd"]) == (800, 0)
    assert to_coco_dict(records, ["bee", "drone"])["images"][0]["file_name"] == str(records[0].image_path.absolute())

    coco = COCO()
    coco.dataset = coco_dict
    coco.createIndex()
    assert coco.getCatIds(catNms=["drone"]) == [2] and coco.getAnnIds(imgIds=[1]) == [1]


def test_coco_round_trip(tmp_path: Path) -> None:
    records = [ImageRecord(_write_jpeg(tmp_path / "imgs" / "a.jpg", 64, 48), 64, 48,
                           boxes=[[1.5, 2, 30, 40]], labels=[0])]
    write_coco(LabelSet(records, ["bee"]), tmp_path / "out" / "ann.json")
    # file_name is ../imgs/a.jpg: outside the JSON's folder, so it takes allow_outside_root to read.
    assert read_coco(tmp_path / "out" / "ann.json").records == []
    read = read_coco(tmp_path / "out" / "ann.json", allow_outside_root=True)
    assert read.records[0].image_path.resolve() == records[0].image_path.resolve()
    assert read.records[0].same_labels_as(records[0]) and read.class_names == ["bee"]
    # Written relative to a folder holding the images, it reads back with that folder as image_root.
    write_coco(LabelSet(records, ["bee"]), tmp_path / "out" / "rooted.json", image_root=tmp_path)
    rooted = read_coco(tmp_path / "out" / "rooted.json", image_root=tmp_path)
    assert rooted.problems == [] and rooted.records[0].image_path == records[0].image_path


# --- YOLO --------------------------------------------------------------------------------------------


def test_yolo_polygons_data_yaml_and_missing_label_files(tmp_path: Path) -> None:
    split = tmp_path / "bees" / "train"
    _write_jpeg(split / "images" / "a.jpg", 200, 100)
    _write_jpeg(split / "images" / "b.png", 200, 100)  # no label file: an image without bees
    (split / "labels").mkdir()
    (split / "labels" / "a.txt").write_text("1 0.5 0.5 0.2 0.4\n\n0 0.1 0.2 0.3 0.1 0.2 0.6 0.05 0.3\n")
    (tmp_path / "bees" / "data.yaml").write_text("names:\n  0: bee\n  1: drone\n")

    label_set = read_yolo(split / "images")
    assert label_set.problems == [] and label_set.class_names == ["bee", "drone"]
    a, b = label_set.records
    np.testing.assert_allclose(a.boxes, [[80, 30, 120, 70], [10, 10, 60, 60]], atol=1e-4)
    assert a.labels.tolist() == [1, 0] and a.source == str(split / "labels" / "a.txt")
    assert b.num_boxes == 0 and b.image_path.name == "b.png"


def test_yolo_round_trip_with_copies(tmp_path: Path) -> None:
    records = [ImageRecord(_write_jpeg(tmp_path / "src" / "a.jpg", 64, 48), 64, 48,
                           boxes=[[1.5, 2, 30, 40], [0, 0, 64, 48]], labels=[1, 0]),
               ImageRecord(_write_jpeg(tmp_path / "src2" / "a.jpg", 64, 48), 64, 48)]
    write_yolo(LabelSet(records, ["bee", "drone"]), tmp_path / "out", image_mode="copy")
    read = read_yolo(tmp_path / "out" / "images")
    assert read.class_names == ["bee", "drone"] and read.problems == []
    assert sorted(p.name for p in (tmp_path / "out" / "images").iterdir()) == ["a.jpg", "a_1.jpg"]
    assert not any(p.is_symlink() for p in (tmp_path / "out" / "images").iterdir())
    for before, after in zip(records, read.records, strict=True):
        assert after.same_labels_as(before, atol=1e-3)
