"""Label Studio: the import file and labeling config beedet writes, and the JSON export it reads.

Label Studio's JSON export is a list of tasks. A box is a result of type ``rectanglelabels``::

    {"data": {"image": "/data/local-files/?d=frames/0001.jpg"},
     "annotations": [{"was_cancelled": false, "updated_at": "2026-11-23T10:00:00Z",
                      "result": [{"type": "rectanglelabels", "original_width": 1920, "original_height": 1080,
                                  "value": {"x": 10.5, "y": 20.0, "width": 2.3, "height": 4.1,
                                            "rotation": 0, "rectanglelabels": ["bee"]}}]}]}

``x, y, width, height`` are percent of the original image; ``rotation`` is degrees clockwise about
the box's top-left corner. beedet trains on axis-aligned boxes, so a rotated rectangle becomes the
smallest axis-aligned box around it, and each is reported (action ``"axis-aligned box"``) so the
data report counts them. Cancelled annotations are ignored; of several annotations on one task the
most recently updated one is used (a reviewer's fix wins over the first pass).
"""

from __future__ import annotations

import json
import math
import posixpath
import re
import urllib.parse
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from beedet.data.images import ImageError, read_image_size
from beedet.data.records import DataError, ImageRecord, LabelSet, Problem
from beedet.data.roots import confined

# Label Studio's local-files storage serves DOCUMENT_ROOT/<d> at this URL prefix.
LOCAL_FILES_PREFIX = "/data/local-files/?d="
# Uploaded files are stored as /data/upload/<project>/<8 hex>-<original name>.
_UPLOAD_NAME = re.compile(r"^[0-9a-f]{8}-(.+)$")


def labeling_config_xml(class_names: Sequence[str]) -> str:
    """A Label Studio labeling config for boxes of ``class_names`` on the task's ``image``."""
    if not class_names:
        raise ValueError("a labeling config needs at least one class name")
    view = ET.Element("View")
    ET.SubElement(view, "Image", name="image", value="$image", zoom="true")
    labels = ET.SubElement(view, "RectangleLabels", name="label", toName="image")
    for name in class_names:
        ET.SubElement(labels, "Label", value=str(name))
    ET.indent(view)
    return ET.tostring(view, encoding="unicode") + "\n"


def class_names_from_config(path: Path) -> list[str]:
    """The ``<Label value=...>`` names of a labeling config's ``RectangleLabels``, in order."""
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as exc:
        raise DataError(f"{path}: not a readable Label Studio labeling config ({exc})") from exc
    names = [label.get("value") for tag in root.iter("RectangleLabels") for label in tag.iter("Label")]
    if not names or any(not n for n in names):
        raise DataError(f"{path}: no <RectangleLabels> with <Label value=...> children")
    return names


def write_tasks(image_urls: Sequence[str], path: Path) -> None:
    """A Label Studio import file: one task ``{"data": {"image": url}}`` per image."""
    Path(path).write_text(json.dumps([{"data": {"image": url}} for url in image_urls], indent=1) + "\n",
                          encoding="utf-8")


def read_label_studio(
    path: Path,
    *,
    image_root: Path | None = None,
    class_names: Sequence[str] | None = None,
    allow_outside_root: bool = False,
) -> LabelSet:
    """Read a Label Studio JSON export into records (boxes xyxy pixels, 0-based class ids).

    ``image_root``: the folder the tasks' images resolve under (default: the export's folder);
    the image path is taken from ``data.image`` (a local-files ``?d=`` URL, an upload path with
    its 8-hex prefix dropped, a URL or a plain path), and as few leading parts as needed are
    stripped until the file exists under ``image_root`` (so an absolute path, which names a file on
    the labelling server, is looked for under ``image_root`` too). A reference whose ``..`` climbs
    out of ``image_root`` is a problem, unless ``allow_outside_root`` (:mod:`beedet.data.roots`).
    ``class_names`` fixes the class ids
    (e.g. :func:`class_names_from_config`); a box with another name is a problem. Without it the
    names seen are sorted. A task that cannot be used is a :class:`Problem` naming the file and the
    task's position and id.
    """
    path = Path(path)
    try:
        tasks = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise DataError(f"{path}: Label Studio export not found") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not a JSON file ({exc})") from exc
    if not isinstance(tasks, list):
        raise DataError(f"{path}: a Label Studio JSON export is a list of tasks, got {type(tasks).__name__} "
                        f"(export with the 'JSON' format)")
    root = Path(image_root) if image_root is not None else path.parent

    parsed: list[tuple[str, Path, int, int, list[tuple[str, tuple[float, float, float, float]]]]] = []
    problems: list[Problem] = []
    for i, task in enumerate(tasks):
        where = f"{path}: task {i}" + (f" (id {task.get('id')})" if isinstance(task, dict) and "id" in task else "")
        try:
            image_path = _resolve(_image_ref(task), root, allow_outside_root)
            width, height, boxes, rotated = _task_boxes(task, image_path)
        except (ValueError, ImageError) as exc:
            problems.append(Problem(where, str(exc), "skipped"))
            continue
        problems += [Problem(where, f"box {j} is rotated {angle:g} degrees; beedet trains on its axis-aligned "
                             f"bounding box", "axis-aligned box") for j, angle in rotated]
        parsed.append((where, image_path, width, height, boxes))

    names = list(class_names) if class_names is not None else sorted({n for *_, boxes in parsed for n, _ in boxes})
    ids = {name: i for i, name in enumerate(names)}
    records = []
    for where, image_path, width, height, boxes in parsed:
        unknown = sorted({n for n, _ in boxes if n not in ids})
        if unknown:
            # The boxes of known classes are lost with the task: counted, not silently gone.
            problems.append(Problem(where, f"label {unknown[0]!r} is not one of the classes {names}", "skipped",
                                    valid_boxes=sum(n in ids for n, _ in boxes)))
            continue
        records.append(ImageRecord(image_path, width, height, boxes=[b for _, b in boxes] or np.zeros((0, 4)),
                                   labels=[ids[n] for n, _ in boxes], source=where))
    return LabelSet(records=records, class_names=names, problems=problems)


