"""Classification losses for rare classes (beedet.models.losses) inside the SSD (beedet.models.ssd.BeeSSD)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torchvision.models.detection import ssdlite320_mobilenet_v3_large as tv_ssdlite320
from torchvision.models.detection.ssd import SSD

from beedet.assembly import build_network, load_system
from beedet.models import ssd
from beedet.models.losses import (
    FOCAL_PRIOR,
    HardNegativeCrossEntropy,
    SoftmaxFocalLoss,
    build_classification_loss,
    class_weights_from_counts,
)
from helpers import TINY_SYNTHETIC, compose_config, overriding, run_script

NUM_CLASSES = 4
REAL_BOX_COUNTS = [5168, 109, 568, 55]  # bee, drone, pollenbee, queen in the real training labels


def _images() -> list[torch.Tensor]:
    return [torch.rand(3, 120, 160), torch.rand(3, 90, 100), torch.rand(3, 64, 64)]


def _targets() -> list[dict[str, torch.Tensor]]:
    """Network convention (labels 1..C): two bees of different classes, one queen, an empty image."""
    return [
        {"boxes": torch.tensor([[10.0, 20.0, 40.0, 35.0], [60.0, 50.0, 75.0, 80.0]]), "labels": torch.tensor([1, 2])},
        {"boxes": torch.tensor([[30.0, 30.0, 60.0, 45.0]]), "labels": torch.tensor([4])},
        {"boxes": torch.zeros((0, 4), dtype=torch.float32), "labels": torch.zeros((0,), dtype=torch.int64)},
    ]


def _as_torchvision(model: SSD) -> SSD:
    """The same network, weights and settings, with torchvision's own compute_loss."""
    plain = copy.deepcopy(model)
    plain.__class__ = SSD
    return plain


def test_default_loss_is_bit_identical_to_torchvision():
    # The torchvision-based builders share this compute_loss (their rebuild is checked below).
    torch.manual_seed(0)
    model = ssd.ssd_resnet_slim(NUM_CLASSES).train()
    assert isinstance(model, ssd.BeeSSD) and isinstance(model.classification_loss, HardNegativeCrossEntropy)
    reference = _as_torchvision(model).train()
    images = _images()
    ours, theirs = model(images, _targets()), reference(images, _targets())
    for key in ("bbox_regression", "classification"):
        assert torch.equal(ours[key], theirs[key]), (key, ours[key], theirs[key])


def test_torchvision_based_builders_keep_torchvision_state_dict_keys():
    # ssd300_vgg16 is rebuilt by the same code (_as_bee_ssd); SSDlite has a head of its own and
    # builds 10x faster.
    torch.manual_seed(0)
    ours = ssd.ssdlite320_mobilenet_v3_large(NUM_CLASSES)
    theirs = tv_ssdlite320(weights=None, weights_backbone=None, num_classes=NUM_CLASSES + 1)
    assert isinstance(ours, ssd.BeeSSD)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    ours.load_state_dict(theirs.state_dict())  # strict: checkpoints of plain SSDs load

    # Rebuilt from torchvision's parts, every setting is torchvision's.
    rebuilt = ssd._as_bee_ssd(theirs, NUM_CLASSES)
    assert rebuilt.transform is theirs.transform and rebuilt.head is theirs.head
    settings = ("score_thresh", "nms_thresh", "detections_per_img", "topk_candidates", "neg_to_pos_ratio")
    assert [getattr(rebuilt, k) for k in settings] == [getattr(theirs, k) for k in settings]
    assert rebuilt.proposal_matcher.high_threshold == theirs.proposal_matcher.high_threshold
    assert rebuilt.box_coder.weights == theirs.box_coder.weights

    # Class weights live outside the state dict too.
    weighted = ssd.ssd_resnet_slim(NUM_CLASSES, classification_loss="focal", class_weights=[1.0, 2.0, 3.0, 4.0])
    assert list(weighted.state_dict()) == list(ssd.ssd_resnet_slim(NUM_CLASSES).state_dict())


