"""The synthetic bee generator: deterministic, cached, safe to race, and as designed."""

from __future__ import annotations

import io
import json
import multiprocessing
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from beedet.data.manifest import read_manifest
from beedet.data import synthetic
from beedet.data.sources import SyntheticSource
from beedet.data.synthetic import CLASS_NAMES, JPEG_QUALITY, draw_image, generate_split, image_rng


@pytest.fixture(scope="module")
def train_set(tmp_path_factory: pytest.TempPathFactory):
    """150 images read back through the real manifest reader, as training does."""
    root = tmp_path_factory.mktemp("synthetic")
    return SyntheticSource(root=root, split="train", num_images=150, image_size=256, seed=0).read()


def _manifest_lines(path: Path) -> list[dict]:
    """Manifest lines without the creation date (a Ground Truth manifest records when it was written)."""
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    for line in lines:
        line["bee-boxes-metadata"].pop("creation-date")
    return lines


def test_reads_back_as_four_classes_without_problems(train_set) -> None:
    assert train_set.class_names == list(CLASS_NAMES) == ["bee", "drone", "pollenbee", "queen"]
    assert len(train_set.records) == 150 and not train_set.problems


def test_class_frequencies_are_as_designed(train_set) -> None:
    labels = np.concatenate([r.labels for r in train_set.records])
    assert len(labels) > 1500
    share = np.bincount(labels, minlength=4) / len(labels)
    # Designed: bee 70 %, drone 10 %, pollenbee 15 %, queen 5 %.
    assert share == pytest.approx([0.70, 0.10, 0.15, 0.05], abs=0.035), share


def test_some_images_are_empty_and_some_crowded(train_set) -> None:
    counts = np.array([r.num_boxes for r in train_set.records])
    assert 3 <= (counts == 0).sum() <= 25  # designed: ~8 %
    assert 8 <= (counts >= 30).sum() <= 40  # designed: ~15 %
    assert counts.max() <= 60


def test_boxes_are_inside_the_images_and_bee_sized(train_set) -> None:
    for record in train_set.records:
        assert (record.width, record.height) == (256, 256)
        boxes = record.boxes
        assert (boxes[:, :2] >= 0).all()
        assert (boxes[:, 2] <= record.width).all() and (boxes[:, 3] <= record.height).all()
        assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    boxes = np.concatenate([r.boxes for r in train_set.records])
    longest = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    assert 10 <= np.median(longest) <= 30 and longest.max() <= 45


def test_no_two_bees_overlap_much(train_set) -> None:
    for record in train_set.records[:40]:
        b = record.boxes
        if len(b) < 2:
            continue
        lt = np.maximum(b[:, None, :2], b[None, :, :2])
        rb = np.minimum(b[:, None, 2:], b[None, :, 2:])
        inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
        area = np.prod(b[:, 2:] - b[:, :2], axis=1)
        iou = inter / (area[:, None] + area[None, :] - inter)
        np.fill_diagonal(iou, 0)
        assert iou.max() <= 0.3 + 0.02  # manifests store boxes to 0.01 px


def test_same_arguments_give_the_same_bytes(tmp_path: Path) -> None:
    first = generate_split(tmp_path / "a", "val", num_images=6, image_size=128, seed=3)
    second = generate_split(tmp_path / "b", "val", num_images=6, image_size=128, seed=3)
    images = sorted((tmp_path / "a" / "val" / "images").glob("*.jpg"))
    assert len(images) == 6
    for image in images:
        assert image.read_bytes() == (tmp_path / "b" / "val" / "images" / image.name).read_bytes()
    assert _manifest_lines(first) == _manifest_lines(second)


def test_each_image_has_its_own_stream(tmp_path: Path) -> None:
    """Image 4 drawn on its own is byte-identical to image 4 of a generated split."""
    generate_split(tmp_path, "train", num_images=5, image_size=128, seed=7)
    pixels, _, _ = draw_image(image_rng(7, "train", 4), 128)
    encoded = io.BytesIO()
    Image.fromarray(pixels).save(encoded, format="JPEG", quality=JPEG_QUALITY, subsampling=0)
    assert encoded.getvalue() == (tmp_path / "train" / "images" / "00004.jpg").read_bytes()


def test_train_and_val_differ(tmp_path: Path) -> None:
    generate_split(tmp_path, "train", num_images=3, image_size=128, seed=0)
    generate_split(tmp_path, "val", num_images=3, image_size=128, seed=0)
    for name in ("00000.jpg", "00001.jpg", "00002.jpg"):
        assert (tmp_path / "train" / "images" / name).read_bytes() != (tmp_path / "val" / "images" / name).read_bytes()


def test_generation_is_cached_and_redone_when_parameters_change(tmp_path: Path) -> None:
    manifest = generate_split(tmp_path, "train", num_images=6, image_size=128, seed=0)
    written = manifest.stat().st_mtime_ns
    assert generate_split(tmp_path, "train", num_images=6, image_size=128, seed=0) == manifest
    assert manifest.stat().st_mtime_ns == written  # nothing redrawn

    generate_split(tmp_path, "train", num_images=4, image_size=128, seed=0)
    assert len(manifest.read_text().splitlines()) == 4
    assert len(list((tmp_path / "train" / "images").glob("*.jpg"))) == 4  # old images are gone
    assert not list(tmp_path.glob(".train.staging-*"))


def test_an_interrupted_run_is_not_mistaken_for_a_complete_one(tmp_path: Path) -> None:
    generate_split(tmp_path, "train", num_images=3, image_size=128, seed=0)
    (tmp_path / "train.synthetic.json").unlink()  # as if killed before the completion marker
    (tmp_path / ".train.staging-leftover").mkdir()  # and a crashed run's staging folder
    generate_split(tmp_path, "train", num_images=3, image_size=128, seed=0)
    assert json.loads((tmp_path / "train.synthetic.json").read_text())["num_images"] == 3
    assert not list(tmp_path.glob(".train.staging-*"))


def test_concurrent_generation_is_safe(tmp_path: Path) -> None:
    """Two processes (like two DDP ranks) generating the same split at once both succeed."""
    context = multiprocessing.get_context("spawn")
    args = (tmp_path, "train", 30, 128, 0)
    workers = [context.Process(target=generate_split, args=args) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert [worker.exitcode for worker in workers] == [0, 0]

    label_set = read_manifest(tmp_path / "train.manifest")
    assert len(label_set.records) == 30 and not label_set.problems
    assert all(record.image_path.is_file() for record in label_set.records)
    assert len(list((tmp_path / "train" / "images").glob("*.jpg"))) == 30
    assert not list(tmp_path.glob(".train.staging-*"))


def test_concurrent_callers_wait_instead_of_drawing_twice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """While one caller draws, another waits on the lock, then finds the finished split."""
    draws = []
    real_draw = synthetic._draw_split

    def slow_draw(*args) -> None:
        draws.append(threading.current_thread().name)
        time.sleep(0.5)  # long enough for the second caller to arrive mid-draw
        real_draw(*args)

    monkeypatch.setattr(synthetic, "_draw_split", slow_draw)
    results = []
    callers = [
        threading.Thread(target=lambda: results.append(generate_split(tmp_path, "val", 4, 128, 0)), name=f"rank{i}")
        for i in range(2)
    ]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join(timeout=60)
    assert len(draws) == 1, draws
    assert results == [tmp_path / "val.manifest"] * 2
    assert len(read_manifest(tmp_path / "val.manifest").records) == 4


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="num_images"):
        generate_split(tmp_path, "train", num_images=0, image_size=128, seed=0)
