"""Seeded subsets and train/val splits of records, optionally keeping groups of related images
(frames of one video, augmented copies of one photo) together.

Both are deterministic for a seed *whatever order the records come in*: images are chosen from
the records sorted by image path (groups by group key), so re-listing a folder or reordering a
manifest does not change which images land where. The chosen records are returned in their input
order.

Groups come from ``group_by``, a regular expression searched in each image's *file name*: the
group key is the pattern's named group ``group`` if it has one, else its group 1, else the whole
match. A file name the pattern does not match (or whose key comes out empty) is a group of its own,
keyed by its path (so the same file listed twice is still one group). ``conf/data/honeybee.yaml``
documents the pattern for Roboflow exports and video frames.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence

import numpy as np

from beedet.data.records import DataError, ImageRecord

log = logging.getLogger(__name__)

# A record's group: ("group", key) from the pattern, or ("file", path) for a file on its own.
GroupKey = tuple[str, ...]


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
    records: Sequence[ImageRecord], val_fraction: float, seed: int, group_by: str | None = None
) -> tuple[list[ImageRecord], list[ImageRecord]]:
    """``(train, val)``: disjoint, covering every record, both non-empty. Needs at least 2 records
    and ``0 < val_fraction < 1``.

    Without ``group_by`` val holds exactly ``round(val_fraction * n)`` images (at least 1, at most
    n - 1). With ``group_by`` (a regex, see the module docstring) every group lands whole on one
    side: in a seeded order, val takes each group that still fits under that count, then any that
    brings it closer, so val holds approximately ``val_fraction`` of the images (a group larger
    than that share goes to val only when every group is that large). Raises DataError when there
    is only one group to split.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be strictly between 0 and 1, got {val_fraction}")
    if len(records) < 2:
        raise DataError(f"cannot split {len(records)} image(s) into non-empty train and val sets; "
                        f"label more images or give a separate val source")
    num_val = min(max(round(val_fraction * len(records)), 1), len(records) - 1)
    if group_by is None:
        val_indices = set(_shuffled_indices(records, seed)[:num_val])
    else:
        val_indices = _grouped_val_indices(group_keys(records, group_by), num_val, seed, group_by)
    train = [r for i, r in enumerate(records) if i not in val_indices]
    val = [r for i, r in enumerate(records) if i in val_indices]
    return train, val


def leaked_val_images(
    train: Sequence[ImageRecord], val: Sequence[ImageRecord], group_by: str
) -> list[ImageRecord]:
    """The val records that share a ``group_by`` group with some train record (in val's order):
    e.g. frames of a video that also has frames in train. A file name neither pattern-matched nor
    present in train is never counted; the same file in both is."""
    train_keys = set(group_keys(train, group_by))
    return [r for r, key in zip(val, group_keys(val, group_by)) if key in train_keys]


def group_key(file_name: str, pattern: re.Pattern[str]) -> str | None:
    """The group key of one file name: the named group ``group``, else group 1, else the whole
    match; None when ``pattern`` does not match (or the key is empty)."""
    match = pattern.search(file_name)
    if match is None:
        return None
    if "group" in pattern.groupindex:
        key = match.group("group")
    elif pattern.groups:
        key = match.group(1)
    else:
        key = match.group(0)
    return key or None


def compile_group_pattern(group_by: str) -> re.Pattern[str]:
    """``group_by`` compiled; a ValueError naming the setting when it is not a valid regex."""
    try:
        return re.compile(group_by)
    except re.error as error:
        raise ValueError(f"data.group_by={group_by!r} is not a valid regular expression: {error}") from None


def group_keys(records: Sequence[ImageRecord], group_by: str) -> list[GroupKey]:
    """One key per record; logs how many file names matched no group (each is then its own)."""
    pattern = compile_group_pattern(group_by)
    keys: list[GroupKey] = []
    for record in records:
        key = group_key(record.image_path.name, pattern)
        keys.append(("group", key) if key is not None else ("file", str(record.image_path)))
    unmatched = sum(key[0] == "file" for key in keys)
    if unmatched:
        # Nothing matching at all is most likely a pattern for another data set's names.
        level = logging.WARNING if unmatched == len(keys) else logging.INFO
        log.log(level, "data.group_by: %d of %d file names match no group; each of those is a group of its own",
                unmatched, len(keys))
    return keys


def _grouped_val_indices(keys: list[GroupKey], num_val: int, seed: int, group_by: str) -> set[int]:
    members: dict[GroupKey, list[int]] = {}
    for i, key in enumerate(keys):
        members.setdefault(key, []).append(i)
    if len(members) < 2:
        raise DataError(f"cannot split {len(keys)} images into train and val: data.group_by={group_by!r} puts "
                        f"them all in one group; give a separate val source or a finer data.group_by")
    by_key = sorted(members)
    ordered = [by_key[j] for j in np.random.default_rng(seed).permutation(len(by_key))]
    chosen: set[GroupKey] = set()
    count = 0
    # First every group that still fits under num_val (with singletons this is exactly the
    # ungrouped split), then any group that brings val closer to num_val; never the last images
    # left for train.
    for fits in (True, False):
        for key in ordered:
            size = len(members[key])
            wanted = count + size <= num_val if fits else abs(count + size - num_val) < abs(count - num_val)
            if key not in chosen and wanted and count + size < len(keys):
                chosen.add(key)
                count += size
    if not chosen:
        # Every group is more than twice num_val: the smallest one is the closest val can get.
        chosen.add(min(ordered, key=lambda k: len(members[k])))
    return {i for key in chosen for i in members[key]}


def _shuffled_indices(records: Sequence[ImageRecord], seed: int) -> list[int]:
    """Input indices in a seeded random order that depends only on the records' paths."""
    by_path = sorted(range(len(records)), key=lambda i: (str(records[i].image_path), records[i].source))
    order = np.random.default_rng(seed).permutation(len(by_path))
    return [by_path[j] for j in order]