def test_focal_loss_is_finite_on_images_without_boxes():
    torch.manual_seed(0)
    model = ssd.ssd_resnet_slim(NUM_CLASSES, classification_loss="focal").train()
    empty = [{"boxes": torch.zeros((0, 4), dtype=torch.float32), "labels": torch.zeros((0,), dtype=torch.int64)}] * 2
    losses = model(_images()[:2], empty)
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["classification"] > 0  # background anchors still teach "no bee here"
    assert losses["bbox_regression"] == 0
    losses["classification"].backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def _logits_and_targets(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, 50, NUM_CLASSES + 1, generator=generator)
    targets = torch.zeros(2, 50, dtype=torch.int64)
    targets[0, :4] = torch.tensor([1, 2, 3, 4])
    targets[1, 10:13] = torch.tensor([3, 3, 1])
    return logits, targets


def test_focal_loss_decreases_when_the_right_class_gets_more_logit():
    logits, targets = _logits_and_targets()
    loss = SoftmaxFocalLoss(gamma=2.0, alpha=0.25)
    before = loss(logits, targets)
    for anchors in (targets > 0, targets == 0):  # positives, then background anchors
        boosted = logits.clone()
        boosted[anchors, targets[anchors]] += 1.0  # only the target column of those anchors
        assert loss(boosted, targets) < before


def test_focal_without_focus_or_alpha_is_cross_entropy_over_all_anchors():
    logits, targets = _logits_and_targets()
    expected = F.cross_entropy(logits.reshape(-1, NUM_CLASSES + 1), targets.reshape(-1), reduction="sum")
    torch.testing.assert_close(SoftmaxFocalLoss(gamma=0.0, alpha=None)(logits, targets), expected)


@pytest.mark.parametrize("name", ["hard_negative_ce", "focal"])
def test_class_weights_scale_the_positive_loss_of_their_class(name: str):
    logits, targets = _logits_and_targets()
    plain = build_classification_loss(name)(logits, targets)
    weighted = build_classification_loss(name, class_weights=[1.0, 1.0, 3.0, 1.0])(logits, targets)  # class 3 (pollenbee)
    per_anchor = build_classification_loss(name, class_weights=[1.0, 1.0, 1.0 + 1e-3, 1.0])
    # Only class 3's positive anchors change, linearly in the weight: w=3 adds 2x their loss.
    class3_loss = (per_anchor(logits, targets) - plain) / 1e-3
    assert class3_loss > 0
    torch.testing.assert_close(weighted - plain, 2.0 * class3_loss, rtol=1e-2, atol=1e-4)
    if name == "hard_negative_ce":  # the same number computed directly
        ce = F.cross_entropy(logits.reshape(-1, NUM_CLASSES + 1), targets.reshape(-1), reduction="none").view(targets.shape)
        torch.testing.assert_close(weighted - plain, 2.0 * ce[targets == 3].sum())


def test_class_weights_from_counts():
    weights = class_weights_from_counts(REAL_BOX_COUNTS, 0.5)
    raw = [(5168 / c) ** 0.5 for c in REAL_BOX_COUNTS]
    assert [w / weights[0] for w in weights] == pytest.approx(raw)  # (max / count) ** power
    assert sum(c * w for c, w in zip(REAL_BOX_COUNTS, weights)) == pytest.approx(sum(REAL_BOX_COUNTS))  # mean 1 per box
    assert weights == pytest.approx([0.722, 4.97, 2.18, 7.00], abs=0.01)
    assert class_weights_from_counts(REAL_BOX_COUNTS, 0.0) == pytest.approx([1.0] * 4)
    assert class_weights_from_counts([10, 0, 40], 1.0)[1] == 1.0  # a class without boxes: unused, 1


