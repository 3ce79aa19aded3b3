"""ATSS anchor assignment (beedet/models/anchor_assignment.py): the vectorised code against a plain
loop written from the paper's Algorithm 1, its guarantees for small bees, and its wiring into the
SSD's loss through the real model config."""

from __future__ import annotations

import pytest
import torch
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import box_iou

from helpers import compose_config

from beedet.assembly import build_network
from beedet.models import ssd
from beedet.models.anchor_assignment import atss_assign

SCALES = [0.0375, 0.07, 0.13, 0.24, 0.45, 0.8, 1.05]


@pytest.fixture(scope="module")
def fpn_anchors() -> tuple[torch.Tensor, list[int]]:
    """The anchors of conf/model/ssd320_resnet_fpn.yaml's network at 320 px, and per level counts."""
    model = ssd.ssd_resnet_slim(4, image_size=320, widths=[24, 32, 96, 192], blocks=[1, 2, 2], pyramid_channels=96,
                                anchor_scales=SCALES, aspect_ratios=[[2]] * 6, assigner="atss").eval()
    image = torch.zeros(1, 3, 320, 320)
    with torch.no_grad():
        features = list(model.backbone(image).values())
    anchors = model.anchor_generator(ImageList(image, [(320, 320)]), features)[0]
    assert anchors.size(0) == sum(model.anchors_per_level)
    return anchors, model.anchors_per_level


def atss_by_the_paper(boxes: torch.Tensor, anchors: torch.Tensor, per_level: list[int], topk: int) -> torch.Tensor:
    """Algorithm 1 of Zhang et al. 2020, one box and one level at a time, plus beedet's fallback."""
    iou = box_iou(anchors, boxes)
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    best = torch.full((anchors.size(0),), -1.0)
    matched = torch.full((anchors.size(0),), -1, dtype=torch.int64)
    for g, box in enumerate(boxes):
        box_centre = (box[:2] + box[2:]) / 2
        candidates = []
        start = 0
        for count in per_level:
            d = ((centres[start:start + count] - box_centre) ** 2).sum(1).sqrt().mul(1000).round()  # ties: see the module
            candidates += (d.argsort(stable=True)[: min(topk, count)] + start).tolist()
            start += count
        ious = iou[candidates, g]
        threshold = ious.mean() + ious.std()
        for a, value in zip(candidates, ious.tolist()):
            cx, cy = centres[a].tolist()
            inside = min(cx - box[0], cy - box[1], box[2] - cx, box[3] - cy) > 0.01
            if value >= threshold and inside and value > best[a]:
                best[a], matched[a] = value, g
    for g in range(boxes.size(0)):
        if not (matched == g).any():
            matched[iou[:, g].argmax()] = g
    return matched


def random_boxes(n: int, generator: torch.Generator) -> torch.Tensor:
    sides = torch.exp(torch.empty(n, 2).uniform_(2.0, 5.5, generator=generator))  # about 7-245 px
    corners = torch.rand(n, 2, generator=generator) * (320 - sides)
    return torch.cat([corners, corners + sides], dim=1)


def test_atss_matches_the_papers_algorithm_box_by_box(fpn_anchors):
    anchors, per_level = fpn_anchors
    generator = torch.Generator().manual_seed(0)
    for n in (1, 3, 12, 40):
        boxes = random_boxes(n, generator)
        assert torch.equal(atss_assign(boxes, anchors, per_level), atss_by_the_paper(boxes, anchors, per_level, 9))


def test_every_bee_gets_positives_even_the_smallest(fpn_anchors):
    anchors, per_level = fpn_anchors
    # Small bees placed between anchor centres, where IoU 0.35 matching gives one anchor at best.
    boxes = torch.tensor([[3.0, 3.0, 11.0, 11.0], [100.0, 40.0, 110.0, 52.0], [200.0, 200.0, 215.0, 214.0]])
    matched = atss_assign(boxes, anchors, per_level)
    iou_matched = ssd.ssd_resnet_slim(4, image_size=320, anchor_scales=SCALES, iou_thresh=0.35).proposal_matcher(box_iou(boxes, anchors))
    for g in range(len(boxes)):
        assert (matched == g).sum() >= 2, f"box {g} has {(matched == g).sum()} positive anchors"
    assert (matched >= 0).sum() > (iou_matched >= 0).sum()
    # The positives sit on or over their bee: their centres inside it, on the fine levels.
    positive = torch.nonzero(matched >= 0).flatten()
    centres = (anchors[positive, :2] + anchors[positive, 2:]) / 2
    owner = boxes[matched[positive]]
    assert ((centres > owner[:, :2]) & (centres < owner[:, 2:])).all()
    assert (positive < per_level[0] + per_level[1]).all()


def test_no_boxes_means_all_background_and_counts_must_add_up(fpn_anchors):
    anchors, per_level = fpn_anchors
    assert (atss_assign(torch.zeros(0, 4), anchors, per_level) == -1).all()
    with pytest.raises(ValueError, match="sums to"):
        atss_assign(torch.tensor([[0.0, 0.0, 10.0, 10.0]]), anchors, per_level[:-1])


def test_the_recipe_config_trains_with_atss():
    cfg = compose_config(["+experiment=honeybee", "model.assigner=atss"])
    model = build_network(cfg.model, num_classes=4).train()
    assert model.assigner == "atss" and sum(model.anchors_per_level) == 8540
    images = [torch.rand(3, 320, 320), torch.rand(3, 320, 320)]  # BatchNorm's 1x1 level needs two
    # Small bees between anchor centres, which the two rules give different positives.
    targets = [{"boxes": torch.tensor([[3.0, 3.0, 11.0, 11.0], [100.0, 40.0, 110.0, 52.0]]), "labels": torch.tensor([1, 3])}] * 2
    torch.manual_seed(0)
    losses = model(images, targets)
    model.assigner = "iou"
    torch.manual_seed(0)
    baseline = model(images, targets)
    # Same network and batch: only the positives differ, so the box loss (a mean over them) does.
    assert losses["bbox_regression"].item() != pytest.approx(baseline["bbox_regression"].item())
    assert all(torch.isfinite(v) for v in losses.values())
    with pytest.raises(ValueError, match="assigner must be one of"):
        ssd.ssd_resnet_slim(4, assigner="nearest")
