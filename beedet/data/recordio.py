"""MXNet RecordIO (``.rec``) as ``im2rec`` packs it for SageMaker's built-in Object Detection
algorithm, read without MXNet.

The container format (dmlc-core ``recordio.h``): a record is

    uint32 magic 0xCED7230A | uint32 lrecord = cflag << 29 | length | payload, zero-padded to 4 bytes

all little-endian. A payload that contains the magic word at a 4-byte-aligned offset is written in
parts, split at each occurrence with the magic word left out: cflag 1 starts the record, 2
continues it, 3 ends it (0: a whole record). The reader joins the parts with the magic word between
them.

The payload (MXNet ``recordio.pack``): ``IRHeader`` = ``<IfQQ`` (flag, label, id, id2); when flag >
0 the label is ``flag`` float32 values after the header; then the encoded image. For detection the
label is ``[A, B, extra header (A - 2 values), object rows of B values ...]``: A is the header
width, B the label width (5: ``class, xmin, ymin, xmax, ymax`` normalised to [0, 1]; extra columns
such as ``difficult`` are ignored). SageMaker's examples use A = 4 with the image width and height
as the extra header. Rows of -1 (or whose class is -1) pad a label to a fixed width
(``label_width``) and are dropped.

Records keep their images inside the ``.rec``; beedet's pipeline reads image files, so each image is
written once to ``extract_dir`` (an identical file already there is left alone, so reading again is
cheap). With an ``.lst`` (``index \\t A \\t B \\t ... \\t relative/path.jpg``) images keep their names;
otherwise they are named ``<record id>.jpg|.png``.

:func:`iter_records` reads the same framing from a stream that can be read only once, front to back
(a SageMaker Pipe-mode channel: ``beedet.data.manifest_stream``).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from beedet.data.images import ImageError, read_image_size
from beedet.data.records import DataError, ImageRecord, LabelSet, Problem

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_HEADER = struct.Struct("<IfQQ")  # MXNet's IRHeader: flag, label, id, id2
_LENGTH_MASK = (1 << 29) - 1


@dataclass(frozen=True)
class RawRecord:
    """One logical record: its payload (parts joined) and where it started in the file."""

    index: int
    offset: int
    payload: bytes


def read_recordio(
    path: Path,
    *,
    idx_path: Path | None = None,
    lst_path: Path | None = None,
    extract_dir: Path | None = None,
    class_names: Sequence[str] | None = None,
) -> LabelSet:
    """Read a detection ``.rec`` into records (boxes xyxy pixels, 0-based class ids), extracting
    its images to ``extract_dir`` (default: ``<stem>_images/`` beside the ``.rec``).

    ``idx_path`` / ``lst_path`` default to ``<stem>.idx`` / ``<stem>.lst`` when those exist. The
    ``.idx`` (``index \\t byte offset``) is checked against the records found; the ``.lst`` names
    the extracted images. Class names: ``class_names``, else ``class_<i>`` for every id seen.
    A record that cannot be used is a :class:`Problem` naming the file, the record's position and
    byte offset; reading goes on at the next record.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise DataError(f"{path}: RecordIO file not found") from exc
    idx_path = _default_sibling(path, ".idx", idx_path)
    lst_path = _default_sibling(path, ".lst", lst_path)
    names = _read_lst(lst_path) if lst_path is not None else {}
    out_dir = Path(extract_dir) if extract_dir is not None else path.with_name(f"{path.stem}_images")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"{path}: cannot create the folder its images are extracted to, {out_dir} ({exc}); "
                        f"set extract_dir to a writable folder") from exc

    raw_records, problems = split_records(data, str(path))
    if idx_path is not None:
        problems += _check_idx(idx_path, raw_records)
    records: list[ImageRecord] = []
    max_label = -1
    for raw in raw_records:
        where = f"{path}: record {raw.index} (offset {raw.offset})"
        try:
            record_id, label, image = unpack_payload(raw.payload)
            width, height, boxes, labels = _detection_label(label)
            image_path = out_dir / names.get(record_id, f"{record_id}{_image_suffix(image)}")
            _write_once(image_path, image)
            if width is None:
                width, height = read_image_size(image_path)
        except (_RecordError, ImageError) as exc:
            problems.append(Problem(where, str(exc), "skipped"))
            continue
        except OSError as exc:
            raise DataError(f"{path}: cannot write an extracted image to {out_dir} ({exc}); "
                            f"set extract_dir to a writable folder") from exc
        boxes = boxes * np.array([width, height, width, height], dtype=np.float32)
        records.append(ImageRecord(image_path, width, height, boxes=boxes, labels=labels, source=where))
        if len(labels):
            max_label = max(max_label, int(labels.max()))
    if class_names is None:
        class_names = [f"class_{i}" for i in range(max_label + 1)]
    return LabelSet(records=records, class_names=list(class_names), problems=problems)


