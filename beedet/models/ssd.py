"""SSD detection networks for bees. Every builder returns a :class:`BeeSSD`: torchvision's
``torchvision.models.detection.ssd.SSD`` (an ``nn.Module``; no Lightning, no Hydra) with a
choice of classification loss, and the same modules, state-dict keys and outputs.

Contracts shared by every builder:

* ``num_classes`` counts **foreground** classes (bee, drone, ...). The builder adds one slot for
  background, so the network's labels are 1..num_classes and 0 is background *inside* the network.
  ``beedet.training.system.DetectionModule`` shifts beedet's 0-based class ids by +1 going in and -1 coming out.
* Input: a list of float images (3, H, W) in [0, 1], any size. ``model.transform`` squashes each to
  the fixed input size and normalises it; the input size (W, H) is ``model.transform.fixed_size``
  (``input_size(model)`` returns it as one int: all beedet networks are square).
* Train mode: ``model(images, targets)`` with targets ``{"boxes": float32 (N, 4) xyxy pixels of that
  image, "labels": int64 (N,) in 1..num_classes}`` (N may be 0) returns
  ``{"bbox_regression": Tensor, "classification": Tensor}``.
* Eval mode: ``model(images)`` returns one ``{"boxes" (K, 4) xyxy in the *input image's* pixels,
  "scores" (K,), "labels" (K,) in 1..num_classes}`` per image.

Anchors (``DefaultBoxGenerator``) are sized for bees: ``anchor_scales`` are fractions of the input
side, one per feature map plus one (torchvision's convention: level k gets square anchors of
scales[k] and sqrt(scales[k] * scales[k+1])). torchvision's defaults start at 0.07-0.2 of the image
(21-64 px at 300 px), larger than most bees; beedet's default starts at ``SMALLEST_ANCHOR_PX``.

Every builder also takes the post-processing settings of ``SSD`` (``score_thresh``, ``nms_thresh``,
``detections_per_img``, ``topk_candidates``), ``iou_thresh`` (the IoU at which an anchor becomes a
positive for a ground-truth box in training; SSD's 0.5 by default, the configs lower it for small
bees; the ResNet builders also take ``assigner="atss"``, which sets that threshold per box instead:
``beedet.models.anchor_assignment``) and ``channels_last`` (default true: parameters stored NHWC, which trains faster on CPUs and
GPUs; it changes no values and no state-dict keys).

And the classification loss (``beedet.models.losses``; only training is affected):
``classification_loss`` "hard_negative_ce" (torchvision's SSD loss: cross-entropy with 3:1 hard
negative mining; the default, bit-identical to torchvision) or "focal" (softmax focal loss over all
anchors, with ``focal_gamma`` and ``focal_alpha``; the builder then also initialises the
classification bias to a foreground prior of ``beedet.models.losses.FOCAL_PRIOR``, as RetinaNet does), and
``class_weights`` (one per foreground class, in beedet's class-id order; None: all 1), which
multiply the loss of positive anchors of each class, and ``min_negatives`` (hard_negative_ce: mine
at least this many background anchors per image, so that training tiles without bees teach
something; 0, the default, is torchvision's). The weights are not stored in the state dict.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor
from torchvision.models import MobileNet_V3_Large_Weights, VGG16_Weights, WeightsEnum
from torchvision.models.detection import ssd300_vgg16 as tv_ssd300_vgg16
from torchvision.models.detection import ssdlite320_mobilenet_v3_large as tv_ssdlite320_mobilenet_v3_large
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
from torchvision.models.detection.ssd import SSD, SSDHead, SSDScoringHead

from beedet.models.anchor_assignment import ASSIGNERS, ATSS_TOPK, atss_assign
from beedet.models.backbones import (
    PyramidFeatures,
    SSDFeatureExtractor,
    default_extra_channels,
    extra_blocks,
    feature_map_sizes,
    imagenet_state_dict,
    resnet_trunk,
    slim_resnet,
)
from beedet.models.losses import FOCAL_PRIOR, HardNegativeCrossEntropy, SoftmaxFocalLoss, build_classification_loss

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]

# Side of the smallest default anchor in input pixels: about the smallest bee worth finding
# (synthetic bee boxes are 6-21 px at 256 px; real 1920x1080 frames squashed to 300 px give bees
# 3-15 px wide).
SMALLEST_ANCHOR_PX = 10.0
# The largest default scale, as in torchvision's SSD300 (1.05: a whole-image box at the last level).
LARGEST_ANCHOR_SCALE = 1.05


class BeeSSD(SSD):
    """torchvision's ``SSD`` whose classification loss is a module (``beedet.models.losses``).

    Everything but ``compute_loss`` is torchvision's: the same submodules and state-dict keys
    (the loss holds no persistent state), the same anchor matching, box regression loss and
    post-processing. ``classification_loss`` maps (cls_logits (B, A, K+1), cls_targets (B, A)
    int64 in 0..K, 0 = background) to a summed loss; None gives torchvision's hard-negative-mined
    cross-entropy with this SSD's ``neg_to_pos_ratio``. Other arguments are ``SSD``'s.
    """

    def __init__(
        self,
        *args: Any,
        classification_loss: nn.Module | None = None,
        assigner: str = "iou",
        anchors_per_level: Sequence[int] | None = None,
        atss_topk: int = ATSS_TOPK,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.classification_loss = (
            classification_loss if classification_loss is not None else HardNegativeCrossEntropy(self.neg_to_pos_ratio)
        )
        if assigner not in ASSIGNERS:
            raise ValueError(f"assigner must be one of {ASSIGNERS}, got {assigner!r}")
        if assigner == "atss" and not anchors_per_level:
            raise ValueError("assigner='atss' needs anchors_per_level (the anchors of each pyramid level)")
        # "iou": torchvision's matcher (iou_thresh); "atss": beedet.models.anchor_assignment.
        self.assigner = assigner
        self.anchors_per_level = list(anchors_per_level) if anchors_per_level else None
        self.atss_topk = atss_topk

    def compute_loss(
        self,
        targets: list[dict[str, Tensor]],
        head_outputs: dict[str, Tensor],
        anchors: list[Tensor],
        matched_idxs: list[Tensor],
    ) -> dict[str, Tensor]:
        """torchvision's SSD loss with the classification term from ``self.classification_loss``.

        targets: per image ``boxes`` float (N, 4) xyxy in pixels of the *resized* input and
        ``labels`` int64 (N,) in 1..K; head_outputs: ``bbox_regression`` (B, A, 4) and
        ``cls_logits`` (B, A, K+1); anchors: per image (A, 4) xyxy in input pixels; matched_idxs:
        per image (A,) index of the matched box, negative for none. Both losses are divided by
        max(1, positive anchors in the batch), as torchvision does.
        """
        bbox_regression = head_outputs["bbox_regression"]
        cls_logits = head_outputs["cls_logits"]
        if self.assigner == "atss":
            # torchvision's forward matched by IoU already; ATSS replaces that matching here.
            assert self.anchors_per_level is not None
            matched_idxs = [
                atss_assign(t["boxes"], a, self.anchors_per_level, self.atss_topk) for t, a in zip(targets, anchors)
            ]

        # Anchor targets and the box regression loss, as in torchvision's SSD.compute_loss.
        num_foreground = 0
        bbox_loss = []
        cls_targets = []
        for (
            targets_per_image,
            bbox_regression_per_image,
            cls_logits_per_image,
            anchors_per_image,
            matched_idxs_per_image,
        ) in zip(targets, bbox_regression, cls_logits, anchors, matched_idxs):
            foreground_idxs_per_image = torch.where(matched_idxs_per_image >= 0)[0]
            foreground_matched_idxs_per_image = matched_idxs_per_image[foreground_idxs_per_image]
            num_foreground += foreground_matched_idxs_per_image.numel()

            matched_gt_boxes_per_image = targets_per_image["boxes"][foreground_matched_idxs_per_image]
            bbox_regression_per_image = bbox_regression_per_image[foreground_idxs_per_image, :]
            anchors_per_image = anchors_per_image[foreground_idxs_per_image, :]
            target_regression = self.box_coder.encode_single(matched_gt_boxes_per_image, anchors_per_image)
            bbox_loss.append(
                torch.nn.functional.smooth_l1_loss(bbox_regression_per_image, target_regression, reduction="sum")
            )

            gt_classes_target = torch.zeros(
                (cls_logits_per_image.size(0),),
                dtype=targets_per_image["labels"].dtype,
                device=targets_per_image["labels"].device,
            )
            gt_classes_target[foreground_idxs_per_image] = targets_per_image["labels"][foreground_matched_idxs_per_image]
            cls_targets.append(gt_classes_target)

        N = max(1, num_foreground)
        return {
            "bbox_regression": torch.stack(bbox_loss).sum() / N,
            "classification": self.classification_loss(cls_logits, torch.stack(cls_targets)) / N,
        }


def ssd_resnet(
    num_classes: int,
    *,
    depth: int = 50,
    image_size: int = 300,
    pretrained_backbone: bool = False,
    anchor_scales: Sequence[float] | None = None,
    aspect_ratios: Sequence[Sequence[int]] | None = None,
    extra_channels: Sequence[int] | None = None,
    score_thresh: float = 0.01,
    nms_thresh: float = 0.45,
    detections_per_img: int = 200,
    topk_candidates: int = 400,
    iou_thresh: float = 0.5,
    channels_last: bool = True,
    classification_loss: str = "hard_negative_ce",
    focal_gamma: float = 2.0,
    focal_alpha: float | None = 0.25,
    min_negatives: int = 0,
    class_weights: Sequence[float] | None = None,
    assigner: str = "iou",
    atss_topk: int = ATSS_TOPK,
) -> BeeSSD:
    """SSD on a ResNet-18/34/50 trunk, the design of NVIDIA's SSD300 v1.1 (and SageMaker's built-in
    object detector): ResNet through conv4_x with that stage's stride set to 1, then extra blocks
    down to 1x1. 300 px gives 6 maps (38, 19, 10, 5, 3, 1); 512 px gives 7 (64, 32, ..., 1), as SSD512.

    ``pretrained_backbone`` loads ImageNet weights (IMAGENET1K_V1) into the trunk from the torch hub
    cache, downloading them when missing; BatchNorm stays trainable. ``extra_channels`` sets the
    width of each extra block (default 512, 512, then 256s). ``anchor_scales`` (len = maps + 1) and
    ``aspect_ratios`` (one list per map) default to ``default_anchor_scales`` and [[2]] per map.
    Images are normalised with ImageNet mean/std by the SSD's transform.
    """
    trunk, trunk_channels = resnet_trunk(depth, pretrained_backbone)
    sides = feature_map_sizes(image_size)
    widths = list(extra_channels) if extra_channels is not None else default_extra_channels(len(sides) - 1, 512, 256)
    backbone = SSDFeatureExtractor(trunk, extra_blocks(trunk_channels, sides[0], widths), [trunk_channels, *widths])
    return _assemble_ssd(
        num_classes,
        backbone,
        image_size,
        anchor_scales,
        aspect_ratios,
        dict(
            score_thresh=score_thresh,
            nms_thresh=nms_thresh,
            detections_per_img=detections_per_img,
            topk_candidates=topk_candidates,
            iou_thresh=iou_thresh,
        ),
        dict(assigner=assigner, atss_topk=atss_topk),
        channels_last,
        dict(
            classification_loss=classification_loss,
            focal_gamma=focal_gamma,
            focal_alpha=focal_alpha,
            min_negatives=min_negatives,
            class_weights=class_weights,
        ),
    )


def ssd_resnet_slim(
    num_classes: int,
    *,
    image_size: int = 256,
    widths: Sequence[int] = (16, 24, 64, 128),
    blocks: Sequence[int] = (1, 1, 1),
    anchor_scales: Sequence[float] | None = None,
    aspect_ratios: Sequence[Sequence[int]] | None = None,
    extra_channels: Sequence[int] | None = None,
    pyramid_channels: int = 0,
    pyramid_levels: int | None = None,
    score_thresh: float = 0.01,
    nms_thresh: float = 0.45,
    detections_per_img: int = 200,
    topk_candidates: int = 400,
    iou_thresh: float = 0.5,
    channels_last: bool = True,
    classification_loss: str = "hard_negative_ce",
    focal_gamma: float = 2.0,
    focal_alpha: float | None = 0.25,
    min_negatives: int = 0,
    class_weights: Sequence[float] | None = None,
    assigner: str = "iou",
    atss_topk: int = ATSS_TOPK,
) -> BeeSSD:
    """A small SSD for training from scratch on a CPU (0.7 M parameters, 0.4 GFLOPs per 256 px image).

    Its network is built from torchvision ``BasicBlock``s (see ``backbones.slim_resnet``):
    ``widths`` = stem, then one width per stage; ``blocks`` = blocks per stage. The second stage
    gives the stride-8 first map (32x32 at 256 px, ``widths[2]`` channels), each later stage one
    more map, then plain extra blocks (``extra_channels``, default 128, 128, then 64s) go down to
    1x1: 32, 16, 8, 4, 2, 1 at 256 px. The high-resolution stem and first stage are kept thin
    because memory traffic there dominates CPU time. Anchors as in ``ssd_resnet``.

    ``pyramid_channels`` > 0 adds a feature pyramid (``backbones.PyramidFeatures``): every map is
    refined top-down and comes out with that many channels, which the head then reads; 0: none.
    ``pyramid_levels``: how many of the largest maps it refines top-down (None: all); the coarser
    ones get the same channels without passing their context down (see ``PyramidFeatures``).
    """
    trunk, stages, channels = slim_resnet(widths, blocks)
    sides = feature_map_sizes(image_size)
    num_plain = len(sides) - len(channels)  # extra blocks after the last stage's map
    if num_plain < 0:
        raise ValueError(f"image_size={image_size} gives maps {sides}: too small for {len(widths) - 1} stages")
    plain = list(extra_channels) if extra_channels is not None else default_extra_channels(num_plain, 128, 64)
    extras = nn.ModuleList([*stages, *extra_blocks(channels[-1], sides[len(channels) - 1], plain)])
    backbone = SSDFeatureExtractor(trunk, extras, [*channels, *plain])
    if pyramid_channels:
        backbone = PyramidFeatures(backbone, pyramid_channels, pyramid_levels)
    elif pyramid_levels is not None:
        raise ValueError("pyramid_levels needs pyramid_channels > 0 (a feature pyramid)")
    return _assemble_ssd(
        num_classes,
        backbone,
        image_size,
        anchor_scales,
        aspect_ratios,
        dict(
            score_thresh=score_thresh,
            nms_thresh=nms_thresh,
            detections_per_img=detections_per_img,
            topk_candidates=topk_candidates,
            iou_thresh=iou_thresh,
        ),
        dict(assigner=assigner, atss_topk=atss_topk),
        channels_last,
        dict(
            classification_loss=classification_loss,
            focal_gamma=focal_gamma,
            focal_alpha=focal_alpha,
            min_negatives=min_negatives,
            class_weights=class_weights,
        ),
    )


def _assemble_ssd(
    num_classes: int,
    backbone: SSDFeatureExtractor | PyramidFeatures,
    image_size: int,
    anchor_scales: Sequence[float] | None,
    aspect_ratios: Sequence[Sequence[int]] | None,
    postprocess: dict[str, float | int],
    assignment: dict[str, Any],
    channels_last: bool,
    loss: dict[str, Any],
) -> BeeSSD:
    """Backbone -> anchor generator -> head -> SSD, checking the contract between each pair.
    ``assignment``: ``assigner`` ("iou": a positive at ``iou_thresh``; "atss": per-box thresholds,
    ``beedet.models.anchor_assignment``) and ``atss_topk``."""
    if num_classes < 1:
        raise ValueError(f"num_classes counts foreground classes and must be >= 1, got {num_classes}")
    sides = feature_map_sizes(image_size)

    check_feature_maps(backbone, image_size, sides)

    anchors = bee_anchor_generator(len(sides), image_size, anchor_scales, aspect_ratios)
    if len(anchors.aspect_ratios) != len(sides) or len(anchors.scales) != len(sides) + 1:
        raise RuntimeError(
            f"anchor generator has {len(anchors.aspect_ratios)} levels and {len(anchors.scales)} scales "
            f"for {len(sides)} feature maps"
        )

    head = SSDHead(backbone.out_channels, anchors.num_anchors_per_location(), num_classes + 1)
    check_head(head, backbone.out_channels, anchors.num_anchors_per_location(), num_classes + 1)

    model = BeeSSD(
        backbone,
        anchors,
        (image_size, image_size),
        num_classes + 1,
        image_mean=IMAGENET_MEAN,
        image_std=IMAGENET_STD,
        head=head,
        # Anchors of each level, level-major as DefaultBoxGenerator lays them out: what ATSS needs
        # to pick candidates level by level.
        anchors_per_level=[side * side * n for side, n in zip(sides, anchors.num_anchors_per_location())],
        **assignment,
        **postprocess,
    )
    return _in_memory_format(_with_classification_loss(model, num_classes, **loss), channels_last)


def check_feature_maps(backbone: nn.Module, image_size: int, expected_sides: list[int]) -> None:
    """Run one blank image through ``backbone`` and raise unless it yields ``expected_sides`` maps
    with ``backbone.out_channels`` channels. Runs in eval mode (BatchNorm cannot normalise a 1x1
    map of a single image in train mode, and must not update its running statistics here)."""
    was_training = backbone.training
    backbone.eval()
    try:
        with torch.no_grad():
            maps = list(backbone(torch.zeros(1, 3, image_size, image_size)).values())
    finally:
        backbone.train(was_training)
    shapes = [tuple(m.shape[1:]) for m in maps]
    expected = [(c, s, s) for c, s in zip(backbone.out_channels, expected_sides)]
    if shapes != expected:
        raise RuntimeError(f"at {image_size} px the backbone gives feature maps {shapes}, expected {expected}")


def check_head(head: SSDHead, in_channels: list[int], num_anchors: list[int], num_classes: int) -> None:
    """Raise unless each level's head convs read ``in_channels[k]`` and predict ``num_anchors[k]``
    boxes (``num_classes`` scores incl. background, 4 offsets each)."""
    cls_convs = head.classification_head.module_list
    reg_convs = head.regression_head.module_list
    if not len(cls_convs) == len(reg_convs) == len(in_channels) == len(num_anchors):
        raise RuntimeError(f"head has {len(cls_convs)} levels for {len(in_channels)} feature maps")
    for k, (cls, reg, channels, anchors) in enumerate(zip(cls_convs, reg_convs, in_channels, num_anchors)):
        if (cls.in_channels, reg.in_channels) != (channels, channels):
            raise RuntimeError(f"head level {k} reads {cls.in_channels} channels, the backbone gives {channels}")
        if (cls.out_channels, reg.out_channels) != (anchors * num_classes, anchors * 4):
            raise RuntimeError(f"head level {k} predicts for the wrong number of anchors or classes")


def default_anchor_scales(num_maps: int, image_size: int) -> list[float]:
    """``num_maps + 1`` anchor scales (fractions of the input side), geometric from
    ``SMALLEST_ANCHOR_PX`` to ``LARGEST_ANCHOR_SCALE``. Geometric spacing gives the small,
    high-resolution levels (where bees are) finer size steps than linear spacing would.
    At 256 px: 10, 17, 30, 52, 90, 155 px (+ 269) for 6 maps."""
    smallest = SMALLEST_ANCHOR_PX / image_size
    ratio = (LARGEST_ANCHOR_SCALE / smallest) ** (1.0 / num_maps)
    return [smallest * ratio**k for k in range(num_maps + 1)]


def bee_anchor_generator(
    num_maps: int,
    image_size: int,
    anchor_scales: Sequence[float] | None = None,
    aspect_ratios: Sequence[Sequence[int]] | None = None,
) -> DefaultBoxGenerator:
    """Default boxes for ``num_maps`` feature maps. ``anchor_scales``: ``num_maps + 1`` increasing
    fractions of the input side (default ``default_anchor_scales``); ``aspect_ratios``: per map, the
    extra ratios r (each adds r:1 and 1:r boxes; default [2] per map: 4 anchors per location)."""
    scales = list(anchor_scales) if anchor_scales is not None else default_anchor_scales(num_maps, image_size)
    ratios = [list(r) for r in aspect_ratios] if aspect_ratios is not None else [[2] for _ in range(num_maps)]
    _check_scales(scales, num_maps)
    if len(ratios) != num_maps:
        raise ValueError(f"aspect_ratios needs one list per feature map ({num_maps}), got {len(ratios)}: {ratios}")
    return DefaultBoxGenerator(ratios, scales=scales)


def _check_scales(scales: list[float], num_maps: int) -> None:
    if len(scales) != num_maps + 1:
        raise ValueError(
            f"anchor_scales needs {num_maps + 1} values (one per feature map, {num_maps} here, plus one), "
            f"got {len(scales)}: {scales}"
        )
    if scales[0] <= 0 or any(b <= a for a, b in zip(scales, scales[1:])):
        raise ValueError(f"anchor_scales must be positive and increasing, got {scales}")


def ssd300_vgg16(
    num_classes: int,
    *,
    image_size: int = 300,
    pretrained_backbone: bool = False,
    anchor_scales: Sequence[float] | None = None,
    score_thresh: float = 0.01,
    nms_thresh: float = 0.45,
    detections_per_img: int = 200,
    topk_candidates: int = 400,
    iou_thresh: float = 0.5,
    channels_last: bool = True,
    classification_loss: str = "hard_negative_ce",
    focal_gamma: float = 2.0,
    focal_alpha: float | None = 0.25,
    min_negatives: int = 0,
    class_weights: Sequence[float] | None = None,
) -> BeeSSD:
    """torchvision's SSD300 (VGG-16, 6 maps from 38x38) fitted to beedet's contract: ``num_classes``
    counts foreground classes, ``image_size`` must be 300 (the architecture is fixed to it).
    ``pretrained_backbone`` loads ``VGG16_Weights.IMAGENET1K_FEATURES`` (torchvision then freezes
    the first VGG stage). ``anchor_scales`` (7 values) replaces torchvision's, whose smallest is
    0.07 (21 px); the aspect ratios and steps stay torchvision's."""
    _require_size("ssd300_vgg16", image_size, 300)
    return _from_torchvision(
        tv_ssd300_vgg16(
            weights=None,
            weights_backbone=_loadable(VGG16_Weights.IMAGENET1K_FEATURES) if pretrained_backbone else None,
            num_classes=num_classes + 1,
            score_thresh=score_thresh,
            nms_thresh=nms_thresh,
            detections_per_img=detections_per_img,
            topk_candidates=topk_candidates,
            iou_thresh=iou_thresh,
        ),
        num_classes,
        anchor_scales,
        channels_last,
        classification_loss=classification_loss,
        focal_gamma=focal_gamma,
        focal_alpha=focal_alpha,
        min_negatives=min_negatives,
        class_weights=class_weights,
    )


