"""Property tests of every augmentation preset in conf/augment/, built through the real config.

For random frames (1920x1080 down to tiny, random content) with random boxes (tiny, touching the
border, sticking out by a rounding error, none at all), every output must be the model's input
size with boxes inside it, of positive area, one label per box. A second test paints each box a
distinct colour that its label names, runs the preset's geometric transforms, and checks the
colour under every output box: it fails if any transform misaligns labels and boxes.
"""

from __future__ import annotations

import functools
import random

import albumentations as A
import numpy as np
import pytest
from omegaconf import DictConfig

from beedet.assembly import build_augment
from beedet.data.augment import build_pipeline, mosaic_stages
from helpers import CONF, compose_config

PRESETS = sorted(path.stem for path in (CONF / "augment").glob("*.yaml"))
FRAME_SIZES = [(1080, 1920), (1714, 2560), (250, 275), (31, 47), (256, 256), (600, 400)]
# Distinct, saturated colours far from the grey background and the mean-colour border fill.
PALETTE = np.array(
    [[230, 20, 20], [20, 200, 20], [30, 30, 230], [240, 230, 20],
     [220, 20, 220], [20, 220, 230], [0, 0, 0], [255, 255, 255]],
    dtype=np.uint8,
)


@functools.lru_cache(maxsize=None)
def _preset(name: str, *overrides: str) -> tuple[A.Compose, int, DictConfig]:
    cfg = compose_config([f"augment={name}", *overrides])
    return build_augment(cfg.augment), int(cfg.model.image_size), cfg.augment


def _seeded(pipeline: A.Compose, seed: int) -> A.Compose:
    """The same draws on every run, so that a failure can be reproduced."""
    pipeline.set_random_state(np.random.default_rng(seed), random.Random(seed))
    return pipeline


@functools.lru_cache(maxsize=None)
def _frames() -> dict[tuple[int, int], list[np.ndarray]]:
    """A few frames per size: noise, a flat colour, a single-channel gradient."""
    rng = np.random.default_rng(0)
    frames = {}
    for h, w in FRAME_SIZES:
        gradient = np.zeros((h, w, 3), np.uint8)
        gradient[..., rng.integers(3)] = np.linspace(0, 255, w, dtype=np.uint8)[None, :]
        frames[(h, w)] = [
            rng.integers(0, 256, (h, w, 3), dtype=np.uint8),
            np.full((h, w, 3), rng.integers(0, 256, 3), dtype=np.uint8),
            gradient,
        ]
    return frames