def _image_ref(task: Any) -> str:
    if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
        raise ValueError("not a task: expected an object with 'data'")
    data = task["data"]
    ref = data.get("image")
    if not isinstance(ref, str):
        strings = [v for v in data.values() if isinstance(v, str)]
        if len(strings) != 1:
            raise ValueError(f"'data' has no 'image' and not exactly one value to use instead: {list(data)}")
        ref = strings[0]
    return ref


def image_relative_path(ref: str) -> str:
    """The file path inside a task's image reference (URL-decoded, no scheme or host)."""
    parsed = urllib.parse.urlparse(ref)
    query = urllib.parse.parse_qs(parsed.query)
    if "d" in query and parsed.path.rstrip("/").endswith("local-files"):
        return query["d"][0]
    rel = urllib.parse.unquote(parsed.path if parsed.scheme or parsed.netloc else ref.split("?")[0])
    parts = rel.split("/")
    if len(parts) >= 4 and parts[-4:-2] == ["data", "upload"]:
        match = _UPLOAD_NAME.match(parts[-1])
        return match.group(1) if match else parts[-1]
    return rel


def _resolve(ref: str, root: Path, allow_outside_root: bool) -> Path:
    rel = image_relative_path(ref)
    # Leading "/" dropped: an absolute path is the labelling server's, and is searched by its tails.
    # A ".." that still climbs after collapsing would leave root: refused (or, when allowed, taken
    # as written, relative to root) rather than silently dropped as it once was.
    normal = posixpath.normpath(rel.lstrip("/")) if rel.strip("/") else ""
    if normal == ".." or normal.startswith("../"):
        return confined(root / normal, [root], named=ref, allow_outside_root=allow_outside_root)
    parts = [p for p in normal.split("/") if p and p != "."]
    if not parts:
        raise ValueError(f"image reference {ref!r} names no file")
    for start in range(len(parts)):
        candidate = root.joinpath(*parts[start:])
        if candidate.is_file():
            return candidate
    raise ValueError(f"no local file for image {ref!r}: looked for {root.joinpath(*parts)} and each shorter "
                     f"tail down to {root / parts[-1]} (set image_root to the folder the images are in)")


def _chosen_annotation(task: dict[str, Any]) -> dict[str, Any] | None:
    annotations = [a for a in task.get("annotations") or [] if isinstance(a, dict) and not a.get("was_cancelled")]
    if not annotations:
        return None
    return max(enumerate(annotations), key=lambda ia: (str(ia[1].get("updated_at") or ia[1].get("created_at") or ""), ia[0]))[1]


def _task_boxes(task: dict[str, Any], image_path: Path):
    """``(width, height, [(name, xyxy pixels)], [(box index, rotation)])`` of a task's chosen annotation."""
    annotation = _chosen_annotation(task)
    if annotation is None:
        raise ValueError("no annotation that was not cancelled (the task was not labelled)")
    results = [r for r in annotation.get("result") or [] if isinstance(r, dict) and r.get("type") == "rectanglelabels"]
    sizes = {(r.get("original_width"), r.get("original_height")) for r in results}
    if len(sizes) > 1:
        raise ValueError(f"results disagree on the image size: {sorted(sizes, key=str)}")
    # An image labelled as holding no bees has no results, so Label Studio records no size: read
    # it from the image file.
    size = sizes.pop() if sizes else read_image_size(image_path)
    try:
        width, height = int(size[0]), int(size[1])
    except (TypeError, ValueError) as exc:
        raise ValueError(f"results have no integer original_width/original_height ({size})") from exc
    if width <= 0 or height <= 0:
        raise ValueError(f"original size is {width}x{height}")
    boxes, rotated = [], []
    for j, result in enumerate(results):
        value = result.get("value")
        try:
            x, y, w, h = (float(value[k]) for k in ("x", "y", "width", "height"))
            angle = float(value.get("rotation") or 0.0)
            labels = value["rectanglelabels"]
        except (TypeError, KeyError, ValueError) as exc:
            raise ValueError(f"result {j} needs numeric value.x, y, width, height and rectanglelabels; got {value!r}") from exc
        if not isinstance(labels, list) or len(labels) != 1 or not isinstance(labels[0], str):
            raise ValueError(f"result {j} has rectanglelabels {labels!r}; expected exactly one class name")
        if not all(math.isfinite(v) for v in (x, y, w, h, angle)):
            raise ValueError(f"result {j} has a non-finite coordinate: {value!r}")
        box = _pixel_box(x, y, w, h, angle, width, height)
        if angle % 360:
            rotated.append((j, angle))
        boxes.append((labels[0], box))
    return width, height, boxes, rotated


def _pixel_box(x: float, y: float, w: float, h: float, angle: float, width: int, height: int):
    """The axis-aligned xyxy pixel box around a percent rectangle rotated ``angle`` degrees
    clockwise about its top-left corner (image y points down, so clockwise is +angle)."""
    x0, y0, bw, bh = x * width / 100, y * height / 100, w * width / 100, h * height / 100
    if not angle % 360:
        return (x0, y0, x0 + bw, y0 + bh)
    c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    corners = [(x0 + dx * c - dy * s, y0 + dx * s + dy * c) for dx, dy in ((0, 0), (bw, 0), (bw, bh), (0, bh))]
    xs, ys = [p[0] for p in corners], [p[1] for p in corners]
    return (min(xs), min(ys), max(xs), max(ys))

