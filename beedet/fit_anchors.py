"""Anchors that fit the training boxes: how many ground-truth boxes an SSD's default boxes can
match, and better scales and aspect ratios at the same compute.

    python -m beedet.fit_anchors ../shared/data/honeybee/train.manifest model=ssd300_resnet50
    python -m beedet.fit_anchors ../shared/data/honeybee/train.manifest model=ssd300_resnet_slim tile_size=300

``DATA`` (the first argument) is a label file or folder: a Ground Truth manifest, a COCO json or a
YOLO split folder (read by ``beedet.data.sources.source_for_path`` and checked as training checks
it; image headers are read, not whole images). ``tile_size=N`` and ``max_images=N`` belong to this
command; every other argument is a Hydra override of the real ``conf/`` (composed as
``python -m beedet.model_summary`` does, so nothing is written).

Boxes are taken to the network's input scale S the way training sees them: by default the whole
frame is squashed to S x S (x * S / W, y * S / H); with ``tile_size=N`` training crops N frame
pixels and resizes them to S, so boxes scale by S / N and keep their aspect (see
:func:`input_boxes` for where a box then lies in the tile). A tiled configuration
(``slicing=tiles``, e.g. ``+experiment=honeybee_tiled``) implies ``tile_size=slicing.tile_size``. Boxes under 1 px after scaling are
skipped and counted.

The network is built by ``beedet.assembly.build_network`` exactly as ``train.py`` builds it (no
ImageNet download), its backbone run once on a blank S x S image, and its own anchor generator
gives the real default boxes (xyxy in input pixels). A box is *matched* when some default box
overlaps it at IoU >= 0.5; the fraction is also given at the model's training ``iou_thresh``.

The proposal keeps the number of feature maps and of anchors per location (so compute is
unchanged): scales geometric from a percentile (2nd to 50th) of the box sides up to the current
largest scale, aspect ratios from a few values around the boxes' elongation, each candidate
scored by the same matching. The current anchors are a candidate too and win ties, so the proposal is never
worse on these boxes. The printed overrides reproduce it; the proposed network is rebuilt from
them and re-scored before they are printed. Builders that take no ``aspect_ratios``
(``ssd300_vgg16``, ``ssdlite320_mobilenet_v3_large``) get scale proposals only.
"""

from __future__ import annotations

import itertools
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from omegaconf import DictConfig, OmegaConf
from torch import Tensor
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import box_iou

from beedet.assembly import build_network
from beedet.compose import compose_train_config, split_int_options
from beedet.data.checks import check_records
from beedet.data.records import DataError, ImageRecord
from beedet.data.sources import source_for_path
from beedet.data.splits import subset
from beedet.models.ssd import input_size
from beedet.reporting.text_table import text_table

USAGE = __doc__
# SSD's matching IoU: a box without any default box at this overlap is hard for the head to find.
MATCH_IOU = 0.5
# Percentiles of the box side (sqrt(area), input px) tried as the smallest anchor side. Low ones
# reach the smallest bees; but a default box much smaller than the first map's grid step rarely
# lies on a small box at IoU 0.5, so the median is tried too (measured on honeybee: whole frames
# at 300 px match best from 10 px, p50 of the sides is 9 px; 300 px tiles from 30-36 px, p20-p35).
SMALLEST_SIDE_PERCENTILES = (2, 5, 10, 20, 35, 50)
# Aspect ratios r tried (each adds r:1 and 1:r default boxes), besides the boxes' own elongation.
RATIO_VALUES = (1.5, 2.0, 2.5, 3.0)
# At most this many aspect-ratio sets (x 7 scale ladders) are scored: a few dozen candidates.
MAX_RATIO_SETS = 6
DEFAULT_MAX_IMAGES = 1000
# Scales are rounded to this many decimals before scoring, so the printed overrides are exact.
SCALE_DECIMALS = 4
# Boxes per IoU chunk: 1024 x ~9000 default boxes is ~37 MB of float32 at most.
_BOX_CHUNK = 1024
# match_boxes groups boxes on a _GRID x _GRID grid of where their centres lie.
_GRID = 8


