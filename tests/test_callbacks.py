"""TensorBoard callbacks (beedet.training.callbacks): a tiny fake detector trained for one epoch, with the
event files read back; and the COCO -> TensorBoard PR-curve conversion against pycocotools."""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.util import tensor_util
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from beedet.training.callbacks import AugmentationPreview, PRCurves, PredictionOverlays, tensorboard_pr_data

NAMES = ["bee", "drone"]
RECALL = np.linspace(0.0, 1.0, 101)


@dataclass
class Curve:
    """Stand-in for beedet.evaluation.results.PRCurve."""

    recall: np.ndarray
    precision: np.ndarray
    scores: np.ndarray


def made_up_curve(max_recall: float, top_precision: float) -> Curve:
    """A plausible pycocotools curve: precision falls with recall, 0 beyond the reached recall."""
    reached = RECALL <= max_recall + 1e-9
    precision = np.where(reached, top_precision * (1.0 - 0.5 * RECALL), 0.0)
    scores = np.where(reached, 0.95 - 0.9 * RECALL, 0.0)
    return Curve(RECALL.copy(), precision, scores)


# ---- a fake system and data that implement exactly the protocol the callbacks rely on ----------
class FakeDetector(pl.LightningModule):
    """One parameter; detects two fixed boxes. Each validation makes new metrics (a new curve)."""

    def __init__(self) -> None:
        super().__init__()
        self.class_names = list(NAMES)
        self.last_validation = None
        self.offset = nn.Parameter(torch.zeros(()))
        self.validations = 0

    @torch.no_grad()
    def detect(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        was_training = self.training
        self.eval()
        boxes = torch.tensor([[4.0, 4.0, 30.0, 24.0], [34.0, 20.0, 60.0, 44.0]], device=self.device)
        out = [
            {"boxes": boxes + self.offset, "scores": torch.tensor([0.9, 0.2], device=self.device),
             "labels": torch.tensor([0, 1], device=self.device)}
            for _ in images
        ]
        self.train(was_training)
        return out

    def training_step(self, batch, batch_idx):
        images, _ = batch
        return (self.offset - torch.stack([img.mean() for img in images]).mean()) ** 2

    def validation_step(self, batch, batch_idx):
        pass

    def on_validation_epoch_end(self) -> None:
        self.validations += 1
        curves = {
            "bee": made_up_curve(max_recall=0.3 + 0.2 * self.validations, top_precision=0.9),
            "drone": Curve(RECALL.copy(), -np.ones(101), -np.ones(101)),  # no ground truth
        }
        self.last_validation = SimpleNamespace(metrics=SimpleNamespace(pr_curves=curves), counts=None)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class RandomBees(Dataset):
    """Random 48x64 images; image 0 has no boxes, the others one box of class i % 2."""

    def __init__(self, count: int) -> None:
        self.count = count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Tensor]]:
        generator = torch.Generator().manual_seed(index)
        image = torch.rand(3, 48, 64, generator=generator)
        if index == 0:
            boxes, labels = torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64)
        else:
            boxes, labels = torch.tensor([[8.0, 6.0, 40.0, 30.0]]), torch.tensor([index % 2])
        return image, {"boxes": boxes, "labels": labels, "image_id": torch.tensor(index),
                       "orig_size": torch.tensor([48, 64])}


def collate(batch):
    return [image for image, _ in batch], [target for _, target in batch]


class RandomBeesData(pl.LightningDataModule):
    def setup(self, stage: str | None = None) -> None:
        self.train_dataset = RandomBees(8)
        self.val_dataset = RandomBees(5)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_dataset, batch_size=2, shuffle=True, collate_fn=collate)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_dataset, batch_size=2, collate_fn=collate)


class RngProbe(pl.Callback):
    """Records the torch RNG state when training starts, to see whether a callback consumed it."""

    def on_train_start(self, trainer, pl_module) -> None:
        self.state = torch.get_rng_state()


def fit(logger, callbacks) -> tuple[pl.Trainer, FakeDetector]:
    module = FakeDetector()
    trainer = pl.Trainer(
        max_epochs=1, limit_train_batches=2, limit_val_batches=1, num_sanity_val_steps=1,
        logger=logger, callbacks=callbacks, enable_checkpointing=False, accelerator="cpu",
        devices=1, enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=1,
    )
    trainer.fit(module, datamodule=RandomBeesData())
    return trainer, module


