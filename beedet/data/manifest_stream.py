"""A Ground Truth augmented manifest as a SageMaker training channel streams it: the channel as the
built-in Object Detection algorithm takes Ground Truth output (``S3DataType=AugmentedManifestFile``
with ``AttributeNames``, ``RecordWrapperType=RecordIO``, ``ContentType=application/x-recordio``).

What SageMaker delivers. ``AugmentedManifestFile`` works only in Pipe input mode (the API reference
allows it there only; FastFile mode does not support it), so the channel is no folder: it is a named
pipe, ``/opt/ml/input/data/<channel>_<pass>``, one per pass over the data (``_0``, then ``_1`` once
``_0`` has been read to its end, ...). For each JSON line of the manifest, in file
order, it carries one record per name in ``AttributeNames``, in that order: for a name ending in
``-ref`` (``source-ref``) the bytes of the S3 object it names (the image), for any other the
attribute's value as JSON text (the boxes; ``<label>-metadata`` if listed, with the class map).
Each record is wrapped in MXNet RecordIO framing (:func:`beedet.data.recordio.iter_records`). The
stream holds neither the attribute names nor the image's S3 URI: a line is told only by the count
of its records, and an image from the JSON values by not being JSON.

What beedet does with it (:func:`materialize_stream`): it reads the first pass once, writes each
image (``000000.jpg`` ...) and a manifest of local paths (``<pipe name>.manifest``, the boxes under
:data:`LABEL_ATTRIBUTE`) into a folder, and then reads that folder as any Ground Truth manifest
(:func:`beedet.data.manifest.read_manifest`). Later passes are never opened: epochs, shuffling and
DataLoader workers run on the local copy, as they do for a File-mode channel, so the job's volume
must hold the images as it would in File mode. The first process to get there reads the pipe; the
others (DDP ranks, torchrun's processes) wait on a lock and read the copy.

Class names come from the class map of a listed ``<label>-metadata`` attribute (list it:
``[source-ref, bee-boxes, bee-boxes-metadata]``; the built-in algorithm itself takes only the first
two), else from ``class_names``, else ``class_<i>``.
"""

from __future__ import annotations

import json
import os
import stat
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from beedet.data.manifest import OBJECT_DETECTION_TYPE
from beedet.data.recordio import iter_records
from beedet.data.records import DataError

# The key the local manifest keeps each line's boxes under (the stream does not name them).
LABEL_ATTRIBUTE = "boxes"
# How long a reader waits for the stream to appear before giving up (AWS's Pipe-mode example waits
# for a channel's pipe too: it may not exist yet when the script starts).
DEFAULT_WAIT_S = 60.0
# What _json_value returns for a record that is not JSON text (an S3 object's bytes).
_NOT_JSON = object()


def stream_manifest_path(stream: Path, extract_dir: Path) -> Path:
    """Where :func:`materialize_stream` writes the local manifest for ``stream``."""
    return Path(extract_dir) / f"{Path(stream).name}.manifest"


