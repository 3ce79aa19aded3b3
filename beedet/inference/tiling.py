"""Sliced inference: detect small objects in a frame of any size as overlapping tiles.

Squashing a 1920x1080 hive-entrance frame into a 300 px network input shrinks a 44 px bee to
about 7 px, below what SSD's first feature map resolves. Cutting the frame into tiles at (or near)
native resolution keeps the bee's pixels; the price is that a bee lying across a tile border is
seen twice, once whole and once cut off, or cut off in two tiles. :func:`detect_sliced` runs a
detector on every tile and :func:`merge_detections` turns the tiles' detections back into one set
for the frame, in full-frame pixels.

Why the merge works: neighbouring tiles overlap by ``overlap`` pixels, so every object no larger
than the overlap lies whole inside at least one tile. A detection touching a tile edge that is not
the frame's edge is marked *truncated* (it may show only part of an object). Merging is greedy and
class-wise, like NMS, but

* whole (untruncated) detections are considered before truncated ones, then by score, so the
  whole view of a bee wins over a clipped view of it whatever their scores;
* a detection is merged into a kept one *from another tile* when their IoU exceeds
  ``iou_thresh`` (the same bee seen whole twice, in an overlap zone), or when it is truncated and
  at least ``ios_thresh`` of its area lies inside the kept box (the clipped view of that bee:
  its IoU with the whole box can be low, but it is contained in it);
* detections from the *same* tile are never merged here: the network's own NMS already decided
  between them, and in a crowd two overlapping boxes are often two bees;
* the kept detection takes the highest score of the detections merged into it (the object was
  seen with that confidence); with ``merge="wbf"`` its box becomes the score-weighted mean of the
  untruncated boxes merged into it (weighted box fusion, Solovyev et al. 2019), else it stays.

Tensor contract: images are float (3, H, W) in [0, 1]; the ``detect`` callable takes a list of
such images and returns per image ``{"boxes": (N, 4) xyxy in that image's pixels, "scores": (N,),
"labels": (N,) int64}``. Class ids pass through unchanged (beedet's are 0-based, 0 = "bee", no
background). The result is one such dict in the full frame's pixels.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

Detections = dict[str, Tensor]
DetectFn = Callable[[list[Tensor]], list[Detections]]

MERGE_METHODS = ("nms", "wbf")
# Detections merged per frame, as a multiple of the detections kept (Slicing.max_detections).
CANDIDATES_PER_KEPT = 3


@dataclass(frozen=True)
class Slicing:
    """How :func:`detect_sliced` cuts a frame into tiles and merges their detections.

    Args:
        tile_size: side of a square tile in *frame* pixels. The network resizes each tile to its
            input size, so ``tile_size`` equal to the input size predicts at native resolution
            (what tiled training with the same ``tile_size`` teaches). A frame side shorter than a
            tile gets one tile spanning it.
        overlap: the least number of pixels neighbouring tiles share. Make it at least the size of
            the largest object that must be found whole in some tile.
        merge: ``"nms"`` keeps the best detection of each merged group, ``"wbf"`` fuses the boxes.
        iou_thresh: detections of one class from different tiles with a higher IoU are one object.
        ios_thresh: a truncated detection with at least this fraction of its area inside a kept
            detection of its class from another tile is part of that object.
        edge_margin: a box within this many pixels of an inner tile edge counts as truncated.
        full_frame: also detect on the whole frame squashed to the input, and merge it in: finds
            objects larger than the overlap (close-up photos) at the cost of one more forward pass.
        long_side: first resize each frame (keeping its aspect) so that its longer side is this
            many pixels, then tile the resized frame; ``tile_size`` and ``overlap`` are then pixels
            of the resized frame, and boxes come back in the original frame's pixels. Objects are
            often a fixed fraction of the frame whatever its resolution (hive bees: about 2 % of
            the longer side, in 1920x1080 video and 4032x3024 phone photos alike), so this shows
            the network every frame at the scale it was trained on (``conf/augment/scaled.yaml``
            resizes training frames the same way). None: tile at the stored resolution.
        tile_max_size: scale ranges as in SNIP (Singh and Davis 2018): with ``full_frame``, drop
            tile detections larger than this (the square root of the box area, in pixels of the
            frame being tiled, after ``long_side``), because the whole-frame pass sees such objects
            at the scale the network knows best, where the tile sees them at most a few cells from
            its edge or as a featureless close-up of wall or comb. None: keep every size.
        full_frame_min_size: with ``full_frame``, drop whole-frame detections smaller than this
            (same units), which the tiles see at native resolution. None: keep every size.
        batch_size: network inputs per forward pass (tiles and whole frames, of one frame or many).
        max_detections: keep at most this many detections per frame, by score (crowded hive
            frames hold a few hundred bees).
    """

    tile_size: int = 300
    overlap: int = 96
    merge: str = "nms"
    iou_thresh: float = 0.5
    ios_thresh: float = 0.6
    edge_margin: float = 2.0
    full_frame: bool = False
    batch_size: int = 16
    max_detections: int = 500
    long_side: int | None = None
    tile_max_size: float | None = None
    full_frame_min_size: float | None = None

    def __post_init__(self) -> None:
        if self.tile_size < 1:
            raise ValueError(f"slicing.tile_size must be >= 1, got {self.tile_size}")
        if not 0 <= self.overlap < self.tile_size:
            raise ValueError(f"slicing.overlap must be in [0, tile_size={self.tile_size}), got {self.overlap}")
        if self.merge not in MERGE_METHODS:
            raise ValueError(f"slicing.merge must be one of {MERGE_METHODS}, got {self.merge!r}")
        for name in ("iou_thresh", "ios_thresh"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise ValueError(f"slicing.{name} must be in (0, 1], got {getattr(self, name)}")
        if self.batch_size < 1 or self.max_detections < 1:
            raise ValueError("slicing.batch_size and slicing.max_detections must be >= 1")
        for name in ("tile_max_size", "full_frame_min_size"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"slicing.{name} must be null or > 0, got {value}")
        if (self.tile_max_size is not None or self.full_frame_min_size is not None) and not self.full_frame:
            raise ValueError("slicing.tile_max_size and slicing.full_frame_min_size split sizes between the tiles and "
                             "the whole-frame pass: they need slicing.full_frame=true")
        if (
            self.tile_max_size is not None
            and self.full_frame_min_size is not None
            and self.full_frame_min_size > self.tile_max_size
        ):
            raise ValueError(
                f"slicing.full_frame_min_size ({self.full_frame_min_size}) above slicing.tile_max_size "
                f"({self.tile_max_size}) leaves sizes that no pass may report"
            )
        if self.long_side is not None and self.long_side < self.tile_size:
            raise ValueError(f"slicing.long_side must be null or >= tile_size={self.tile_size}, got {self.long_side}")


def tile_starts(length: int, tile_size: int, overlap: int) -> list[int]:
    """Start offsets of tiles covering ``[0, length)``: the fewest tiles of ``tile_size`` that
    overlap by at least ``overlap``, spread evenly so the first starts at 0 and the last ends at
    ``length`` (no thin last tile). ``[0]`` when one tile covers the length."""
    if length <= tile_size:
        return [0]
    count = math.ceil((length - overlap) / (tile_size - overlap))
    last = length - tile_size
    return [round(i * last / (count - 1)) for i in range(count)]


def tile_grid(width: int, height: int, tile_size: int, overlap: int) -> Tensor:
    """Tiles covering a ``width`` x ``height`` frame: int64 (T, 4) xyxy frame pixels, row by row.
    A tile is ``tile_size`` square, or shorter along a frame side that is shorter than a tile."""
    xs = tile_starts(width, tile_size, overlap)
    ys = tile_starts(height, tile_size, overlap)
    tiles = [(x, y, min(x + tile_size, width), min(y + tile_size, height)) for y in ys for x in xs]
    return torch.tensor(tiles, dtype=torch.int64).reshape(-1, 4)


def detect_sliced(detect: DetectFn, image: Tensor, slicing: Slicing) -> Detections:
    """Detections for one float (3, H, W) ``image``, in its pixels, found tile by tile.

    ``detect`` is called on batches of tile crops (views of ``image``); see the module docstring
    for both contracts. A frame that fits in one tile goes through ``detect`` whole, unchanged.
    With ``slicing.long_side`` the frame is resized first and the boxes are scaled back at the end.
    """
    return detect_sliced_frames(detect, [image], slicing)[0]


def detect_sliced_frames(detect: DetectFn, images: Sequence[Tensor], slicing: Slicing) -> list[Detections]:
    """:func:`detect_sliced` for many frames at once: the tiles of every frame (and each frame's
    whole-frame pass) share the forward passes, ``slicing.batch_size`` inputs each, so a frame's
    last few tiles do not make a small batch of their own; each frame is then merged on its own.
    The detections per frame are those of :func:`detect_sliced`, up to the network's own
    batch-to-batch rounding. Why: a GPU is kept busy by large batches, and one frame has only
    about 9 inputs (``DetectionModule`` uses this on a GPU only: on 2 CPU cores it was slower)."""
    frames = [_plan_frame(image, slicing) for image in images]
    inputs = [crop for frame in frames for crop in frame.inputs]
    outputs: list[Detections] = []
    for start in range(0, len(inputs), slicing.batch_size):
        outputs.extend(detect(inputs[start : start + slicing.batch_size]))
    found, offset = [], 0
    for frame in frames:
        own = outputs[offset : offset + len(frame.inputs)]
        offset += len(frame.inputs)
        found.append(_merge_frame(frame, own, slicing))
    return found


@dataclass(frozen=True)
class _FramePlan:
    """One frame cut for :func:`detect_sliced_frames`: the network ``inputs`` (tile crops, then
    the whole resized frame when ``whole`` is set), the tiles as int64 (T, 4) xyxy pixels of the
    resized frame, its (width, height), and the (x, y) factors from the frame's pixels to them."""

    inputs: list[Tensor]
    tiles: Tensor
    size: tuple[int, int]
    scale: tuple[float, float]
    whole: bool

    @property
    def single(self) -> bool:
        """One tile and no whole-frame pass: the frame's detections are the network's as they are."""
        return not self.whole and len(self.tiles) == 1


