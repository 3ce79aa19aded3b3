"""Subsets and train/val splits are seeded, disjoint and independent of the records' input order."""

from __future__ import annotations

import random

import pytest

from beedet.data.records import DataError, ImageRecord
from beedet.data.splits import subset, train_val_split


def _records(n: int) -> list[ImageRecord]:
    return [ImageRecord(f"/hive/frame_{i:04d}.jpg", 64, 48, source=f"m.manifest:{i + 1}") for i in range(n)]


def _names(records: list[ImageRecord]) -> set[str]:
    return {r.image_path.name for r in records}


def test_subset_of_two_percent() -> None:
    records = _records(1000)
    chosen = subset(records, 0.02, seed=0)
    assert len(chosen) == 20 and len(_names(chosen)) == 20
    assert _names(chosen) == _names(subset(records, 0.02, seed=0))
    assert _names(chosen) != _names(subset(records, 0.02, seed=1))
    shuffled = records[::-1]
    random.Random(3).shuffle(shuffled)
    assert _names(subset(shuffled, 0.02, seed=0)) == _names(chosen)
    # The chosen records keep their input order.
    assert [r.image_path for r in chosen] == sorted(r.image_path for r in chosen)


def test_subset_edges() -> None:
    records = _records(10)
    assert subset(records, 1.0, seed=5) == records
    assert subset(records, 0.0, seed=5) == []
    assert len(subset(records, 0.01, seed=5)) == 1  # a positive fraction never yields nothing
    with pytest.raises(ValueError, match="fraction"):
        subset(records, 1.5, seed=0)


def test_train_val_split_is_deterministic_and_disjoint() -> None:
    records = _records(101)
    train, val = train_val_split(records, 0.2, seed=0)
    assert len(val) == 20 and len(train) == 81
    assert _names(train).isdisjoint(_names(val)) and _names(train) | _names(val) == _names(records)
    again_train, again_val = train_val_split(list(reversed(records)), 0.2, seed=0)
    assert _names(again_val) == _names(val) and _names(again_train) == _names(train)
    assert _names(train_val_split(records, 0.2, seed=1)[1]) != _names(val)


@pytest.mark.parametrize("fraction", [0.01, 0.5, 0.99])
def test_two_records_split_into_two_non_empty_sides(fraction: float) -> None:
    train, val = train_val_split(_records(2), fraction, seed=0)
    assert len(train) == 1 and len(val) == 1


def test_split_refuses_what_cannot_be_split() -> None:
    with pytest.raises(DataError, match="cannot split 1 image"):
        train_val_split(_records(1), 0.2, seed=0)
    with pytest.raises(ValueError, match="val_fraction"):
        train_val_split(_records(10), 1.0, seed=0)