@dataclass(frozen=True)
class AnchorSet:
    """An SSD's default boxes: ``scales`` are fractions of the input side, one per feature map plus
    one (level k has squares of scales[k] and sqrt(scales[k] * scales[k+1]), see
    ``beedet.models.ssd``); ``aspect_ratios`` holds per map the ratios r that add r:1 and 1:r boxes."""

    scales: tuple[float, ...]
    aspect_ratios: tuple[tuple[float, ...], ...]

    @classmethod
    def of(cls, generator: DefaultBoxGenerator) -> "AnchorSet":
        ratios = tuple(tuple(float(r) for r in rs) for rs in generator.aspect_ratios)
        return cls(tuple(float(s) for s in generator.scales), ratios)

    def generator(self, like: DefaultBoxGenerator) -> DefaultBoxGenerator:
        """A generator of these boxes with ``like``'s steps and clipping (as the builders make it)."""
        ratios = [list(r) for r in self.aspect_ratios]
        return DefaultBoxGenerator(ratios, scales=list(self.scales), steps=like.steps, clip=like.clip)

    def overrides(self, with_ratios: bool) -> list[str]:
        """Hydra overrides that make a model config build these anchors."""
        scales = ",".join(repr(s) for s in self.scales)
        found = [f"model.anchor_scales=[{scales}]"]
        if with_ratios:
            ratios = ",".join("[" + ",".join(f"{r:g}" for r in rs) + "]" for rs in self.aspect_ratios)
            found.append(f"model.aspect_ratios=[{ratios}]")
        return found

    def describe_scales(self, image_size: int) -> str:
        return ", ".join(f"{s * image_size:.0f}" for s in self.scales)

    def describe_ratios(self) -> str:
        if len(set(self.aspect_ratios)) == 1:
            return "[" + ", ".join(f"{r:g}" for r in self.aspect_ratios[0]) + "] per map"
        return " ".join("[" + ",".join(f"{r:g}" for r in rs) + "]" for rs in self.aspect_ratios)


@dataclass(frozen=True)
class Coverage:
    """How well a set of default boxes covers ``boxes`` ground-truth boxes."""

    boxes: int
    # Boxes with some default box at IoU >= MATCH_IOU.
    matched: int
    # Boxes with some default box at IoU >= iou_thresh (the training positive threshold).
    matched_at_thresh: int
    # Default boxes at IoU >= iou_thresh, summed over the boxes (an anchor may count for two boxes).
    positives: int
    iou_thresh: float

    @property
    def fraction(self) -> float:
        return self.matched / self.boxes if self.boxes else 0.0

    @property
    def fraction_at_thresh(self) -> float:
        return self.matched_at_thresh / self.boxes if self.boxes else 0.0

    @property
    def anchors_per_box(self) -> float:
        return self.positives / self.boxes if self.boxes else 0.0

    def rank(self) -> tuple[int, int, int]:
        """Better first at IoU 0.5, then at the training threshold, then more positives."""
        return self.matched, self.matched_at_thresh, self.positives


@dataclass(frozen=True)
class Proposal:
    """The network's own anchors and the best of ``candidates`` scored, with their coverage."""

    current: AnchorSet
    current_coverage: Coverage
    proposed: AnchorSet
    proposed_coverage: Coverage
    candidates: int
    # Input pixels between neighbouring default boxes on the first (finest) feature map.
    first_grid_step: float


