"""The data CLIs: inspect reports what is in a data set, convert moves it between formats intact."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from beedet.data import convert, inspect
from beedet.data.manifest import read_manifest
from beedet.data.sources import CocoSource, ManifestSource, YoloSource, source_for_path

REPO = Path(__file__).resolve().parents[1]


def test_inspect_reports_honeybee_mini(honeybee_mini: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert inspect.main([str(honeybee_mini / "train.manifest"), "--json", str(tmp_path / "r.json"),
                         "--markdown", str(tmp_path / "r.md")]) == 0
    out = capsys.readouterr().out
    # The data README: 18 train images, two of them without bees, four classes.
    assert "images 18 (2 empty)" in out
    for name in ("bee", "drone", "pollenbee", "queen"):
        assert f" {name} " in out
    assert "p50" in out and "sqrt(area)" in out and "problems: 0" in out

    train = json.loads((tmp_path / "r.json").read_text())
    assert train["images"] == 18 and train["empty_images"] == 2
    assert sum(train["boxes_per_class"].values()) == train["boxes"]
    assert set(train["box_size_percentiles"]) == {"width", "height", "sqrt_area"}
    assert list(train["box_size_percentiles"]["sqrt_area"]) == ["p5", "p10", "p25", "p50", "p75", "p90", "p95"]
    assert "| bee |" in (tmp_path / "r.md").read_text()

    # The YOLO export of the other split, through the same command: 680 boxes in 30 images in all.
    assert inspect.main([str(honeybee_mini / "valid"), "--class-names", "bee,drone,pollenbee,queen",
                         "--json", str(tmp_path / "v.json")]) == 0
    valid = json.loads((tmp_path / "v.json").read_text())
    assert valid["images"] == 12 and train["boxes"] + valid["boxes"] == 680


def test_inspect_strict_exit_code(honeybee_mini: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert inspect.main([str(honeybee_mini / "valid.manifest"), "--strict", "--no-verify"]) == 0
    lines = (honeybee_mini / "valid.manifest").read_text().splitlines()
    lines[1] = lines[1][:-30]  # a line cut short by an interrupted upload
    broken = tmp_path / "valid.manifest"
    broken.write_text("\n".join(lines) + "\n")
    capsys.readouterr()

    args = [str(broken), "--local-root", str(honeybee_mini), "--no-verify"]
    assert inspect.main(args) == 0
    assert f"{broken}:2: not valid JSON" in capsys.readouterr().out
    assert inspect.main(args + ["--strict"]) == 1
    assert "strict: 1 data problem" in capsys.readouterr().err


def test_inspect_runs_as_a_module(honeybee_mini: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "beedet.data.inspect", str(honeybee_mini / "valid.manifest"),
                           "--no-verify"], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "images 12" in done.stdout


def test_convert_round_trip_manifest_coco_yolo_manifest(honeybee_mini: Path, tmp_path: Path) -> None:
    original = read_manifest(honeybee_mini / "train.manifest", local_root=honeybee_mini)
    coco, yolo, manifest = tmp_path / "coco" / "train.json", tmp_path / "yolo", tmp_path / "back" / "train.manifest"
    assert convert.main([str(honeybee_mini / "train.manifest"), str(coco), "--to", "coco", "--no-verify"]) == 0
    # The COCO file names ../../honeybee-mini/...: outside its folder, so reading it back takes permission.
    assert convert.main([str(coco), str(yolo), "--to", "yolo", "--no-verify", "--allow-outside-root"]) == 0
    assert convert.main([str(yolo), str(manifest), "--to", "manifest", "--no-verify"]) == 0

    back = read_manifest(manifest, local_root=tmp_path)  # ../yolo/images/...: inside local_root
    assert back.problems == [] and back.class_names == original.class_names
    assert (yolo / "images").is_dir() and all(p.is_symlink() for p in (yolo / "images").iterdir())
    before = {r.image_path.resolve(): r for r in original.records}
    after = {r.image_path.resolve(): r for r in back.records}
    assert set(after) == set(before) and len(after) == 18
    for path, record in before.items():
        assert after[path].same_labels_as(record, atol=0.01), path.name


def test_convert_to_s3_manifest_and_strict_refusal(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    split = tmp_path / "train"
    (split / "images").mkdir(parents=True)
    (split / "labels").mkdir()
    for name in ("a", "b"):
        Image.new("RGB", (50, 40)).save(split / "images" / f"{name}.jpg")
    (split / "labels" / "a.txt").write_text("0 0.5 0.5 0.2 0.5\n")
    out = tmp_path / "out.manifest"
    assert convert.main([str(split), str(out), "--to", "manifest", "--out-s3-prefix", "s3://bees/job1/",
                         "--out-image-root", str(tmp_path)]) == 0
    assert json.loads(out.read_text().splitlines()[0])["source-ref"] == "s3://bees/job1/train/images/a.jpg"
    read = read_manifest(out, local_root=tmp_path, s3_prefix="s3://bees/job1/")
    assert [r.num_boxes for r in read.records] == [1, 0] and read.class_names == ["class_0"]

    (split / "labels" / "b.txt").write_text("0 0.5 0.5 0.2\n")
    refused = tmp_path / "refused.json"
    assert convert.main([str(split), str(refused), "--to", "coco", "--strict"]) == 1
    assert not refused.exists() and "b.txt:1" in capsys.readouterr().out


def test_source_for_path_picks_the_reader(honeybee_mini: Path, tmp_path: Path) -> None:
    assert isinstance(source_for_path(honeybee_mini / "train.manifest"), ManifestSource)
    assert isinstance(source_for_path(tmp_path / "ann.json"), CocoSource)
    yolo = source_for_path(honeybee_mini / "valid", class_names=["bee"])
    assert isinstance(yolo, YoloSource) and Path(yolo.images) == honeybee_mini / "valid" / "images"
    with pytest.raises(ValueError, match="s3_prefix does not apply to coco"):
        source_for_path(tmp_path / "ann.json", s3_prefix="s3://x/")
    with pytest.raises(ValueError, match="no images/ subfolder"):
        source_for_path(tmp_path)
