"""Counting metrics: how well a detector counts bees, per image and per class, at a score threshold.

Beekeepers ask "how many bees (drones, queens, pollen foragers) are in this frame?" more often than
"where exactly is each one?". A detector counts by keeping the detections that score at least a
threshold: this module measures the count error at one threshold, chooses the threshold on a
validation set, and draws predicted against true counts.

Contracts:

* ground truth per image: ``labels`` int (N,) 0-based class ids (0 is the first real class, e.g.
  "bee", not background), one entry per labelled object;
* predictions per image: ``{"scores": (M,), "labels": (M,) 0-based class ids, ...}`` as Tensors or
  arrays (the output of ``DetectionModule.detect``); a detection counts when ``score >= threshold``,
  as in ``beedet.predict``'s per-image counts;
* counts are int64 arrays (I, K): images x classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

#: The thresholds :func:`choose_count_threshold` tries by default: 0.05, 0.10, ..., 0.95.
DEFAULT_THRESHOLDS: tuple[float, ...] = tuple(round(0.05 * k, 2) for k in range(1, 20))

#: The score threshold of the per-epoch curves (``val/count_MAE``, ``val/precision``, ...) when no
#: count threshold is configured. The threshold chosen on val moves from epoch to epoch (0.35 ->
#: 0.55 in a default run) and is fitted to the very images it is scored on, so its MAE is
#: optimistic and epochs do not compare; one fixed threshold makes the curves comparable. 0.5: the
#: middle of the grid :func:`choose_count_threshold` searches, where a softmax score says "more
#: likely this class than anything else".
FIXED_COUNT_THRESHOLD = 0.5

#: The keys of every per-class and overall entry of :class:`CountMetrics`.
COUNT_KEYS: tuple[str, ...] = ("MAE", "RMSE", "bias", "mean_true", "mean_pred")


def threshold_grid(step: float = 0.05) -> np.ndarray:
    """Thresholds ``step, 2 * step, ...`` below 1: the default grid for 0.05, a finer one for
    0.01 (99 thresholds; cheap, but the finer the grid the more it fits one validation set)."""
    if not 0.0 < step < 1.0:
        raise ValueError(f"threshold step must be in (0, 1), got {step}")
    return np.round(np.arange(1, int(np.ceil(1.0 / step - 1e-9))) * step, 10)


def true_counts(truth_labels: Sequence[Any], num_classes: int) -> np.ndarray:
    """int64 (I, K): labelled objects of each class in each image."""
    counts = np.zeros((len(truth_labels), num_classes), dtype=np.int64)
    for i, labels in enumerate(truth_labels):
        counts[i] = np.bincount(class_ids(labels, num_classes, f"ground truth of image {i}"), minlength=num_classes)
    return counts


def predicted_counts(predictions: Sequence[dict[str, Any]], num_classes: int, threshold: float) -> np.ndarray:
    """int64 (I, K): detections of each class in each image scoring at least ``threshold``."""
    return _predicted_counts_at(predictions, num_classes, [threshold])[0]


@dataclass
class CountMetrics:
    """Count errors over I images at one score threshold.

    ``per_class[name]`` and ``overall`` hold :data:`COUNT_KEYS`: ``MAE`` = mean |pred - true|,
    ``RMSE`` = sqrt(mean (pred - true)^2), ``bias`` = mean (pred - true) (negative: undercounts),
    ``mean_true`` and ``mean_pred`` (objects per image), each over the images. ``overall`` is about
    the total objects per image whatever their class ("all"). ``true_counts`` / ``pred_counts``
    are int64 (I, K), in the order of ``class_names``.
    """

    threshold: float
    class_names: list[str]
    per_class: dict[str, dict[str, float]]
    overall: dict[str, float]
    true_counts: np.ndarray
    pred_counts: np.ndarray

    @classmethod
    def from_counts(cls, true: np.ndarray, pred: np.ndarray, class_names: Sequence[str], threshold: float) -> CountMetrics:
        """Errors of ``pred`` against ``true``, both int (I, K) with K = len(class_names), I >= 1."""
        true = np.asarray(true, dtype=np.int64)
        pred = np.asarray(pred, dtype=np.int64)
        if true.shape != pred.shape or true.ndim != 2 or true.shape[1] != len(class_names):
            raise ValueError(f"counts must both be (images, {len(class_names)} classes), got {true.shape} and {pred.shape}")
        if true.shape[0] == 0:
            raise ValueError("counting metrics need at least one image")
        per_class = {name: _errors(true[:, k], pred[:, k]) for k, name in enumerate(class_names)}
        overall = _errors(true.sum(axis=1), pred.sum(axis=1))
        return cls(float(threshold), list(class_names), per_class, overall, true, pred)

    @property
    def num_images(self) -> int:
        return int(self.true_counts.shape[0])

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary: ``threshold``, ``num_images``, ``all`` (the overall errors) and
        ``per_class``. The per-image counts are left out (the count plot shows them)."""
        return {
            "threshold": self.threshold,
            "num_images": self.num_images,
            "all": dict(self.overall),
            "per_class": {name: dict(values) for name, values in self.per_class.items()},
        }


def count_metrics(
    truth_labels: Sequence[Any],
    predictions: Sequence[dict[str, Any]],
    class_names: Sequence[str],
    threshold: float,
) -> CountMetrics:
    """Count errors of ``predictions[i]`` against the objects ``truth_labels[i]`` of image i."""
    _check_lengths(truth_labels, predictions)
    num_classes = len(class_names)
    return CountMetrics.from_counts(
        true_counts(truth_labels, num_classes), predicted_counts(predictions, num_classes, threshold), class_names, threshold
    )