def ssdlite320_mobilenet_v3_large(
    num_classes: int,
    *,
    image_size: int = 320,
    pretrained_backbone: bool = False,
    anchor_scales: Sequence[float] | None = None,
    score_thresh: float = 0.01,
    nms_thresh: float = 0.45,
    detections_per_img: int = 200,
    topk_candidates: int = 400,
    iou_thresh: float = 0.5,
    channels_last: bool = True,
    classification_loss: str = "hard_negative_ce",
    focal_gamma: float = 2.0,
    focal_alpha: float | None = 0.25,
    min_negatives: int = 0,
    class_weights: Sequence[float] | None = None,
) -> BeeSSD:
    """torchvision's SSDlite320 (MobileNetV3-Large) fitted to beedet's contract; ``image_size`` must
    be 320. Its first map is at stride 16 (20x20), coarse for bees under ~20 px. ``pretrained_backbone``
    loads ``MobileNet_V3_Large_Weights.IMAGENET1K_V1`` (and, as torchvision does, then keeps the full
    tail instead of the reduced one used from scratch). ``anchor_scales`` (7 values) replaces
    torchvision's, whose smallest is 0.2 (64 px)."""
    _require_size("ssdlite320_mobilenet_v3_large", image_size, 320)
    return _from_torchvision(
        tv_ssdlite320_mobilenet_v3_large(
            weights=None,
            weights_backbone=_loadable(MobileNet_V3_Large_Weights.IMAGENET1K_V1) if pretrained_backbone else None,
            num_classes=num_classes + 1,
            score_thresh=score_thresh,
            nms_thresh=nms_thresh,
            detections_per_img=detections_per_img,
            topk_candidates=topk_candidates,
            iou_thresh=iou_thresh,
        ),
        num_classes,
        anchor_scales,
        channels_last,
        classification_loss=classification_loss,
        focal_gamma=focal_gamma,
        focal_alpha=focal_alpha,
        min_negatives=min_negatives,
        class_weights=class_weights,
    )