def split_records(data: bytes, name: str) -> tuple[list[RawRecord], list[Problem]]:
    """The logical records of a RecordIO byte string (continuation parts joined) and a Problem for
    each stretch that is not a valid record (the reader resyncs at the next magic word)."""
    records: list[RawRecord] = []
    problems: list[Problem] = []
    pos, parts, start = 0, [], None
    while pos + 8 <= len(data):
        magic, lrecord = struct.unpack_from("<II", data, pos)
        if magic != MAGIC:
            resume = _next_magic(data, pos + 4)
            problems.append(Problem(f"{name}: offset {pos}", f"no RecordIO magic word; skipped {resume - pos} bytes "
                                    f"to the next record", "skipped"))
            pos, parts, start = resume, [], None
            continue
        cflag, length = lrecord >> 29, lrecord & _LENGTH_MASK
        end = pos + 8 + length
        if end > len(data):
            problems.append(Problem(f"{name}: record {len(records)} (offset {pos})",
                                    f"truncated: says {length} bytes but the file ends after {len(data) - pos - 8}",
                                    "skipped"))
            break
        chunk = data[pos + 8:end]
        if cflag in (0, 1):
            if parts:
                problems.append(Problem(f"{name}: record {len(records)} (offset {start})",
                                        "a multi-part record has no end part", "skipped"))
            parts, start = [chunk], pos
        elif not parts:
            problems.append(Problem(f"{name}: offset {pos}", f"a continuation part (cflag {cflag}) with no start",
                                    "skipped"))
        else:
            parts += [_MAGIC_BYTES, chunk]
        if cflag in (0, 3) and parts:
            records.append(RawRecord(len(records), start, b"".join(parts)))
            parts, start = [], None
        pos = end + (-length % 4)
    if parts:
        problems.append(Problem(f"{name}: record {len(records)} (offset {start})",
                                "the file ends inside a multi-part record", "skipped"))
    return records, problems


def iter_records(stream: BinaryIO, name: str) -> Iterator[bytes]:
    """The logical records of a RecordIO byte stream (a pipe: read once, front to back, never whole
    in memory), continuation parts joined as in :func:`split_records`. A stream cannot be resynced
    after damage, so any framing error raises :class:`DataError` naming ``name`` and the offset."""
    offset, parts, start = 0, [], 0
    while True:
        header = _read_exactly(stream, 8, name, offset, allow_eof=not parts)
        if header is None:
            return
        magic, lrecord = struct.unpack("<II", header)
        if magic != MAGIC:
            raise DataError(f"{name}: offset {offset}: no RecordIO magic word (0x{magic:08x}): not a RecordIO stream, "
                            "or a damaged one")
        cflag, length = lrecord >> 29, lrecord & _LENGTH_MASK
        chunk = _read_exactly(stream, length + (-length % 4), name, offset)[:length]
        if cflag in (0, 1):
            if parts:
                raise DataError(f"{name}: offset {start}: a multi-part record has no end part")
            parts, start = [chunk], offset
        elif not parts:
            raise DataError(f"{name}: offset {offset}: a continuation part (cflag {cflag}) with no start")
        else:
            parts += [_MAGIC_BYTES, chunk]
        offset += 8 + length + (-length % 4)
        if cflag in (0, 3):
            yield b"".join(parts)
            parts = []


def _read_exactly(stream: BinaryIO, size: int, name: str, offset: int, allow_eof: bool = False) -> bytes | None:
    data = b""
    while len(data) < size:
        more = stream.read(size - len(data))
        if not more:
            if allow_eof and not data:
                return None
            raise DataError(f"{name}: offset {offset}: the stream ends inside a record")
        data += more
    return data


def unpack_payload(payload: bytes) -> tuple[int, np.ndarray, bytes]:
    """``(record id, label float32 array, image bytes)`` of one MXNet ``recordio.pack`` payload."""
    if len(payload) < _HEADER.size:
        raise _RecordError(f"{len(payload)} bytes, shorter than the {_HEADER.size}-byte IRHeader")
    flag, scalar, record_id, _ = _HEADER.unpack_from(payload)
    offset = _HEADER.size
    if flag > 0:
        if len(payload) < offset + 4 * flag:
            raise _RecordError(f"the header says {flag} label values but the record ends first")
        label = np.frombuffer(payload, dtype="<f4", count=flag, offset=offset).astype(np.float32)
        offset += 4 * flag
    else:
        label = np.array([scalar], dtype=np.float32)
    return int(record_id), label, payload[offset:]


