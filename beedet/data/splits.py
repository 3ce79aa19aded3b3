"""Seeded subsets and train/val splits of records.

Both are deterministic for a seed *whatever order the records come in*: images are chosen from
the records sorted by image path, so re-listing a folder or reordering a manifest does not change
which images land where. The chosen records are returned in their input order.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from beedet.data.records import DataError, ImageRecord


def subset(records: Sequence[ImageRecord], fraction: float, seed: int) -> list[ImageRecord]:
    """A random ``round(fraction * n)`` of the images (at least 1 when ``fraction > 0``).

    ``fraction`` 1.0 returns every record, in input order.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"subset fraction must be in [0, 1], got {fraction}")
    if fraction == 1.0:
        return list(records)
    count = round(fraction * len(records))
    if fraction > 0 and records:
        count = max(count, 1)
    chosen = set(_shuffled_indices(records, seed)[:count])
    return [r for i, r in enumerate(records) if i in chosen]


def train_val_split(
    records: Sequence[ImageRecord], val_fraction: float, seed: int
) -> tuple[list[ImageRecord], list[ImageRecord]]:
    """``(train, val)``: disjoint, covering every record, ``round(val_fraction * n)`` in val, both
    non-empty. Needs at least 2 records and ``0 < val_fraction < 1``."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be strictly between 0 and 1, got {val_fraction}")
    if len(records) < 2:
        raise DataError(f"cannot split {len(records)} image(s) into non-empty train and val sets; "
                        f"label more images or give a separate val source")
    num_val = min(max(round(val_fraction * len(records)), 1), len(records) - 1)
    val_indices = set(_shuffled_indices(records, seed)[:num_val])
    train = [r for i, r in enumerate(records) if i not in val_indices]
    val = [r for i, r in enumerate(records) if i in val_indices]
    return train, val


def _shuffled_indices(records: Sequence[ImageRecord], seed: int) -> list[int]:
    """Input indices in a seeded random order that depends only on the records' paths."""
    by_path = sorted(range(len(records)), key=lambda i: (str(records[i].image_path), records[i].source))
    order = np.random.default_rng(seed).permutation(len(by_path))
    return [by_path[j] for j in order]
