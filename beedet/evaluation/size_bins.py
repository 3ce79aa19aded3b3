"""Size bins: extra COCO area ranges that split the boxes by size, with edges derived from the
training boxes (``evaluation.size_bins``) so that the bins describe the bee sizes a model was
trained on and stay fixed across evaluations.

:func:`record_box_areas` measures the training boxes, :func:`size_bin_edges` turns their areas into
equal-share edges, :func:`resolve_size_bins` reads the setting, and :func:`size_bin_ranges` names the
bins that ``beedet.evaluation.coco_metrics`` evaluates (reported as ``CocoMetrics.size_bins``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from beedet.data.records import ImageRecord

# pycocotools' "no upper limit" (px^2): the upper bound of the largest bin.
_NO_UPPER_AREA = 1e5**2


def size_bin_edges(areas: Sequence[float] | np.ndarray, n_bins: int = 3) -> list[float]:
    """Inner edges (px^2) that split box ``areas`` into ``n_bins`` bins holding equal shares of
    the boxes (terciles for 3): the (k / n_bins)-quantiles for k = 1..n_bins-1.

    Pass the *training* boxes' areas in pixels of the stored images (:func:`record_box_areas`),
    so that the bins describe the bee sizes the model was trained on and stay fixed across
    evaluations. Repeated edges (many boxes of one size) are merged, so fewer than
    ``n_bins - 1`` edges can come back; no areas give no edges (a single bin, "all").
    """
    if n_bins < 1:
        raise ValueError(f"size bins: n_bins must be >= 1, got {n_bins}")
    values = np.asarray(areas, dtype=np.float64).reshape(-1)
    values = values[np.isfinite(values) & (values > 0)]
    if values.size == 0 or n_bins == 1:
        return []
    edges = np.quantile(values, np.arange(1, n_bins) / n_bins)
    return [float(edge) for edge in np.unique(edges) if edge > 0]


def resolve_size_bins(spec: int | Sequence[float] | None, training_areas: Sequence[float] | np.ndarray) -> list[float] | None:
    """The inner area edges (px^2) that a size-bin setting asks for (``evaluation.size_bins``): an
    int n gives :func:`size_bin_edges` of the training boxes' areas with n bins, a list gives
    itself (fixed edges, checked by :func:`size_bin_ranges`), None gives None (no size bins)."""
    if spec is None:
        return None
    if isinstance(spec, bool):
        raise TypeError(f"size bins: expected an int, a list of areas or null, got {spec!r}")
    if isinstance(spec, (int, np.integer)):
        return size_bin_edges(training_areas, int(spec))
    edges = [float(edge) for edge in spec]
    size_bin_ranges(edges)  # raises on edges that are not increasing positive areas
    return edges


def record_box_areas(records: Iterable[ImageRecord]) -> np.ndarray:
    """float64 (N,): the area ``w * h`` in px^2 of every box of ``records`` (xyxy pixels of the
    stored images), the same area their COCO ground truth gets (``beedet.data.coco``)."""
    parts = [np.asarray(r.boxes, dtype=np.float64).reshape(-1, 4) for r in records]
    boxes = np.concatenate(parts) if parts else np.zeros((0, 4))
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def size_bin_ranges(area_bins: Sequence[float]) -> list[tuple[str, float, float]]:
    """``(name, min_area, max_area)`` of the bins that the inner edges ``area_bins`` (px^2,
    increasing) make: [0, e1], [e1, e2], ..., [ek, no limit]. Names give the box side
    sqrt(area) in pixels: ``0-31px``, ``31-52px``, ``over52px``."""
    edges = [float(edge) for edge in area_bins]
    if any(not np.isfinite(edge) or edge <= 0 for edge in edges) or any(b <= a for a, b in zip(edges, edges[1:])):
        raise ValueError(f"area_bins must be increasing positive areas in px^2, got {list(area_bins)}")
    if not edges:
        return []
    # Whole pixels unless two edges round to the same side length.
    for decimals in range(4):
        sides = [f"{np.sqrt(edge):.{decimals}f}" for edge in edges]
        if len(set(sides)) == len(sides):
            break
    else:
        raise ValueError(f"area_bins edges are too close to name apart: {edges}")
    names = [f"{lo}-{hi}px" for lo, hi in zip(["0", *sides], sides)] + [f"over{sides[-1]}px"]
    bounds = [0.0, *edges, _NO_UPPER_AREA]
    return list(zip(names, bounds, bounds[1:]))