def input_boxes(records: Sequence[ImageRecord], image_size: int, tile_size: int | None = None) -> tuple[Tensor, int]:
    """Every box of ``records`` in pixels of the S x S network input (S = ``image_size``), as
    float32 (N, 4) xyxy, and the number of boxes skipped for being under 1 px wide or tall there.

    ``tile_size`` None: the whole stored image is squashed to S x S (x * S / W, y * S / H).
    ``tile_size`` N: training crops N frame pixels and resizes them to S, so a box scales by S / N
    and keeps its aspect. Where it lies in the tile is its place in an N-pixel grid laid over the
    frame (x mod N), moved back inside the tile when it crosses the tile's far edge, as a crop
    around it would hold it; a box larger than the tile is clipped to it.
    """
    scaled = []
    for record in records:
        if not record.num_boxes:
            continue
        boxes = torch.as_tensor(record.boxes, dtype=torch.float64)
        if tile_size is None:
            scale = torch.tensor([image_size / record.width, image_size / record.height] * 2, dtype=torch.float64)
            scaled.append(boxes * scale)
        else:
            boxes = boxes * (image_size / tile_size)
            sizes = boxes[:, 2:] - boxes[:, :2]
            start = torch.remainder(boxes[:, :2], float(image_size))
            start = torch.clamp(torch.minimum(start, image_size - sizes), min=0.0)
            scaled.append(torch.cat([start, torch.clamp(start + sizes, max=float(image_size))], dim=1))
    if not scaled:
        return torch.zeros((0, 4), dtype=torch.float32), 0
    boxes = torch.cat(scaled).float()
    keep = ((boxes[:, 2] - boxes[:, 0]) >= 1.0) & ((boxes[:, 3] - boxes[:, 1]) >= 1.0)
    return boxes[keep], int((~keep).sum())


def feature_maps(net: nn.Module, image_size: int) -> list[Tensor]:
    """The feature maps ``net.backbone`` makes of one blank S x S image (eval mode, no gradients;
    the network is left in eval mode)."""
    net.eval()
    with torch.no_grad():
        return list(net.backbone(torch.zeros(1, 3, image_size, image_size)).values())


def default_boxes(generator: nn.Module, features: Sequence[Tensor], image_size: int) -> Tensor:
    """The default boxes ``generator`` places for one S x S image with these feature maps:
    float32 (A, 4) xyxy in input pixels, in the order the SSD head predicts them."""
    blank = ImageList(torch.zeros(1, 3, image_size, image_size), [(image_size, image_size)])
    with torch.no_grad():
        return generator(blank, list(features))[0]


def match_boxes(boxes: Tensor, anchors: Tensor, iou_thresh: float) -> tuple[Tensor, Tensor]:
    """For every box (N, 4) against every default box (A, 4), both xyxy in input pixels: its best
    IoU (N,) float32, and how many default boxes overlap it at IoU >= ``iou_thresh`` (N,) int64.

    Exact, and faster than one N x A IoU matrix: boxes are grouped by where their centre lies (an
    8 x 8 grid over the boxes), and each group meets only the default boxes that intersect the
    region its boxes cover; every other default box has IoU 0 with all of them.
    """
    best = torch.zeros(len(boxes))
    positives = torch.zeros(len(boxes), dtype=torch.int64)
    if not len(boxes) or not len(anchors):
        return best, positives
    # Many small tensor ops: waking worker threads for each costs more than it saves (10x slower
    # with two threads on a busy 2-core machine). The caller's thread count is restored.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _match_groups(boxes, anchors, iou_thresh, best, positives)
    finally:
        torch.set_num_threads(threads)
    return best, positives


