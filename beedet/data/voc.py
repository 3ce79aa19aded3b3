"""Pascal VOC XML, one file per image, as CVAT ("PASCAL VOC 1.1") and LabelImg export it::

    <annotation><filename>0001.jpg</filename><size><width>1920</width><height>1080</height></size>
      <object><name>bee</name><difficult>0</difficult>
        <bndbox><xmin>101</xmin><ymin>52</ymin><xmax>144</xmax><ymax>97</ymax></bndbox></object>
    </annotation>

Coordinates: ``xmin, ymin, xmax, ymax`` are read as they are, as beedet's continuous xyxy pixel
corners. That is what the tools that write VOC for beedet users mean by them: CVAT's VOC export
(Datumaro) writes its float box ``x, y, x + w, y + h`` unchanged and reads it back unchanged, and
LabelImg writes ``int()`` of its canvas corners (``xmin``/``ymin`` raised to at least 1) and reads
them back unchanged. The original PASCAL VOC data sets instead count 1-based inclusive pixel
indices (detectron2 reads those as ``[xmin - 1, ymin - 1, xmax, ymax]``); read as they are here,
their top-left corners sit one pixel right of and below that reading.

``difficult`` objects are kept and trained on like any other: for bees "difficult" usually marks
an occluded bee that still is a bee, and dropping them would teach the model to miss crowded bees.
A file that cannot be used is a problem naming it, and is skipped.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

from beedet.data.records import DataError, ImageRecord, LabelSet, Problem
from beedet.data.roots import OutsideRoot, confined


def read_voc(annotations: Path, *, image_root: Path | None = None,
             class_names: Sequence[str] | None = None, allow_outside_root: bool = False) -> LabelSet:
    """Read VOC XML files into records (boxes xyxy pixels, 0-based class ids).

    ``annotations``: one ``.xml`` file, a folder of them (recursively), or a VOC root holding
    ``Annotations/`` (images then default to its ``JPEGImages/``). ``image_root`` is where
    ``<filename>`` resolves (default: ``JPEGImages/`` of a VOC root, else the XML's own folder).
    ``class_names`` fixes the class ids; without it the names seen are sorted. A ``<filename>``
    that leads outside that image folder is a problem and the file skipped, unless
    ``allow_outside_root`` (:mod:`beedet.data.roots`).
    """
    annotations = Path(annotations)
    if (annotations / "Annotations").is_dir():
        if image_root is None and (annotations / "JPEGImages").is_dir():
            image_root = annotations / "JPEGImages"
        annotations = annotations / "Annotations"
    if annotations.is_file():
        files = [annotations]
    elif annotations.is_dir():
        files = sorted(annotations.rglob("*.xml"))
    else:
        raise DataError(f"{annotations}: VOC annotations not found")

    parsed, problems = [], []
    for xml_path in files:
        try:
            parsed.append((xml_path, *_parse(xml_path, Path(image_root) if image_root is not None else xml_path.parent,
                                             allow_outside_root)))
        except ValueError as exc:
            problems.append(Problem(str(xml_path), str(exc), "skipped"))
    names = list(class_names) if class_names is not None else sorted({n for *_, objects in parsed for n, _ in objects})
    ids = {name: i for i, name in enumerate(names)}
    records = []
    for xml_path, image_path, width, height, objects in parsed:
        unknown = sorted({n for n, _ in objects if n not in ids})
        if unknown:
            # The objects of known classes are lost with the file: counted, not silently gone.
            problems.append(Problem(str(xml_path), f"object name {unknown[0]!r} is not one of the classes {names}",
                                    "skipped", valid_boxes=sum(n in ids for n, _ in objects)))
            continue
        records.append(ImageRecord(image_path, width, height, boxes=[b for _, b in objects],
                                   labels=[ids[n] for n, _ in objects], source=str(xml_path)))
    return LabelSet(records=records, class_names=names, problems=problems)


def _parse(xml_path: Path, image_root: Path,
           allow_outside_root: bool) -> tuple[Path, int, int, list[tuple[str, tuple[float, ...]]]]:
    try:
        root = ET.parse(xml_path).getroot()
    except ET.ParseError as exc:
        raise ValueError(f"not valid XML: {exc}") from exc
    if root.tag != "annotation":
        raise ValueError(f"the root element is <{root.tag}>, not a VOC <annotation>")
    filename = (root.findtext("filename") or "").strip()
    if not filename:
        raise ValueError("no <filename>")
    image_path = _image_path(image_root, filename, allow_outside_root)
    try:
        width, height = int(root.findtext("size/width")), int(root.findtext("size/height"))
    except (TypeError, ValueError) as exc:
        raise ValueError("<size> needs integer <width> and <height>") from exc
    if width <= 0 or height <= 0:
        raise ValueError(f"<size> is {width}x{height}")
    objects = []
    for i, obj in enumerate(root.iter("object")):
        name = (obj.findtext("name") or "").strip()
        try:
            xmin, ymin, xmax, ymax = (float(obj.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax"))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"object {i} ({name or 'no name'}) needs numeric bndbox xmin, ymin, xmax, ymax") from exc
        if not name:
            raise ValueError(f"object {i} has no <name>")
        objects.append((name, (xmin, ymin, xmax, ymax)))
    return image_path, width, height, objects


def _image_path(image_root: Path, filename: str, allow_outside_root: bool) -> Path:
    """``image_root / filename``, else the file of that base name in ``image_root`` (tools that write
    the labelling machine's absolute path); OutsideRoot (a ValueError) when ``filename`` leads
    outside ``image_root`` and no file of its base name is there. Nothing outside the root is even
    looked at, so whether an outside file exists never shows in a message."""
    named = image_root / filename
    base = Path(filename).name
    by_name = image_root / base if base not in ("", ".", "..") else None
    try:
        image_path = confined(named, [image_root], named=filename, allow_outside_root=allow_outside_root)
    except OutsideRoot:
        if by_name is not None and by_name.is_file():
            return by_name
        raise
    if not image_path.is_file() and by_name is not None and by_name.is_file():
        return by_name
    return image_path
