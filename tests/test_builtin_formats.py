"""The input formats of SageMaker's built-in Object Detection algorithm, written here byte by byte
from their documented layouts (not with beedet's code), read back with exactly the boxes put in."""

from __future__ import annotations

import io
import json
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from beedet.data.image_json import read_image_json
from beedet.data.recordio import read_recordio
from beedet.data.sources import detect_format, source_for_path

REPO = Path(__file__).resolve().parents[1]

# dmlc-core recordio.h: kMagic, and lrecord = cflag << 29 | length.
MAGIC = 0xCED7230A


def jpeg(width: int, height: int, comment: bytes = b"") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 170, 60)).save(buffer, format="JPEG")
    data = buffer.getvalue()
    if comment:
        # A COM segment right after SOI: FF FE, big-endian length (including itself), the text.
        data = data[:2] + b"\xff\xfe" + struct.pack(">H", len(comment) + 2) + comment + data[2:]
    return data


def pack(label: list[float], record_id: int, image: bytes) -> bytes:
    """MXNet recordio.pack: IRHeader <IfQQ (flag = label length, label 0, id, id2), the float32
    label, the image bytes."""
    return struct.pack("<IfQQ", len(label), 0.0, record_id, 0) + struct.pack(f"<{len(label)}f", *label) + image


def frame(cflag: int, chunk: bytes) -> bytes:
    return struct.pack("<II", MAGIC, cflag << 29 | len(chunk)) + chunk + b"\0" * (-len(chunk) % 4)


def write_record(payload: bytes) -> bytes:
    """dmlc RecordIOWriter::WriteRecord: split where the magic word sits 4-byte aligned in the
    payload (dropping it), cflag 1 / 2 / 3 for start / middle / end, 0 for a whole record."""
    magic = struct.pack("<I", MAGIC)
    out, start = b"", 0
    for i in range(0, len(payload) - len(payload) % 4, 4):
        if payload[i:i + 4] == magic:
            out += frame(1 if start == 0 else 2, payload[start:i])
            start = i + 4
    return out + frame(3 if start else 0, payload[start:])


def test_recordio_records_read_back_with_the_boxes_put_in(tmp_path: Path) -> None:
    # Record 0: SageMaker's header width 4 ([4, 5, width, height]), two objects, then two padding
    # rows of -1 (label_width 4 + 4 * 5 = 24 values), and a JPEG whose comment holds the magic word
    # 4-byte aligned in the payload, so the writer splits it across continuation flags.
    label0 = [4, 5, 64, 48, 0, 0.25, 0.125, 0.5, 0.5, 3, 0.5, 0.5, 0.75, 1.0] + [-1.0] * 10
    image0 = jpeg(64, 48, comment=b"xx" + struct.pack("<I", MAGIC) + b"bees")
    payload0 = pack(label0, 0, image0)
    assert (24 + 4 * len(label0) + 8) % 4 == 0 and payload0[24 + 4 * len(label0) + 8:][:4] == struct.pack("<I", MAGIC)
    # Record 1: header width 2 (no size: read from the image), one object, no padding.
    payload1 = pack([2, 5, 1, 0.0, 0.0, 0.5, 0.25], 7, jpeg(32, 40))
    # Record 2: not a detection label (label width 4): skipped and counted.
    payload2 = pack([2, 4, 1, 0.1, 0.1, 0.2], 8, jpeg(16, 16))
    data = write_record(payload0) + write_record(payload1) + write_record(payload2) + b"\x01\x02\x03\x04garbage!"
    assert struct.unpack_from("<II", data, 0)[1] >> 29 == 1  # record 0 starts a multi-part record
    rec = tmp_path / "train.rec"
    rec.write_bytes(data)
    # im2rec's list: index, header width, label width, labels..., relative image path.
    (tmp_path / "train.lst").write_text("0\t4\t5\t64\t48\t0\t0.25\t0.125\t0.5\t0.5\t3\t0.5\t0.5\t0.75\t1.0\thive/a.jpg\n"
                                        "7\t2\t5\t1\t0\t0\t0.5\t0.25\thive/b.jpg\n")

    label_set = read_recordio(rec, class_names=["bee", "drone", "pollenbee", "queen"])

    a, b = label_set.records
    assert a.image_path == tmp_path / "train_images" / "hive" / "a.jpg" and a.image_path.read_bytes() == image0
    assert (a.width, a.height) == (64, 48) and (b.width, b.height) == (32, 40)
    np.testing.assert_array_equal(a.boxes, [[16, 6, 32, 24], [32, 24, 48, 48]])
    np.testing.assert_array_equal(a.labels, [0, 3])
    np.testing.assert_array_equal(b.boxes, [[0, 0, 16, 10]])
    np.testing.assert_array_equal(b.labels, [1])
    problems = {p.where: p.reason for p in label_set.problems}
    assert len(problems) == 2
    assert "label width 4" in next(r for w, r in problems.items() if w.startswith(f"{rec}: record 2 (offset "))
    assert "no RecordIO magic word" in problems[f"{rec}: offset {len(data) - 12}"]
    # Read again: the extracted images are reused, the records are the same.
    again = read_recordio(rec, class_names=["bee", "drone", "pollenbee", "queen"])
    assert [r.same_labels_as(s) for r, s in zip(again.records, label_set.records)] == [True, True]