def choose_count_threshold(
    truth_labels: Sequence[Any],
    predictions: Sequence[dict[str, Any]],
    num_classes: int,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
) -> float:
    """The score threshold among ``thresholds`` whose counts are best on these images.

    Objective: the sum over classes of the per-class count MAE (mean over images of
    |pred - true|), so that a rare class (a queen) weighs as much as the bees, and detections of
    a class without ground truth count as errors. Ties (equal objective) go to the threshold
    with the smaller MAE of the total count per image, then to the lowest threshold. Both
    criteria are compared as exact integer sums of absolute errors, so float rounding never
    breaks a tie.
    """
    _check_lengths(truth_labels, predictions)
    if len(truth_labels) == 0:
        raise ValueError("choosing a count threshold needs at least one image")
    grid = sorted(float(t) for t in thresholds)
    if not grid:
        raise ValueError("no thresholds to choose from")
    true = true_counts(truth_labels, num_classes)
    pred = _predicted_counts_at(predictions, num_classes, grid)  # (T, I, K)
    diff = pred - true[None]
    per_class_error = np.abs(diff).sum(axis=(1, 2))  # = I * sum_k MAE_k
    total_error = np.abs(diff.sum(axis=2)).sum(axis=1)  # = I * MAE of the total count
    best = min(range(len(grid)), key=lambda t: (int(per_class_error[t]), int(total_error[t]), grid[t]))
    return grid[best]


def count_plot(metrics: CountMetrics, *, size_inches: float = 4.0, dpi: int = 100) -> Tensor:
    """A scatter plot of predicted against true total objects per image, with the diagonal
    (perfect counts) and the MAE in the title. Returns uint8 (3, H, W), like ``beedet.reporting.overlays``:
    ready for ``SummaryWriter.add_image`` and ``beedet.reporting.overlays.save_image``.

    Drawn with matplotlib's Agg canvas directly: no pyplot, no global backend switch.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    true = metrics.true_counts.sum(axis=1)
    pred = metrics.pred_counts.sum(axis=1)
    figure = Figure(figsize=(size_inches, size_inches), dpi=dpi)
    canvas = FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    top = max(int(true.max(initial=0)), int(pred.max(initial=0)), 1) * 1.05
    axes.plot([0, top], [0, top], color="0.6", linewidth=1, label="perfect count")
    axes.scatter(true, pred, s=18, alpha=0.6, color="#d000d0", edgecolors="none", label="image")
    low = -0.03 * top  # dots at zero stay visible off the axes
    axes.set_xlim(low, top)
    axes.set_ylim(low, top)
    axes.set_aspect("equal")
    axes.set_xlabel("true objects per image")
    axes.set_ylabel(f"detections with score >= {metrics.threshold:.2f}")
    overall = metrics.overall
    axes.set_title(f"count MAE {overall['MAE']:.2f}, bias {overall['bias']:+.2f} ({metrics.num_images} images)", fontsize=9)
    axes.legend(loc="upper left", fontsize=7)
    figure.tight_layout()
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())
    return torch.from_numpy(np.ascontiguousarray(rgba[..., :3])).permute(2, 0, 1).contiguous()


def _errors(true: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    diff = (pred - true).astype(np.float64)
    return {
        "MAE": float(np.abs(diff).mean()),
        "RMSE": float(np.sqrt((diff**2).mean())),
        "bias": float(diff.mean()),
        "mean_true": float(true.mean()),
        "mean_pred": float(pred.mean()),
    }


def _predicted_counts_at(predictions: Sequence[dict[str, Any]], num_classes: int, thresholds: Sequence[float]) -> np.ndarray:
    """int64 (T, I, K): counts at each threshold, from one pass over the detections."""
    num_images = len(predictions)
    image_index, labels, scores = [], [], []
    for i, prediction in enumerate(predictions):
        image_labels = class_ids(prediction["labels"], num_classes, f"predictions of image {i}")
        image_scores = to_numpy(prediction["scores"]).astype(np.float64).reshape(-1)
        if image_scores.shape != image_labels.shape:
            raise ValueError(f"predictions of image {i}: {image_scores.size} scores but {image_labels.size} labels")
        image_index.append(np.full(image_labels.size, i, dtype=np.int64))
        labels.append(image_labels)
        scores.append(image_scores)
    cell = np.concatenate(image_index + [np.zeros(0, np.int64)]) * num_classes + np.concatenate(labels + [np.zeros(0, np.int64)])
    all_scores = np.concatenate(scores + [np.zeros(0)])
    counts = np.zeros((len(thresholds), num_images, num_classes), dtype=np.int64)
    for t, threshold in enumerate(thresholds):
        kept = cell[all_scores >= threshold]
        counts[t] = np.bincount(kept, minlength=num_images * num_classes).reshape(num_images, num_classes)
    return counts


def class_ids(labels: Any, num_classes: int, where: str) -> np.ndarray:
    """``labels`` (tensor or array-like) as int64 (N,) 0-based class ids; ValueError naming ``where`` outside [0, num_classes)."""
    ids = to_numpy(labels).astype(np.int64).reshape(-1)
    if ids.size and (ids.min() < 0 or ids.max() >= num_classes):
        raise ValueError(f"{where}: class ids must be 0-based in [0, {num_classes}), got {sorted(set(ids.tolist()))[:10]}")
    return ids


def _check_lengths(truth_labels: Sequence[Any], predictions: Sequence[Any]) -> None:
    if len(truth_labels) != len(predictions):
        raise ValueError(f"{len(truth_labels)} ground-truth images but {len(predictions)} predictions")


def to_numpy(values: Any) -> np.ndarray:
    """A tensor (on any device) or array-like as a numpy array."""
    if hasattr(values, "detach"):  # torch.Tensor, possibly on an accelerator
        return values.detach().cpu().numpy()
    return np.asarray(values)
