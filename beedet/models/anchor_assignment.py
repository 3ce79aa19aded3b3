"""Which anchors learn which bee: ATSS, the adaptive training sample selection of Zhang et al. 2020
("Bridging the Gap Between Anchor-based and Anchor-free Detection via Adaptive Training Sample
Selection", CVPR 2020).

SSD's own rule makes an anchor a positive when its IoU with a box reaches one fixed threshold
(``iou_thresh``). One threshold cannot suit every size: a 12 px bee shifted half a stride-8 cell
from its nearest anchor has IoU about 0.4 with it, a 60 px bee has several anchors above 0.6. So
small bees get one or no positive anchors and large ones many, and the network sees few examples
of exactly the bees that are hardest. ATSS sets the threshold per box from the statistics of its
own candidates:

1. on every pyramid level, the ``topk`` anchors whose centres are nearest the box's centre are
   its candidates;
2. its IoU threshold is the mean plus the standard deviation of the candidates' IoUs;
3. candidates at or above that threshold whose centres lie inside the box are its positives;
4. an anchor that is a positive for several boxes goes to the one it overlaps most.

beedet adds one rule to the paper's: a box left without a positive (a bee smaller than the gap
between anchor centres) gets its highest-IoU anchor, as SSD's matcher gives every box one.

Tensor contracts: ``boxes`` float (G, 4) and ``anchors`` float (A, 4), both xyxy in the same pixel
units (the network's input pixels); ``anchors_per_level`` the number of anchors of each pyramid
level in the order the anchor generator lays them out (level-major), summing to A. The result is
int64 (A,): the index in ``boxes`` of the box each anchor learns, -1 for background, the
convention of torchvision's ``Matcher`` that ``SSD.compute_loss`` reads.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchvision.ops import box_iou

# The paper's default: 9 candidates per level (its Table 3 shows 7-17 all within 0.3 AP).
ATSS_TOPK = 9
# Names ``assigner`` accepts in the model builders and conf/model/*.yaml.
ASSIGNERS = ("iou", "atss")


def atss_assign(boxes: Tensor, anchors: Tensor, anchors_per_level: Sequence[int], topk: int = ATSS_TOPK) -> Tensor:
    """The box index each anchor learns (-1: background); see the module docstring."""
    num_anchors = anchors.size(0)
    if sum(anchors_per_level) != num_anchors:
        raise ValueError(f"anchors_per_level {list(anchors_per_level)} sums to {sum(anchors_per_level)}, not {num_anchors} anchors")
    if topk < 1:
        raise ValueError(f"topk must be >= 1, got {topk}")
    matched = torch.full((num_anchors,), -1, dtype=torch.int64, device=anchors.device)
    if boxes.numel() == 0:
        return matched

    iou = box_iou(anchors, boxes)  # (A, G)
    anchor_centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    box_centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    # Distances in thousandths of a pixel: the anchors of one location share a centre only up to
    # float rounding, and rounding makes them exact ties (broken by anchor index below) whatever
    # kernel computed them. Not cdist's matrix-product shortcut, whose error reorders near-ties.
    distances = torch.cdist(anchor_centres, box_centres, compute_mode="donot_use_mm_for_euclid_dist")  # (A, G)
    distances = distances.mul(1000.0).round()

    # 1. Candidates: the topk nearest anchors of each level, as indices into all anchors (C, G).
    candidates = []
    start = 0
    for count in anchors_per_level:
        k = min(topk, count)
        # A stable sort: the anchors of one location share a centre, and ties go to the lower
        # index (the anchor generator's order), so the assignment does not depend on the sort kernel.
        nearest = distances[start:start + count].sort(dim=0, stable=True).indices[:k]
        candidates.append(nearest + start)
        start += count
    candidates = torch.cat(candidates, dim=0)
    candidate_iou = iou.gather(0, candidates)

    # 2. A threshold per box. With one candidate the std is undefined: the threshold is its IoU.
    std = candidate_iou.std(dim=0) if candidate_iou.size(0) > 1 else torch.zeros_like(candidate_iou[0])
    threshold = candidate_iou.mean(dim=0) + std

    # 3. Positives: above the threshold, centre inside the box (a small margin keeps edge centres out).
    centres = anchor_centres[candidates]  # (C, G, 2)
    inside = ((centres - boxes[None, :, :2]).amin(dim=2) > 0.01) & ((boxes[None, :, 2:] - centres).amin(dim=2) > 0.01)
    positive = (candidate_iou >= threshold[None, :]) & inside

    # 4. One box per anchor: the positive pairing of highest IoU. Scatter the candidates' IoUs into
    #    an (A, G) table where only positive pairs count, then take each anchor's best box.
    eligible = torch.full_like(iou, -1.0)
    box_index = torch.arange(boxes.size(0), device=boxes.device).expand_as(candidates)
    eligible[candidates[positive], box_index[positive]] = candidate_iou[positive]
    best_iou, best_box = eligible.max(dim=1)
    matched[best_iou >= 0] = best_box[best_iou >= 0]

    # beedet's addition: every box keeps at least its best-overlapping anchor.
    # Checked box by box, as a box's fallback anchor may be the only positive of a later box.
    for g in range(boxes.size(0)):
        if not bool((matched == g).any()):
            matched[iou[:, g].argmax()] = g
    return matched
