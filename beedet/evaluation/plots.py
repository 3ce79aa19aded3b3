"""Charts of evaluation results for people: the precision-recall plot (``pr_curves.png`` beside
``report.md``, written by ``beedet.reporting``). Drawn with matplotlib's Agg canvas, imported only
when a chart is drawn, and returned as uint8 (3, H, W) tensors, the picture contract of
``beedet.visualize``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor

from beedet.evaluation.results import PRCurve


def pr_curve_plot(curves: Mapping[str, PRCurve], *, size_inches: float = 4.5, dpi: int = 100) -> Tensor:
    """Precision against recall at IoU 0.5, one line per class with ground truth (AP50 in the
    legend). Returns uint8 (3, H, W) for ``beedet.visualize.save_image`` and TensorBoard.

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