def _plan_frame(image: Tensor, slicing: Slicing) -> _FramePlan:
    scale = (1.0, 1.0)
    if slicing.long_side is not None:
        image, scale = resize_long_side(image, slicing.long_side)
    height, width = int(image.shape[-2]), int(image.shape[-1])
    tiles = tile_grid(width, height, slicing.tile_size, slicing.overlap)
    if len(tiles) == 1 and not slicing.full_frame:
        return _FramePlan([image], tiles, (width, height), scale, whole=False)
    crops = [image[:, y0:y1, x0:x1] for x0, y0, x1, y1 in tiles.tolist()]
    if slicing.full_frame:
        crops.append(image)
    return _FramePlan(crops, tiles, (width, height), scale, whole=slicing.full_frame)


def _merge_frame(frame: _FramePlan, outputs: list[Detections], slicing: Slicing) -> Detections:
    """One frame's detections from the outputs of its ``inputs``: tiles shifted into the frame,
    scale ranges applied, merged (module docstring), then scaled back to the frame's own pixels."""
    if frame.single:
        found = outputs[0]
    else:
        found = _merge_tiles(frame, outputs, slicing)
    sx, sy = frame.scale
    if (sx, sy) == (1.0, 1.0):
        return found
    scale = torch.tensor([sx, sy, sx, sy], dtype=found["boxes"].dtype, device=found["boxes"].device)
    return {**found, "boxes": found["boxes"] / scale}


