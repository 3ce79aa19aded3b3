"""Box drawing, overlays, grids and image files (beedet.visualize)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from beedet.visualize import (
    GT_COLOR,
    class_color,
    draw_boxes,
    image_grid,
    overlay_predictions,
    save_image,
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


def test_overlay_shows_ground_truth_green_and_confident_predictions_only():
    target = {"boxes": torch.tensor([[10.0, 10.0, 30.0, 30.0]]), "labels": torch.tensor([0])}
    prediction = {
        "boxes": torch.tensor([[40.0, 10.0, 70.0, 40.0], [5.0, 42.0, 25.0, 58.0]]),
        "scores": torch.tensor([0.9, 0.1]),
        "labels": torch.tensor([1, 0]),
    }
    out = overlay_predictions(gray(), target, prediction, NAMES, score_threshold=0.3, text=False)

    assert pixel(out, 10, 20) == GT_COLOR
    assert pixel(out, 40, 25) == class_color(1)
    assert pixel(out, 5, 50) == (128, 128, 128)  # score 0.1 < 0.3: not drawn


def test_overlay_max_side_shrinks_picture_and_boxes():
    target = {"boxes": torch.tensor([[100.0, 50.0, 300.0, 150.0]]), "labels": torch.tensor([0])}
    empty = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)}
    out = overlay_predictions(gray(200, 400), target, empty, NAMES, max_side=100)

    assert out.shape == (3, 50, 100)
    assert pixel(out, 25, 20) == GT_COLOR  # left edge of the box, scaled by 1/4


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