def test_focal_builder_starts_at_the_foreground_prior():
    model = ssd.ssd_resnet_slim(NUM_CLASSES, classification_loss="focal")
    for conv in model.head.classification_head.module_list:
        probs = conv.bias.detach().view(-1, NUM_CLASSES + 1).softmax(-1)
        torch.testing.assert_close(probs[:, 0], torch.full((len(probs),), 1.0 - FOCAL_PRIOR))


def test_bad_loss_settings_are_refused():
    with pytest.raises(ValueError, match="classification_loss"):
        ssd.ssd_resnet_slim(NUM_CLASSES, classification_loss="sigmoid")
    with pytest.raises(ValueError, match="one weight per foreground class"):
        ssd.ssd_resnet_slim(NUM_CLASSES, class_weights=[1.0, 2.0])
    with pytest.raises(ValueError, match="alpha"):
        SoftmaxFocalLoss(alpha=1.5)


def test_config_focal_with_class_weights_composes_and_trains_a_step():
    cfg = compose_config(["model.classification_loss=focal", "model.class_weight_power=0.5"])
    torch.manual_seed(0)
    model = build_network(cfg.model, NUM_CLASSES, class_counts=REAL_BOX_COUNTS).train()
    assert isinstance(model.classification_loss, SoftmaxFocalLoss)
    torch.testing.assert_close(model.classification_loss.label_weights[1:],
                               torch.tensor(class_weights_from_counts(REAL_BOX_COUNTS, 0.5)))
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    losses = model(_images(), _targets())
    sum(losses.values()).backward()
    optimizer.step()
    assert all(torch.isfinite(v) for v in losses.values())
    # Evaluation builds the same config without counts, hence without weights.
    assert build_network(cfg.model, NUM_CLASSES).classification_loss.label_weights is None


@pytest.mark.slow
def test_train_py_with_rare_class_options_and_load_system(tmp_path: Path):
    """One tiny train.py run with all three rare-class options; evaluate's loader rebuilds it."""
    overrides = overriding(TINY_SYNTHETIC, "trainer.limit_train_batches=2", "data.repeat_factor_threshold=2.0",
                           "model.classification_loss=focal", "model.class_weight_power=0.5",
                           # No TensorBoard: its callbacks then do nothing (the lr monitor would refuse).
                           "~logger", "~callbacks.lr_monitor")
    proc, run_dir = run_script(["train.py", *overrides], tmp_path)
    assert "repeat-factor sampling, threshold t=2" in proc.stdout + proc.stderr
    assert "class weights (class_weight_power=0.5)" in proc.stdout + proc.stderr
    assert 0.0 <= json.loads((run_dir / "metrics.json").read_text())["mAP"] <= 1.0

    system, run_cfg = load_system(run_dir / "checkpoints" / "best.ckpt")
    assert run_cfg.model.class_weight_power == 0.5
    assert isinstance(system.net.classification_loss, SoftmaxFocalLoss)
    assert system.net.classification_loss.label_weights is None  # weights only matter for training
    detections = system.detect([torch.rand(3, 256, 256)])
    assert len(detections) == 1


def test_min_negatives_makes_images_without_boxes_teach_background():
    logits = torch.randn(2, 50, NUM_CLASSES + 1)
    targets = torch.zeros(2, 50, dtype=torch.int64)
    targets[0, :3] = 1  # image 0: 3 positive anchors; image 1: background only (an empty tile)
    plain = HardNegativeCrossEntropy()(logits, targets)
    mined = HardNegativeCrossEntropy(min_negatives=8)(logits, targets)
    ce = F.cross_entropy(logits[1], targets[1], reduction="none")
    # torchvision's 3:1 mining takes nothing from the empty image; min_negatives takes its 8 hardest.
    assert mined - plain == pytest.approx(float(ce.topk(8).values.sum()), rel=1e-5)
    # Image 0 already mines 9 (3 x 3) > 8 negatives: unchanged there.
    assert HardNegativeCrossEntropy(min_negatives=8)(logits[:1], targets[:1]) == HardNegativeCrossEntropy()(logits[:1], targets[:1])
