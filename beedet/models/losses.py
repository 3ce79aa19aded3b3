"""Classification losses for an SSD's dense anchors, and per-class weights from box counts.

Used by ``beedet.models.ssd.BeeSSD.compute_loss``; the SSD itself only matches anchors to boxes
and computes the box regression loss. The tensors here are in the **network's** label
convention, not beedet's 0-based one:

* ``cls_logits``: float (B, A, K + 1), one row of scores per anchor; column 0 is background,
  columns 1..K the foreground classes (bee, drone, ...).
* ``cls_targets``: int64 (B, A), 0 for an anchor matched to no box (background), k in 1..K for an
  anchor matched to a box of class k (a *positive*).

Every loss returns the **sum** over the anchors it uses (a 0-dim tensor). The caller divides by
max(1, number of positive anchors in the batch), as torchvision's SSD does, so losses stay
comparable between batches with many and few bees.

Rare classes (the real training labels hold 5168 workers, 568 pollen bees, 109 drones and 55
queens) have two handles here, each comparable in one Hydra sweep:

* ``class_weights``: a weight per foreground class, multiplying the loss of that class's positive
  anchors (background anchors keep weight 1). :func:`class_weights_from_counts` derives them from
  training box counts.
* ``"focal"``: the focal loss of Lin et al. 2017 (RetinaNet), which down-weights the many easy
  anchors instead of sampling 3 negatives per positive.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# The names ``classification_loss`` accepts in the model builders and conf/model/*.yaml.
CLASSIFICATION_LOSSES = ("hard_negative_ce", "focal")

# Lin et al. 2017, sec. 3.3: at initialisation the network gives every anchor this probability of
# being foreground, so the many background anchors do not swamp the focal loss in the first steps.
FOCAL_PRIOR = 0.01


def _weight_table(class_weights: Sequence[float] | None) -> Tensor | None:
    """Per network label (0 = background, weight 1; k = class_weights[k - 1]) or None."""
    if class_weights is None:
        return None
    weights = [float(w) for w in class_weights]
    if not weights or any(not math.isfinite(w) or w <= 0 for w in weights):
        raise ValueError(f"class_weights must be finite and positive, one per foreground class; got {weights}")
    return torch.tensor([1.0, *weights], dtype=torch.float32)


class _ClassWeighted(nn.Module):
    """Holds the optional per-label weights as a non-persistent buffer: it follows the network to
    its device but adds nothing to the state dict, so checkpoints keep torchvision's SSD keys."""

    label_weights: Tensor | None

    def __init__(self, class_weights: Sequence[float] | None) -> None:
        super().__init__()
        self.register_buffer("label_weights", _weight_table(class_weights), persistent=False)

    @property
    def num_weighted_classes(self) -> int | None:
        """K for weights given for K foreground classes, else None."""
        return None if self.label_weights is None else len(self.label_weights) - 1

    def _check(self, cls_logits: Tensor, cls_targets: Tensor) -> None:
        if cls_logits.dim() != 3 or cls_targets.shape != cls_logits.shape[:2]:
            raise ValueError(
                f"expected cls_logits (B, A, K+1) and cls_targets (B, A); got {tuple(cls_logits.shape)} "
                f"and {tuple(cls_targets.shape)}"
            )
        if self.label_weights is not None and len(self.label_weights) != cls_logits.size(-1):
            raise ValueError(
                f"{len(self.label_weights) - 1} class weights for a network with {cls_logits.size(-1) - 1} classes"
            )


class HardNegativeCrossEntropy(_ClassWeighted):
    """torchvision's SSD classification loss: softmax cross-entropy on every positive anchor plus
    the ``neg_to_pos_ratio`` x (positives in that image) background anchors with the highest loss
    (hard negative mining, SSD's 3:1). An image without boxes therefore adds no classification
    loss, unless ``min_negatives`` > 0: then every image contributes at least that many of its
    hardest background anchors (empty background tiles in tiled training otherwise teach the
    network nothing about what is not a bee). With ``class_weights=None`` and ``min_negatives=0``
    the result is bit-identical to
    ``torchvision.models.detection.ssd.SSD.compute_loss``'s numerator; with weights, each
    positive's loss is multiplied by its class's weight (the mining ranks unweighted negatives).
    """

    def __init__(self, neg_to_pos_ratio: float = 3.0, class_weights: Sequence[float] | None = None, min_negatives: int = 0) -> None:
        super().__init__(class_weights)
        if neg_to_pos_ratio < 0:
            raise ValueError(f"neg_to_pos_ratio must be >= 0, got {neg_to_pos_ratio}")
        if min_negatives < 0:
            raise ValueError(f"min_negatives must be >= 0, got {min_negatives}")
        self.neg_to_pos_ratio = neg_to_pos_ratio
        self.min_negatives = int(min_negatives)

    def forward(self, cls_logits: Tensor, cls_targets: Tensor) -> Tensor:
        """Summed loss of positives and mined negatives; see the module docstring for shapes."""
        self._check(cls_logits, cls_targets)
        # The same operations in the same order as torchvision, so the default is bit-identical.
        num_classes = cls_logits.size(-1)
        cls_loss = F.cross_entropy(cls_logits.reshape(-1, num_classes), cls_targets.reshape(-1), reduction="none").view(
            cls_targets.size()
        )
        foreground = cls_targets > 0
        num_negative = self.neg_to_pos_ratio * foreground.sum(1, keepdim=True)
        if self.min_negatives:
            # Background tiles (no bees) would otherwise teach nothing: mine at least this many.
            num_negative = num_negative.clamp(min=self.min_negatives)
        negative_loss = cls_loss.clone()
        negative_loss[foreground] = -float("inf")  # positives sort last, never mined as negatives
        _, order = negative_loss.sort(1, descending=True)
        background = order.sort(1)[1] < num_negative  # rank of each anchor < its image's quota

        positive_loss = cls_loss[foreground]
        if self.label_weights is not None:
            positive_loss = positive_loss * self.label_weights[cls_targets[foreground]]
        return positive_loss.sum() + cls_loss[background].sum()