def _merge_tiles(frame: _FramePlan, outputs: list[Detections], slicing: Slicing) -> Detections:
    width, height = frame.size
    tiles = frame.tiles
    boxes, scores, labels, tile_ids, truncated = [], [], [], [], []
    for t, (out, tile) in enumerate(zip(outputs, tiles.tolist())):
        x0, y0, x1, y1 = tile
        if slicing.tile_max_size is not None:
            out = _within_size(out, high=slicing.tile_max_size)
        b = out["boxes"].float() + torch.tensor([x0, y0, x0, y0], dtype=torch.float32, device=out["boxes"].device)
        boxes.append(b)
        scores.append(out["scores"].float())
        labels.append(out["labels"])
        tile_ids.append(torch.full((len(b),), t, dtype=torch.int64, device=b.device))
        truncated.append(_touches_inner_edge(b, tile, width, height, slicing.edge_margin))
    if frame.whole:
        out = outputs[len(tiles)]
        if slicing.full_frame_min_size is not None:
            out = _within_size(out, low=slicing.full_frame_min_size)
        boxes.append(out["boxes"].float())
        scores.append(out["scores"].float())
        labels.append(out["labels"])
        tile_ids.append(torch.full((len(out["boxes"]),), len(tiles), dtype=torch.int64, device=out["boxes"].device))
        truncated.append(torch.zeros(len(out["boxes"]), dtype=torch.bool, device=out["boxes"].device))

    # Only the best-scored candidates are merged: the frame keeps max_detections in the end, and
    # an untrained or low-threshold network would otherwise hand the merge tens of thousands.
    all_scores = torch.cat(scores)
    candidates = all_scores.argsort(descending=True)[: CANDIDATES_PER_KEPT * slicing.max_detections]
    merged = merge_detections(
        torch.cat(boxes)[candidates],
        all_scores[candidates],
        torch.cat(labels)[candidates],
        torch.cat(tile_ids)[candidates],
        torch.cat(truncated)[candidates],
        method=slicing.merge,
        iou_thresh=slicing.iou_thresh,
        ios_thresh=slicing.ios_thresh,
    )
    order = merged["scores"].argsort(descending=True)[: slicing.max_detections]
    return {key: value[order] for key, value in merged.items()}


