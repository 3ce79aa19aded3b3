"""Charts of evaluation results for people: the precision-recall plot (``pr_curves.png`` beside
``report.md``, written by ``beedet.reporting.run_report``), the confusion matrix and the F1-confidence curve
(``confusion_matrix.png`` and ``f1_curve.png`` there, and in TensorBoard). Drawn with matplotlib's
Agg canvas, imported only when a chart is drawn, and returned as uint8 (3, H, W) tensors, the
picture contract of ``beedet.reporting.overlays``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor

from beedet.evaluation.results import ConfusionMatrix, F1Curve, PRCurve


def pr_curve_plot(curves: Mapping[str, PRCurve], *, size_inches: float = 4.5, dpi: int = 100) -> Tensor:
    """Precision against recall at IoU 0.5, one line per class with ground truth (AP50 in the
    legend). Returns uint8 (3, H, W) for ``beedet.reporting.overlays.save_image`` and TensorBoard.

    Drawn with matplotlib's Agg canvas directly: no pyplot, no global backend switch.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(size_inches, size_inches), dpi=dpi)
    canvas = FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for name, curve in curves.items():
        if curve.num_gt <= 0:
            continue
        precision = np.clip(curve.precision, 0.0, 1.0)  # pycocotools' -1: recall never reached
        axes.plot(curve.recall, precision, linewidth=1.5, label=f"{name} (AP50 {precision.mean():.3f}, {curve.num_gt} gt)")
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1.02)
    axes.set_xlabel("recall")
    axes.set_ylabel("precision")
    axes.set_title("precision-recall at IoU 0.5", fontsize=9)
    if axes.lines:
        axes.legend(loc="lower left", fontsize=7)
    figure.tight_layout()
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())
    return torch.from_numpy(np.ascontiguousarray(rgba[..., :3])).permute(2, 0, 1).contiguous()


def confusion_matrix_plot(confusion: ConfusionMatrix, *, dpi: int = 100) -> Tensor:
    """The confusion matrix as a heat map: rows the true class then background (false positives),
    columns the predicted class then background (missed); each cell holds its count, its colour the
    share of its row (so a rare class's confusions show as clearly as the bees'). Returns uint8
    (3, H, W), like :func:`pr_curve_plot`."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    counts = np.asarray(confusion.matrix, dtype=np.int64)
    labels = confusion.labels
    rows = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, rows, out=np.zeros(counts.shape, dtype=np.float64), where=rows > 0)
    side = 2.2 + 0.75 * len(labels)
    figure = Figure(figsize=(side + 0.8, side), dpi=dpi)
    canvas = FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    image = axes.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    for (r, c), count in np.ndenumerate(counts):
        if r == c == len(labels) - 1:
            continue  # background against background: not a thing detection measures
        colour = "white" if share[r, c] > 0.6 else ("black" if count else "0.65")
        axes.text(c, r, str(count), ha="center", va="center", fontsize=8, color=colour)
    names = confusion.class_names
    axes.set_xticks(range(len(labels)), [*names, "background\n(missed)"], rotation=30, ha="right", fontsize=8)
    axes.set_yticks(range(len(labels)), [*names, "background\n(false pos.)"], fontsize=8)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(f"confusion matrix: IoU {confusion.iou_threshold:.2f}, score >= {confusion.threshold:.2f}\n"
                   "count in each cell, colour = share of its row", fontsize=9)
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
    figure.tight_layout()
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())
    return torch.from_numpy(np.ascontiguousarray(rgba[..., :3])).permute(2, 0, 1).contiguous()


def f1_curve_plot(curve: F1Curve, thresholds: Mapping[str, float] | None = None, *, size_inches: float = 5.0,
                  dpi: int = 100) -> Tensor:
    """F1 against the score threshold at IoU 0.5: one thin line per class, a thick one for all
    classes pooled (its best F1 and threshold in the legend), and a dashed vertical line per entry
    of ``thresholds`` (label -> score, e.g. ``{"count threshold": 0.5}``). Returns uint8 (3, H, W)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(size_inches, size_inches * 0.8), dpi=dpi)
    canvas = FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for name, values in curve.per_class.items():
        if np.isfinite(values.f1).any():
            axes.plot(curve.thresholds, values.f1, linewidth=1.0, alpha=0.8, label=name)
    best = curve.best()
    label = "all classes" if best is None else f"all classes (best F1 {best[1]:.2f} at {best[0]:.2f})"
    axes.plot(curve.thresholds, curve.overall.f1, linewidth=2.5, color="#1f3b73", label=label)
    for (name, value), style in zip((thresholds or {}).items(), ("--", ":", "-.")):
        axes.axvline(value, color="0.3", linestyle=style, linewidth=1, label=f"{name} {value:.2f}")
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1.02)
    axes.set_xlabel("score threshold (detections kept at score >= it)")
    axes.set_ylabel("F1")
    axes.set_title("F1-confidence at IoU 0.5", fontsize=9)
    axes.legend(loc="lower center", fontsize=7)
    figure.tight_layout()
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())
    return torch.from_numpy(np.ascontiguousarray(rgba[..., :3])).permute(2, 0, 1).contiguous()