class SoftmaxFocalLoss(_ClassWeighted):
    """Focal loss (Lin et al. 2017) over the softmax of all K + 1 columns, summed over **all**
    anchors (no hard negative mining): ``-alpha_t (1 - p_t) ** gamma * log(p_t)`` where p_t is the
    softmax probability of the anchor's target (background for unmatched anchors), alpha_t is
    ``alpha`` for positives and ``1 - alpha`` for background anchors (``alpha=None``: 1 for both),
    times the target class's weight when ``class_weights`` are given. gamma=0 and alpha=None give
    plain cross-entropy over every anchor.

    Softmax, not ``torchvision.ops.sigmoid_focal_loss``: torchvision's SSD scores detections with a
    softmax over the K + 1 columns (``postprocess_detections``), so the loss must train that same
    softmax. A sigmoid per class would train scores the inference code never computes.

    Pair it with the prior initialisation of the classification bias (``FOCAL_PRIOR``, done by the
    model builders): without it, thousands of background anchors at p = 1 / (K + 1) dominate the
    first steps.
    """

    def __init__(self, gamma: float = 2.0, alpha: float | None = 0.25, class_weights: Sequence[float] | None = None) -> None:
        super().__init__(class_weights)
        if not gamma >= 0:
            raise ValueError(f"focal gamma must be >= 0, got {gamma}")
        if alpha is not None and not 0.0 < alpha < 1.0:
            raise ValueError(f"focal alpha must be in (0, 1) or None, got {alpha}")
        self.gamma = float(gamma)
        self.alpha = alpha

    def forward(self, cls_logits: Tensor, cls_targets: Tensor) -> Tensor:
        """Summed focal loss of every anchor; see the module docstring for shapes."""
        self._check(cls_logits, cls_targets)
        log_p = F.log_softmax(cls_logits, dim=-1).gather(-1, cls_targets.unsqueeze(-1)).squeeze(-1)
        # 1 - p_t via expm1 keeps precision for confident anchors; the floor keeps the gradient of
        # (1 - p_t) ** gamma finite where p_t rounds to exactly 1 (and gamma < 1 or gamma == 0).
        one_minus_p = (-torch.expm1(log_p)).clamp(min=1e-12)
        loss = -one_minus_p.pow(self.gamma) * log_p
        if self.alpha is not None:
            positive = cls_targets > 0
            loss = loss * torch.where(positive, self.alpha, 1.0 - self.alpha)
        if self.label_weights is not None:
            loss = loss * self.label_weights[cls_targets]
        return loss.sum()


def build_classification_loss(
    name: str,
    *,
    neg_to_pos_ratio: float = 3.0,
    focal_gamma: float = 2.0,
    focal_alpha: float | None = 0.25,
    class_weights: Sequence[float] | None = None,
    min_negatives: int = 0,
) -> HardNegativeCrossEntropy | SoftmaxFocalLoss:
    """The loss named ``name`` (one of ``CLASSIFICATION_LOSSES``) with its settings
    (``min_negatives`` applies to hard_negative_ce only)."""
    if name == "hard_negative_ce":
        return HardNegativeCrossEntropy(neg_to_pos_ratio, class_weights, min_negatives)
    if name == "focal":
        return SoftmaxFocalLoss(focal_gamma, focal_alpha, class_weights)
    raise ValueError(f"classification_loss must be one of {CLASSIFICATION_LOSSES}, got {name!r}")


def class_weights_from_counts(counts: Sequence[int], power: float) -> list[float]:
    """One weight per foreground class from its training box count (index = beedet class id).

    ``w_c = (max_count / count_c) ** power``, then all scaled by one factor so that the mean
    weight over training *boxes* is 1: sum_c count_c * w_c = sum_c count_c. Every box gets about
    the same number of positive anchors, so the mean weight over positive anchors stays about 1
    and the balance between positive and background loss (and the learning rate) is unchanged;
    only the share among foreground classes moves. ``power`` 0 gives all ones (off), 0.5 inverse
    square-root frequency, 1 inverse frequency. A class without training boxes gets weight 1: it
    has no positive anchors, so its weight never enters the loss.

    For the real honeybee training labels (5168 bee, 109 drone, 568 pollenbee, 55 queen) power 0.5
    gives about 0.72, 4.97, 2.18, 7.0.
    """
    counts = [int(c) for c in counts]
    if not counts or any(c < 0 for c in counts):
        raise ValueError(f"class counts must be non-negative, one per class; got {counts}")
    if power < 0:
        raise ValueError(f"class_weight_power must be >= 0, got {power}")
    present = [c for c in counts if c > 0]
    if not present:
        return [1.0] * len(counts)
    largest = max(present)
    raw = [(largest / c) ** power if c > 0 else None for c in counts]
    scale = sum(present) / sum(c * w for c, w in zip(counts, raw) if w is not None)
    return [w * scale if w is not None else 1.0 for w in raw]
