"""SageMaker Ground Truth bounding-box augmented manifests (JSON lines), read and written.

One line per image, as a bounding-box labeling job writes it::

    {"source-ref": "s3://bucket/prefix/images/a.jpg",
     "bee-boxes": {"image_size": [{"width": 1920, "height": 1080, "depth": 3}],
                   "annotations": [{"class_id": 0, "left": 12, "top": 128, "width": 60, "height": 24}]},
     "bee-boxes-metadata": {"objects": [{"confidence": 0.93}], "class-map": {"0": "bee"},
                            "type": "groundtruth/object-detection", "human-annotated": "yes",
                            "creation-date": "2023-11-13T12:44:00.000000", "job-name": "labeling-job/bee-boxes"}}

The label attribute (``bee-boxes`` here) is the labeling job's name, so it differs between jobs;
it is found automatically unless given. ``left, top, width, height`` are pixels of the displayed
image; records get them as xyxy pixels. Class ids are the job's own, 0-based.

A bad line never stops reading: it becomes a :class:`~beedet.data.records.Problem` naming
``file:LINE`` and the record is skipped.
"""

from __future__ import annotations

import json
import math
import os
import posixpath
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from beedet.data.records import DataError, ImageRecord, LabelSet, Problem
from beedet.data.roots import OutsideRoot, confined

OBJECT_DETECTION_TYPE = "groundtruth/object-detection"


class _LineError(ValueError):
    """One manifest line is unusable; the message is the reason shown to the user."""


def read_manifest(
    path: Path,
    *,
    label_attribute: str | None = None,
    local_root: Path | None = None,
    s3_prefix: str | None = None,
    allow_outside_root: bool = False,
) -> LabelSet:
    """Read a Ground Truth bounding-box manifest into records (boxes xyxy pixels, 0-based ids).

    ``label_attribute``: the key holding the boxes; found automatically when None (the key whose
    ``<key>-metadata`` says ``"type": "groundtruth/object-detection"``). Several candidates raise
    :class:`DataError` listing them.

    ``source-ref`` resolution: ``s3://`` URIs map to files under ``local_root`` (default: the
    manifest's folder). With ``s3_prefix`` the URI must start with it and the rest is joined to
    ``local_root``. Without it, the bucket and then as few leading key parts as needed are
    stripped until the file exists under ``local_root`` (how a SageMaker channel lays out files).
    Plain paths are absolute or relative to the manifest's folder.

    Every image must lie inside ``local_root`` (a plain path: or inside the manifest's folder),
    after ``..`` is collapsed (:mod:`beedet.data.roots`); a line naming one outside is a problem,
    unless ``allow_outside_root``.
    """
    path = Path(path)
    lines = _parse_lines(path)
    attribute = label_attribute or _find_label_attribute(path, [obj for _, obj in lines if isinstance(obj, dict)])
    resolver = _SourceResolver(path.parent, Path(local_root) if local_root is not None else None, s3_prefix,
                               allow_outside_root=allow_outside_root)

    records: list[ImageRecord] = []
    problems: list[Problem] = []
    class_map: dict[int, str] = {}
    max_label = -1
    for line_no, obj in lines:
        where = f"{path}:{line_no}"
        if isinstance(obj, str):
            problems.append(Problem(where, obj, "skipped"))
            continue
        try:
            record, line_classes = _parse_record(obj, attribute, resolver, where)
            _merge_class_map(class_map, line_classes, where)
        except _LineError as exc:
            problems.append(Problem(where, str(exc), "skipped"))
            continue
        records.append(record)
        if record.num_boxes:
            max_label = max(max_label, int(record.labels.max()))

    return LabelSet(records=records, class_names=_class_names(class_map, max_label), problems=problems)