def _within_size(found: Detections, low: float = 0.0, high: float = math.inf) -> Detections:
    """The detections of ``found`` whose size, the square root of the box area, is in [low, high]."""
    wh = (found["boxes"][:, 2:] - found["boxes"][:, :2]).clamp(min=0)
    size = (wh[:, 0] * wh[:, 1]).sqrt()
    keep = (size >= low) & (size <= high)
    return {key: value[keep] for key, value in found.items()}


def resize_long_side(image: Tensor, long_side: int) -> tuple[Tensor, tuple[float, float]]:
    """``image`` (3, H, W) resized, aspect kept, so that its longer side is ``long_side`` pixels
    (bilinear, antialiased when shrinking, as albumentations' ``LongestMaxSize`` with area
    downscaling does in training), and the (x, y) factors from the old pixels to the new."""
    height, width = int(image.shape[-2]), int(image.shape[-1])
    factor = long_side / max(height, width)
    new_h, new_w = max(1, round(height * factor)), max(1, round(width * factor))
    if (new_h, new_w) == (height, width):
        return image, (1.0, 1.0)
    resized = torch.nn.functional.interpolate(
        image[None].float(), size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=factor < 1.0
    )[0].clamp_(0.0, 1.0)
    return resized, (new_w / width, new_h / height)


def _touches_inner_edge(boxes: Tensor, tile: Sequence[int], width: int, height: int, margin: float) -> Tensor:
    """Which ``boxes`` (frame pixels) touch an edge of ``tile`` that is not an edge of the frame."""
    x0, y0, x1, y1 = tile
    touches = torch.zeros(len(boxes), dtype=torch.bool, device=boxes.device)
    if x0 > 0:
        touches |= boxes[:, 0] <= x0 + margin
    if y0 > 0:
        touches |= boxes[:, 1] <= y0 + margin
    if x1 < width:
        touches |= boxes[:, 2] >= x1 - margin
    if y1 < height:
        touches |= boxes[:, 3] >= y1 - margin
    return touches