def _random_boxes(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """0-25 boxes: ordinary, tiny (under 3 px), touching a border, the whole frame, or sticking
    out of it by half a pixel (clipped by the pipeline, as labelling tools produce)."""
    boxes = []
    for _ in range(rng.choice([0, 1, 3, 25], p=[0.15, 0.25, 0.35, 0.25])):
        kind = rng.choice(["ordinary", "tiny", "border", "whole", "outside"], p=[0.5, 0.2, 0.2, 0.05, 0.05])
        if kind == "whole":
            boxes.append([0, 0, w, h])
            continue
        size = rng.uniform(0.3, 3.0, 2) if kind == "tiny" else rng.uniform(0.02, 0.5, 2) * (w, h)
        size = np.minimum(size, (w, h))
        x1, y1 = rng.uniform(0, 1, 2) * ((w, h) - size)
        box = np.array([x1, y1, x1 + size[0], y1 + size[1]])
        if kind == "border":  # snap one side to the frame's edge
            side = rng.integers(4)
            box[side] = 0.0 if side < 2 else (w, h)[side - 2]
            if side < 2:
                box[side + 2] = max(box[side + 2], 1.0)
            else:
                box[side - 2] = min(box[side - 2], box[side] - 1.0)
        elif kind == "outside":
            box += np.array([-0.5, -0.5, 0.5, 0.5])
        boxes.append(box)
    return np.array(boxes, dtype=np.float32).reshape(-1, 4)


def _run(pipeline: A.Compose, image: np.ndarray, boxes: np.ndarray, labels: np.ndarray,
         others: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> dict:
    """The pipeline on one sample as the dataset runs it: a preset with a Mosaic step draws its
    other frames from ``others``."""
    stages = mosaic_stages(pipeline)
    if stages is None:
        return pipeline(image=image, bboxes=boxes, labels=labels)
    stages.set_random_state(pipeline.random_generator, pipeline.py_random)
    image, boxes, labels = stages(image, boxes, labels, lambda count: others[:count])
    return {"image": image, "bboxes": boxes, "labels": labels}


def _check_output(out: dict, size: int, in_labels: np.ndarray, where: str) -> None:
    image = out["image"]
    assert image.shape == (size, size, 3) and image.dtype == np.uint8, f"{where}: image {image.shape} {image.dtype}"
    boxes = np.asarray(out["bboxes"], dtype=np.float64).reshape(-1, 4)
    labels = np.asarray(out["labels"]).reshape(-1)
    assert len(boxes) == len(labels), f"{where}: {len(boxes)} boxes, {len(labels)} labels"
    assert np.isfinite(boxes).all(), f"{where}: non-finite box {boxes}"
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= size).all(), f"{where}: box outside image: {boxes}"
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all(), f"{where}: empty box {boxes}"
    # Input labels are unique ids here: an output label may only appear once, and only if it came in.
    assert len(set(labels.tolist())) == len(labels) and set(labels.tolist()) <= set(in_labels.tolist()), (
        f"{where}: labels {labels} from {in_labels}"
    )


def test_presets_are_discovered() -> None:
    assert {"none", "light", "ssd", "heavy"} <= set(PRESETS)


@pytest.mark.parametrize("name", PRESETS)
def test_preset_geometry_invariants(name: str) -> None:
    pipeline, size, _ = _preset(name)
    rng = np.random.default_rng(sum(map(ord, name)))
    pipeline = _seeded(pipeline, sum(map(ord, name)))
    frames = _frames()
    for trial in range(250):
        h, w = FRAME_SIZES[rng.integers(len(FRAME_SIZES))]
        image = frames[(h, w)][rng.integers(3)]
        boxes = _random_boxes(rng, h, w)
        labels = np.arange(len(boxes), dtype=np.int64)
        others = []  # a mosaic's other frames, their labels unique ids too
        for k in range(1, 4):
            oh, ow = FRAME_SIZES[rng.integers(len(FRAME_SIZES))]
            other_boxes = _random_boxes(rng, oh, ow)
            others.append((frames[(oh, ow)][rng.integers(3)], other_boxes,
                           1000 * k + np.arange(len(other_boxes), dtype=np.int64)))
        out = _run(pipeline, image, boxes, labels, others)
        every_label = np.concatenate([labels] + [other[2] for other in others])
        _check_output(out, size, every_label, f"{name} trial {trial} ({w}x{h}, {len(boxes)} boxes)")


@pytest.mark.parametrize("name", PRESETS)
def test_preset_output_follows_model_image_size(name: str) -> None:
    pipeline, size, _ = _preset(name, "model.image_size=192")
    assert size == 192
    image = _frames()[(1080, 1920)][0]
    for _ in range(5):
        out = _run(pipeline, image, np.array([[10, 10, 500, 400]], np.float32), np.array([0]),
                   [(image, np.zeros((0, 4), np.float32), np.zeros(0, np.int64))] * 3)
        _check_output(out, 192, np.array([0]), f"{name} at model.image_size=192")


def _geometric_part(pipeline: A.Compose, name: str) -> list[A.BasicTransform]:
    """The preset's transforms that move pixels (and boxes); colour and noise transforms never
    see boxes. A group mixing both kinds cannot be split, so it fails loudly here."""
    def leaves_of(transform) -> list[A.BasicTransform]:
        if isinstance(transform, A.BasicTransform):
            return [transform]
        return [leaf for t in transform.transforms for leaf in leaves_of(t)]  # groups nest (OneOf of Sequentials)

    geometric = []
    for transform in pipeline.transforms:
        leaves = leaves_of(transform)
        moves = [isinstance(t, A.DualTransform) for t in leaves]
        assert all(moves) or not any(moves), f"{name}: {transform} mixes geometric and colour transforms"
        if all(moves):
            geometric.append(transform)
    return geometric


def _painted_scene(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Grey frame with up to 8 solid rectangles on a 3x3 grid (gaps between them), each painted
    PALETTE[label] with distinct labels in random order."""
    image = np.full((h, w, 3), 128, np.uint8)
    cells = rng.permutation(9)[: rng.integers(2, 9)]
    labels = rng.permutation(len(PALETTE))[: len(cells)]
    boxes = []
    for cell, label in zip(cells, labels):
        row, col = divmod(int(cell), 3)
        bw, bh = rng.uniform(0.3, 0.6) * w / 3, rng.uniform(0.3, 0.6) * h / 3
        x1 = col * w / 3 + rng.uniform(0.2, 0.8) * (w / 3 - bw)
        y1 = row * h / 3 + rng.uniform(0.2, 0.8) * (h / 3 - bh)
        x1, y1, x2, y2 = round(x1), round(y1), round(x1 + bw), round(y1 + bh)
        image[y1:y2, x1:x2] = PALETTE[label]
        boxes.append([x1, y1, x2, y2])
    return image, np.array(boxes, np.float32), labels.astype(np.int64)


def _colour_mismatches(image: np.ndarray, boxes: np.ndarray, labels: np.ndarray) -> list[str]:
    """For each box, the palette colour covering most of it must be PALETTE[label]."""
    problems = []
    for box, label in zip(boxes, labels):
        x1, y1 = int(np.ceil(box[0])), int(np.ceil(box[1]))
        x2, y2 = max(int(box[2]), x1 + 1), max(int(box[3]), y1 + 1)
        pixels = image[y1:y2, x1:x2].reshape(-1, 1, 3).astype(np.int32)
        distance = np.abs(pixels - PALETTE[None].astype(np.int32)).sum(-1)
        nearest = distance.argmin(1)[distance.min(1) < 90]  # blended edge pixels count for nobody
        counts = np.bincount(nearest, minlength=len(PALETTE))
        if counts.argmax() != label or counts[label] <= counts.sum() / 2:
            problems.append(f"box {box.round(1)} label {label}: colour counts {counts.tolist()}")
    return problems


@pytest.mark.parametrize("name", PRESETS)
def test_preset_keeps_labels_with_their_boxes(name: str) -> None:
    pipeline, size, augment_cfg = _preset(name)
    geometric = build_pipeline(
        _geometric_part(pipeline, name), min_visibility=augment_cfg.min_visibility, min_area=augment_cfg.min_area
    )
    geometric = _seeded(geometric, 1 + sum(map(ord, name)))
    rng = np.random.default_rng(1 + sum(map(ord, name)))
    checked_permutation = False
    for trial in range(120):
        h, w = [(1080, 1920), (300, 400), (256, 256)][trial % 3]
        image, boxes, labels = _painted_scene(rng, h, w)
        out = _run(geometric, image, boxes, labels, [_painted_scene(rng, h, w) for _ in range(3)])
        out_boxes = np.asarray(out["bboxes"], np.float64).reshape(-1, 4)
        out_labels = np.asarray(out["labels"], np.int64).reshape(-1)
        where = f"{name} trial {trial} ({w}x{h})"
        assert out["image"].shape == (size, size, 3), where
        mismatches = _colour_mismatches(out["image"], out_boxes, out_labels)
        assert not mismatches, f"{where}: {mismatches}"
        if len(set(out_labels.tolist())) >= 2:  # a mosaic's cells may repeat a label
            # The check must be able to fail: shifting the labels by one box has to be caught.
            assert _colour_mismatches(out["image"], out_boxes, np.roll(out_labels, 1)), where
            checked_permutation = True
    assert checked_permutation


def _flat_cells(size: int, box_side: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Four flat cells of distinct colours, each tiled with box_side-sized boxes labelled by cell."""
    cells = []
    starts = np.arange(0, size - box_side + 1, box_side + 2, dtype=np.float32)
    corners = np.array([(x, y) for y in starts for x in starts], np.float32)
    boxes = np.concatenate([corners, corners + box_side], axis=1)
    for k in range(4):
        cells.append((np.full((size, size, 3), PALETTE[k], np.uint8), boxes, np.full(len(boxes), k, np.int64)))
    return cells


@pytest.mark.parametrize("min_visibility", [0.3, 0.0])
def test_mosaic_keeps_scale_and_drops_bees_cut_below_min_visibility(min_visibility: float) -> None:
    size, side = 64, 10
    pipeline = build_pipeline(
        [A.Mosaic(grid_yx=(2, 2), target_size=(size, size), cell_shape=(size, size), p=0.5)],
        min_visibility=min_visibility, min_area=1.0,
    )
    stages = mosaic_stages(pipeline)
    assert stages.p == 0.5 and stages.cells == 4 and pipeline.transforms[0].p == 0.5  # the pipeline's own is untouched
    stages.set_random_state(np.random.default_rng(0), random.Random(0))
    cells = _flat_cells(size, side)
    areas, cell_colours = [], 0
    for _ in range(40):
        image, boxes, labels = stages.combine(cells)
        assert image.shape == (size, size, 3)
        cell_colours = max(cell_colours, len(np.unique(image.reshape(-1, 3), axis=0)))
        widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        # Cells of the output size are not resized: no box grows beyond its side in the cell.
        assert (widths <= side + 1e-3).all() and (heights <= side + 1e-3).all()
        areas.extend((widths * heights).tolist())
        # Each box lies on its own cell's colour: labels and boxes travel together across the cut.
        assert not _colour_mismatches(image, boxes, labels)
    assert cell_colours == 4  # a mosaic shows every cell
    assert max(areas) == pytest.approx(side * side)  # uncut bees keep their size
    if min_visibility > 0:
        assert min(areas) >= min_visibility * side * side - 1e-3
    else:  # albumentations' Mosaic alone keeps slivers: the filter above is what drops them
        assert min(areas) < 0.3 * side * side


def test_a_pipeline_takes_one_mosaic_at_most() -> None:
    mosaic = A.Mosaic(target_size=(32, 32), cell_shape=(32, 32))
    with pytest.raises(ValueError, match="one at most"):
        build_pipeline([mosaic, A.HorizontalFlip(), mosaic])
    assert mosaic_stages(build_pipeline([A.HorizontalFlip()])) is None