def write_manifest(
    label_set: LabelSet,
    path: Path,
    *,
    label_attribute: str = "bee-boxes",
    job_name: str = "beedet",
    s3_prefix: str | None = None,
    image_root: Path | None = None,
) -> None:
    """Write ``label_set`` as a Ground Truth bounding-box augmented manifest.

    ``source-ref`` is ``s3_prefix`` + the image path relative to ``image_root`` (default: the
    manifest's folder) when ``s3_prefix`` is given, else the image path relative to the
    manifest's folder. Integral pixel values are written as integers, as Ground Truth does;
    sub-pixel boxes keep two decimals rather than being rounded. Per-box confidence is the
    record's, or 1.0 when it has none.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    class_map = {str(i): name for i, name in enumerate(label_set.class_names)}
    created = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for record in label_set.records:
            line = {
                "source-ref": _source_ref(record.image_path, path.parent, s3_prefix, image_root),
                label_attribute: {
                    "image_size": [{"width": record.width, "height": record.height, "depth": 3}],
                    "annotations": [_annotation(box, label) for box, label in zip(record.boxes, record.labels)],
                },
                f"{label_attribute}-metadata": {
                    "objects": [{"confidence": _confidence(record, i)} for i in range(record.num_boxes)],
                    "class-map": class_map,
                    "type": OBJECT_DETECTION_TYPE,
                    "human-annotated": "yes",
                    "creation-date": created,
                    "job-name": f"labeling-job/{job_name}",
                },
            }
            f.write(json.dumps(line) + "\n")
    # Readers in other processes (DataLoader workers, a second run) never see half a manifest.
    os.replace(tmp, path)


# --- reading -------------------------------------------------------------------------------------


def _parse_lines(path: Path) -> list[tuple[int, dict[str, Any] | str]]:
    """(1-based line number, the parsed object, or the reason the line is not a JSON object)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise DataError(f"{path}: manifest file not found") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read manifest ({exc})") from exc
    parsed: list[tuple[int, dict[str, Any] | str]] = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            parsed.append((line_no, f"not valid JSON: {exc.msg} (column {exc.colno})"))
            continue
        parsed.append((line_no, obj if isinstance(obj, dict) else f"expected a JSON object, got {type(obj).__name__}"))
    return parsed


def _label_attribute_candidates(obj: dict[str, Any]) -> set[str]:
    candidates = set()
    for key, value in obj.items():
        if key.endswith("-metadata") or key == "source-ref":
            continue
        metadata = obj.get(f"{key}-metadata")
        if isinstance(metadata, dict) and metadata.get("type") == OBJECT_DETECTION_TYPE:
            candidates.add(key)
        elif isinstance(value, dict) and "annotations" in value and "image_size" in value:
            candidates.add(key)
    return candidates


def _find_label_attribute(path: Path, objects: list[dict[str, Any]]) -> str:
    lines_per_candidate: dict[str, int] = {}
    for obj in objects:
        for key in _label_attribute_candidates(obj):
            lines_per_candidate[key] = lines_per_candidate.get(key, 0) + 1
    if len(lines_per_candidate) == 1:
        return next(iter(lines_per_candidate))
    if not lines_per_candidate:
        raise DataError(
            f"{path}: no bounding-box label attribute found (no key K with K-metadata type "
            f"'{OBJECT_DETECTION_TYPE}' or with 'annotations' and 'image_size'); is this a "
            f"Ground Truth bounding-box manifest? Set label_attribute to the key holding the boxes."
        )
    listing = ", ".join(f"'{key}' ({n} lines)" for key, n in sorted(lines_per_candidate.items()))
    raise DataError(
        f"{path}: several bounding-box label attributes found: {listing}. This happens with "
        f"chained or adjusted labeling jobs; choose the one to train on with data.train.label_attribute / "
        f"data.val.label_attribute (or --label-attribute on the data CLIs)."
    )


def _parse_record(
    obj: dict[str, Any], attribute: str, resolver: "_SourceResolver", where: str
) -> tuple[ImageRecord, dict[int, str]]:
    source_ref = obj.get("source-ref")
    if not isinstance(source_ref, str) or not source_ref:
        raise _LineError("no 'source-ref' (the image's location)")
    metadata = obj.get(f"{attribute}-metadata")
    metadata = metadata if isinstance(metadata, dict) else {}
    failure = _failure_reason(metadata)
    if failure is not None:
        raise _LineError(f"the labeling task for this image failed or expired ('{attribute}-metadata' "
                         f"failure-reason: {failure}), so it has no labels")
    label = obj.get(attribute)
    if not isinstance(label, dict):
        raise _LineError(f"no label attribute '{attribute}' (this image was not labelled by that job)")
    width, height = image_size_of(label)
    annotations = label.get("annotations")
    if not isinstance(annotations, list):
        raise _LineError(f"'{attribute}.annotations' is missing or not a list")
    boxes, labels = boxes_from_annotations(annotations, attribute)
    image_path = resolver.resolve(source_ref)
    record = ImageRecord(
        image_path=image_path,
        width=width,
        height=height,
        boxes=boxes,
        labels=labels,
        confidences=_confidences(metadata, len(labels)),
        source=where,
    )
    return record, _line_class_map(metadata, attribute)


