"""Lightning callbacks that put pictures and precision-recall curves in TensorBoard.

* ``AugmentationPreview``: the augmented training images the network really sees, with boxes.
* ``PredictionOverlays``: detections on a few fixed validation images, every N epochs.
* ``PRCurves``: COCO's per-class precision-recall curve (IoU 0.5) in TensorBoard's PR Curves tab.
* ``CountPlot``: predicted against true objects per validation image, after every validation.

What the callbacks need from the LightningModule (``beedet.system.DetectionModule`` has it; see
``Detector``): ``class_names``, ``detect(images)``, ``last_validation`` and ``device``. From the data
module: ``train_dataloader()`` yielding ``(list[image], list[target])`` and ``val_dataset`` giving
``(image, target)``; images float (3, H, W) in [0, 1], targets ``{"boxes": (N, 4) xyxy pixels,
"labels": (N,) 0-based class ids, ...}``.

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
from beedet.visualize import draw_boxes, image_grid, overlay_predictions

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
    """Logs detections over ground truth on the same few validation images every N epochs.

    Ground truth is green, detections take their class colour (see ``beedet.visualize``): a lone
    green box is a miss, a lone coloured box a false positive. Tags ``predictions/val_<k>`` for
    k = 0..num_images-1, at the trainer's global step; the sanity check logs nothing.

    Args:
        num_images: how many validation images to follow. They are fixed for the whole run: the
            first ones in the validation set, preferring images that contain objects.
        every_n_epochs: log after every N-th epoch's validation.
        score_threshold: detections scoring below it are not drawn.
        max_side: pictures are shrunk so their longer side is at most this many pixels, which
            keeps event files small (a 1920x1080 frame becomes 640x360).
        text: write "name score" in boxes large enough to hold it.
    """

    # Scanning for images with objects decodes images; stop after this many per wanted image.
    _SCAN_PER_IMAGE = 8

    def __init__(
        self,
        num_images: int = 4,
        every_n_epochs: int = 1,
        score_threshold: float = 0.3,
        max_side: int = 640,
        text: bool = True,
    ) -> None:
        if num_images < 1:
            raise ValueError(f"PredictionOverlays.num_images must be >= 1, got {num_images}")
        if every_n_epochs < 1:
            raise ValueError(f"PredictionOverlays.every_n_epochs must be >= 1, got {every_n_epochs}")
        self.num_images = num_images
        self.every_n_epochs = every_n_epochs
        self.score_threshold = score_threshold
        self.max_side = max_side
        self.text = text
        self._indices: list[int] | None = None

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or (trainer.current_epoch + 1) % self.every_n_epochs != 0:
            return
        writer = tensorboard_writer(trainer)
        dataset = getattr(getattr(trainer, "datamodule", None), "val_dataset", None)
        if writer is None or dataset is None:
            return
        if self._indices is None:
            self._indices = self.choose_images(dataset, self.num_images, self._SCAN_PER_IMAGE * self.num_images)
        detector = cast(Detector, pl_module)
        samples = [dataset[i] for i in self._indices]
        detections = detector.detect([image.to(detector.device) for image, _ in samples])
        for k, ((image, target), detection) in enumerate(zip(samples, detections)):
            picture = overlay_predictions(
                image, target, detection, detector.class_names, self.score_threshold,
                max_side=self.max_side, width=1, text=self.text,  # thin lines: shrunk bees are small
            )
            writer.add_image(f"predictions/val_{k}", picture, global_step=trainer.global_step)

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
        if trainer.sanity_checking:
            return
        writer = tensorboard_writer(trainer)
        result = cast(Detector, pl_module).last_validation
        metrics = None if result is None else result.metrics
        # The same object again means validation produced no new metrics: do not repeat old ones.
        if writer is None or metrics is None or metrics is self._logged:
            return
        self._logged = metrics
        for name, curve in metrics.pr_curves.items():
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
        if trainer.sanity_checking:
            return
        writer = tensorboard_writer(trainer)
        result = getattr(pl_module, "last_validation", None)
        counts = None if result is None else result.counts
        # The same object again means validation produced no new counts: do not repeat old ones.
        if writer is None or counts is None or counts is self._logged:
            return
        self._logged = counts
        writer.add_image("counting/val", count_plot(counts), global_step=trainer.global_step)


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
