"""Test-time augmentation by flips: each network input is also predicted mirrored, and the views vote.

A detector trained from scratch on a few hundred photos is noisy: a patch of comb or pollen cells
can score 0.9 as a bee in one view and 0.1 in its mirror image, while a real bee scores high in
both. :func:`detect_with_flips` runs the network on every input as it is and flipped (``views``:
``"h"`` left-right, ``"v"`` top-bottom, ``"hv"`` both), maps the mirrored boxes back, and fuses
the views (:func:`vote_views`): detections of one class that overlap at ``iou_thresh`` are one
object, whose score is the *mean over the views* of each view's best score for it (0 where a view
missed it) and whose box is the score-weighted mean of their boxes (weighted box fusion, Solovyev
et al. 2019). So an error one view makes alone keeps 1/k of its score, and ranks below the bees
every view agrees on. Keeping the highest score instead (plain NMS over the views) does not help:
it keeps every view's errors (bench/README.md, "Test-time flips").

Bees seen from above have no up or down, and beedet's presets train with both flips
(``conf/augment/scaled.yaml``), so each view is one the network was trained on. The price is one
forward pass per view.

Tensor contract, as in :mod:`beedet.inference.tiling`: images are float (3, H, W) in [0, 1]; the
``detect`` callable takes a list of them and returns per image ``{"boxes": (N, 4) xyxy in that
image's pixels, "scores": (N,), "labels": (N,) int64}``; so does :func:`detect_with_flips`, class
ids unchanged (beedet's are 0-based, no background). It wraps the network's call, so it composes
with sliced inference: every tile and the whole-frame pass are predicted in every view.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.ops import batched_nms, box_iou

Detections = dict[str, Tensor]
DetectFn = Callable[[list[Tensor]], list[Detections]]

#: The mirrored views: left-right, top-bottom, both (a 180-degree turn).
VIEWS = ("h", "v", "hv")


@dataclass(frozen=True)
class TestTimeFlips:
    """Which mirrored views :func:`detect_with_flips` adds to each input, and how they are fused.

    Args:
        views: the flips predicted besides the input itself, from :data:`VIEWS`: ``["h"]`` doubles
            the forward passes, ``["h", "v", "hv"]`` quadruples them.
        iou_thresh: detections of one class from the views with at least this IoU are one object.
        max_detections: the fused detections kept per input, best score first (the network's own
            ``detections_per_img`` is the natural choice).
    """

    __test__ = False  # not a pytest test class, whatever its name says

    views: tuple[str, ...] = ("h",)
    iou_thresh: float = 0.55
    max_detections: int = 400

    def __post_init__(self) -> None:
        if isinstance(self.views, str):  # "hv" is one view, not "h" and "v"
            raise ValueError(f"test_time_flips.views must be a list of views from {list(VIEWS)}, got {self.views!r}")
        views = tuple(self.views)
        object.__setattr__(self, "views", views)
        if not views or len(set(views)) != len(views) or not set(views) <= set(VIEWS):
            raise ValueError(f"test_time_flips.views must be distinct views from {list(VIEWS)}, got {list(views)}")
        if not 0.0 < self.iou_thresh <= 1.0:
            raise ValueError(f"test_time_flips.iou_thresh must be in (0, 1], got {self.iou_thresh}")
        if self.max_detections < 1:
            raise ValueError(f"test_time_flips.max_detections must be >= 1, got {self.max_detections}")


def flip_image(image: Tensor, view: str) -> Tensor:
    """``image`` (..., H, W) mirrored as ``view`` says (``"h"``: left-right, ``"v"``: top-bottom)."""
    dims = [dim for axis, dim in (("h", -1), ("v", -2)) if axis in view]
    return image.flip(dims) if dims else image


def unflip_boxes(boxes: Tensor, width: int, height: int, view: str) -> Tensor:
    """xyxy ``boxes`` found in an image of ``width`` x ``height`` px mirrored by ``view``, in the
    pixels of the unmirrored image (pixel edges: x -> width - x)."""
    boxes = boxes.clone()
    if "h" in view:
        boxes[:, [0, 2]] = width - boxes[:, [2, 0]]
    if "v" in view:
        boxes[:, [1, 3]] = height - boxes[:, [3, 1]]
    return boxes


def detect_with_flips(detect: DetectFn, images: Sequence[Tensor], flips: TestTimeFlips,
                      unflipped: Sequence[Detections] | None = None) -> list[Detections]:
    """``detect`` on ``images`` and on each of their ``flips.views``, one call per view (so each
    forward pass holds as many inputs as the caller's batch: ``slicing.batch_size`` stays the
    batch a GPU must fit), fused per image by :func:`vote_views`. ``unflipped``: the detections of
    ``images`` as they are, when the caller has them already (validation computes them with the
    loss), so that view is not predicted twice."""
    images = list(images)
    first = list(unflipped) if unflipped is not None else detect(images)
    outputs = [first] + [detect([flip_image(image, view) for image in images]) for view in flips.views]
    fused = []
    for i, image in enumerate(images):
        height, width = int(image.shape[-2]), int(image.shape[-1])
        per_view = [outputs[0][i]]
        for v, view in enumerate(flips.views, start=1):
            found = outputs[v][i]
            per_view.append({**found, "boxes": unflip_boxes(found["boxes"], width, height, view)})
        fused.append(vote_views(per_view, flips.iou_thresh, flips.max_detections))
    return fused


def vote_views(per_view: Sequence[Detections], iou_thresh: float, max_detections: int) -> Detections:
    """One image's detections from several views of it (boxes already in the image's pixels).

    Greedy like NMS: the best-scored detection not yet suppressed founds an object (the founders
    are torchvision's ``batched_nms`` keep list), and every other detection belongs to the best
    founder of its class it overlaps with IoU >= ``iou_thresh``: to one object only, so a detection
    between two founders does not lend its score to both. The object's score is the sum over the
    views of each view's best member score, divided by the number of views; its box is the
    score-weighted mean of its members' boxes. Returns ``{"boxes", "scores", "labels"}``, best
    fused score first: one per founder, at most ``max_detections``."""
    boxes = torch.cat([found["boxes"].float() for found in per_view])
    scores = torch.cat([found["scores"].float() for found in per_view])
    labels = torch.cat([found["labels"] for found in per_view])
    if len(boxes) == 0:
        return {"boxes": boxes.reshape(0, 4), "scores": scores, "labels": labels}
    view_ids = torch.cat([torch.full((len(found["boxes"]),), v, dtype=torch.int64, device=boxes.device)
                          for v, found in enumerate(per_view)])
    # The best max_detections founders by their own score (a trained network's tiles give about a
    # hundred detections per view, far under the cap; an untrained one's 400 each would make the
    # matrices below 1600 x 1600).
    founders = batched_nms(boxes, scores, labels, iou_thresh)[:max_detections]
    overlaps = (box_iou(boxes[founders], boxes) >= iou_thresh) & (labels[founders][:, None] == labels[None, :])
    # Founders come best first: each detection joins the first founder it overlaps, and a founder
    # (which overlaps no better one above the threshold, but may sit exactly on it) its own object.
    first = overlaps.to(torch.uint8).argmax(dim=0)  # the first True of each column
    first[founders] = torch.arange(len(founders), device=boxes.device)
    joined = overlaps.any(dim=0)
    joined[founders] = True
    members = torch.zeros_like(overlaps)
    members[first[joined], joined.nonzero().squeeze(1)] = True
    member_scores = torch.where(members, scores[None, :], torch.zeros((), dtype=scores.dtype, device=scores.device))
    best_per_view = torch.zeros(len(founders), len(per_view), dtype=scores.dtype, device=scores.device).scatter_reduce(
        1, view_ids[None, :].expand(len(founders), -1), member_scores, reduce="amax"
    )
    fused_scores = best_per_view.sum(dim=1) / len(per_view)
    # Each founder is its own member; the floor keeps a zero-scored one from dividing by zero.
    weights = torch.where(members, scores.clamp_min(1e-6)[None, :], torch.zeros((), dtype=scores.dtype, device=scores.device))
    fused_boxes = (weights @ boxes) / weights.sum(dim=1, keepdim=True)
    order = fused_scores.argsort(descending=True)
    return {"boxes": fused_boxes[order], "scores": fused_scores[order], "labels": labels[founders][order]}