def _failure_reason(metadata: dict[str, Any]) -> str | None:
    """The reason Ground Truth recorded for a data object it could not label, or None.

    A task that fails, or that no worker finished before it expired, still gets a line in the
    output manifest: its label metadata then holds ``failure-reason`` (e.g. "ClientError: Annotation
    tasks expired.", "ClientError: no consolidated annotation") and usually no label. Such a line
    is not an image without bees, so it is skipped and counted, never read as an empty frame.
    """
    reason = metadata.get("failure-reason")
    if reason is None:
        return None
    return str(reason).strip() or "(empty)"


def image_size_of(label: dict[str, Any]) -> tuple[int, int]:
    """``(width, height)`` from Ground Truth's ``image_size`` (a list of one object, or the object);
    raises ValueError with the reason. Shared with the built-in algorithm's per-image JSON."""
    sizes = label.get("image_size")
    size = sizes[0] if isinstance(sizes, list) and sizes else sizes
    try:
        width, height = int(size["width"]), int(size["height"])
    except (TypeError, KeyError, ValueError, OverflowError) as exc:
        raise _LineError(f"'image_size' is missing or has no integer width/height ({sizes!r})") from exc
    if width <= 0 or height <= 0:
        raise _LineError(f"'image_size' is {width}x{height}")
    return width, height


def boxes_from_annotations(annotations: list[Any], attribute: str) -> tuple[np.ndarray, np.ndarray]:
    """xyxy pixel boxes and class ids from Ground Truth annotations (``class_id, left, top, width,
    height`` in pixels; the built-in algorithm's per-image JSON uses the same objects); raises
    ValueError naming ``attribute.annotations[i]``."""
    boxes = np.zeros((len(annotations), 4), dtype=np.float32)
    labels = np.zeros((len(annotations),), dtype=np.int64)
    for i, ann in enumerate(annotations):
        try:
            left, top = float(ann["left"]), float(ann["top"])
            width, height = float(ann["width"]), float(ann["height"])
            class_id = ann["class_id"]
        except (TypeError, KeyError, ValueError) as exc:
            raise _LineError(
                f"{attribute}.annotations[{i}] needs numeric class_id, left, top, width, height; got {ann!r}"
            ) from exc
        if isinstance(class_id, float) and class_id.is_integer():
            class_id = int(class_id)
        if isinstance(class_id, bool) or not isinstance(class_id, int) or not 0 <= class_id < 2**62:
            raise _LineError(f"{attribute}.annotations[{i}].class_id is {class_id!r}, not a class id >= 0")
        if not np.isfinite([left, top, width, height]).all():
            raise _LineError(f"{attribute}.annotations[{i}] has a non-finite coordinate: {ann!r}")
        boxes[i] = (left, top, left + width, top + height)
        labels[i] = class_id
    return boxes, labels


def _confidences(metadata: dict[str, Any], num_boxes: int) -> np.ndarray | None:
    objects = metadata.get("objects")
    if not isinstance(objects, list) or len(objects) != num_boxes:
        return None
    try:
        return np.array([float(o["confidence"]) for o in objects], dtype=np.float32)
    except (TypeError, KeyError, ValueError):
        return None


def _line_class_map(metadata: dict[str, Any], attribute: str) -> dict[int, str]:
    raw = metadata.get("class-map", {})
    if not isinstance(raw, dict):
        raise _LineError(f"'{attribute}-metadata.class-map' is not an object")
    try:
        return {int(key): str(name) for key, name in raw.items()}
    except ValueError as exc:
        raise _LineError(f"'{attribute}-metadata.class-map' keys must be class ids, got {list(raw)}") from exc


def _merge_class_map(merged: dict[int, str], line_classes: dict[int, str], where: str) -> None:
    # Check the whole line before merging, so a rejected line leaves no trace in the class map.
    for class_id, name in line_classes.items():
        if merged.get(class_id, name) != name:
            raise _LineError(f"class-map says {class_id} is '{name}', but earlier lines say '{merged[class_id]}'")
    merged.update(line_classes)


def _class_names(class_map: dict[int, str], max_label: int) -> list[str]:
    """Names indexed by id; without any class-map, every id seen gets a ``class_<i>`` name.

    When a class-map exists it defines the classes: a box with an id outside it is an unknown
    class, reported by :func:`beedet.data.checks.check_records`, not silently invented here.
    """
    count = max(class_map) + 1 if class_map else max_label + 1
    return [class_map.get(i, f"class_{i}") for i in range(count)]


