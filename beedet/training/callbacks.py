"""Lightning callbacks that put pictures and precision-recall curves in TensorBoard.

* ``AugmentationPreview``: the augmented training images the network really sees, with boxes.
* ``PredictionOverlays``: detections judged against ground truth (true positives, false positives,
  misses) on a few fixed validation images and on the hardest ones, every N epochs.
* ``PRCurves``: COCO's per-class precision-recall curve (IoU 0.5) in TensorBoard's PR Curves tab.
* ``CountPlot``: predicted against true objects per validation image, after every validation.
* ``ValidationQuality``: the confusion matrix, the F1-confidence curve and the per-class table
  (P, R, F1, AP50, AP, instances), after every validation.

What the callbacks need from the LightningModule (``beedet.training.system.DetectionModule`` has it; see
``Detector``): ``class_names``, ``detect(images)``, ``last_validation`` and ``device``. From the data
module: ``train_dataloader()`` yielding ``(list[image], list[target])`` and ``val_dataset`` giving
``(image, target)``; images (3, H, W), float in [0, 1] or uint8 (the training loader's), targets
``{"boxes": (N, 4) xyxy pixels, "labels": (N,) 0-based class ids, ...}``.

They write only through a ``TensorBoardLogger`` and only on global rank 0: with another logger,
or none, they do nothing. Under DDP every rank runs the hooks, but nothing here is a collective
operation, so rank 0 working alone cannot deadlock the others.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol, cast

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger
from torch import Tensor
from torch.utils.tensorboard import SummaryWriter

from beedet.evaluation.counting import count_plot
from beedet.evaluation.detection_quality import class_table, class_table_markdown
from beedet.evaluation.plots import confusion_matrix_plot, f1_curve_plot
from beedet.reporting.overlays import (HARD_KINDS, assess_images, draw_boxes, hard_assessments, image_grid,
                                       overlay_predictions, spread_indices)

# Without a class's ground-truth count, PR counts are per 100 objects (they read as percentages).
NOMINAL_NUM_GT = 100


class PRCurveLike(Protocol):
    """One class's curve as pycocotools stores it (``beedet.evaluation.results.PRCurve``): arrays of
    shape (R,) over COCO's recall thresholds. ``precision[i]`` is the interpolated precision at
    recall >= ``recall[i]`` (0 where that recall is never reached, -1 for a class without ground
    truth) and ``scores[i]`` the detection score where that recall is reached."""

    recall: np.ndarray
    precision: np.ndarray
    scores: np.ndarray


class Detector(Protocol):
    """The LightningModule protocol these callbacks rely on, and nothing more.

    * ``class_names[i]`` names class id ``i`` (0 is the first real class, not background).
    * ``detect(images)`` takes float (3, H, W) images in [0, 1] on ``device`` and returns per image
      ``{"boxes": (N, 4) xyxy pixels of that image, "scores": (N,), "labels": int64 (N,) 0-based}``;
      it runs under no_grad in eval mode and restores the previous train/eval mode.
    * ``last_validation`` is set after each validation epoch: None, or an object with ``metrics``
      (with ``pr_curves: dict[str, PRCurveLike]``) and ``counts`` (``CountMetrics``), as
      ``beedet.evaluation.results.ValidationResult``; a new object after every validation.
    * optionally ``fixed_count_threshold`` (a float): the score threshold ``PredictionOverlays``
      judges detections at unless given one.
    """

    class_names: list[str]
    last_validation: Any
    device: torch.device

    def detect(self, images: list[Tensor]) -> list[dict[str, Tensor]]: ...


def tensorboard_writer(trainer: pl.Trainer) -> SummaryWriter | None:
    """The run's TensorBoard ``SummaryWriter`` on global rank 0; None elsewhere or without one."""
    if not trainer.is_global_zero:
        return None
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger.experiment
    return None


@contextmanager
def _preserved_global_rng() -> Iterator[None]:
    """Restore python, numpy and torch (CPU) RNG states afterwards, so that drawing a preview
    batch does not change the data order or augmentations of the seeded training run."""
    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])