def merge_detections(
    boxes: Tensor,
    scores: Tensor,
    labels: Tensor,
    tile_ids: Tensor,
    truncated: Tensor,
    *,
    method: str = "nms",
    iou_thresh: float = 0.5,
    ios_thresh: float = 0.6,
) -> Detections:
    """Merge detections from overlapping tiles (the rules are in the module docstring).

    Args:
        boxes: float (N, 4) xyxy in frame pixels.
        scores: (N,); labels: int64 (N,) class ids (merging never crosses classes).
        tile_ids: int64 (N,) the tile each detection came from.
        truncated: bool (N,) whether the detection touches an inner tile edge.

    Returns ``{"boxes", "scores", "labels"}`` of the kept detections (on the input's device),
    highest score first.
    """
    if method not in MERGE_METHODS:
        raise ValueError(f"merge method must be one of {MERGE_METHODS}, got {method!r}")
    n = len(boxes)
    if not len(scores) == len(labels) == len(tile_ids) == len(truncated) == n:
        raise ValueError("boxes, scores, labels, tile_ids and truncated must have the same length")
    # A greedy loop over kept boxes: numpy's per-call overhead is a fraction of torch's.
    all_boxes = boxes.detach().cpu().double().numpy().reshape(-1, 4)
    all_scores = scores.detach().cpu().double().numpy()
    all_labels = labels.detach().cpu().numpy()
    all_tiles = tile_ids.detach().cpu().numpy()
    all_trunc = truncated.detach().cpu().numpy().astype(bool)
    out_boxes, out_scores, out_labels = [], [], []
    for label in np.unique(all_labels):
        idx = np.flatnonzero(all_labels == label)
        # Whole views first, then by score: a clipped bee must not outrank the whole one.
        idx = idx[np.lexsort((-all_scores[idx], all_trunc[idx]))]
        b, s, tid, trunc = all_boxes[idx], all_scores[idx], all_tiles[idx], all_trunc[idx]
        area = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
        open_ = np.ones(len(idx), dtype=bool)
        for i in range(len(idx)):
            if not open_[i]:
                continue
            open_[i] = False
            rest = np.flatnonzero(open_ & (tid != tid[i]))
            members = [i]
            if len(rest):
                r = b[rest]
                w = np.clip(np.minimum(b[i, 2], r[:, 2]) - np.maximum(b[i, 0], r[:, 0]), 0, None)
                h = np.clip(np.minimum(b[i, 3], r[:, 3]) - np.maximum(b[i, 1], r[:, 1]), 0, None)
                inter = w * h
                iou = inter / np.maximum(area[i] + area[rest] - inter, 1e-9)
                inside = inter / np.maximum(area[rest], 1e-9)
                merged = rest[(iou > iou_thresh) | (trunc[rest] & (inside >= ios_thresh))]
                open_[merged] = False
                members.extend(merged.tolist())
            out_scores.append(s[members].max())
            out_labels.append(label)
            if method == "wbf":
                whole = [m for m in members if not trunc[m]] or members
                weights = s[whole]
                out_boxes.append((b[whole] * weights[:, None]).sum(0) / max(weights.sum(), 1e-9))
            else:
                out_boxes.append(b[i])
    order = np.argsort(-np.asarray(out_scores, dtype=np.float64), kind="stable")
    return {
        "boxes": torch.as_tensor(np.asarray(out_boxes, dtype=np.float64).reshape(-1, 4)[order], dtype=boxes.dtype, device=boxes.device),
        "scores": torch.as_tensor(np.asarray(out_scores, dtype=np.float64)[order], dtype=scores.dtype, device=scores.device),
        "labels": torch.as_tensor(np.asarray(out_labels, dtype=np.int64)[order], dtype=labels.dtype, device=labels.device),
    }
