"""Labeling without Ground Truth: drawing the subset to label (beedet.data.sample), and reading
back what Label Studio and Pascal VOC tools (CVAT, LabelImg) export, with the boxes put in."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from beedet.data.convert import main as convert_main
from beedet.data.inspect import main as inspect_main
from beedet.data.label_studio import class_names_from_config, read_label_studio
from beedet.data.sample import draw_sample
from beedet.data.sample import main as sample_main
from beedet.data.sources import detect_format, source_for_path
from beedet.data.voc import read_voc

REPO = Path(__file__).resolve().parents[1]


def _png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (90, 80, 40)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def frames(tmp_path_factory) -> Path:
    """1,000 frames of 10 videos (``v<k>_<n>.png``), 100 each."""
    root = tmp_path_factory.mktemp("labeling") / "frames"
    root.mkdir()
    data = _png(40, 30)
    for i in range(1000):
        (root / f"v{i // 100}_{i % 100:03d}.png").write_bytes(data)
    return root


def _sample(frames: Path, out: Path, *args: str) -> list[str]:
    assert sample_main([str(frames), "--out", str(out), *args]) == 0
    return (out / "sample.txt").read_text().split()


def test_sample_draws_the_fraction_deterministically(frames, tmp_path):
    first = _sample(frames, tmp_path / "a", "--fraction", "0.02", "--seed", "3")
    assert len(first) == 20 == len(set(first))
    assert _sample(frames, tmp_path / "b", "--fraction", "0.02", "--seed", "3") == first
    assert _sample(frames, tmp_path / "c", "--fraction", "0.02", "--seed", "4") != first
    assert len(_sample(frames, tmp_path / "d", "--fraction", "0.02", "--max-images", "5")) == 5
    # The input order does not matter: the draw sorts first.
    paths = sorted(frames.iterdir())
    assert draw_sample(paths[::-1], fraction=0.02, max_images=None, seed=3) == [frames / p for p in first]
    # The same budget spent on distinct videos: 5 frames from 5 of the 10 videos; with a budget
    # over the 10 videos, one frame from each.
    grouped = _sample(frames, tmp_path / "e", "--fraction", "0.005", "--group-by", r"^(?P<group>v\d+)_")
    assert len(grouped) == 5 and len({name.split("_")[0] for name in grouped}) == 5
    every_video = _sample(frames, tmp_path / "f", "--fraction", "0.02", "--group-by", r"^(?P<group>v\d+)_")
    assert len(every_video) == 10 and len({name.split("_")[0] for name in every_video}) == 10


def test_sample_writes_the_labeling_tools_inputs(frames, tmp_path):
    out = tmp_path / "to_label"
    drawn = _sample(frames, out, "--fraction", "0.01", "--seed", "0", "--s3-prefix", "s3://bees/frames/",
                    "--classes", "bee,queen")
    manifest = [json.loads(line) for line in (out / "input.manifest").read_text().splitlines()]
    assert manifest == [{"source-ref": f"s3://bees/frames/{name}"} for name in drawn]
    tasks = json.loads((out / "label_studio_tasks.json").read_text())
    assert tasks == [{"data": {"image": f"/data/local-files/?d=frames/{name}"}} for name in drawn]
    assert class_names_from_config(out / "label_studio_config.xml") == ["bee", "queen"]
    # A served frames folder: its URL + the path relative to the folder, as for --s3-prefix.
    served = _sample(frames, tmp_path / "served", "--fraction", "0.01", "--label-studio-root", "https://hive.example/frames")
    assert json.loads((tmp_path / "served" / "label_studio_tasks.json").read_text()) == [
        {"data": {"image": f"https://hive.example/frames/{name}"}} for name in served]
    assert sample_main([str(frames), "--out", str(tmp_path / "x"), "--fraction", "1.5"]) == 2
    (tmp_path / "empty").mkdir()
    assert sample_main([str(tmp_path / "empty"), "--out", str(tmp_path / "y")]) == 2


def _ls_result(box: tuple[float, float, float, float], name: str, size: tuple[int, int], rotation: float = 0.0) -> dict:
    x, y, w, h = box  # pixels -> Label Studio's percent of the original image
    return {"type": "rectanglelabels", "from_name": "label", "to_name": "image", "original_width": size[0],
            "original_height": size[1], "image_rotation": 0,
            "value": {"x": 100 * x / size[0], "y": 100 * y / size[1], "width": 100 * w / size[0],
                      "height": 100 * h / size[1], "rotation": rotation, "rectanglelabels": [name]}}


def test_a_label_studio_export_of_the_sample_reads_back(frames, tmp_path):
    out = tmp_path / "to_label"
    drawn = _sample(frames, out, "--fraction", "0.005", "--seed", "1")
    tasks = json.loads((out / "label_studio_tasks.json").read_text())
    assert len(tasks) == len(drawn) == 5
    export = []
    for i, task in enumerate(tasks):
        results = [_ls_result((4, 3, 10, 12), "bee", (40, 30)), _ls_result((20.5, 1, 6, 8), "queen", (40, 30))]
        export.append({"id": i + 1, "data": task["data"], "annotations": [
            {"id": 10 + i, "was_cancelled": False, "updated_at": "2026-11-23T10:00:00Z", "result": results},
            # A first pass a reviewer replaced, and a cancelled annotation: both ignored.
            {"id": 20 + i, "was_cancelled": False, "updated_at": "2026-11-22T10:00:00Z", "result": results[:1]},
            {"id": 30 + i, "was_cancelled": True, "updated_at": "2026-11-24T10:00:00Z", "result": []},
        ]})
    # Task 5: one box rotated 90 degrees clockwise about its top-left corner (30, 10), 8 x 4 px.
    export[4]["annotations"][0]["result"] = [_ls_result((30, 10, 8, 4), "bee", (40, 30), rotation=90)]
    export.append({"id": 99, "data": {"image": "/data/local-files/?d=frames/missing.png"}, "annotations": []})
    path = tmp_path / "export.json"
    path.write_text(json.dumps(export))

    assert detect_format(path) == "label-studio"
    label_set = source_for_path(path, image_root=frames.parent, label_studio_config=out / "label_studio_config.xml").read()
    assert label_set.class_names == ["bee", "drone", "pollenbee", "queen"]
    records = {r.image_path.name: r for r in label_set.records}
    assert sorted(records) == drawn
    for name in drawn[:4]:
        np.testing.assert_allclose(records[name].boxes, [[4, 3, 14, 15], [20.5, 1, 26.5, 9]], atol=1e-3)
        np.testing.assert_array_equal(records[name].labels, [0, 3])
    np.testing.assert_allclose(records[drawn[4]].boxes, [[26, 10, 30, 18]], atol=1e-3)
    actions = sorted(p.action for p in label_set.problems)
    assert actions == ["axis-aligned box", "skipped"]
    assert "task 5 (id 99)" in next(p.where for p in label_set.problems if p.action == "skipped")
    # Unknown class names: a problem, not a new class.
    strict = read_label_studio(path, image_root=frames.parent, class_names=["bee"])
    assert any("'queen' is not one of the classes" in p.reason for p in strict.problems)

    # The data CLIs read it too: the report counts the rotated box and the skipped task.
    common = ["--image-root", str(frames.parent), "--label-studio-config", str(out / "label_studio_config.xml")]
    assert inspect_main([str(path), *common, "--json", str(tmp_path / "report.json")]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert (report["images"], report["boxes"]) == (5, 9)
    assert {k: len(v) for k, v in report["problems"]["by_action"].items()} == {"axis-aligned box": 1, "skipped": 1}
    assert convert_main([str(path), str(tmp_path / "coco.json"), "--to", "coco", *common]) == 0
    coco = json.loads((tmp_path / "coco.json").read_text())
    image_id = next(i["id"] for i in coco["images"] if Path(i["file_name"]).name == drawn[0])
    np.testing.assert_allclose([a["bbox"] for a in coco["annotations"] if a["image_id"] == image_id],
                               [[4, 3, 10, 12], [20.5, 1, 6, 8]], atol=1e-3)


def _voc_xml(filename: str, size: tuple[int, int], objects: list[tuple[str, float, float, float, float]]) -> str:
    items = "".join(f"<object><name>{n}</name><difficult>0</difficult><bndbox><xmin>{a}</xmin><ymin>{b}</ymin>"
                    f"<xmax>{c}</xmax><ymax>{d}</ymax></bndbox></object>" for n, a, b, c, d in objects)
    return (f"<annotation><folder>frames</folder><filename>{filename}</filename><size><width>{size[0]}</width>"
            f"<height>{size[1]}</height><depth>3</depth></size>{items}</annotation>")


def test_pascal_voc_reads_back_and_converts(frames, tmp_path):
    voc = tmp_path / "voc"
    (voc / "Annotations").mkdir(parents=True)
    (voc / "JPEGImages").mkdir()
    for name in ("v0_000.png", "v0_001.png"):
        (voc / "JPEGImages" / name).write_bytes((frames / name).read_bytes())
    # LabelImg writes int corners (xmin, ymin at least 1); CVAT writes its float corners.
    (voc / "Annotations" / "v0_000.xml").write_text(
        _voc_xml("v0_000.png", (40, 30), [("bee", 1, 1, 10, 20), ("queen", 10.5, 4.25, 30, 30)]))
    (voc / "Annotations" / "v0_001.xml").write_text(_voc_xml("v0_001.png", (40, 30), []))
    (voc / "Annotations" / "broken.xml").write_text("<annotation><filename>x.png</filename>")

    assert detect_format(voc) == "voc"
    label_set = read_voc(voc)
    assert label_set.class_names == ["bee", "queen"]
    first, second = label_set.records
    # Read as they are: the corners CVAT and LabelImg mean (and read back themselves).
    np.testing.assert_array_equal(first.boxes, [[1, 1, 10, 20], [10.5, 4.25, 30, 30]])
    np.testing.assert_array_equal(first.labels, [0, 1])
    assert second.num_boxes == 0 and first.image_path == voc / "JPEGImages" / "v0_000.png"
    assert [Path(p.where).name for p in label_set.problems] == ["broken.xml"]

    coco = tmp_path / "coco.json"
    done = subprocess.run([sys.executable, "-m", "beedet.data.convert", str(voc), str(coco), "--to", "coco"],
                          cwd=REPO, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert "broken.xml" in done.stdout + done.stderr
    assert [a["bbox"] for a in json.loads(coco.read_text())["annotations"]] == [[1, 1, 9, 19], [10.5, 4.25, 19.5, 25.75]]
    assert inspect_main([str(voc), "--class-names", "bee,drone,pollenbee,queen", "--json", str(tmp_path / "r.json")]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert (report["images"], report["boxes"], report["boxes_per_class"]) == (2, 2, {"bee": 1, "drone": 0, "pollenbee": 0, "queen": 1})
    assert [Path(p["where"]).name for p in report["problems"]["by_action"]["skipped"]] == ["broken.xml"]


def test_train_config_reads_a_label_studio_export(frames, tmp_path):
    """``data=files`` points training at an export: the real config, composed and instantiated."""
    from helpers import compose_config

    from beedet.assembly import build_datamodule

    tasks = [{"id": i, "data": {"image": f"/data/local-files/?d=frames/v1_{i:03d}.png"}, "annotations": [
        {"was_cancelled": False, "result": [_ls_result((2, 2, 8, 6), "queen" if i % 2 else "bee", (40, 30))]}]}
             for i in range(10)]
    export = tmp_path / "project-1-at-2026-11-23.json"
    export.write_text(json.dumps(tasks))
    cfg = compose_config(["data=files", f"data.train.path={export}", f"data.train.image_root={frames.parent}",
                          "data.train.class_names=[bee,queen]", "data.val=null", "data.val_fraction=0.2"])
    datamodule = build_datamodule(cfg.data)
    datamodule.load_labels()
    assert datamodule.class_names == ["bee", "queen"]
    assert (len(datamodule.train_records), len(datamodule.val_records)) == (8, 2)