def test_recordio_source_convert_and_inspect(tmp_path: Path) -> None:
    import subprocess

    rec = tmp_path / "val.rec"
    rec.write_bytes(write_record(pack([4, 5, 40, 20, 0, 0.5, 0.5, 1.0, 1.0], 0, jpeg(40, 20))))
    assert detect_format(rec) == "recordio"
    source = source_for_path(rec, class_names=["bee"], extract_dir=tmp_path / "frames")
    np.testing.assert_array_equal(source.read().records[0].boxes, [[20, 10, 40, 20]])
    with pytest.raises(ValueError, match="image_root does not apply to recordio"):
        source_for_path(rec, image_root=tmp_path)

    coco = tmp_path / "val.json"
    done = subprocess.run([sys.executable, "-m", "beedet.data.convert", str(rec), str(coco), "--to", "coco",
                           "--class-names", "bee"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    written = json.loads(coco.read_text())
    assert written["annotations"][0]["bbox"] == [20, 10, 20, 10] and written["categories"][0]["name"] == "bee"


def _image_json(path: Path, file: str, size: tuple[int, int], annotations: list[dict], categories: list[dict]) -> None:
    path.write_text(json.dumps({"file": file, "image_size": [{"width": size[0], "height": size[1], "depth": 3}],
                                "annotations": annotations, "categories": categories}))


def test_image_format_channels_read_back_with_the_boxes_put_in(tmp_path: Path) -> None:
    images, annotations = tmp_path / "train", tmp_path / "train_annotation"
    images.mkdir()
    annotations.mkdir()
    (images / "a.jpg").write_bytes(jpeg(64, 48))
    (images / "b.jpg").write_bytes(jpeg(32, 32))
    categories = [{"class_id": 0, "name": "bee"}, {"class_id": 3, "name": "queen"}]
    _image_json(annotations / "a.json", "a.jpg", (64, 48),
                [{"class_id": 0, "left": 1, "top": 2, "width": 10, "height": 20},
                 {"class_id": 3, "left": 30.5, "top": 4, "width": 8, "height": 6}], categories)
    # No "file" key resolving: paired with the image by the JSON's stem, as the built-in does.
    _image_json(annotations / "b.json", "elsewhere/b.jpg", (32, 32), [], categories)
    (annotations / "c.json").write_text('{"file": "c.jpg", "annotations": [')  # broken
    _image_json(annotations / "d.json", "a.jpg", (64, 48), [], [{"class_id": 0, "name": "worker"}])  # name clash

    assert detect_format(annotations) == "image-json"
    label_set = source_for_path(annotations).read()

    assert label_set.class_names == ["bee", "class_1", "class_2", "queen"]
    a, b = label_set.records
    assert a.image_path == images / "a.jpg" and b.image_path == images / "b.jpg" and b.num_boxes == 0
    np.testing.assert_array_equal(a.boxes, [[1, 2, 11, 22], [30.5, 4, 38.5, 10]])
    np.testing.assert_array_equal(a.labels, [0, 3])
    problems = {Path(p.where).name: p.reason for p in label_set.problems}
    assert set(problems) == {"c.json", "d.json"}
    assert "not valid JSON" in problems["c.json"] and "'worker'" in problems["d.json"]
    assert read_image_json(annotations, images).class_names == label_set.class_names


def test_built_in_channels_become_the_data_sources(tmp_path: Path) -> None:
    """A job given the built-in detector's channels (image format for train, RecordIO for
    validation) trains on them with no beedet-specific settings."""
    from helpers import compose_config

    from beedet.assembly import build_datamodule
    from beedet.sagemaker.training_job import job_arguments

    ml = tmp_path / "opt" / "ml"
    data = ml / "input" / "data"
    for channel in ("train", "train_annotation", "validation"):
        (data / channel).mkdir(parents=True)
    for i in range(3):
        (data / "train" / f"f{i}.jpg").write_bytes(jpeg(64, 48))
        _image_json(data / "train_annotation" / f"f{i}.json", f"f{i}.jpg", (64, 48),
                    [{"class_id": i % 2, "left": 8, "top": 8, "width": 16, "height": 12}],
                    [{"class_id": 0, "name": "bee"}, {"class_id": 1, "name": "drone"}])
    (data / "validation" / "val.rec").write_bytes(write_record(pack([4, 5, 64, 48, 1, 0.5, 0.5, 0.75, 0.75], 0, jpeg(64, 48))))
    (ml / "input" / "config").mkdir()
    (ml / "input" / "config" / "inputdataconfig.json").write_text(json.dumps(
        {c: {"TrainingInputMode": "File"} for c in ("train", "train_annotation", "validation")}))
    env = {"SAGEMAKER_BASE_DIR": str(ml), "SM_HOSTS": '["algo-1"]', "SM_CURRENT_HOST": "algo-1"}

    cfg = compose_config(job_arguments([], env), run_dir=tmp_path / "run")
    assert (cfg.data.train.fmt, cfg.data.val.fmt) == ("image-json", "recordio")
    datamodule = build_datamodule(cfg.data)
    datamodule.load_labels()
    assert datamodule.class_names == ["bee", "drone"]
    assert len(datamodule.train_records) == 3 and len(datamodule.val_records) == 1
    np.testing.assert_array_equal(datamodule.val_records[0].boxes, [[32, 24, 48, 36]])


def test_a_folder_holding_a_coco_file_is_not_taken_for_the_image_format(tmp_path: Path) -> None:
    (tmp_path / "coco.json").write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    with pytest.raises(ValueError, match="holds a COCO file \\(coco.json\\); point at the file itself"):
        detect_format(tmp_path)
    assert detect_format(tmp_path / "coco.json") == "coco"


# --- an augmented manifest as a Pipe-mode channel streams it ---------------------------------------
# SageMaker's "Augmented Manifest File Format for Pipe Mode Training": for each manifest line, one
# record per name in AttributeNames, in that order; a name ending in -ref sends the S3 object it names
# (the image), any other its JSON value; RecordWrapperType RecordIO wraps each in a RecordIO record.


def _gt_label(size: tuple[int, int], boxes: list[tuple[int, int, int, int, int]]) -> dict:
    return {"image_size": [{"width": size[0], "height": size[1], "depth": 3}],
            "annotations": [{"class_id": c, "left": x, "top": y, "width": w, "height": h} for c, x, y, w, h in boxes]}


def _gt_metadata(classes: dict[int, str], objects: int) -> dict:
    return {"objects": [{"confidence": 0.9}] * objects, "class-map": {str(k): v for k, v in classes.items()},
            "type": "groundtruth/object-detection", "human-annotated": "yes",
            "creation-date": "2024-05-01T10:00:00.000000", "job-name": "labeling-job/bee-boxes"}


def augmented_manifest_stream(lines: list[dict], images: dict[str, bytes], attribute_names: list[str]) -> bytes:
    """What a Pipe channel with S3DataType AugmentedManifestFile and RecordWrapperType RecordIO carries
    for these manifest ``lines`` (``images``: S3 URI -> the object's bytes)."""
    out = b""
    for line in lines:
        for name in attribute_names:
            value = line[name]
            out += write_record(images[value] if name.endswith("-ref") else json.dumps(value).encode())
    return out


def _feed_pipe(path: Path, data: bytes) -> None:
    """SageMaker's side of a Pipe channel: a named pipe that a writer fills once a reader opens it."""
    import os
    import threading

    os.mkfifo(path)

    def write() -> None:
        with open(path, "wb") as pipe:
            pipe.write(data)

    threading.Thread(target=write, daemon=True).start()


def _bee_lines(prefix: str, count: int) -> tuple[list[dict], dict[str, bytes]]:
    lines, images = [], {}
    for i in range(count):
        uri = f"s3://bee-bucket/{prefix}/images/f{i}.jpg"
        # The first image's JPEG comment holds the RecordIO magic word: its record arrives in parts.
        images[uri] = jpeg(64, 48, comment=b"xx" + struct.pack("<I", MAGIC) + b"bees" if i == 0 else b"")
        boxes = [(i % 2, 8, 8, 16, 12)] + ([(1, 30, 20, 10, 10)] if i == 1 else [])
        lines.append({"source-ref": uri, "bee-boxes": _gt_label((64, 48), boxes),
                      "bee-boxes-metadata": _gt_metadata({0: "bee", 1: "drone"}, len(boxes))})
    return lines, images


@pytest.mark.skipif(sys.platform == "win32", reason="named pipes and SageMaker's channels are POSIX")
def test_augmented_manifest_pipe_channels_become_the_data_sources(tmp_path: Path) -> None:
    """A job given Ground Truth manifests as the built-in detector takes them (AugmentedManifestFile
    in Pipe mode): the channels arrive as the pipes train_0 and validation_0, not as folders, and
    train.py's job mapping reads them into exactly the labels put in; the validation channel sends
    the built-in's two attributes only (no class map: the names come from train's metadata)."""
    import threading

    from helpers import compose_config

    from beedet.assembly import build_datamodule
    from beedet.sagemaker.training_job import job_arguments

    ml = tmp_path / "opt" / "ml"
    data = ml / "input" / "data"
    data.mkdir(parents=True)
    train_lines, train_images = _bee_lines("train", 3)
    val_lines, val_images = _bee_lines("valid", 2)
    _feed_pipe(data / "train_0", augmented_manifest_stream(
        train_lines, train_images, ["source-ref", "bee-boxes", "bee-boxes-metadata"]))
    _feed_pipe(data / "validation_0", augmented_manifest_stream(val_lines, val_images, ["source-ref", "bee-boxes"]))
    pipe = {"TrainingInputMode": "Pipe", "S3DistributionType": "FullyReplicated", "RecordWrapperType": "RecordIO",
            "ContentType": "application/x-recordio"}
    (ml / "input" / "config").mkdir()
    (ml / "input" / "config" / "inputdataconfig.json").write_text(json.dumps({"train": pipe, "validation": pipe}))
    env = {"SAGEMAKER_BASE_DIR": str(ml), "SM_HOSTS": '["algo-1"]', "SM_CURRENT_HOST": "algo-1"}

    cfg = compose_config(job_arguments([], env), run_dir=tmp_path / "run")
    assert (cfg.data.train.fmt, cfg.data.train.path) == ("manifest-stream", str(data / "train_0"))
    assert cfg.data.val.path == str(data / "validation_0") and cfg.data.val.extract_dir == str(data / "validation")
    datamodule = build_datamodule(cfg.data)
    datamodule.load_labels()
    assert datamodule.class_names == ["bee", "drone"]
    assert len(datamodule.train_records) == 3 and len(datamodule.val_records) == 2
    first, second = sorted(datamodule.train_records, key=lambda r: r.image_path.name)[:2]
    assert first.image_path.read_bytes() == train_images["s3://bee-bucket/train/images/f0.jpg"]
    np.testing.assert_array_equal(first.boxes, [[8, 8, 24, 20]])
    np.testing.assert_array_equal(second.boxes, [[8, 8, 24, 20], [30, 20, 40, 30]])
    np.testing.assert_array_equal(second.labels, [1, 1])
    assert first.image_path.parent == data / "train"  # where a File-mode channel's files would be

    # A pipe gives its data once: a second reader (another DDP rank) reads the local copy.
    from hydra.utils import instantiate

    again: list = []
    reader = threading.Thread(target=lambda: again.append(instantiate(cfg.data.train, _convert_="all").read()), daemon=True)
    reader.start()
    reader.join(timeout=30)
    assert again and len(again[0].records) == 3, "the second read waited on the used-up pipe"


def test_a_captured_manifest_stream_reads_in_any_attribute_order(tmp_path: Path) -> None:
    lines, images = _bee_lines("train", 2)
    stream = tmp_path / "train_0"
    # The image need not come first; without a metadata attribute, class_names name the classes.
    stream.write_bytes(augmented_manifest_stream(lines, images, ["bee-boxes", "source-ref"]))
    source = source_for_path(stream, "manifest-stream", extract_dir=tmp_path / "copy", class_names=["bee", "drone"])
    label_set = source.read()
    assert label_set.class_names == ["bee", "drone"] and not label_set.problems
    assert [r.image_path.name for r in label_set.records] == ["000000.jpg", "000001.jpg"]
    np.testing.assert_array_equal(label_set.records[1].labels, [1, 1])
    with pytest.raises(ValueError, match="image_root does not apply to manifest-stream"):
        source_for_path(stream, "manifest-stream", image_root=tmp_path)


@pytest.mark.parametrize("case", ["no image", "lines differ", "cut short", "not RecordIO"])
def test_a_manifest_stream_that_is_not_one_says_why(tmp_path: Path, case: str) -> None:
    from beedet.data.records import DataError

    lines, images = _bee_lines("train", 3)
    data = {
        "no image": augmented_manifest_stream(lines, images, ["bee-boxes", "bee-boxes-metadata"]),
        # The second line lacks its metadata record: its image arrives where the first line's ended.
        "lines differ": (augmented_manifest_stream(lines[:1], images, ["source-ref", "bee-boxes", "bee-boxes-metadata"])
                         + augmented_manifest_stream(lines[1:], images, ["source-ref", "bee-boxes"])),
        "cut short": augmented_manifest_stream(lines, images, ["source-ref", "bee-boxes"])[:-40],
        "not RecordIO": b"".join(images.values()),
    }[case]
    message = {"no image": "holds no image record", "lines differ": "do not hold the same attributes",
               "cut short": "ends inside", "not RecordIO": "no RecordIO magic word"}[case]
    stream = tmp_path / "train_0"
    stream.write_bytes(data)
    with pytest.raises(DataError, match=message):
        source_for_path(stream, "manifest-stream", extract_dir=tmp_path / "copy").read()