def _match_groups(boxes: Tensor, anchors: Tensor, iou_thresh: float, best: Tensor, positives: Tensor) -> None:
    centers = (boxes[:, :2] + boxes[:, 2:]) / 2
    low, high = centers.min(dim=0).values, centers.max(dim=0).values
    cell = torch.clamp(((centers - low) / torch.clamp(high - low, min=1e-6) * _GRID).long(), max=_GRID - 1)
    group_of = cell[:, 1] * _GRID + cell[:, 0]
    for group in torch.unique(group_of):
        members = torch.nonzero(group_of == group).squeeze(1)
        region = torch.cat([boxes[members, :2].min(dim=0).values, boxes[members, 2:].max(dim=0).values])
        near = anchors[(anchors[:, 0] < region[2]) & (anchors[:, 2] > region[0])
                       & (anchors[:, 1] < region[3]) & (anchors[:, 3] > region[1])]
        if not len(near):
            continue
        for start in range(0, len(members), _BOX_CHUNK):
            chunk = members[start:start + _BOX_CHUNK]
            ious = box_iou(boxes[chunk], near)
            best[chunk] = ious.max(dim=1).values
            positives[chunk] = (ious >= iou_thresh).sum(dim=1)


def anchor_coverage(boxes: Tensor, anchors: Tensor, iou_thresh: float) -> Coverage:
    """How well the default boxes ``anchors`` (A, 4) cover ``boxes`` (N, 4), both xyxy in input
    pixels; see :func:`match_boxes`."""
    best, positives = match_boxes(boxes, anchors, iou_thresh)
    return Coverage(len(boxes), int((best >= MATCH_IOU).sum()), int((best >= iou_thresh).sum()),
                    int(positives.sum()), iou_thresh)


def candidate_anchor_sets(current: AnchorSet, boxes: Tensor, image_size: int, tune_ratios: bool) -> list[AnchorSet]:
    """The current anchors first, then every combination of a scale ladder and a ratio set.

    Scale ladders: geometric from a percentile of the box sides (``SMALLEST_SIDE_PERCENTILES`` of
    sqrt(area)) to the current largest scale, one scale per map plus one. Ratio sets (when
    ``tune_ratios`` and every map has the same number of ratios c): c-value combinations of
    ``RATIO_VALUES`` and the boxes' median and 75th-percentile elongation (long side / short side),
    the same set on every map; otherwise the current ratios only.
    """
    num_scales = len(current.scales)
    largest = current.scales[-1]
    sides = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).double().numpy()
    ladders = [current.scales]
    for smallest_px in np.percentile(sides, SMALLEST_SIDE_PERCENTILES) if len(sides) else []:
        smallest = float(smallest_px) / image_size
        if smallest >= largest:
            continue
        ladder = tuple(round(smallest * (largest / smallest) ** (k / (num_scales - 1)), SCALE_DECIMALS)
                       for k in range(num_scales))
        if all(b > a for a, b in zip(ladder, ladder[1:])) and ladder[0] > 0 and ladder not in ladders:
            ladders.append(ladder)

    ratio_sets = [current.aspect_ratios]
    counts = {len(r) for r in current.aspect_ratios}
    if tune_ratios and len(counts) == 1 and (count := counts.pop()) > 0 and len(boxes):
        widths, heights = (boxes[:, 2] - boxes[:, 0]).double(), (boxes[:, 3] - boxes[:, 1]).double()
        elongation = (torch.maximum(widths, heights) / torch.minimum(widths, heights)).numpy()
        from_boxes = [round(float(v) * 4) / 4 for v in np.percentile(elongation, (50, 75))]
        values = sorted({*RATIO_VALUES, *(v for v in from_boxes if v >= 1.25)})
        for combo in itertools.combinations(values, count):
            ratios = tuple(tuple(combo) for _ in current.aspect_ratios)
            if ratios not in ratio_sets and len(ratio_sets) < MAX_RATIO_SETS:
                ratio_sets.append(ratios)
    candidates = [AnchorSet(scales, ratios) for scales in ladders for ratios in ratio_sets]
    return [current] + [c for c in candidates if c != current]


