"""What DetectionModule's validation computes and logs (beedet/training/system.py): the validation loss from
the eval-mode pass, the tags grouped by intent and read back from TensorBoard's event files, the
fixed and tuned count thresholds, and the ValidationQuality callback's pictures and table."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import Tensor
from torch.utils.data import DataLoader

from beedet.evaluation.counting import FIXED_COUNT_THRESHOLD
from beedet.inference.tiling import Slicing
from beedet.models.ssd import ssd_resnet_slim
from beedet.training.callbacks import ValidationQuality
from beedet.training.system import DetectionModule

NAMES = ["bee", "drone"]


def _sample(index: int) -> tuple[Tensor, dict[str, Tensor]]:
    """A random 96x128 image with a bee and a bee or drone (image 3 has no boxes)."""
    image = torch.rand(3, 96, 128, generator=torch.Generator().manual_seed(index))
    boxes, labels = torch.tensor([[10.0, 10.0, 40.0, 30.0], [50.0, 40.0, 90.0, 80.0]]), torch.tensor([0, index % 2])
    if index == 3:
        boxes, labels = torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64)
    return image, {"boxes": boxes, "labels": labels, "image_id": torch.tensor(index), "orig_size": torch.tensor([96, 128])}


def _collate(batch):
    return [image for image, _ in batch], [target for _, target in batch]


def _system(**kwargs) -> DetectionModule:
    torch.manual_seed(0)
    return DetectionModule(ssd_resnet_slim(len(NAMES)), NAMES, optimizer=torch.optim.SGD, **kwargs)


def _batch(count: int = 4) -> tuple[list[Tensor], list[dict[str, Tensor]]]:
    return _collate([_sample(i) for i in range(count)])


# ---- the validation loss ----------------------------------------------------------------------
def test_validation_loss_is_the_training_loss_without_touching_batch_norm():
    system = _system().eval()
    images, targets = _batch()
    state = copy.deepcopy(system.net.state_dict())
    detections, sums = system._detect_with_loss(images, targets)

    # The same detections as detect(), and not a single buffer moved (BN running statistics).
    for found, expected in zip(detections, system.detect(images)):
        for key in ("boxes", "scores", "labels"):
            assert torch.equal(found[key], expected[key]), key
    assert all(torch.equal(value, state[key]) for key, value in system.net.state_dict().items())
    assert not system.net.training

    # Reference: the network's own training-mode loss with batch norm held in eval mode.
    net = copy.deepcopy(system.net).train()
    for module in net.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eval()
    with torch.no_grad():
        reference = net(images, [{"boxes": t["boxes"], "labels": t["labels"] + 1} for t in targets])
    loss = DetectionModule._mean_loss([(i, None, None, s) for i, s in enumerate(sums)])
    assert loss["classification"] == pytest.approx(float(reference["classification"]), rel=1e-5)
    assert loss["box"] == pytest.approx(float(reference["bbox_regression"]), rel=1e-5)
    assert loss["total"] == pytest.approx(loss["classification"] + loss["box"])
    assert sums[3][2] == 0  # the image without boxes has no positive anchors, but a background loss
    assert sums[3][0] >= 0 and sums[0][2] > 0


def test_with_test_time_flips_validation_detects_as_detect_does_and_keeps_the_plain_loss():
    from beedet.inference.test_time_flips import TestTimeFlips

    images, targets = _batch()
    plain = _system().eval()
    flipped = _system(test_time_flips=TestTimeFlips(views=("h", "v"))).eval()
    detections, sums = flipped._detect_with_loss(images, targets)
    for found, expected in zip(detections, flipped.detect(images)):
        for key in ("boxes", "scores", "labels"):
            assert torch.equal(found[key], expected[key]), key
    plain_detections, plain_sums = plain._detect_with_loss(images, targets)
    assert any(len(a["scores"]) != len(b["scores"]) or not torch.equal(a["scores"], b["scores"])
               for a, b in zip(detections, plain_detections))  # the views did vote
    assert all(np.array_equal(a, b) for a, b in zip(sums, plain_sums))  # same weights: the same loss


def test_sliced_validation_takes_the_loss_over_the_tiles_it_predicts():
    slicing = Slicing(tile_size=64, overlap=16, batch_size=4)
    system = _system(slicing=slicing).eval()
    image = torch.rand(3, 96, 128)
    # Box 0 lies inside the first tile; box 1 straddles tiles, 25 % of it in tile 0 (dropped
    # there: under the 30 % that training crops keep), 75 % in tile 1.
    boxes = torch.tensor([[4.0, 4.0, 24.0, 24.0], [40.0, 4.0, 56.0, 20.0]])
    labels = torch.tensor([0, 1])
    pieces = system._tile_loss_inputs(image, boxes, labels)
    assert len(pieces) == 3 * 2  # tile_grid(128, 96, 64, 16): x at 0, 32, 64; y at 0, 32
    crop, target = pieces[0]  # tile (0, 0, 64, 64)
    assert tuple(crop.shape) == (3, 64, 64)
    assert target["boxes"].tolist() == [[4.0, 4.0, 24.0, 24.0], [40.0, 4.0, 56.0, 20.0]]
    crop, target = pieces[1]  # tile (32, 0, 96, 64): box 1 whole, in tile pixels; box 0 is outside
    assert target["boxes"].tolist() == [[8.0, 4.0, 24.0, 20.0]] and target["labels"].tolist() == [1]
    _, target = pieces[2]  # tile (64, 0, 128, 64): neither box
    assert len(target["boxes"]) == 0
    # With full_frame the whole frame is one more input, with every box.
    full = DetectionModule(system.net, NAMES, optimizer=torch.optim.SGD, slicing=Slicing(tile_size=64, overlap=16, full_frame=True))
    assert len(full._tile_loss_inputs(image, boxes, labels)) == 7

    # A frame within one tile is one input, the frame itself: the same loss as unsliced validation.
    one_tile = DetectionModule(system.net, NAMES, optimizer=torch.optim.SGD, slicing=Slicing(tile_size=300, overlap=16))
    truth = {"boxes": boxes, "labels": labels + 1}  # the network's labels, as _detect_with_loss passes them
    with torch.no_grad():
        _, (whole,) = one_tile._ssd_pass([image], [truth], postprocess=False)
        np.testing.assert_allclose(one_tile._sliced_loss(image, truth), whole, rtol=1e-6)
        # Over tiles, the sums of the tiles' losses.
        tiles = system._tile_loss_inputs(image, boxes, labels + 1)
        _, sums = system._ssd_pass([crop for crop, _ in tiles], [t for _, t in tiles], postprocess=False)
        np.testing.assert_allclose(system._sliced_loss(image, truth), np.sum(sums, axis=0), rtol=1e-5)


def test_a_network_without_ssd_losses_still_validates():
    class Oracle(torch.nn.Module):
        def forward(self, images):
            return [{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)}
                    for _ in images]

    system = DetectionModule(Oracle(), NAMES, optimizer=torch.optim.SGD)
    images, targets = _batch(2)
    detections, sums = system._detect_with_loss(images, targets)
    assert len(detections) == 2 and sums == [None, None]
    assert DetectionModule._mean_loss([(0, {}, {}, None)]) is None


# ---- the tags, read back ------------------------------------------------------------------------
HEADLINE = {"val/mAP", "val/AP50", "val/loss", "val/precision", "val/recall", "val/F1", "val/count_MAE",
            "val/count_MAE_tuned", "val/count_threshold_tuned"}
DETAIL = {"val_detail/AP75", "val_detail/AR1", "val_detail/AR10", "val_detail/AR1000", "val_detail/count_RMSE",
          "val_detail/count_bias", "val_detail/loss_classification", "val_detail/loss_box"}
PER_CLASS = {f"val_per_class/{metric}/{name}" for metric in ("AP", "AP50", "precision", "recall", "F1", "count_MAE")
             for name in NAMES}


def _validate(tmp_path, **kwargs) -> tuple[pl.Trainer, DetectionModule, EventAccumulator]:
    system = _system(max_detections=1000, **kwargs)
    loader = DataLoader([_sample(i) for i in range(4)], batch_size=2, collate_fn=_collate)
    logger = TensorBoardLogger(tmp_path)
    trainer = pl.Trainer(logger=logger, callbacks=[ValidationQuality()], accelerator="cpu", devices=1,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.validate(system, loader, verbose=False)
    events = EventAccumulator(logger.log_dir, size_guidance={"images": 0, "tensors": 0, "scalars": 0})
    events.Reload()
    return trainer, system, events


def test_validation_logs_each_number_once_grouped_by_intent(tmp_path):
    trainer, system, events = _validate(tmp_path, size_bins=[400.0, 1200.0])
    scalars = set(events.Tags()["scalars"]) - {"epoch"}
    # Bins: 0-20 px holds no box (no lines: undefined all run), 20-35 px and over 35 px do.
    per_size = {f"val_per_size/{metric}/{name}" for metric in ("AP", "AP50", "recall50") for name in ("20-35px", "over35px")}
    assert scalars == HEADLINE | DETAIL | PER_CLASS | per_size
    # No flat -1 lines, no COCO area ranges beside the bins (AP_small repeated mAP), no old tags.
    assert all(event.value >= 0 for tag in scalars for event in events.Scalars(tag)), "a -1 line"
    assert not any("small" in tag or "medium" in tag or "large" in tag for tag in scalars)
    # Logged for the SageMaker metric lines, but not as TensorBoard lines (they repeat another).
    assert {"val/count_threshold"} <= set(trainer.callback_metrics) and not {"val/count_threshold", "val/recall50_smallest"} & scalars

    result = system.last_validation
    value = {tag: events.Scalars(tag)[-1].value for tag in scalars}
    assert value["val/mAP"] == pytest.approx(result.metrics.stats["mAP"])
    assert value["val/loss"] == pytest.approx(result.loss["total"])
    assert value["val/precision"] == pytest.approx(result.fixed_quality.overall.precision)
    assert value["val/recall"] == pytest.approx(result.fixed_quality.overall.recall)
    assert value["val/F1"] == pytest.approx(result.fixed_quality.overall.f1)
    assert value["val_per_class/recall/drone"] == pytest.approx(result.fixed_quality.per_class["drone"].recall)

    # The callback's pictures and per-class table, at the validation's step.
    assert {"confusion_matrix/val", "f1_curve/val"} <= set(events.Tags()["images"])
    (text,) = events.Tensors("per_class/val/text_summary")
    table = text.tensor_proto.string_val[0].decode()
    assert "| class | instances | P | R | F1 | AP50 | AP@[.5:.95] |" in table and "| drone |" in table
    assert f">= {FIXED_COUNT_THRESHOLD:.2f}" in table


def test_without_size_bins_coco_area_ranges_are_logged_only_where_they_have_ground_truth(tmp_path):
    _, system, events = _validate(tmp_path)
    scalars = set(events.Tags()["scalars"])
    stats = system.last_validation.metrics.stats
    # 600 and 1600 px^2 boxes: all "small" and "medium" by COCO's 32 px / 96 px edges, none "large".
    assert {"val_per_size/AP/COCO_small", "val_per_size/AR/COCO_medium"} <= scalars
    assert stats["AP_large"] == -1 and "val_per_size/AP/COCO_large" not in scalars


def test_count_mae_is_at_a_fixed_threshold_with_the_tuned_one_beside_it(tmp_path):
    trainer, system, events = _validate(tmp_path)
    result = system.last_validation
    assert result.fixed_counts.threshold == FIXED_COUNT_THRESHOLD == system.fixed_count_threshold
    assert result.fixed_quality.threshold == FIXED_COUNT_THRESHOLD
    # What a run keeps is still the tuned threshold (counts, quality, the checkpoint).
    assert result.counts is result.oracle_counts and result.quality.threshold == result.counts.threshold
    checkpoint: dict = {}
    system.on_save_checkpoint(checkpoint)
    assert checkpoint["beedet"]["count_threshold"] == result.oracle_counts.threshold
    logged = {tag: events.Scalars(tag)[-1].value for tag in ("val/count_MAE", "val/count_MAE_tuned", "val/count_threshold_tuned")}
    assert logged["val/count_MAE"] == pytest.approx(result.fixed_counts.overall["MAE"])
    assert logged["val/count_MAE_tuned"] == pytest.approx(result.oracle_counts.overall["MAE"])
    assert logged["val/count_threshold_tuned"] == pytest.approx(result.oracle_counts.threshold)
    assert float(trainer.callback_metrics["val/count_threshold"]) == FIXED_COUNT_THRESHOLD

    # A configured threshold is the fixed one: counts and quality in use are those of the curves.
    configured = _system(count_threshold=0.3)
    configured.on_validation_epoch_start()
    configured.validation_step(_batch(), 0)
    configured.on_validation_epoch_end()
    result = configured.last_validation
    assert result.fixed_counts is result.counts and result.counts.threshold == 0.3
    assert result.fixed_quality is result.quality and result.quality.threshold == 0.3


def test_the_learning_rate_is_logged_as_train_lr():
    system = _system(scheduler=lambda optimizer, total_steps, time_fraction: torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0))
    system.trainer = pl.Trainer(max_steps=10, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    assert system.configure_optimizers()["lr_scheduler"]["name"] == "train/lr"


def test_validation_quality_skips_the_sanity_check_and_logs_each_result_once(tmp_path):
    from types import SimpleNamespace

    system = _system()
    system.on_validation_epoch_start()
    system.validation_step(_batch(), 0)
    system.on_validation_epoch_end()
    logger = TensorBoardLogger(tmp_path)
    callback = ValidationQuality()
    for sanity, step in ((True, 0), (False, 5), (False, 6)):  # the last one sees the same result again
        trainer = SimpleNamespace(sanity_checking=sanity, is_global_zero=True, loggers=[logger], global_step=step)
        callback.on_validation_end(trainer, system)
    logger.experiment.flush()
    events = EventAccumulator(logger.log_dir, size_guidance={"images": 0})
    events.Reload()
    assert [e.step for e in events.Images("confusion_matrix/val")] == [5]
    assert [e.step for e in events.Images("f1_curve/val")] == [5]
    # Without results (a module that has not validated) it logs nothing and does not fail.
    callback.on_validation_end(SimpleNamespace(sanity_checking=False, is_global_zero=True, loggers=[logger], global_step=7),
                               SimpleNamespace(last_validation=None))