class _SourceResolver:
    """Maps ``source-ref`` values to local files; see :func:`read_manifest`."""

    def __init__(self, manifest_dir: Path, local_root: Path | None, s3_prefix: str | None, *,
                 allow_outside_root: bool) -> None:
        self.manifest_dir = manifest_dir
        self.local_root = local_root if local_root is not None else manifest_dir
        self.s3_prefix = s3_prefix
        self.allow_outside_root = allow_outside_root
        # Key parts stripped on the last line that resolved: every line of a job has the same layout.
        self._stripped: int | None = None

    def resolve(self, source_ref: str) -> Path:
        try:
            if not source_ref.startswith("s3://"):
                # An absolute path replaces manifest_dir in the join, and is checked like any other.
                return self._confined(self.manifest_dir / source_ref, source_ref, (self.local_root, self.manifest_dir))
            if self.s3_prefix is not None:
                if not source_ref.startswith(self.s3_prefix):
                    raise _LineError(f"source-ref '{source_ref}' does not start with s3_prefix '{self.s3_prefix}'")
                rest = source_ref[len(self.s3_prefix) :].lstrip("/")
                return self._confined(self.local_root / rest, source_ref, (self.local_root,))
            return self._search(source_ref)
        except OutsideRoot as exc:
            raise _LineError(str(exc)) from exc

    def _confined(self, candidate: Path, source_ref: str, roots: tuple[Path, ...]) -> Path:
        return confined(candidate, roots, named=source_ref, allow_outside_root=self.allow_outside_root)

    def _search(self, source_ref: str) -> Path:
        key = source_ref[len("s3://") :].partition("/")[2]
        key_parts = [part for part in key.split("/") if part]
        if not key_parts:
            raise _LineError(f"source-ref '{source_ref}' names a bucket, not an object")
        if not self.allow_outside_root:
            # Collapse ".." in the key before the search: a key that climbs above its bucket would
            # land outside local_root on every tail that keeps the climb. Decided on the text alone,
            # before any outside path is looked at.
            normal = posixpath.normpath("/".join(key_parts))
            if normal == ".." or normal.startswith("../"):
                self._confined(self.local_root / normal, source_ref, (self.local_root,))
            key_parts = [part for part in normal.split("/") if part not in ("", ".")]
            if not key_parts:
                raise _LineError(f"source-ref '{source_ref}' names a bucket, not an object")
        if self._stripped is not None and self._stripped < len(key_parts):
            candidate = self.local_root.joinpath(*key_parts[self._stripped :])
            if candidate.is_file():
                return candidate
        for stripped in range(len(key_parts)):
            candidate = self.local_root.joinpath(*key_parts[stripped:])
            if candidate.is_file():
                self._stripped = stripped
                return candidate
        raise _LineError(
            f"no local file for source-ref '{source_ref}': looked for "
            f"'{self.local_root.joinpath(*key_parts)}' and each shorter tail of the key down to "
            f"'{self.local_root / key_parts[-1]}' (set local_root, or s3_prefix for an exact mapping)"
        )


# --- writing -------------------------------------------------------------------------------------


def _source_ref(image_path: Path, manifest_dir: Path, s3_prefix: str | None, image_root: Path | None) -> str:
    if s3_prefix is None:
        return Path(os.path.relpath(image_path, manifest_dir)).as_posix()
    root = Path(image_root) if image_root is not None else manifest_dir
    try:
        key = Path(os.path.abspath(image_path)).relative_to(os.path.abspath(root))
    except ValueError as exc:
        raise DataError(
            f"{image_path}: image is not under image_root {root}, so it has no key under {s3_prefix}"
        ) from exc
    return s3_prefix.rstrip("/") + "/" + key.as_posix()


def _pixel(value: float) -> int | float:
    value = float(value)
    return int(round(value)) if math.isclose(value, round(value), abs_tol=1e-3) else round(value, 2)


def _annotation(box: np.ndarray, label: np.int64) -> dict[str, int | float]:
    x1, y1, x2, y2 = (float(v) for v in box)
    left, top = _pixel(x1), _pixel(y1)
    # Width from rounded corners, so left + width lands on the rounded right edge.
    return {"class_id": int(label), "left": left, "top": top, "width": _pixel(_pixel(x2) - left),
            "height": _pixel(_pixel(y2) - top)}


def _confidence(record: ImageRecord, i: int) -> float:
    return 1.0 if record.confidences is None else round(float(record.confidences[i]), 4)
