"""``python -m beedet.fit_anchors``: default boxes matched to ground-truth boxes, and better anchors."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import torch
from torchvision.ops import box_iou

from beedet.data.records import ImageRecord
from beedet.fit_anchors import (
    AnchorSet,
    anchor_coverage,
    default_boxes,
    feature_maps,
    input_boxes,
    main,
    match_boxes,
    network_coverage,
    network_for,
    read_records,
)
from beedet.models.ssd import input_size
from helpers import compose_config


def test_a_box_equal_to_an_anchor_has_iou_one() -> None:
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 40.0, 30.0], [100.0, 100.0, 110.0, 140.0]])
    boxes = torch.tensor([
        [20.0, 20.0, 40.0, 30.0],  # equal to anchor 1
        [0.0, 0.0, 10.0, 20.0],  # anchor 0 covers half of it: IoU exactly 0.5
        [0.0, 0.0, 8.0, 10.0],  # inside anchor 0: IoU 0.8
        [200.0, 200.0, 210.0, 210.0],  # far from every anchor
    ])
    best, positives = match_boxes(boxes, anchors, iou_thresh=0.35)
    assert best.tolist() == pytest.approx([1.0, 0.5, 0.8, 0.0])
    assert positives.tolist() == [1, 1, 1, 0]
    coverage = anchor_coverage(boxes, anchors, iou_thresh=0.6)
    assert (coverage.boxes, coverage.matched, coverage.matched_at_thresh, coverage.positives) == (4, 3, 2, 2)
    assert coverage.fraction == 0.75 and coverage.fraction_at_thresh == 0.5


def test_matching_real_anchors_equals_the_full_iou_matrix() -> None:
    net = network_for(compose_config(["model=ssd256_resnet_slim"]).model, num_classes=1)
    size = input_size(net)
    anchors = default_boxes(net.anchor_generator, feature_maps(net, size), size)
    assert anchors.shape == (4 * (32**2 + 16**2 + 8**2 + 4**2 + 2**2 + 1), 4)
    generator = torch.Generator().manual_seed(0)
    corners = torch.rand(600, 2, generator=generator) * size
    sides = 1 + torch.rand(600, 2, generator=generator) ** 3 * 120
    boxes = torch.cat([anchors[::97], torch.cat([corners, corners + sides], dim=1)])
    best, positives = match_boxes(boxes, anchors, iou_thresh=0.35)
    ious = box_iou(boxes, anchors)
    assert torch.equal(best, ious.max(dim=1).values)
    assert torch.equal(positives, (ious >= 0.35).sum(dim=1))
    assert torch.all(best[: len(anchors[::97])] == 1.0)  # every real anchor, taken as a box, is matched exactly


def test_boxes_at_the_input_scale_of_whole_frames_and_tiles() -> None:
    record = ImageRecord("/f.jpg", 1920, 1080, boxes=[[960, 540, 1008, 564], [590, 0, 650, 40], [10, 10, 14, 11]],
                         labels=[0, 0, 0])
    squashed, tiny = input_boxes([record], image_size=300)
    expected = [[150, 150, 157.5, 564 * 300 / 1080], [92.1875, 0, 101.5625, 40 * 300 / 1080]]
    assert torch.allclose(squashed, torch.tensor(expected))
    assert tiny == 1 and len(squashed) == 2  # 4 x 1 px is 0.6 x 0.3 px at 300
    tiled, tiny = input_boxes([record], image_size=300, tile_size=300)
    # Full size; placed in a 300 px tile grid, moved back inside when crossing the tile's edge.
    assert tiled.tolist() == [[60, 240, 108, 264], [240, 0, 300, 40], [10, 10, 14, 11]] and tiny == 0
    halved, _ = input_boxes([record], image_size=300, tile_size=600)
    assert halved[0].tolist() == [180, 270, 204, 282]


def _table_row(out: str, name: str) -> list[float]:
    line = next(line for line in out.splitlines() if line.startswith(name + " "))
    return [float(v) for v in re.findall(r"\s(\d+\.\d+)(?=\s|$)", line)]


def test_cli_proposes_anchors_that_build_and_match_at_least_as_many_boxes(
    honeybee_mini: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    manifest = honeybee_mini / "train.manifest"
    main([str(manifest), "model=ssd256_resnet_slim"])
    out = capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []  # composing the config writes nothing
    current, proposed = _table_row(out, "current"), _table_row(out, "proposed")
    # matched @0.5, matched @iou_thresh (0.35), anchors per box @0.35
    assert len(current) == len(proposed) == 3
    assert all(0.0 <= v <= 1.0 for v in current[:2] + proposed[:2])
    assert proposed[0] >= current[0]
    assert current[1] >= current[0]  # a lower IoU threshold matches at least as many boxes

    overrides = shlex.split(out.strip().splitlines()[-1])
    assert [o.split("=")[0] for o in overrides] == ["model.anchor_scales", "model.aspect_ratios"]
    cfg = compose_config(["model=ssd256_resnet_slim", *overrides])
    net = network_for(cfg.model, num_classes=4)
    assert AnchorSet.of(net.anchor_generator).overrides(with_ratios=True) == overrides
    # The network built from the printed overrides matches what the table says.
    records, *_ = read_records(manifest, max_images=1000)
    boxes, _ = input_boxes(records, input_size(net))
    coverage = network_coverage(net, boxes, iou_thresh=float(cfg.model.iou_thresh))
    assert [round(coverage.fraction, 3), round(coverage.fraction_at_thresh, 3)] == proposed[:2]


def test_cli_proposes_only_scales_for_models_without_aspect_ratios(
    honeybee_mini: Path, capsys: pytest.CaptureFixture
) -> None:
    main([str(honeybee_mini / "train.manifest"), "model=ssdlite320_mobilenet_v3", "tile_size=640"])
    out = capsys.readouterr().out
    assert "640 px tiles resized to 320 px" in out
    assert "takes no aspect_ratios: only its anchor scales are proposed" in out
    assert _table_row(out, "proposed")[0] >= _table_row(out, "current")[0]
    overrides = shlex.split(out.strip().splitlines()[-1])
    assert [o.split("=")[0] for o in overrides] == ["model.anchor_scales"]


def test_cli_needs_the_data_first(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit, match="DATA"):
        main(["model=ssd256_resnet_slim"])


def test_cli_scores_a_tiled_experiment_at_its_tile_scale(honeybee_mini: Path, capsys: pytest.CaptureFixture) -> None:
    # slicing=tiles (via the experiment) means training and inference see 300 px tiles, not frames.
    main([str(honeybee_mini / "train.manifest"), "+experiment=honeybee_tiled"])
    out = capsys.readouterr().out
    assert "300 px tiles resized to 300 px" in out