def _detection_label(label: np.ndarray) -> tuple[int | None, int | None, np.ndarray, np.ndarray]:
    """``(width, height or None, normalised xyxy boxes, class ids)`` from an im2rec detection label."""
    if len(label) < 2 or not np.isfinite(label[:2]).all():
        raise _RecordError(f"label {label.tolist()[:8]} has no [header width, label width] start: "
                           f"not a detection record")
    header_width, label_width = int(label[0]), int(label[1])
    if header_width < 2 or label_width < 5 or header_width > len(label) or header_width != label[0] \
            or label_width != label[1]:
        raise _RecordError(f"header width {label[0]:g} / label width {label[1]:g} are not a detection "
                           f"label's (header width >= 2, label width >= 5)")
    width = height = None
    if header_width >= 4 and label[2] > 0 and label[3] > 0 and float(label[2]).is_integer() \
            and float(label[3]).is_integer():
        width, height = int(label[2]), int(label[3])
    body = label[header_width:]
    whole = len(body) // label_width * label_width
    if not (body[whole:] == -1).all():
        raise _RecordError(f"{len(body)} label values after the header are not rows of {label_width} "
                           f"(and the remainder is not -1 padding)")
    rows = body[:whole].reshape(-1, label_width)
    rows = rows[~(rows[:, 0] == -1)]  # padding rows (label_width) have class -1
    if not np.isfinite(rows[:, :5]).all():
        raise _RecordError("a label row has a non-finite value")
    classes = rows[:, 0]
    bad = (classes < 0) | (classes != np.floor(classes))
    if bad.any():
        raise _RecordError(f"class id {classes[bad][0]:g} is not a class id >= 0 (or -1 padding)")
    return width, height, rows[:, 1:5].astype(np.float32), classes.astype(np.int64)


def _image_suffix(image: bytes) -> str:
    if image[:3] == b"\xff\xd8\xff":
        return ".jpg"
    if image[:8] == b"\x89PNG\r\n\x1a\n":
        return ".png"
    raise _RecordError(f"the image bytes are neither JPEG nor PNG (start {image[:8].hex()})"
                       if image else "the record holds no image bytes")


def _write_once(path: Path, image: bytes) -> None:
    if path.is_file() and path.stat().st_size == len(image) and path.read_bytes() == image:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(image)
    tmp.replace(path)


def _next_magic(data: bytes, start: int) -> int:
    pos = data.find(_MAGIC_BYTES, start)
    while pos != -1 and pos % 4:
        pos = data.find(_MAGIC_BYTES, pos + 1)
    return len(data) if pos == -1 else pos


def _default_sibling(path: Path, suffix: str, given: Path | None) -> Path | None:
    if given is not None:
        if not Path(given).is_file():
            raise DataError(f"{given}: not found (given as the {suffix} file of {path})")
        return Path(given)
    sibling = path.with_suffix(suffix)
    return sibling if sibling.is_file() else None


def _read_lst(path: Path) -> dict[int, str]:
    """Record id -> image path (relative, as im2rec lists it) from an ``.lst``; lines with fewer than
    three columns are not image lines and are passed over."""
    names: dict[int, str] = {}
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        parts = line.strip().split("\t")
        if len(parts) < 3:
            continue
        try:
            index = int(float(parts[0]))
        except ValueError as exc:
            raise DataError(f"{path}:{line_no}: the first column must be the record index, got {parts[0]!r}") from exc
        rel = Path(parts[-1])
        # An absolute path (or one climbing out with ..) keeps only its file name: extracted
        # images stay inside extract_dir.
        names[index] = rel.name if rel.is_absolute() or ".." in rel.parts else rel.as_posix()
    return names


def _check_idx(path: Path, records: list[RawRecord]) -> list[Problem]:
    offsets = {r.offset for r in records}
    problems = []
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        parts = line.split()
        if len(parts) != 2:
            continue
        try:
            offset = int(parts[1])
        except ValueError:
            problems.append(Problem(f"{path}:{line_no}", f"offset {parts[1]!r} is not an integer", "ignored line"))
            continue
        if offset not in offsets:
            problems.append(Problem(f"{path}:{line_no}", f"no readable record starts at offset {offset} "
                                    f"(index {parts[0]})", "ignored line"))
    return problems


class _RecordError(ValueError):
    """One record is unusable; the message is the reason shown to the user."""