def _from_torchvision(model: SSD, num_classes: int, anchor_scales: Sequence[float] | None, channels_last: bool, **loss: Any) -> BeeSSD:
    """A torchvision-built SSD fitted to beedet: bee anchor scales, a ``BeeSSD`` with beedet's
    classification loss (``loss``: the ``_with_classification_loss`` settings), memory format."""
    model = _with_classification_loss(_as_bee_ssd(_with_anchor_scales(model, anchor_scales), num_classes), num_classes, **loss)
    return _in_memory_format(model, channels_last)


def _require_size(builder: str, image_size: int, fixed: int) -> None:
    if image_size != fixed:
        raise ValueError(f"{builder} has a fixed input size of {fixed} px; got image_size={image_size}")


def _with_anchor_scales(model: SSD, anchor_scales: Sequence[float] | None) -> SSD:
    # Scales change anchor sizes, not anchors per location, so the built head stays valid.
    if anchor_scales is not None:
        old = model.anchor_generator
        _check_scales(list(anchor_scales), len(old.aspect_ratios))
        model.anchor_generator = DefaultBoxGenerator(old.aspect_ratios, scales=list(anchor_scales), steps=old.steps)
    return model


def _as_bee_ssd(model: SSD, num_classes: int) -> BeeSSD:
    """A ``BeeSSD`` made of ``model``'s own parts (torchvision's builders construct a plain ``SSD``):
    the same modules, so the same state-dict keys and values, and the same transform, matcher and
    post-processing settings. ``num_classes`` counts foreground classes."""
    transform = model.transform
    bee = BeeSSD(
        model.backbone,
        model.anchor_generator,
        transform.fixed_size,
        num_classes + 1,
        image_mean=list(transform.image_mean),
        image_std=list(transform.image_std),
        head=model.head,
        score_thresh=model.score_thresh,
        nms_thresh=model.nms_thresh,
        detections_per_img=model.detections_per_img,
        iou_thresh=model.proposal_matcher.high_threshold,
        topk_candidates=model.topk_candidates,
        positive_fraction=1.0 / (1.0 + model.neg_to_pos_ratio),
    )
    bee.transform = transform  # exactly torchvision's (its sizes and any extra settings)
    return bee


