"""What is in a labelled data set, and what was wrong with it, in numbers a researcher can check.

:class:`DataReport` is computed from a :class:`~beedet.data.records.LabelSet` (after
:func:`~beedet.data.checks.check_records`, so skipped records are counted as problems, not images)
and rendered for the console (``str``), for a run directory (``to_markdown``) and for tools
(``to_dict``). Box sizes are in pixels of the labelled images: compare them with the detector's
input size and anchor sizes. A skipped record takes its good boxes with it; the report says how
many (``skipped_valid_boxes``: "3 records skipped, holding 41 valid boxes").
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from beedet.data.records import LabelSet, Problem

PERCENTILES = (5, 10, 25, 50, 75, 90, 95)
# Upper bounds of the "images by number of boxes" buckets; crowded hive frames reach hundreds.
_BUCKETS = ((0, "0"), (1, "1"), (5, "2-5"), (10, "6-10"), (20, "11-20"), (50, "21-50"), (100, "51-100"))
_CONSOLE_PROBLEMS = 20
_SHARED_GROUP_LABEL = "images sharing a data.group_by group with train"
_SIZE_MEASURES = (("width", "width"), ("height", "height"), ("sqrt_area", "sqrt(area)"))
_SKIPPED = "skipped"


@dataclass
class DataReport:
    """Counts, box statistics and problems of one data set. Sizes are pixels."""

    name: str
    images: int
    boxes: int
    empty_images: int
    boxes_per_class: dict[str, int]
    # min / median / mean / max boxes in one image.
    boxes_per_image: dict[str, float]
    # Bucket label ("0", "1", "2-5", ..., ">100") -> number of images with that many boxes.
    images_by_box_count: dict[str, int]
    # "width" / "height" / "sqrt_area" -> {"p5": ..., ..., "p95": ...}; empty without boxes.
    box_size_percentiles: dict[str, dict[str, float]]
    # "WxH" -> number of images, most common first.
    image_sizes: dict[str, int]
    problems: list[Problem] = field(default_factory=list)
    # Val only, when data.group_by is set and val comes from its own source: images that share a
    # group (e.g. a video) with some training image. None: not measured.
    shared_group_images: int | None = None

    @classmethod
    def from_label_set(cls, label_set: LabelSet, name: str = "") -> "DataReport":
        records = label_set.records
        counts = np.array([r.num_boxes for r in records], dtype=np.int64)
        labels = np.concatenate([r.labels for r in records]) if records else np.zeros(0, dtype=np.int64)
        boxes = np.concatenate([r.boxes for r in records]) if records else np.zeros((0, 4), dtype=np.float32)
        per_class = Counter(int(label) for label in labels)
        sizes = Counter(f"{r.width}x{r.height}" for r in records)
        return cls(
            name=name,
            images=len(records),
            boxes=int(counts.sum()),
            empty_images=int((counts == 0).sum()),
            boxes_per_class={_class_name(label_set.class_names, i): per_class.get(i, 0)
                             for i in sorted(set(range(label_set.num_classes)) | set(per_class))},
            boxes_per_image=_summary(counts),
            images_by_box_count=_buckets(counts),
            box_size_percentiles=_box_sizes(boxes),
            image_sizes=dict(sizes.most_common()),
            problems=list(label_set.problems),
        )

    @property
    def skipped_records(self) -> int:
        """Problems that skipped a whole record (or an unusable entry of a label file)."""
        return sum(p.action == _SKIPPED for p in self.problems)

    @property
    def skipped_valid_boxes(self) -> int:
        """Boxes that passed every check but were lost with the records skipped for another reason."""
        return sum(p.valid_boxes for p in self.problems if p.action == _SKIPPED)

    @property
    def problems_by_action(self) -> dict[str, list[Problem]]:
        grouped: dict[str, list[Problem]] = {}
        for problem in self.problems:
            grouped.setdefault(problem.action, []).append(problem)
        return grouped

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of everything in the report."""
        return {
            "name": self.name,
            "images": self.images,
            "boxes": self.boxes,
            "empty_images": self.empty_images,
            "boxes_per_class": dict(self.boxes_per_class),
            "boxes_per_image": dict(self.boxes_per_image),
            "images_by_box_count": dict(self.images_by_box_count),
            "box_size_percentiles": {k: dict(v) for k, v in self.box_size_percentiles.items()},
            "image_sizes": dict(self.image_sizes),
            "shared_group_images": self.shared_group_images,
            "problems": {
                "total": len(self.problems),
                "skipped_valid_boxes": self.skipped_valid_boxes,
                "by_action": {action: [{"where": p.where, "reason": p.reason,
                                        **({"valid_boxes": p.valid_boxes} if p.valid_boxes else {})}
                                       for p in problems]
                              for action, problems in self.problems_by_action.items()},
            },
        }

    def to_markdown(self) -> str:
        """Readable tables, for a run directory or a pull request."""
        out = [f"## Data report{': ' + self.name if self.name else ''}", "", "| | |", "|---|---|",
               f"| images | {self.images} |", f"| boxes | {self.boxes} |",
               f"| empty images | {self.empty_images} |",
               f"| boxes per image | {_summary_text(self.boxes_per_image)} |"]
        if self.shared_group_images is not None:
            out.append(f"| {_SHARED_GROUP_LABEL} | {self.shared_group_images} |")
        if self.skipped_records:
            out.append(f"| skipped records | {_skipped_text(self.skipped_records, self.skipped_valid_boxes)} |")
        out.append("")
        out += ["### Boxes per class", "", "| class | boxes | share |", "|---|---:|---:|"]
        out += [f"| {name} | {n} | {_share(n, self.boxes)} |" for name, n in self.boxes_per_class.items()]
        out += ["", "### Images by number of boxes", "", "| boxes in image | images |", "|---|---:|"]
        out += [f"| {bucket} | {n} |" for bucket, n in self.images_by_box_count.items()]
        out += ["", "### Box size (pixels)", ""]
        if self.box_size_percentiles:
            out += ["| | " + " | ".join(f"p{p}" for p in PERCENTILES) + " |", "|---|" + "---:|" * len(PERCENTILES)]
            out += [f"| {label} | " + " | ".join(f"{v:.1f}" for v in self.box_size_percentiles[key].values()) + " |"
                    for key, label in _SIZE_MEASURES]
        else:
            out.append("No boxes.")
        out += ["", "### Image sizes", "", "| width x height | images |", "|---|---:|"]
        out += [f"| {size} | {n} |" for size, n in self.image_sizes.items()]
        out += ["", f"### Problems ({len(self.problems)})", ""]
        if not self.problems:
            out.append("None.")
        for action, problems in self.problems_by_action.items():
            count = _skipped_text(len(problems), self.skipped_valid_boxes) if action == _SKIPPED else len(problems)
            out += [f"#### {action} ({count})", ""]
            out += [f"- `{p.where}`: {p.reason}" + (f" ({p.valid_boxes} valid boxes lost)" if p.valid_boxes else "")
                    for p in problems]
            out.append("")
        return "\n".join(out).rstrip() + "\n"

    def __str__(self) -> str:
        lines = [f"Data report{': ' + self.name if self.name else ''}",
                 f"  images {self.images} ({self.empty_images} empty), boxes {self.boxes}, "
                 f"boxes per image {_summary_text(self.boxes_per_image)}",
                 "  boxes per class: " + ", ".join(f"{name} {n} ({_share(n, self.boxes)})"
                                                   for name, n in self.boxes_per_class.items()),
                 "  images by boxes in image: " + ", ".join(f"{b}: {n}" for b, n in self.images_by_box_count.items())]
        if self.shared_group_images is not None:
            lines.append(f"  {_SHARED_GROUP_LABEL}: {self.shared_group_images}")
        if self.box_size_percentiles:
            lines.append("  box size px      " + "".join(f"{'p' + str(p):>8}" for p in PERCENTILES))
            lines += [f"    {label:<14}" + "".join(f"{v:8.1f}" for v in self.box_size_percentiles[key].values())
                      for key, label in _SIZE_MEASURES]
        lines.append("  image sizes: " + ", ".join(f"{s} x{n}" for s, n in list(self.image_sizes.items())[:5])
                     + (f", ... ({len(self.image_sizes)} sizes)" if len(self.image_sizes) > 5 else ""))
        by_action = ", ".join(f"{action} {_skipped_text(len(ps), self.skipped_valid_boxes)}" if action == _SKIPPED
                              else f"{action} {len(ps)}" for action, ps in self.problems_by_action.items())
        lines.append(f"  problems: {len(self.problems)}" + (f" ({by_action})" if by_action else ""))
        lines += [f"    {p}" for p in self.problems[:_CONSOLE_PROBLEMS]]
        if len(self.problems) > _CONSOLE_PROBLEMS:
            lines.append(f"    ... and {len(self.problems) - _CONSOLE_PROBLEMS} more")
        return "\n".join(lines)