def materialize_stream(stream: str | os.PathLike, extract_dir: str | os.PathLike, *,
                       class_names: Sequence[str] | None = None, wait_s: float = DEFAULT_WAIT_S) -> Path:
    """Read the augmented-manifest stream ``stream`` (the channel's pipe, or a file holding what one
    carried) into ``extract_dir``: its images and a local manifest, whose path is returned (see the
    module docstring). A pipe is read once: when its manifest exists already (another process, or an
    earlier call, wrote it), nothing is read; a file is read again on every call. Waits up to
    ``wait_s`` seconds for ``stream`` to appear. Raises :class:`DataError` when the stream is not an
    augmented manifest's, or cannot be read."""
    import fcntl  # POSIX only, as SageMaker's containers are; imported here so that the module loads anywhere

    stream, extract_dir = Path(stream), Path(extract_dir)
    manifest = stream_manifest_path(stream, extract_dir)
    _wait_for(stream, wait_s)
    pipe = stat.S_ISFIFO(stream.stat().st_mode)
    try:
        extract_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"{stream}: cannot create {extract_dir} to copy the stream into ({exc}); set extract_dir "
                        "to a writable folder") from exc
    with open(extract_dir / f".{stream.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if pipe and manifest.is_file():
            return manifest
        started = extract_dir / f".{stream.name}.started"
        if pipe and started.exists():
            # A pipe gives its data once: what a failed reader took is gone.
            raise DataError(f"{stream}: an earlier reader of this pipe stopped before it finished ({started} is left "
                            "from it), and a pipe cannot be read twice; start the job again")
        started.touch()
        lines = _write_lines(stream, extract_dir, class_names)
        tmp = manifest.with_name(manifest.name + ".tmp")
        tmp.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
        # Readers (the lock's waiters, DataLoader workers) never see half a manifest.
        os.replace(tmp, manifest)
        started.unlink()
    return manifest


def _wait_for(stream: Path, wait_s: float) -> None:
    deadline = time.monotonic() + wait_s
    while not stream.exists():
        if time.monotonic() > deadline:
            raise DataError(f"{stream}: not found after {wait_s:.0f} s. A Pipe-mode channel's data arrives as the named "
                            "pipe /opt/ml/input/data/<channel>_0; is this channel in Pipe mode?")
        time.sleep(0.2)


def _write_lines(stream: Path, extract_dir: Path, class_names: Sequence[str] | None) -> list[dict[str, Any]]:
    """Each manifest line of the stream, its image written to ``extract_dir`` and referred to by name."""
    class_map = {str(i): name for i, name in enumerate(class_names)} if class_names is not None else None
    lines = []
    try:
        with open(stream, "rb") as f:
            for number, (image, values) in enumerate(_stream_lines(iter_records(f, str(stream)), str(stream))):
                name = f"{number:06d}{_image_suffix(image)}"
                _write_atomically(extract_dir / name, image)
                lines.append(_manifest_line(name, values, class_map))
    except OSError as exc:
        raise DataError(f"{stream}: cannot read the stream or write its copy to {extract_dir} ({exc})") from exc
    return lines


def _stream_lines(records: Iterator[bytes], name: str) -> Iterator[tuple[bytes, list[Any]]]:
    """``(image bytes, [JSON values])`` per manifest line. Every line has one record per attribute in
    the same order: the image's position and the line's length are read off the first two images
    (or the end of the stream), and every later line must have its image at that position."""
    buffered: list[tuple[bytes, Any]] = []
    period = position = None
    line = 0
    for payload in records:
        buffered.append((payload, _json_value(payload)))
        if period is None:
            images = [i for i, (_, value) in enumerate(buffered) if value is _NOT_JSON]
            if len(images) < 2:
                continue
            position, period = images[0], images[1] - images[0]
            if position >= period:
                raise DataError(f"{name}: record {images[1] + 1} is an image although the first line has not ended: "
                                "the lines do not hold the same attributes")
        while len(buffered) >= period:
            group, buffered = buffered[:period], buffered[period:]
            yield _line(group, position, line, name)
            line += 1
    if period is None:
        if not buffered:
            return
        images = [i for i, (_, value) in enumerate(buffered) if value is _NOT_JSON]
        if not images:
            raise DataError(f"{name}: the stream holds no image record (every record is JSON): AttributeNames must "
                            "list the image's attribute (source-ref)")
        yield _line(buffered, images[0], line, name)
    elif buffered:
        raise DataError(f"{name}: the stream ends inside line {line + 1}: {len(buffered)} of its {period} records arrived")


def _line(group: list[tuple[bytes, Any]], position: int, line: int, name: str) -> tuple[bytes, list[Any]]:
    images = [i for i, (_, value) in enumerate(group) if value is _NOT_JSON]
    if images != [position]:
        raise DataError(f"{name}: line {line + 1} has {len(images)} image records where the first line had one, at "
                        f"position {position + 1} of {len(group)}: the lines do not hold the same attributes")
    return group[position][0], [value for i, (_, value) in enumerate(group) if i != position]


def _json_value(payload: bytes) -> Any:
    """The JSON value a record holds, or ``_NOT_JSON`` (an S3 object's bytes: the image)."""
    try:  # an image fails at its first byte (JPEG 0xFF, PNG 0x89 are no UTF-8 start)
        return json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return _NOT_JSON


def _manifest_line(image_name: str, values: list[Any], class_map: dict[str, str] | None) -> dict[str, Any]:
    """A Ground Truth line for the local image: the boxes (the value with ``annotations``) and the
    metadata (the value with ``class-map`` or the bounding-box ``type``). A line whose values hold no
    boxes keeps none, and the manifest reader reports it."""
    line: dict[str, Any] = {"source-ref": image_name}
    for value in values:
        if not isinstance(value, dict):
            continue
        metadata = "class-map" in value or value.get("type") == OBJECT_DETECTION_TYPE
        key = f"{LABEL_ATTRIBUTE}-metadata" if metadata else LABEL_ATTRIBUTE if "annotations" in value else None
        if key is not None:
            line.setdefault(key, value)
    if class_map is not None:
        line.setdefault(f"{LABEL_ATTRIBUTE}-metadata", {"class-map": class_map, "type": OBJECT_DETECTION_TYPE})
    return line


def _image_suffix(image: bytes) -> str:
    if image[:3] == b"\xff\xd8\xff":
        return ".jpg"
    if image[:8] == b"\x89PNG\r\n\x1a\n":
        return ".png"
    return ".img"  # not a photo beedet decodes: the data checks report the file


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
