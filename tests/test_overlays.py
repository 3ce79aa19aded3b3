"""Box drawing, overlays, grids and image files (beedet.reporting.overlays)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from beedet.reporting.overlays import (
    GT_COLOR,
    LEGEND_BACKGROUND,
    choose_hard_images,
    class_color,
    draw_boxes,
    image_grid,
    match_detections,
    overlay_predictions,
    save_image,
    spread_indices,
    write_overlays,
)

NAMES = ["bee", "drone"]


def gray(height: int = 60, width: int = 80) -> torch.Tensor:
    return torch.full((3, height, width), 0.5)


def pixel(image: torch.Tensor, x: int, y: int) -> tuple[int, ...]:
    return tuple(int(v) for v in image[:, y, x])


def test_draw_boxes_colours_edges_by_class_and_leaves_the_rest():
    boxes = torch.tensor([[10.0, 10.0, 30.0, 40.0], [40.0, 5.0, 70.0, 50.0]])
    out = draw_boxes(gray(), boxes, torch.tensor([0, 1]), NAMES, text=False)

    assert out.dtype == torch.uint8 and out.shape == (3, 60, 80)
    assert pixel(out, 10, 25) == class_color(0)  # left edge of the bee box
    assert pixel(out, 55, 50) == class_color(1)  # bottom edge of the drone box
    assert class_color(0) != class_color(1)
    assert pixel(out, 20, 25) == (128, 128, 128)  # inside: not filled
    assert pixel(out, 5, 55) == (128, 128, 128)  # outside


def test_draw_boxes_single_colour_and_uint8_input():
    image = torch.zeros(3, 20, 20, dtype=torch.uint8)
    out = draw_boxes(image, torch.tensor([[2.0, 2.0, 15.0, 15.0]]), torch.tensor([1]), NAMES, color=(1, 2, 3))
    assert pixel(out, 2, 8) == (1, 2, 3)
    assert image.sum() == 0  # the input is not drawn on


def test_draw_boxes_without_boxes_returns_the_image_as_uint8():
    out = draw_boxes(gray(), torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64), NAMES)
    assert out.dtype == torch.uint8 and torch.all(out == 128)


def test_captions_only_in_boxes_that_can_hold_them():
    big = torch.tensor([[5.0, 5.0, 95.0, 45.0]])
    tiny = torch.tensor([[5.0, 5.0, 15.0, 12.0]])
    image = gray(50, 100)
    with_text = draw_boxes(image, big, torch.tensor([0]), NAMES, torch.tensor([0.87]))
    plain = draw_boxes(image, big, torch.tensor([0]), NAMES, torch.tensor([0.87]), text=False)
    changed = (with_text != plain).any(dim=0)
    assert changed.any() and changed[:25, :60].sum() == changed.sum()  # the caption sits top-left

    assert torch.equal(
        draw_boxes(image, tiny, torch.tensor([0]), NAMES, torch.tensor([0.87])),
        draw_boxes(image, tiny, torch.tensor([0]), NAMES, torch.tensor([0.87]), text=False),
    )


def test_draw_boxes_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="2 boxes but 1 labels"):
        draw_boxes(gray(), torch.zeros(2, 4), torch.zeros(1, dtype=torch.int64), NAMES)


def detections(boxes: list[list[float]], scores: list[float], labels: list[int]) -> dict[str, torch.Tensor]:
    return {"boxes": torch.tensor(boxes).reshape(-1, 4), "scores": torch.tensor(scores),
            "labels": torch.tensor(labels, dtype=torch.int64)}


def truth(boxes: list[list[float]], labels: list[int]) -> dict[str, torch.Tensor]:
    return {"boxes": torch.tensor(boxes).reshape(-1, 4), "labels": torch.tensor(labels, dtype=torch.int64)}


def test_matching_tells_true_positives_false_positives_and_misses_apart():
    target = truth([[0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10], [60, 0, 70, 10]], [0, 0, 1, 0])
    prediction = detections(
        [[0, 0, 10, 10],    # 0: on object 0, right class -> TP
         [0, 0, 10, 11],    # 1: object 0 again, lower score -> FP (an object is found once)
         [40, 0, 50, 10],   # 2: on object 2 (a drone) but says bee -> FP, and object 2 is missed
         [20, 0, 26, 10],   # 3: on object 1, IoU 0.6 -> TP
         [60, 0, 64, 10],   # 4: on object 3, IoU 0.4 < 0.5 -> FP, object 3 missed
         [80, 0, 90, 10]],  # 5: below the score threshold: neither drawn nor judged
        [0.9, 0.8, 0.7, 0.6, 0.5, 0.2], [0, 0, 0, 0, 0, 0])
    matching = match_detections(target, prediction, score_threshold=0.3)

    assert matching.kept.tolist() == [True, True, True, True, True, False]
    assert matching.true_positive.tolist() == [True, False, False, True, False, False]
    assert matching.found.tolist() == [True, True, False, False]
    assert (matching.num_true_positives, matching.num_false_positives, matching.num_misses) == (2, 3, 2)


def test_matching_takes_the_highest_score_first_and_the_best_overlap():
    # Two detections compete for one object: the better-scored one wins even with less overlap.
    target = truth([[0, 0, 10, 10]], [0])
    prediction = detections([[0, 0, 10, 10], [0, 0, 10, 8]], [0.5, 0.9], [0, 0])
    assert match_detections(target, prediction, 0.3).true_positive.tolist() == [False, True]
    # One detection between two objects takes the one it overlaps most.
    target = truth([[0, 0, 10, 10], [2, 0, 12, 10]], [0, 0])
    assert match_detections(target, detections([[2, 0, 12, 10]], [0.9], [0]), 0.3).found.tolist() == [False, True]
    # No ground truth known: everything kept is unjudged, nothing is missed.
    none = match_detections(None, detections([[0, 0, 5, 5]], [0.9], [1]), 0.3)
    assert none.num_misses == 0 and none.num_false_positives == 1


def test_hard_images_are_the_most_missed_then_the_most_false_positives():
    misses = [0, 5, 2, 5, 0, 1]
    false_positives = [3, 9, 0, 1, 4, 0]
    assert choose_hard_images(misses, false_positives, count=2) == {"misses": [1, 3], "false_positives": [4, 0]}
    # An image with no such error is never chosen; the fixed ones are skipped.
    assert choose_hard_images(misses, false_positives, count=9, exclude=[1]) == {
        "misses": [3, 2, 5], "false_positives": [4, 0]}
    assert choose_hard_images([0, 0], [0, 0], count=2) == {"misses": [], "false_positives": []}
    with pytest.raises(ValueError, match="2 miss counts but 1"):
        choose_hard_images([0, 0], [0], count=1)


def test_spread_indices_reach_both_ends():
    assert spread_indices(100, 5) == [0, 25, 50, 74, 99]
    assert spread_indices(3, 5) == spread_indices(3, None) == [0, 1, 2]
    assert spread_indices(10, 0) == []


def test_overlay_draws_true_positives_solid_false_positives_dashed_and_misses_thick_green():
    target = truth([[10, 10, 30, 30], [60, 40, 75, 55]], [0, 1])
    prediction = detections([[10, 10, 30, 30], [40, 8, 70, 30], [5, 42, 25, 58]], [0.9, 0.8, 0.1], [0, 1, 0])
    out = overlay_predictions(gray(), target, prediction, NAMES, score_threshold=0.3, text=False, legend=False, width=2)

    assert out.shape == (3, 60, 80)
    assert [pixel(out, 10, y) for y in range(12, 29)] == [class_color(0)] * 17  # true positive: solid
    fp_edge = [pixel(out, 40, y) for y in range(10, 29)]  # false positive: dashed, so gaps
    assert class_color(1) in fp_edge and (128, 128, 128) in fp_edge
    # The missed drone: a thick green frame just outside its box; the object itself left clear.
    assert pixel(out, 57, 47) == GT_COLOR and pixel(out, 59, 47) == GT_COLOR
    assert pixel(out, 67, 47) == (128, 128, 128)
    assert pixel(out, 5, 50) == (128, 128, 128)  # score 0.1 < 0.3: not drawn


def test_overlay_enlarges_small_pictures_and_appends_a_legend():
    target = truth([[10, 10, 14, 14]], [0])  # a 4 px object: its caption cannot fit inside
    prediction = detections([[10, 10, 14, 14]], [0.87], [0])
    small = gray(48, 64)
    out = overlay_predictions(small, target, prediction, NAMES, min_side=640, title="val image 3")
    plain = overlay_predictions(small, target, prediction, NAMES, min_side=640, text=False, legend=False)

    assert plain.shape == (3, 480, 640)  # 10x, aspect kept
    assert out.shape[2] == 640 and out.shape[1] > 480 + 40  # the legend strip below: title, facts, swatches
    assert pixel(out, 1, 481) == pixel(out, 1, out.shape[1] - 1) == LEGEND_BACKGROUND
    # The caption ("bee 0.87") sits just above the 40 px box, outside it, in the class colour.
    above = out[:, 60:100, 100:140]
    assert (above == torch.tensor(class_color(0), dtype=torch.uint8)[:, None, None]).all(dim=0).sum() > 100
    assert not torch.equal(out[:, :480], plain)


def test_overlay_max_side_shrinks_picture_and_boxes():
    target = {"boxes": torch.tensor([[100.0, 50.0, 300.0, 150.0]]), "labels": torch.tensor([0])}
    empty = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)}
    out = overlay_predictions(gray(200, 400), target, empty, NAMES, max_side=100, legend=False, width=1)

    assert out.shape == (3, 50, 100)
    assert pixel(out, 22, 20) == GT_COLOR  # the missed box (left edge 25 scaled by 1/4), framed outside


class FixedDetector:
    """Finds a bee at (0, 0, 10, 10) in every image."""

    class_names = NAMES
    device = torch.device("cpu")

    def detect(self, images):
        return [detections([[0, 0, 10, 10]], [0.9], [0]) for _ in images]


def test_write_overlays_names_each_file_by_why_it_was_chosen(tmp_path):
    from types import SimpleNamespace

    # Image 0: found; 1: one miss; 2: two misses; 3: a false positive only (no objects); 4: found.
    boxes = {0: [[0, 0, 10, 10]], 1: [[0, 0, 10, 10], [20, 20, 30, 30]],
             2: [[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]], 3: [], 4: [[0, 0, 10, 10]]}
    dataset = [(gray(), truth(boxes[i], [0] * len(boxes[i]))) for i in range(5)]
    records = [SimpleNamespace(num_boxes=len(boxes[i]), image_path=f"/data/frame{i}.jpg") for i in range(5)]
    written = write_overlays(FixedDetector(), dataset, records, tmp_path / "overlays", count=2, score_threshold=0.3,
                             num_hard=1, min_side=160)

    assert [p.name for p in written] == ["most_misses_1_00002_frame2.jpg", "most_false_positives_1_00003_frame3.jpg",
                                         "first_00000_frame0.jpg", "first_00001_frame1.jpg"]
    assert Image.open(written[0]).size[0] == 160


def test_image_grid_letterboxes_different_sizes():
    wide = torch.ones(3, 10, 40)  # white, 1:4
    square = torch.full((3, 40, 40), 0.5)
    grid = image_grid([wide, square], nrow=2, padding=2)

    assert grid.dtype == torch.uint8
    assert grid.shape == (3, 40 + 4, 2 * 40 + 6)  # cells 40x40 plus padding
    cell = grid[:, 2:42, 2:42]
    assert torch.all(cell[:, 15:25] == 255)  # the wide image, centred vertically, unstretched
    assert torch.all(cell[:, :15] == 0) and torch.all(cell[:, 25:] == 0)


def test_image_grid_defaults_to_a_square_layout():
    grid = image_grid([torch.zeros(3, 8, 8)] * 5, padding=0)
    assert grid.shape == (3, 16, 24)  # ceil(sqrt(5)) = 3 per row, 2 rows


def test_save_image_png_roundtrip_and_jpeg(tmp_path):
    image = torch.randint(0, 256, (3, 12, 16), dtype=torch.uint8)
    png = save_image(image, tmp_path / "sub" / "a.png")
    assert np.array_equal(np.asarray(Image.open(png)), image.permute(1, 2, 0).numpy())

    jpg = save_image(image.float() / 255, tmp_path / "b.JPG")
    assert Image.open(jpg).format == "JPEG" and Image.open(jpg).size == (16, 12)


def test_save_image_names_the_file_on_a_bad_suffix(tmp_path):
    with pytest.raises(ValueError, match=r"c\.gif"):
        save_image(torch.zeros(3, 4, 4), tmp_path / "c.gif")