def _with_classification_loss(
    model: BeeSSD,
    num_classes: int,
    *,
    classification_loss: str,
    focal_gamma: float,
    focal_alpha: float | None,
    class_weights: Sequence[float] | None,
    min_negatives: int = 0,
) -> BeeSSD:
    """Give ``model`` the named classification loss (see ``beedet.models.losses``); for the focal loss,
    also start the classification head at RetinaNet's foreground prior."""
    if class_weights is not None and len(class_weights) != num_classes:
        raise ValueError(f"class_weights needs one weight per foreground class ({num_classes}), got {list(class_weights)}")
    model.classification_loss = build_classification_loss(
        classification_loss,
        neg_to_pos_ratio=model.neg_to_pos_ratio,
        focal_gamma=focal_gamma,
        focal_alpha=focal_alpha,
        min_negatives=min_negatives,
        class_weights=class_weights,
    )
    if isinstance(model.classification_loss, SoftmaxFocalLoss):
        init_foreground_prior(model.head.classification_head, FOCAL_PRIOR)
    return model


def init_foreground_prior(classification_head: SSDScoringHead, prior: float) -> None:
    """Set the bias of each level's last classification conv so that, for features near zero, the
    softmax gives every anchor foreground probability ``prior`` (split evenly over the K classes):
    background bias log(K (1 - prior) / prior), class biases 0. Lin et al. 2017, sec. 3.3. The
    conv's output channels are laid out anchor-major, ``num_columns`` (K + 1) scores per anchor."""
    if not 0.0 < prior < 1.0:
        raise ValueError(f"prior must be in (0, 1), got {prior}")
    columns = classification_head.num_columns
    background_bias = math.log((columns - 1) * (1.0 - prior) / prior)
    for level, module in enumerate(classification_head.module_list):
        convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
        last = convs[-1] if convs else None
        if last is None or last.bias is None or last.out_channels % columns:
            raise RuntimeError(f"classification head level {level} does not end in a biased conv of {columns}-column scores")
        with torch.no_grad():
            bias = last.bias.view(-1, columns)
            bias[:, 0] = background_bias
            bias[:, 1:] = 0.0


def _in_memory_format(model: BeeSSD, channels_last: bool) -> BeeSSD:
    # NHWC conv weights make oneDNN (CPU) and cuDNN pick faster kernels: training the slim SSD on
    # 2 CPU threads took about a third less time. Values and state-dict keys are unchanged.
    return model.to(memory_format=torch.channels_last) if channels_last else model


def input_size(model: SSD) -> int:
    """The square side, in pixels, that ``model`` resizes every image to (``model.transform.fixed_size``)."""
    width, height = model.transform.fixed_size
    if width != height:
        raise ValueError(f"expected a square input size, the model has {width}x{height}")
    return int(width)


def _loadable(weights: WeightsEnum) -> WeightsEnum:
    """``weights``, once its file is known to load (cached, or downloaded into the hub cache, where
    torchvision's builder then reads it); else :class:`~beedet.models.backbones.PretrainedWeightsError`
    from :func:`imagenet_state_dict`, naming the ways to supply it."""
    imagenet_state_dict(weights)
    return weights
