"""Sliced inference (beedet.inference.tiling): tile geometry, the merge rules, and the seam test.

The seam test paints bees into a full 1920x1080 frame, many of them straddling tile borders and
corners, and detects them with an oracle detector that finds painted rectangles *within the crop
it is given*, so a bee cut by a tile border comes back cut, exactly as a real network sees it.
After merging, every bee must be found exactly once, whole, in full-frame pixels.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy import ndimage
from torch import nn

from beedet.inference.tiling import Slicing, detect_sliced, merge_detections, tile_grid, tile_starts
from beedet.training.system import DetectionModule
from helpers import run_script

WIDTH, HEIGHT = 1920, 1080
SLICING = Slicing(tile_size=300, overlap=96)


def paint(boxes: list[tuple[int, int, int, int]], labels: list[int]) -> torch.Tensor:
    """A black frame with each box filled: channel 0 = 1 marks a bee, channel 1 its class."""
    image = torch.zeros(3, HEIGHT, WIDTH)
    for (x0, y0, x1, y1), label in zip(boxes, labels):
        image[0, y0:y1, x0:x1] = 1.0
        image[1, y0:y1, x0:x1] = (label + 1) / 10
    return image


def oracle_detect(images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """Find the painted rectangles in each image (a crop): boxes in that crop's pixels.

    Clipped views score *higher* than whole ones, so the merge must not rely on scores to prefer
    the whole view of a bee."""
    results = []
    for image in images:
        components, _ = ndimage.label(image[0].numpy() > 0.5)
        boxes, scores, labels = [], [], []
        h, w = image.shape[-2:]
        for rows, cols in ndimage.find_objects(components):
            box = [cols.start, rows.start, cols.stop, rows.stop]
            clipped = box[0] == 0 or box[1] == 0 or box[2] == w or box[3] == h
            boxes.append(box)
            scores.append(0.95 if clipped else 0.8)
            # Read at the centre: a resized frame (slicing.long_side) blurs the painted edges.
            labels.append(round(float(image[1, (rows.start + rows.stop) // 2, (cols.start + cols.stop) // 2]) * 10) - 1)
        results.append(
            {
                "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                "scores": torch.tensor(scores, dtype=torch.float32),
                "labels": torch.tensor(labels, dtype=torch.int64),
            }
        )
    return results


def seam_bees() -> tuple[list[tuple[int, int, int, int]], list[int]]:
    """Bees (40x24 and 24x40 px, four classes) placed on tile borders, overlap zones and corners."""
    xs = tile_starts(WIDTH, 300, 96)
    ys = tile_starts(HEIGHT, 300, 96)
    boxes = []
    for i, k in enumerate(range(1, len(xs))):
        j = 1 + i % (len(ys) - 1)
        x, y = xs[k], ys[j]
        end_x, end_y = xs[k - 1] + 300, ys[j - 1] + 300  # where the previous tile ends
        boxes.append((end_x - 20, 40 + 50 * (i % 3), end_x + 20, 64 + 50 * (i % 3)))  # across a vertical border
        boxes.append((100 + 60 * i, end_y - 20, 124 + 60 * i, end_y + 20))  # across a horizontal border
        boxes.append((end_x - 15, end_y - 10, end_x + 25, end_y + 14))  # across a corner of four tiles
        boxes.append((x + 20, y + 30, x + 60, y + 54))  # inside an overlap zone: whole in two tiles
    labels = [i % 4 for i in range(len(boxes))]
    return boxes, labels


def _match(found: dict[str, torch.Tensor], boxes, labels) -> None:
    truth = torch.tensor(boxes, dtype=torch.float32)
    assert len(found["boxes"]) == len(truth), f"{len(found['boxes'])} detections for {len(truth)} bees"
    for box, label in zip(truth, labels):
        ious = _iou(box, found["boxes"])
        best = int(ious.argmax())
        assert float(ious[best]) > 0.99, f"bee {box.tolist()} found only as {found['boxes'][best].tolist()}"
        assert int(found["labels"][best]) == label


def _iou(box: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    from torchvision.ops import box_iou

    return box_iou(box[None], boxes)[0]


def test_tiles_cover_the_frame_with_the_requested_overlap():
    for length in [1, 299, 300, 301, 504, 1080, 1920, 2560, 3001]:
        starts = tile_starts(length, 300, 96)
        assert starts[0] == 0
        assert min(length, starts[-1] + 300) == length
        for a, b in zip(starts, starts[1:]):
            assert 0 < b - a <= 300 - 96, (length, starts)
        # The fewest tiles that keep the overlap: each adds at most 300 - 96 px of coverage.
        assert len(starts) == (1 if length <= 300 else -(-(length - 96) // 204))
    grid = tile_grid(WIDTH, HEIGHT, 300, 96)
    assert grid.shape == (9 * 5, 4)
    assert grid[:, 2].max() == WIDTH and grid[:, 3].max() == HEIGHT
    assert ((grid[:, 2] - grid[:, 0]) == 300).all()


@pytest.mark.parametrize("merge", ["nms", "wbf"])
def test_bees_on_tile_seams_are_found_once_in_frame_pixels(merge):
    boxes, labels = seam_bees()
    image = paint(boxes, labels)
    found = detect_sliced(oracle_detect, image, Slicing(tile_size=300, overlap=96, merge=merge))
    _match(found, boxes, labels)
    # The whole view won although clipped views scored higher, and took the group's best score:
    # 0.95 for the three of every four bees that straddle a border, 0.8 for those never clipped.
    assert sorted(found["scores"].tolist()) == pytest.approx(sorted([0.8, 0.95, 0.95, 0.95] * (len(boxes) // 4)))


def test_without_the_merge_seam_bees_would_be_counted_more_than_once():
    # The control for the test above: the raw tile detections over-count the painted bees.
    boxes, labels = seam_bees()
    image = paint(boxes, labels)
    tiles = tile_grid(WIDTH, HEIGHT, 300, 96).tolist()
    raw = sum(len(d["boxes"]) for d in oracle_detect([image[:, y0:y1, x0:x1] for x0, y0, x1, y1 in tiles]))
    assert raw > 2 * len(boxes)


def test_the_detection_module_slices_and_keeps_class_ids_zero_based():
    class OracleNet(nn.Module):
        """Stands in for a torchvision SSD in eval mode: labels 1..C, 0 is background."""

        def forward(self, images):
            return [{**d, "labels": d["labels"] + 1} for d in oracle_detect(images)]

    boxes, labels = seam_bees()
    system = DetectionModule(OracleNet(), ["bee", "drone", "pollenbee", "queen"], optimizer=torch.optim.SGD, slicing=SLICING)
    (found,) = system.detect([paint(boxes, labels)])
    _match(found, boxes, labels)


def test_a_frame_within_one_tile_is_detected_whole():
    calls = []

    def detect(images):
        calls.append([tuple(i.shape) for i in images])
        return oracle_detect(images)

    image = torch.zeros(3, 250, 280)
    image[0, 10:40, 20:60] = 1.0
    image[1, 10:40, 20:60] = 0.1
    found = detect_sliced(detect, image, SLICING)
    assert calls == [[(3, 250, 280)]]
    assert found["boxes"].tolist() == [[20.0, 10.0, 60.0, 40.0]]


def test_merge_keeps_overlapping_bees_of_one_tile_and_never_merges_classes():
    boxes = torch.tensor([[0, 0, 40, 24], [10, 0, 50, 24], [0, 0, 40, 24], [0, 0, 40, 24.0]])
    found = merge_detections(
        boxes,
        torch.tensor([0.9, 0.8, 0.7, 0.6]),
        labels=torch.tensor([0, 0, 1, 0]),
        tile_ids=torch.tensor([0, 0, 0, 1]),
        truncated=torch.zeros(4, dtype=torch.bool),
    )
    # Two crowded bees of tile 0 stay two; the drone stays; tile 1's copy of bee 1 merges into it.
    assert len(found["boxes"]) == 3
    assert sorted(found["labels"].tolist()) == [0, 0, 1]


def test_weighted_box_fusion_averages_whole_views_by_score():
    found = merge_detections(
        torch.tensor([[0, 0, 40, 20], [4, 0, 44, 20], [0, 0, 10, 20.0]]),
        torch.tensor([0.6, 0.2, 0.9]),
        labels=torch.zeros(3, dtype=torch.int64),
        tile_ids=torch.tensor([0, 1, 2]),
        truncated=torch.tensor([False, False, True]),
        method="wbf",
    )
    assert len(found["boxes"]) == 1
    assert found["boxes"][0].tolist() == pytest.approx([1.0, 0.0, 41.0, 20.0])  # (0.6*0 + 0.2*4) / 0.8
    assert float(found["scores"][0]) == pytest.approx(0.9)


def test_bad_slicing_settings_are_rejected_with_the_key_name():
    with pytest.raises(ValueError, match="overlap"):
        Slicing(tile_size=300, overlap=300)
    with pytest.raises(ValueError, match="merge"):
        Slicing(merge="soft")


@pytest.mark.slow
def test_predict_returns_full_frame_pixels_for_a_1080p_frame(tmp_path, tiny_checkpoint):
    """The session's tiny model (one epoch on synthetic bees) sliced into tiles at prediction
    (`slicing=tiles`) through `python -m beedet.predict` on a 1920x1080 frame: detections come
    back for the whole frame, in its pixels."""
    from PIL import Image

    ckpt = tiny_checkpoint
    frame = np.random.default_rng(0).integers(0, 255, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    Image.fromarray(frame).save(tmp_path / "frame.jpg")
    _, out_dir = run_script(["beedet.predict", f"ckpt={ckpt}", f"images={tmp_path / 'frame.jpg'}", "slicing=tiles",
                             "score_threshold=0.0"], tmp_path)
    result = json.loads((out_dir / "detections" / "frame.jpg.json").read_text())
    assert (result["width"], result["height"]) == (WIDTH, HEIGHT)
    boxes = np.array([d["box"] for d in result["detections"]])
    assert len(boxes) > 0
    assert boxes[:, 0].min() >= 0 and boxes[:, 1].min() >= 0
    assert boxes[:, 2].max() <= WIDTH and boxes[:, 3].max() <= HEIGHT
    # Found beyond the first tile (256 px, the tiny model's input): the frame was sliced, not squashed.
    assert boxes[:, 0].max() > 1000 and boxes[:, 1].max() > 600


def test_long_side_slices_the_resized_frame_and_returns_boxes_in_frame_pixels():
    """slicing.long_side: the frame is resized (aspect kept) before tiling; detections come back
    in the stored frame's pixels, with the resize's blur as the only error."""
    boxes, labels = seam_bees()
    # Bees twice as large, so that they are still 20-40 px after halving the frame.
    big = [(2 * x0 % (WIDTH - 90), y0, 2 * x0 % (WIDTH - 90) + 2 * (x1 - x0), y0 + 2 * (y1 - y0)) for x0, y0, x1, y1 in boxes[:6]]
    big = [big[0], big[2], big[4]]
    image = paint(big, [0, 1, 2])
    calls = []

    def detect(crops):
        calls.extend(tuple(c.shape) for c in crops)
        return oracle_detect(crops)

    found = detect_sliced(detect, image, Slicing(tile_size=300, overlap=96, long_side=960))
    # Tiles of a 960x540 frame (5 x 3), not of the stored 1920x1080 one (9 x 5).
    assert len(calls) == len(tile_grid(960, 540, 300, 96)) == 15
    truth = torch.tensor(big, dtype=torch.float32)
    assert len(found["boxes"]) == len(truth)
    for box, label in zip(truth, [0, 1, 2]):
        best = int(_iou(box, found["boxes"]).argmax())
        assert (found["boxes"][best] - box).abs().max() <= 2.0, (box, found["boxes"][best])
        assert int(found["labels"][best]) == label


def test_long_side_upscales_small_photos_and_is_checked():
    image = torch.zeros(3, 100, 200)
    image[0, 10:30, 40:80] = 1.0
    image[1, 10:30, 40:80] = 0.1
    found = detect_sliced(oracle_detect, image, Slicing(tile_size=300, overlap=96, long_side=400))
    assert found["boxes"].tolist() == [pytest.approx([40.0, 10.0, 80.0, 30.0], abs=1.0)]
    with pytest.raises(ValueError, match="long_side"):
        Slicing(tile_size=300, long_side=200)


def test_scale_ranges_give_small_bees_to_the_tiles_and_large_ones_to_the_whole_frame():
    """slicing.tile_max_size / full_frame_min_size (SNIP's valid ranges): a tile's large detection
    (here a made-up 150 px box on every tile, the featureless-wall false positive of the real
    model) and the whole-frame pass's small one (here shifted off the bee) are dropped; a small bee
    comes from its tile and a close-up from the whole frame, each once."""
    small, close_up = (500, 400, 530, 420), (1000, 300, 1400, 600)
    image = paint([small, close_up], [0, 1])

    def detect(crops):
        found = oracle_detect(crops)
        for crop, out in zip(crops, found):
            if tuple(crop.shape[-2:]) == (HEIGHT, WIDTH):  # the whole-frame pass
                out["boxes"][out["labels"] == 0] += 12.0
            else:
                out["boxes"] = torch.cat([out["boxes"], torch.tensor([[10.0, 10.0, 160.0, 160.0]])])
                out["scores"] = torch.cat([out["scores"], torch.tensor([0.99])])
                out["labels"] = torch.cat([out["labels"], torch.tensor([2])])
        return found

    ranged = Slicing(tile_size=300, overlap=96, full_frame=True, tile_max_size=100, full_frame_min_size=50)
    _match(detect_sliced(detect, image, ranged), [small, close_up], [0, 1])

    everything = detect_sliced(detect, image, Slicing(tile_size=300, overlap=96, full_frame=True))
    assert int((everything["labels"] == 2).sum()) == len(tile_grid(WIDTH, HEIGHT, 300, 96))
    assert int((everything["labels"] == 0).sum()) == 2  # the bee from its tile, and the shifted copy


def test_scale_ranges_are_checked():
    with pytest.raises(ValueError, match="full_frame=true"):
        Slicing(tile_max_size=64)
    with pytest.raises(ValueError, match="full_frame_min_size"):
        Slicing(full_frame=True, tile_max_size=32, full_frame_min_size=64)
    with pytest.raises(ValueError, match="tile_max_size"):
        Slicing(full_frame=True, tile_max_size=0)


def test_many_frames_share_full_batches_and_come_back_as_one_at_a_time():
    """detect_sliced_frames: the tiles (and whole-frame passes) of a 1080p frame, a frame within
    one tile and a frame resized by long_side go through detect in batches of exactly
    slicing.batch_size but the last, and each frame gets what detect_sliced gives it alone."""
    from beedet.inference.tiling import detect_sliced_frames

    boxes, labels = seam_bees()
    seam = paint(boxes, labels)
    small = torch.zeros(3, 250, 280)
    small[0, 10:40, 20:60] = 1.0
    small[1, 10:40, 20:60] = 0.1
    frames = [seam, small, seam.flip(-1)]
    plain = Slicing(tile_size=300, overlap=96, batch_size=7)
    for slicing in (plain, Slicing(tile_size=300, overlap=96, batch_size=5, full_frame=True, long_side=960)):
        sizes = []

        def detect(images):
            sizes.append(len(images))
            return oracle_detect(images)

        together = detect_sliced_frames(detect, frames, slicing)
        inputs = sum(sizes)
        assert sizes == [slicing.batch_size] * (inputs // slicing.batch_size) + ([inputs % slicing.batch_size] if inputs % slicing.batch_size else [])
        alone = [detect_sliced(oracle_detect, frame, slicing) for frame in frames]
        assert len(together) == len(alone) == 3
        for a, b in zip(together, alone):
            for key in ("boxes", "scores", "labels"):
                torch.testing.assert_close(a[key], b[key])
        if slicing.long_side is None:
            _match(together[0], boxes, labels)