class AugmentationPreview(pl.Callback):
    """Logs one grid of augmented training images with their boxes, when training starts.

    Tag ``augmentation/preview``, at the global step training starts from (0 unless resumed).
    Check it before a long run: boxes must still sit on the bees after flips, crops and resizes.

    Args:
        num_images: how many training samples to show (batches are drawn until there are enough).
        text: write the class name in boxes large enough to hold it.
    """

    def __init__(self, num_images: int = 16, text: bool = True) -> None:
        if num_images < 1:
            raise ValueError(f"AugmentationPreview.num_images must be >= 1, got {num_images}")
        self.num_images = num_images
        self.text = text

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        writer = tensorboard_writer(trainer)
        datamodule = getattr(trainer, "datamodule", None)
        if writer is None or datamodule is None:
            return
        class_names = cast(Detector, pl_module).class_names
        with _preserved_global_rng():
            samples = self._take_samples(datamodule.train_dataloader())
        pictures = [
            draw_boxes(image, target["boxes"], target["labels"], class_names, text=self.text)
            for image, target in samples
        ]
        writer.add_image("augmentation/preview", image_grid(pictures), global_step=trainer.global_step)

    def _take_samples(self, loader: Any) -> list[tuple[Tensor, dict[str, Tensor]]]:
        samples: list[tuple[Tensor, dict[str, Tensor]]] = []
        for images, targets in loader:
            samples.extend(zip(images, targets))
            if len(samples) >= self.num_images:
                break
        return samples[: self.num_images]