def propose_anchors(net: nn.Module, boxes: Tensor, iou_thresh: float, tune_ratios: bool) -> Proposal:
    """Score the network's own anchors and every candidate (see :func:`candidate_anchor_sets`) on
    ``boxes`` (xyxy, input pixels); the best by :meth:`Coverage.rank` wins, the current on ties."""
    image_size = input_size(net)
    features = feature_maps(net, image_size)
    generator = net.anchor_generator
    if not isinstance(generator, DefaultBoxGenerator):
        raise TypeError(f"expected an SSD with a DefaultBoxGenerator, got {type(generator).__name__}")
    current = AnchorSet.of(generator)
    current_coverage = anchor_coverage(boxes, default_boxes(generator, features, image_size), iou_thresh)
    candidates = candidate_anchor_sets(current, boxes, image_size, tune_ratios)
    best, best_coverage = current, current_coverage
    for candidate in candidates[1:]:
        anchors = default_boxes(candidate.generator(generator), features, image_size)
        coverage = anchor_coverage(boxes, anchors, iou_thresh)
        if coverage.rank() > best_coverage.rank():
            best, best_coverage = candidate, coverage
    return Proposal(current, current_coverage, best, best_coverage, len(candidates),
                    first_grid_step=image_size / features[0].shape[-1])


def network_for(model_cfg: DictConfig, num_classes: int) -> nn.Module:
    """The network of ``model_cfg``, built as train.py builds it but never downloading ImageNet
    weights (anchors do not depend on weights)."""
    extra = {"pretrained_backbone": False} if "pretrained_backbone" in model_cfg else {}
    return build_network(model_cfg, num_classes=num_classes, **extra)


def network_coverage(net: nn.Module, boxes: Tensor, iou_thresh: float) -> Coverage:
    """How well ``net``'s own default boxes cover ``boxes`` (xyxy, input pixels)."""
    image_size = input_size(net)
    anchors = default_boxes(net.anchor_generator, feature_maps(net, image_size), image_size)
    return anchor_coverage(boxes, anchors, iou_thresh)


def read_records(data: str | Path, max_images: int) -> tuple[list[ImageRecord], int, int, int]:
    """The checked records of ``data`` (at most ``max_images``, a seeded choice), the number of
    usable records, the number skipped by the checks and the number of classes."""
    label_set = check_records(source_for_path(data).read(), verify_images=False)
    skipped = sum(p.action == "skipped" for p in label_set.problems)
    records = label_set.records
    if not records:
        raise DataError(f"{data}: no usable labelled images")
    if len(records) > max_images:
        records = subset(records, max_images / len(records), seed=0)
    return records, len(label_set.records), skipped, len(label_set.class_names)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else list(argv)
    if not args or any(a in ("-h", "--help") for a in args) or "=" in args[0]:
        print(USAGE)
        if not args or "=" in args[0]:
            raise SystemExit("give the label file or folder (DATA) as the first argument")
        return
    data, rest = args[0], args[1:]
    options, overrides = split_int_options(rest, {"tile_size": None, "max_images": DEFAULT_MAX_IMAGES})
    tile_size, max_images = options["tile_size"], options["max_images"]
    if (tile_size is not None and tile_size < 1) or max_images is None or max_images < 1:
        raise SystemExit("tile_size and max_images must be positive integers")

    cfg = compose_train_config(overrides)
    if tile_size is None and cfg.get("slicing"):
        # A tiled configuration (slicing=tiles, e.g. +experiment=honeybee_tiled) trains and
        # predicts on tiles: score the anchors at the tile scale it uses.
        tile_size = int(OmegaConf.to_container(cfg.slicing, resolve=True)["tile_size"])
    if "anchor_scales" not in cfg.model:
        raise SystemExit(f"{cfg.model._target_} has no anchor_scales setting: nothing to propose")
    iou_thresh = float(cfg.model.get("iou_thresh", MATCH_IOU))
    # Only builders with an aspect_ratios argument have it in their config (see beedet/models/ssd.py).
    tune_ratios = "aspect_ratios" in cfg.model

    records, readable, skipped, num_classes = read_records(data, max_images)
    net = network_for(cfg.model, num_classes)
    image_size = input_size(net)
    boxes, tiny = input_boxes(records, image_size, tile_size)
    if not len(boxes):
        raise DataError(f"{data}: no boxes of at least 1 px at the model's input scale")
    proposal = propose_anchors(net, boxes, iou_thresh, tune_ratios)

    # The printed overrides must build what was scored: rebuild from them and score again.
    proposed_overrides = proposal.proposed.overrides(tune_ratios)
    if proposal.proposed != proposal.current:
        replaced = {o.split("=", 1)[0] for o in proposed_overrides}
        kept = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in replaced]
        rebuilt = network_coverage(network_for(compose_train_config(kept + proposed_overrides).model, num_classes),
                                   boxes, iou_thresh)
        if rebuilt != proposal.proposed_coverage:
            raise RuntimeError(f"the network built from {proposed_overrides} scores {rebuilt}, "
                               f"the candidate scored {proposal.proposed_coverage}")

    scale = (f"{tile_size} px tiles resized to {image_size} px (boxes x {image_size / tile_size:.3g})"
             if tile_size is not None else f"whole frames squashed to {image_size} x {image_size} px")
    sides = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).double().numpy()
    percentiles = (2, 10, 50, 90, 98)
    print(f"{data}: {len(boxes):,} boxes from {len(records)} of {readable} images"
          + (f" ({skipped} records skipped by the checks)" if skipped else ""))
    print(f"{cfg.model._target_} at {scale}; {tiny} boxes under 1 px skipped")
    print("box side sqrt(area) in input px: "
          + ", ".join(f"p{p} {v:.1f}" for p, v in zip(percentiles, np.percentile(sides, percentiles))))
    print()
    print("\n".join(report_lines(proposal, image_size, tune_ratios, cfg.model._target_)))