def _skipped_text(records: int, valid_boxes: int) -> str:
    """``"3, holding 41 valid boxes"``: what skipping cost, not only how often it happened."""
    return f"{records}, holding {valid_boxes} valid box{'es' if valid_boxes != 1 else ''}"


def _class_name(class_names: list[str], class_id: int) -> str:
    # Ids beyond the names only occur before check_records has run; show them rather than hide them.
    return class_names[class_id] if 0 <= class_id < len(class_names) else f"unknown id {class_id}"


def _summary(counts: np.ndarray) -> dict[str, float]:
    if counts.size == 0:
        return {"min": 0, "median": 0.0, "mean": 0.0, "max": 0}
    return {"min": int(counts.min()), "median": float(np.median(counts)), "mean": round(float(counts.mean()), 2),
            "max": int(counts.max())}


def _summary_text(summary: dict[str, float]) -> str:
    return " / ".join(f"{k} {v:g}" for k, v in summary.items())


def _buckets(counts: np.ndarray) -> dict[str, int]:
    result, low = {}, 0
    for high, label in _BUCKETS:
        result[label] = int(((counts >= low) & (counts <= high)).sum())
        low = high + 1
    result[f">{low - 1}"] = int((counts >= low).sum())
    return result


def _box_sizes(boxes: np.ndarray) -> dict[str, dict[str, float]]:
    if len(boxes) == 0:
        return {}
    widths = (boxes[:, 2] - boxes[:, 0]).astype(np.float64)
    heights = (boxes[:, 3] - boxes[:, 1]).astype(np.float64)
    measures = {"width": widths, "height": heights, "sqrt_area": np.sqrt(np.clip(widths * heights, 0, None))}
    return {key: {f"p{p}": round(float(v), 2) for p, v in zip(PERCENTILES, np.percentile(values, PERCENTILES))}
            for key, values in measures.items()}


def _share(n: int, total: int) -> str:
    return f"{100.0 * n / total:.1f}%" if total else "-"