class PredictionOverlays(pl.Callback):
    """Logs detections judged against ground truth every N epochs: on the same few validation
    images, and on the hardest ones of the moment.

    Detections scoring at least ``score_threshold`` are matched to ground truth at IoU 0.5; true
    positives are solid boxes in the class colour, false positives dashed ones captioned "FP",
    misses thick green boxes captioned "miss", and a legend below each picture says so
    (``beedet.reporting.overlays.overlay_predictions``). Tags, at the trainer's global step (the sanity
    check logs nothing):

    * ``predictions/val_<k>``, k = 0..num_images-1: the fixed images, to follow over the run;
    * ``predictions/hard_misses_<k>`` and ``predictions/hard_false_positives_<k>``,
      k = 0..num_hard-1: the images with the most misses, and with the most false positives, in
      this validation (the hardest at k = 0; fixed images excluded; an image lacking that error
      is never shown, so fewer tags when the detector makes fewer errors). The legend's first
      line names the image and why it was chosen.

    Choosing hard images detects a pool of ``hard_pool`` validation images once more (spread over
    the set, fixed for the run), rank 0 only: about ``hard_pool / len(val)`` of a validation's
    time, every ``every_n_epochs``.

    Args:
        num_images: how many validation images to follow. They are fixed for the whole run: the
            first ones in the validation set, preferring images that contain objects.
        every_n_epochs: log after every N-th epoch's validation.
        score_threshold: detections scoring below it are neither drawn nor matched. None: the
            module's ``fixed_count_threshold`` (``DetectionModule``'s: the threshold of
            ``val/precision``, ``val/recall`` and the confusion matrix, so the pictures show what
            those numbers count), or ``DEFAULT_SCORE_THRESHOLD`` for a module without one.
        max_side: pictures are shrunk so their longer side is at most this many pixels, which
            keeps event files small (a 1920x1080 frame becomes 640x360).
        min_side: smaller pictures are enlarged to this longer side, so that a 256 px image's
            boxes and captions are legible.
        text: caption each box ("bee 0.87", "FP bee 0.62", "miss bee").
        num_hard: hard images of each kind (most misses, most false positives); 0: none.
        hard_pool: validation images the hard ones are chosen from; None: all of them.
        batch_size: images per detection call while scoring the pool.
    """

    # Scanning for images with objects decodes images; stop after this many per wanted image.
    _SCAN_PER_IMAGE = 8
    #: The score threshold for a module without ``fixed_count_threshold``.
    DEFAULT_SCORE_THRESHOLD = 0.3

    def __init__(
        self,
        num_images: int = 4,
        every_n_epochs: int = 1,
        score_threshold: float | None = None,
        max_side: int = 640,
        min_side: int = 640,
        text: bool = True,
        num_hard: int = 2,
        hard_pool: int | None = 64,
        batch_size: int = 8,
    ) -> None:
        if num_images < 1:
            raise ValueError(f"PredictionOverlays.num_images must be >= 1, got {num_images}")
        if every_n_epochs < 1:
            raise ValueError(f"PredictionOverlays.every_n_epochs must be >= 1, got {every_n_epochs}")
        if num_hard < 0 or batch_size < 1:
            raise ValueError(f"PredictionOverlays needs num_hard >= 0 and batch_size >= 1, got {num_hard}, {batch_size}")
        self.num_images = num_images
        self.every_n_epochs = every_n_epochs
        self.score_threshold = score_threshold
        self.max_side = max_side
        self.min_side = min_side
        self.text = text
        self.num_hard = num_hard
        self.hard_pool = hard_pool
        self.batch_size = batch_size
        self._indices: list[int] | None = None
        self._pool: list[int] | None = None

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or (trainer.current_epoch + 1) % self.every_n_epochs != 0:
            return
        writer = tensorboard_writer(trainer)
        dataset = getattr(getattr(trainer, "datamodule", None), "val_dataset", None)
        if writer is None or dataset is None:
            return
        if self._indices is None:
            self._indices = self.choose_images(dataset, self.num_images, self._SCAN_PER_IMAGE * self.num_images)
            self._pool = spread_indices(len(dataset), self.hard_pool) if self.num_hard else []
        detector = cast(Detector, pl_module)
        threshold = self.score_threshold
        if threshold is None:
            threshold = float(getattr(pl_module, "fixed_count_threshold", self.DEFAULT_SCORE_THRESHOLD))
        candidates = sorted(set(self._indices) | set(self._pool or []))
        assessed = assess_images(detector, dataset, candidates, threshold, self.batch_size)
        by_index = {a.index: a for a in assessed}
        shown = [(f"predictions/val_{k}", f"val image {i}", by_index[i]) for k, i in enumerate(self._indices)]
        for kind, found in hard_assessments(assessed, self.num_hard, self._indices).items():
            shown += [(f"predictions/hard_{kind}_{k}", f"val image {a.index}: #{k + 1} {HARD_KINDS[kind]}", a)
                      for k, a in enumerate(found)]
        for tag, title, a in shown:
            image, _ = dataset[a.index]
            picture = overlay_predictions(
                image, a.target, a.prediction, detector.class_names, threshold,
                max_side=self.max_side, min_side=self.min_side, text=self.text, title=title,
            )
            writer.add_image(tag, picture, global_step=trainer.global_step)

    @staticmethod
    def choose_images(dataset: Any, count: int, scan_limit: int) -> list[int]:
        """The first ``count`` indices of images with at least one box among the first
        ``scan_limit`` images, topped up with the first empty ones when too few have boxes."""
        with_boxes: list[int] = []
        empty: list[int] = []
        for index in range(min(len(dataset), max(scan_limit, count))):
            _, target = dataset[index]
            (with_boxes if len(target["boxes"]) else empty).append(index)
            if len(with_boxes) == count:
                break
        return sorted((with_boxes + empty)[:count])