# ---- end to end -----------------------------------------------------------------------------
def test_callbacks_write_previews_overlays_and_pr_curves(tmp_path):
    logger = TensorBoardLogger(tmp_path)
    before, after = RngProbe(), RngProbe()
    callbacks = [before, AugmentationPreview(num_images=3), after,
                 PredictionOverlays(num_images=2), PRCurves()]
    trainer, module = fit(logger, callbacks)
    assert module.validations == 2  # sanity check + the epoch

    events = EventAccumulator(logger.log_dir, size_guidance={"images": 0, "tensors": 0})
    events.Reload()
    tags = events.Tags()
    step = trainer.global_step
    assert step == 2

    # 3 samples from batches of 2: a 2x2 grid of 48x64 cells with 2 px padding.
    (preview,) = events.Images("augmentation/preview")
    assert (preview.step, preview.height, preview.width) == (0, 2 * 48 + 6, 2 * 64 + 6)
    assert torch.equal(before.state, after.state)  # the preview did not disturb seeded training

    # Fixed images: the first two with objects (image 0 has none); logged once, not at sanity.
    # FakeDetector's confident box overlaps each object at IoU 0.44 < 0.5: every object is missed
    # and every image has one false positive. Hard images: the most missed (3 and 4, ties in
    # order), then the most false positives among the rest (image 0); fixed ones never.
    assert {t for t in tags["images"] if t.startswith("predictions/")} == {
        "predictions/val_0", "predictions/val_1", "predictions/hard_misses_0", "predictions/hard_misses_1",
        "predictions/hard_false_positives_0"}
    assert [e.step for e in events.Images("predictions/val_0")] == [step]
    assert callbacks[3]._indices == [1, 2]
    # 48x64 pictures enlarged to 640 px wide (480 px high) plus a legend strip.
    (overlay,) = events.Images("predictions/hard_misses_0")
    assert overlay.width == 640 and overlay.height > 480

    # PR curves: only classes with ground truth, from this epoch's metrics (not the sanity check's).
    assert "pr_curve/bee" in tags["tensors"] and "pr_curve/drone" not in tags["tensors"]
    assert events.SummaryMetadata("pr_curve/bee").plugin_data.plugin_name == "pr_curves"
    (logged,) = events.Tensors("pr_curve/bee")
    assert logged.step == step
    expected = tensorboard_pr_data(module.last_validation.metrics.pr_curves["bee"])
    np.testing.assert_allclose(tensor_util.make_ndarray(logged.tensor_proto), expected, rtol=1e-6)
    assert tensor_util.make_ndarray(logged.tensor_proto)[5, 0] == pytest.approx(0.7)  # recall reached at epoch 1


def test_callbacks_do_nothing_without_a_tensorboard_logger(tmp_path):
    callbacks = [AugmentationPreview(num_images=2), PredictionOverlays(num_images=1), PRCurves()]
    fit(CSVLogger(tmp_path), callbacks)
    assert callbacks[1]._indices is None  # never even looked at the validation images
    assert not list(tmp_path.rglob("events.out.tfevents*"))


def test_prediction_overlays_pick_images_with_objects_then_fill_with_empty_ones():
    assert PredictionOverlays.choose_images(RandomBees(5), count=3, scan_limit=10) == [1, 2, 3]
    # Only image 1 is scanned and has objects; image 0 (empty) tops the selection up.
    assert PredictionOverlays.choose_images(RandomBees(5), count=2, scan_limit=2) == [0, 1]


# ---- COCO curve -> TensorBoard counts ----------------------------------------------------------
def coco_curve_and_truth(seed: int = 0, num_gt: int = 37) -> tuple[Curve, np.ndarray]:
    """Run pycocotools on detections whose outcome is known by construction: each detection
    either sits exactly on its own ground-truth box (TP) or far from every box (FP).
    Returns the IoU-0.5 curve and (score, is_tp) per detection."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    rng = np.random.default_rng(seed)
    images = [{"id": i, "width": 1000, "height": 1000} for i in range(10)]
    annotations, detections, truth = [], [], []
    for g in range(num_gt):
        image_id, x, y = g % 10, (g // 10) * 200 + 10, (g % 10) * 90 + 5
        annotations.append({"id": g + 1, "image_id": image_id, "category_id": 1, "bbox": [x, y, 50, 50],
                            "area": 2500, "iscrowd": 0})
        if rng.random() < 0.8:
            score = float(rng.uniform(0.05, 1.0))
            detections.append({"image_id": image_id, "category_id": 1, "bbox": [x, y, 50, 50], "score": score})
            truth.append((score, 1.0))
    for f in range(25):
        score = float(rng.uniform(0.0, 0.9))
        detections.append({"image_id": f % 10, "category_id": 1, "bbox": [900, 900 - f, 40, 40], "score": score})
        truth.append((score, 0.0))

    coco = COCO()
    coco.dataset = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "bee"}]}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
        evaluator = COCOeval(coco, coco.loadRes(detections), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
    # [IoU 0.5, all recall thresholds, category, area "all", maxDets 100]
    curve = Curve(
        recall=evaluator.params.recThrs,
        precision=evaluator.eval["precision"][0, :, 0, 0, 2],
        scores=evaluator.eval["scores"][0, :, 0, 0, 2],
    )
    return curve, np.array(truth)


def test_pr_data_matches_pycocotools_counts_at_every_score_threshold():
    num_gt = 37
    curve, truth = coco_curve_and_truth(num_gt=num_gt)
    tp, fp, tn, fn, precision, recall = tensorboard_pr_data(curve, num_gt)

    for j, threshold in enumerate(np.linspace(0.0, 1.0, 101)):
        kept = truth[truth[:, 0] >= threshold]
        true_tp = kept[:, 1].sum()
        assert tp[j] == true_tp, f"threshold {threshold}"
        assert fn[j] == num_gt - true_tp and tn[j] == 0
        assert recall[j] == pytest.approx(true_tp / num_gt)
        if true_tp:
            # COCO's interpolated precision: never below the raw precision at that threshold.
            assert precision[j] >= true_tp / len(kept) - 1e-9
            assert tp[j] / (tp[j] + fp[j]) == pytest.approx(precision[j])
    assert tp[-1] == 0 and fp[-1] == 0  # nothing scores >= 1: TensorBoard trims this tail


def test_pr_data_skips_classes_without_ground_truth_and_handles_no_detections():
    assert tensorboard_pr_data(Curve(RECALL, -np.ones(101), -np.ones(101))) is None

    nothing = tensorboard_pr_data(Curve(RECALL, np.zeros(101), np.zeros(101)), num_gt=5)
    assert nothing.shape == (6, 101)
    assert np.all(nothing[0] == 0) and np.all(nothing[3] == 5) and np.all(nothing[5] == 0)
