"""The one internal record type every reader produces, and the problems a reader reports.

Contracts (shared by every reader, the dataset, the metrics and the writers):

* ``ImageRecord.boxes`` is float32 of shape (N, 4), **xyxy in pixels** of the image as it is
  displayed (after EXIF orientation), with 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height.
* ``ImageRecord.labels`` is int64 of shape (N,), **class ids starting at 0**. Label 0 is a real
  class (e.g. "bee"), *not* background. Only the detection system adds the background slot the
  torchvision SSD wants (see ``beedet.training.system``).
* An image with no objects has boxes of shape (0, 4) and labels of shape (0,). It is a valid
  record: empty frames teach the detector what background looks like.
* ``LabelSet.class_names[i]`` is the name of class id ``i``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


class DataError(ValueError):
    """Raised when input data is unusable: in strict mode on the first bad record set, or when
    nothing usable is left. The message names the file (and line, for manifests)."""


@dataclass(frozen=True)
class Problem:
    """Something wrong with one input record or box.

    ``where`` names the file, and the line for line-based formats (``train.manifest:12``).
    ``action`` says what beedet did about it: ``"skipped"`` (the whole record), ``"dropped box"``
    or ``"clipped box"``. ``valid_boxes``: for a skipped record, how many of its boxes passed
    every box check and were lost with it (a record is skipped whole: see ``beedet.data.checks``).
    """

    where: str
    reason: str
    action: str
    valid_boxes: int = 0

    def __str__(self) -> str:
        lost = f", with {self.valid_boxes} valid box{'es' if self.valid_boxes != 1 else ''}" if self.valid_boxes else ""
        return f"{self.where}: {self.reason} ({self.action}{lost})"


def empty_boxes() -> np.ndarray:
    return np.zeros((0, 4), dtype=np.float32)


def empty_labels() -> np.ndarray:
    return np.zeros((0,), dtype=np.int64)


@dataclass(frozen=True, eq=False)
class ImageRecord:
    """One labelled image. See the module docstring for the box and label contracts.

    ``source`` names where the record came from (``file`` or ``file:line``), so that any later
    problem with it can be reported against the user's own file. ``confidences`` holds per-box
    labeler confidence where the format has it (Ground Truth metadata), else ``None``.
    """

    image_path: Path
    width: int
    height: int
    boxes: np.ndarray = field(default_factory=empty_boxes)
    labels: np.ndarray = field(default_factory=empty_labels)
    confidences: np.ndarray | None = None
    source: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "image_path", Path(self.image_path))
        boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        if len(boxes) != len(labels):
            raise ValueError(f"{self.source or self.image_path}: {len(boxes)} boxes but {len(labels)} labels")
        object.__setattr__(self, "boxes", boxes)
        object.__setattr__(self, "labels", labels)
        if self.confidences is not None:
            conf = np.asarray(self.confidences, dtype=np.float32).reshape(-1)
            if len(conf) != len(labels):
                raise ValueError(f"{self.source or self.image_path}: {len(conf)} confidences for {len(labels)} boxes")
            object.__setattr__(self, "confidences", conf)

    @property
    def num_boxes(self) -> int:
        return int(len(self.labels))

    def replace(self, **changes) -> "ImageRecord":
        return dataclasses.replace(self, **changes)

    def same_labels_as(self, other: "ImageRecord", atol: float = 1e-3) -> bool:
        """True when both records describe the same image size, boxes (in any order) and labels."""
        if (self.width, self.height) != (other.width, other.height) or self.num_boxes != other.num_boxes:
            return False
        a = np.concatenate([self.labels[:, None].astype(np.float64), self.boxes], axis=1)
        b = np.concatenate([other.labels[:, None].astype(np.float64), other.boxes], axis=1)
        a = a[np.lexsort(a.T[::-1])]
        b = b[np.lexsort(b.T[::-1])]
        return bool(np.allclose(a, b, atol=atol))


@dataclass
class LabelSet:
    """What a reader returns: the usable records, the class names, and every problem met."""

    records: list[ImageRecord]
    class_names: list[str]
    problems: list[Problem] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def raise_if_strict(self, strict: bool) -> None:
        """In strict mode any problem stops the run, listing every problem found."""
        if strict and self.problems:
            listing = "\n  ".join(str(p) for p in self.problems)
            raise DataError(f"{len(self.problems)} data problem(s) and data.strict=true:\n  {listing}")