class PRCurves(pl.Callback):
    """Logs each class's COCO precision-recall curve (IoU 0.5) to TensorBoard's PR Curves tab.

    Tags ``pr_curve/<class name>``, at the trainer's global step, after every validation that
    produced new metrics (not the sanity check). Classes without ground truth are skipped.

    It runs in ``on_validation_end`` rather than ``on_validation_epoch_end``: Lightning calls
    callbacks' epoch-end hooks *before* the module's, so ``last_validation`` would still hold the
    previous epoch there.

    Args:
        num_thresholds: score thresholds the curve is sampled at (TensorBoard allows at most 127).
    """

    def __init__(self, num_thresholds: int = 101) -> None:
        if not 2 <= num_thresholds <= 127:
            raise ValueError(f"PRCurves.num_thresholds must be in [2, 127], got {num_thresholds}")
        self.num_thresholds = num_thresholds
        self._logged: Any = None

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        fresh = new_validation(trainer, pl_module, self._logged)
        if fresh is None or fresh[1].metrics is None:
            return
        writer, result = fresh
        self._logged = result
        for name, curve in result.metrics.pr_curves.items():
            data = tensorboard_pr_data(curve, getattr(curve, "num_gt", None), self.num_thresholds)
            if data is None:
                continue
            tp, fp, tn, fn, precision, recall = data
            writer.add_pr_curve_raw(
                f"pr_curve/{name}", tp, fp, tn, fn, precision, recall,
                global_step=trainer.global_step, num_thresholds=self.num_thresholds,
            )


class CountPlot(pl.Callback):
    """Logs predicted against true total objects per validation image (one dot per image, the
    diagonal is a perfect count, MAE and bias in the title; ``beedet.evaluation.counting.count_plot``).

    Tag ``counting/val``, at the trainer's global step, after every validation that produced new
    counts (not the sanity check). Like ``PRCurves`` it runs in ``on_validation_end``, after the
    module has computed ``last_validation``.
    """

    def __init__(self) -> None:
        self._logged: Any = None

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        fresh = new_validation(trainer, pl_module, self._logged)
        if fresh is None or fresh[1].counts is None:
            return
        writer, result = fresh
        self._logged = result
        writer.add_image("counting/val", count_plot(result.counts), global_step=trainer.global_step)


def new_validation(trainer: pl.Trainer, pl_module: pl.LightningModule, logged: Any) -> tuple[SummaryWriter, Any] | None:
    """``(TensorBoard writer, the module's last_validation)`` when a callback should draw it: not
    the sanity check, a TensorBoard logger present, and a result other than ``logged`` (the one the
    callback drew last: the same object again means validation produced nothing new); else None."""
    if trainer.sanity_checking:
        return None
    writer = tensorboard_writer(trainer)
    result = getattr(pl_module, "last_validation", None)
    if writer is None or result is None or result is logged:
        return None
    return writer, result


def tensorboard_pr_data(curve: PRCurveLike, num_gt: int | None = None, num_thresholds: int = 101) -> np.ndarray | None:
    """Resample a COCO PR curve onto score thresholds, in ``add_pr_curve_raw``'s layout.

    COCO indexes its curve by recall (101 recall thresholds); TensorBoard indexes by score
    threshold: column j describes the detections scoring >= j / (num_thresholds - 1), and the
    dashboard's threshold read-out assumes exactly that. Keeping detections with score >= t
    reaches the highest COCO recall threshold whose score is >= t, at COCO's interpolated
    precision there, which is the curve COCO's AP averages.

    Returns float64 (6, num_thresholds): rows true positives, false positives, true negatives,
    false negatives, precision, recall, or None for a class without ground truth (precision
    all -1). Counts are derived from recall and ``num_gt`` (``NOMINAL_NUM_GT`` if unknown): with
    at most 100 objects the true-positive count is exact (recall is known to 1/100); true
    negatives do not exist in detection and are 0. Columns where nothing is kept have
    TP = FP = 0, which TensorBoard trims from the plot.
    """
    recall = np.asarray(curve.recall, dtype=np.float64)
    precision = np.asarray(curve.precision, dtype=np.float64)
    scores = np.asarray(curve.scores, dtype=np.float64)
    if not (recall.shape == precision.shape == scores.shape) or recall.ndim != 1:
        raise ValueError(f"PR curve arrays differ in shape: {recall.shape}, {precision.shape}, {scores.shape}")
    if np.all(precision < 0):
        return None
    n = NOMINAL_NUM_GT if num_gt is None else int(num_gt)
    # precision <= 0 marks recall levels never reached (0) or undefined (-1): never kept.
    reached = precision > 0
    thresholds = np.linspace(0.0, 1.0, num_thresholds)
    kept = reached[None, :] & (scores[None, :] >= thresholds[:, None])  # (thresholds, recall levels)
    any_kept = kept.any(axis=1)
    last = np.where(any_kept, recall.size - 1 - np.argmax(kept[:, ::-1], axis=1), 0)

    # The true recall lies in [recall[last], next recall level): its smallest count is exact
    # whenever the levels are closer than one object apart.
    tp = np.where(any_kept, np.ceil(recall[last] * n - 1e-6), 0.0)
    p = np.where(any_kept, precision[last], 0.0)
    fp = np.where(p > 0, tp * (1.0 - p) / np.maximum(p, 1e-12), 0.0)
    fn = n - tp
    tn = np.zeros_like(tp)
    return np.stack([tp, fp, tn, fn, p, tp / max(n, 1)])