def report_lines(proposal: Proposal, image_size: int, tune_ratios: bool, model_name: str) -> list[str]:
    """The current-vs-proposed table, notes, and the overrides to paste (quoted for a shell)."""
    thresh = proposal.current_coverage.iou_thresh
    header = ["anchors", f"scales (px of {image_size})", "aspect ratios", f"matched @{MATCH_IOU:g}"]
    if thresh != MATCH_IOU:
        header.append(f"matched @{thresh:g} (iou_thresh)")
    header.append(f"anchors/box @{thresh:g}")
    rows = []
    for name, anchors, cov in (("current", proposal.current, proposal.current_coverage),
                               ("proposed", proposal.proposed, proposal.proposed_coverage)):
        at_thresh = [f"{cov.fraction_at_thresh:.3f}"] if thresh != MATCH_IOU else []
        rows.append([name, anchors.describe_scales(image_size), anchors.describe_ratios(), f"{cov.fraction:.3f}",
                     *at_thresh, f"{cov.anchors_per_box:.2f}"])
    lines = text_table(header, rows, right=tuple(range(3, len(header))))
    lines.append(f"{proposal.candidates} candidates scored, all with the same feature maps and anchors per location. "
                 f"matched: share of boxes with a default box at that IoU or more.")
    if proposal.proposed_coverage.fraction < 0.5:
        lines.append(f"Most boxes match no default box at IoU {MATCH_IOU:g}: boxes this small are placed too "
                     f"coarsely by the first map's {proposal.first_grid_step:.1f} px grid; larger inputs or tiles "
                     f"(tile_size=N) help more than other anchors.")
    if not tune_ratios:
        lines.append(f"{model_name} takes no aspect_ratios: only its anchor scales are proposed.")
    overrides = proposal.proposed.overrides(tune_ratios)
    if proposal.proposed == proposal.current:
        lines.append("The current anchors are the best candidate; these overrides restate them:")
    else:
        lines.append("Overrides for train.py (the proposed network was rebuilt from them and scored as above):")
    lines.append("  " + " ".join(shlex.quote(o) for o in overrides))
    return lines


if __name__ == "__main__":
    main()