class RelativeEarlyStopping(pl.callbacks.EarlyStopping):
    """Lightning's ``EarlyStopping`` that can also require a *relative* improvement: with
    ``relative_min_delta`` r > 0, a new value counts as better only when it beats the best so far
    by at least ``r * |best|`` (and by ``min_delta``). That is the built-in detector's
    ``early_stopping_tolerance``: "the ratio of the change in mAP to the previous best mAP"."""

    def __init__(self, *args: Any, relative_min_delta: float = 0.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not 0.0 <= relative_min_delta <= 1.0:
            raise ValueError(f"relative_min_delta must be in [0, 1], got {relative_min_delta}")
        self.relative_min_delta = relative_min_delta
        self._absolute_min_delta = self.min_delta  # signed by Lightning for the mode

    def _evaluate_stopping_criteria(self, current: torch.Tensor) -> tuple[bool, str | None]:
        if self.relative_min_delta and torch.isfinite(self.best_score):
            sign = 1.0 if self.monitor_op == torch.gt else -1.0
            relative = self.relative_min_delta * abs(float(self.best_score))
            self.min_delta = sign * max(abs(self._absolute_min_delta), relative)
        return super()._evaluate_stopping_criteria(current)


class ValidationQuality(pl.Callback):
    """Logs where the detector fails after every validation that produced new results (not the
    sanity check), at the fixed count threshold of the ``val/precision`` and ``val/count_MAE``
    curves (``last_validation.fixed_quality``):

    * ``confusion_matrix/val`` (image): true class plus background against predicted class plus
      background, at IoU 0.5 (``beedet.evaluation.plots.confusion_matrix_plot``);
    * ``f1_curve/val`` (image): F1 against the score threshold per class and for all classes, with
      the fixed threshold and the tuned one (``val/count_threshold_tuned``) marked;
    * ``per_class/val`` (text): instances, P, R, F1 at the threshold, AP50 and AP per class.

    Like ``PRCurves`` it runs in ``on_validation_end``, after the module has computed
    ``last_validation`` (a ``beedet.evaluation.results.ValidationResult``); a result without
    ``fixed_quality`` or ``f1_curve`` logs nothing.
    """

    def __init__(self) -> None:
        self._logged: Any = None

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        fresh = new_validation(trainer, pl_module, self._logged)
        quality = getattr(fresh[1], "fixed_quality", None) if fresh else None
        curve = getattr(fresh[1], "f1_curve", None) if fresh else None
        if fresh is None or quality is None or curve is None:
            return
        writer, result = fresh
        self._logged = result
        step = trainer.global_step
        writer.add_image("confusion_matrix/val", confusion_matrix_plot(quality.confusion), global_step=step)
        marks = {"count threshold (fixed)": quality.threshold}
        if result.oracle_counts is not None and result.oracle_counts.threshold != quality.threshold:
            marks["tuned on val"] = result.oracle_counts.threshold
        writer.add_image("f1_curve/val", f1_curve_plot(curve, marks), global_step=step)
        table = class_table_markdown(class_table(quality, result.metrics), quality.overall.to_dict(), result.metrics.stats)
        caption = (f"Detections scoring >= {quality.threshold:.2f} matched to ground truth at IoU "
                   f"{quality.iou_threshold:.2f}; AP50 and AP over all scores.")
        writer.add_text("per_class/val", "\n".join([caption, "", *table]), global_step=step)
