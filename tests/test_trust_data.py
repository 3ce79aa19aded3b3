"""Trust boundaries of the data layer: what a label file or an image file can make beedet do.

* Image paths stay inside their data root (``beedet.data.roots``): ``../``, absolute paths and
  ``s3://`` keys climbing with ``..`` are problems naming the file (and line), unless
  ``allow_outside_root``.
* One pixel limit (``DEFAULT_MAX_PIXELS``, 40 MP) for every decode, checked from the header.
* A 0-byte image is an "empty file".
* A sample that fails to decode in the dataset is replaced, warned about and counted, with or
  without DataLoader workers.
* The data report counts the valid boxes lost with skipped records.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image, ImageFile
from torch.utils.data import DataLoader

from beedet.data import images as images_module
from beedet.data import inspect as inspect_cli
from beedet.data.checks import check_records
from beedet.data.coco import read_coco
from beedet.data.data_report import DataReport
from beedet.data.datamodule import REPLACED_SAMPLE, BeeDataModule
from beedet.data.dataset import DetectionDataset, collate_detection
from beedet.data.image_json import read_image_json
from beedet.data.images import (
    DEFAULT_MAX_PIXELS,
    ImageError,
    ImageTooLarge,
    decode_image,
    load_image,
    load_image_reduced,
    read_image_size,
    verify_image,
)
from beedet.data.label_studio import read_label_studio
from beedet.data.manifest import read_manifest
from beedet.data.records import DataError, ImageRecord, LabelSet
from beedet.data.sources import ManifestSource, source_for_path
from beedet.data.voc import read_voc
from beedet.data.yolo import read_yolo, write_yolo

WIDTH, HEIGHT = 48, 32
OUTSIDE = "outside the data root"


def _jpeg(path: Path, seed: int = 0, size: tuple[int, int] = (WIDTH, HEIGHT)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    noise = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(noise).save(path, quality=90)
    return path


def _truncated_jpeg(path: Path, seed: int = 0) -> Path:
    _jpeg(path, seed)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _line(source_ref: str, boxes: list[tuple[int, float, float, float, float]] | None = None,
          size: tuple[int, int] = (WIDTH, HEIGHT)) -> str:
    boxes = [(0, 5, 5, 10, 10)] if boxes is None else boxes
    return json.dumps({
        "source-ref": source_ref,
        "bees": {"image_size": [{"width": size[0], "height": size[1], "depth": 3}],
                 "annotations": [{"class_id": c, "left": x, "top": y, "width": w, "height": h} for c, x, y, w, h in boxes]},
        "bees-metadata": {"class-map": {"0": "bee", "1": "drone"}, "type": "groundtruth/object-detection"},
    })


# --- 1. paths confined to their data root ----------------------------------------------------------


@pytest.fixture
def escaping_manifest(tmp_path: Path) -> tuple[Path, Path, dict[int, str], list[str]]:
    """tmp/a/b/root/hive.manifest (root = its folder = local_root) with 4 good lines and, on lines
    2, 4 and 6, a `../`, an absolute and an `s3://bkt/../..` source-ref, each naming a real image
    outside root. Returns (manifest, root, {line: bad ref}, good names)."""
    root = tmp_path / "a" / "b" / "root"
    good = [f"good{i}.jpg" for i in range(4)]
    for i, name in enumerate(good):
        _jpeg(root / "images" / name, seed=i)
    _jpeg(tmp_path / "a" / "outside_secret.jpg", seed=7)  # where ../../outside_secret.jpg leads
    _jpeg(tmp_path / "outside_secret.jpg", seed=8)  # the absolute ref, and s3://bkt/../../../
    bad = {2: "../../outside_secret.jpg", 4: str(tmp_path / "outside_secret.jpg"),
           6: "s3://bkt/../../../outside_secret.jpg"}
    lines = [_line(f"s3://field-bucket/hive-7/images/{name}") for name in good]
    for line_no in sorted(bad):
        lines.insert(line_no - 1, _line(bad[line_no]))
    manifest = root / "hive.manifest"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest, root, bad, good


def test_manifest_paths_outside_local_root_are_problems_naming_file_and_line(escaping_manifest) -> None:
    manifest, root, bad, good = escaping_manifest
    label_set = check_records(read_manifest(manifest, local_root=root))
    assert sorted(r.image_path.name for r in label_set.records) == good
    assert [p.where for p in label_set.problems] == [f"{manifest}:{line_no}" for line_no in sorted(bad)]
    for problem, ref in zip(label_set.problems, (bad[k] for k in sorted(bad))):
        assert problem.action == "skipped" and OUTSIDE in problem.reason and ref in problem.reason, problem
        assert "data.allow_outside_root" in problem.reason
    report = DataReport.from_label_set(label_set)
    assert len(report.problems_by_action["skipped"]) == 3 and f"{manifest}:6" in str(report)
    with pytest.raises(DataError, match=f"{manifest}:2"):
        label_set.raise_if_strict(True)


def test_manifest_paths_outside_load_with_allow_outside_root(escaping_manifest) -> None:
    manifest, root, bad, good = escaping_manifest
    label_set = check_records(read_manifest(manifest, local_root=root, allow_outside_root=True))
    assert label_set.problems == []
    assert len(label_set.records) == 7
    resolved = {r.source: r.image_path.resolve() for r in label_set.records}
    outside = root.parents[2]
    assert resolved[f"{manifest}:2"] == (outside / "a" / "outside_secret.jpg").resolve()
    assert resolved[f"{manifest}:4"] == (outside / "outside_secret.jpg").resolve()
    # The key search keeps the layout of earlier lines (one leading key part stripped): bkt/../../..
    # then climbs two folders from root, as it always did.
    assert resolved[f"{manifest}:6"] == (outside / "a" / "outside_secret.jpg").resolve()
    # The same knob through the source Hydra instantiates, and through the data CLIs' factory.
    assert len(ManifestSource(manifest, local_root=root, allow_outside_root=True).read().records) == 7
    assert len(ManifestSource(manifest, local_root=root).read().records) == 4
    assert len(source_for_path(manifest, allow_outside_root=True, local_root=root).read().records) == 7


def test_the_refusal_does_not_depend_on_whether_the_outside_file_exists(tmp_path: Path) -> None:
    """Decided on the text alone: a message must not tell which outside files exist."""
    root = tmp_path / "root"
    _jpeg(root / "images" / "a.jpg")
    (root / "m.manifest").write_text("\n".join([
        _line("images/a.jpg"), _line("../no_such_file.jpg"), _line("s3://bkt/../../no_such_file.jpg"),
        _line("s3://bkt/x/../images/a.jpg"),  # climbs within the key only: stays inside
    ]) + "\n")
    label_set = read_manifest(root / "m.manifest")
    assert [p.where.rsplit(":", 1)[1] for p in label_set.problems] == ["2", "3"]
    assert all(OUTSIDE in p.reason for p in label_set.problems)
    assert [r.image_path for r in label_set.records] == [root / "images" / "a.jpg"] * 2


def test_manifest_plain_paths_may_use_local_root_and_dot_dot_inside_is_collapsed(tmp_path: Path) -> None:
    root = tmp_path / "data"
    _jpeg(root / "images" / "a.jpg")
    (root / "labels").mkdir()
    manifest = root / "labels" / "m.manifest"
    manifest.write_text(_line("../images/a.jpg") + "\n" + _line("../images/../images/a.jpg") + "\n")
    assert read_manifest(manifest).problems != []  # outside the manifest's folder, which is the root by default
    label_set = read_manifest(manifest, local_root=root)
    assert label_set.problems == []
    # The collapsed path is what the record keeps: the file opened is the file checked.
    assert [r.image_path for r in label_set.records] == [root / "images" / "a.jpg"] * 2


def test_manifest_s3_prefix_keys_are_confined_too(tmp_path: Path) -> None:
    root = tmp_path / "root"
    _jpeg(root / "a.jpg")
    _jpeg(tmp_path / "secret.jpg")
    (root / "m.manifest").write_text(_line("s3://bkt/job/a.jpg") + "\n" + _line("s3://bkt/job/../../secret.jpg") + "\n")
    [problem] = read_manifest(root / "m.manifest", s3_prefix="s3://bkt/job/").problems
    assert problem.where.endswith("m.manifest:2") and OUTSIDE in problem.reason
    allowed = read_manifest(root / "m.manifest", s3_prefix="s3://bkt/job/", allow_outside_root=True)
    assert [r.image_path.name for r in allowed.records] == ["a.jpg", "secret.jpg"]


def test_coco_file_names_are_confined_to_image_root(tmp_path: Path) -> None:
    root = tmp_path / "coco"
    _jpeg(root / "images" / "a.jpg")
    _jpeg(tmp_path / "outside_secret.jpg")
    names = ["images/a.jpg", "../outside_secret.jpg", str(tmp_path / "outside_secret.jpg")]
    coco = {"images": [{"id": i + 1, "file_name": name, "width": WIDTH, "height": HEIGHT} for i, name in enumerate(names)],
            "annotations": [], "categories": [{"id": 1, "name": "bee"}]}
    path = root / "ann.json"
    path.write_text(json.dumps(coco))
    for image_root in (None, root):
        label_set = read_coco(path, image_root=image_root)
        assert [r.image_path for r in label_set.records] == [root / "images" / "a.jpg"]
        assert [p.where for p in label_set.problems] == [str(path)] * 2
        assert all(OUTSIDE in p.reason for p in label_set.problems)
        assert names[1] in label_set.problems[0].reason and names[2] in label_set.problems[1].reason
    assert len(read_coco(path, allow_outside_root=True).records) == 3


def _voc_xml(path: Path, filename: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"<annotation><filename>{filename}</filename><size><width>{WIDTH}</width>"
                    f"<height>{HEIGHT}</height></size><object><name>bee</name><bndbox><xmin>1</xmin><ymin>1</ymin>"
                    f"<xmax>9</xmax><ymax>9</ymax></bndbox></object></annotation>")


def test_voc_filenames_are_confined_to_the_image_folder(tmp_path: Path) -> None:
    export = tmp_path / "voc"
    _jpeg(export / "a.jpg")
    _jpeg(tmp_path / "outside_secret.jpg")
    _voc_xml(export / "a.xml", "a.jpg")
    _voc_xml(export / "b.xml", "../outside_secret.jpg")
    # A labelling machine's absolute path whose base name is in the folder: the file there is used.
    _voc_xml(export / "c.xml", "/home/labeller/frames/a.jpg")
    label_set = read_voc(export)
    assert [r.image_path for r in label_set.records] == [export / "a.jpg", export / "a.jpg"]
    [problem] = label_set.problems
    assert problem.where == str(export / "b.xml") and OUTSIDE in problem.reason and "../outside_secret.jpg" in problem.reason
    assert len(read_voc(export, allow_outside_root=True).records) == 3


def test_label_studio_refs_climbing_out_of_image_root_are_problems(tmp_path: Path) -> None:
    export = tmp_path / "ls"
    _jpeg(export / "frames" / "a.jpg")
    _jpeg(tmp_path / "outside_secret.jpg")
    tasks = [{"id": 1, "data": {"image": "/data/local-files/?d=frames/a.jpg"}, "annotations": [{"result": []}]},
             {"id": 2, "data": {"image": "/data/local-files/?d=../outside_secret.jpg"}, "annotations": [{"result": []}]},
             # An absolute path is the labelling server's: still looked for under image_root, as before.
             {"id": 3, "data": {"image": "/srv/ls/media/frames/a.jpg"}, "annotations": [{"result": []}]}]
    (export / "export.json").write_text(json.dumps(tasks))
    label_set = read_label_studio(export / "export.json")
    assert [r.image_path for r in label_set.records] == [export / "frames" / "a.jpg"] * 2
    [problem] = label_set.problems
    assert "task 1 (id 2)" in problem.where and str(export / "export.json") in problem.where
    assert OUTSIDE in problem.reason and "../outside_secret.jpg" in problem.reason
    allowed = read_label_studio(export / "export.json", allow_outside_root=True)
    assert allowed.problems == [] and allowed.records[1].image_path == tmp_path / "outside_secret.jpg"


def test_builtin_image_json_file_is_confined_to_the_images_folder(tmp_path: Path) -> None:
    images, annotations = tmp_path / "train", tmp_path / "train_annotation"
    _jpeg(images / "a.jpg")
    _jpeg(tmp_path / "outside_secret.jpg")
    annotations.mkdir()
    for stem, file in (("a", "a.jpg"), ("b", "../outside_secret.jpg")):
        (annotations / f"{stem}.json").write_text(json.dumps({
            "file": file, "image_size": [{"width": WIDTH, "height": HEIGHT, "depth": 3}], "annotations": [],
            "categories": [{"class_id": 0, "name": "bee"}]}))
    label_set = read_image_json(annotations)
    assert [r.image_path for r in label_set.records] == [images / "a.jpg"]
    [problem] = label_set.problems
    assert problem.where == str(annotations / "b.json") and OUTSIDE in problem.reason
    assert len(read_image_json(annotations, allow_outside_root=True).records) == 2


def test_yolo_symlinks_are_not_followed_so_beedets_own_export_reads_back(tmp_path: Path) -> None:
    """YOLO lists its images folder, so its paths cannot leave it; a symlink there (write_yolo's
    default) is the data owner's choice and is not resolved against the root."""
    originals = [ImageRecord(_jpeg(tmp_path / "elsewhere" / f"{i}.jpg", seed=i), WIDTH, HEIGHT,
                             boxes=[[1, 1, 9, 9]], labels=[0]) for i in range(2)]
    write_yolo(LabelSet(originals, ["bee"]), tmp_path / "yolo", image_mode="symlink")
    label_set = check_records(read_yolo(tmp_path / "yolo" / "images"))
    assert label_set.problems == [] and len(label_set.records) == 2


def test_inspect_cli_reports_outside_paths_and_takes_allow_outside_root(escaping_manifest, tmp_path: Path, capsys) -> None:
    manifest, root, bad, _ = escaping_manifest
    out = tmp_path / "report.json"
    assert inspect_cli.main([str(manifest), "--no-verify", "--json", str(out), "--strict"]) == 1
    skipped = json.loads(out.read_text())["problems"]["by_action"]["skipped"]
    assert [p["where"] for p in skipped] == [f"{manifest}:{k}" for k in sorted(bad)]
    assert inspect_cli.main([str(manifest), "--no-verify", "--strict", "--allow-outside-root"]) == 0


def test_data_allow_outside_root_is_a_config_key_threaded_into_the_sources(honeybee_mini: Path) -> None:
    from beedet.assembly import build_datamodule
    from helpers import CONF, compose_config

    manifest = honeybee_mini / "train.manifest"
    for name, extra in (("honeybee", [f"data.root={honeybee_mini}"]),
                        ("files", [f"data.train.path={manifest}", f"data.val.path={honeybee_mini / 'valid.manifest'}",
                                   f"data.train.local_root={honeybee_mini}", f"data.val.local_root={honeybee_mini}"])):
        for allow in (False, True):
            cfg = compose_config([f"data={name}", *extra, f"data.allow_outside_root={str(allow).lower()}"])
            datamodule = build_datamodule(cfg.data)
            assert datamodule.train_source.allow_outside_root is allow and datamodule.val_source.allow_outside_root is allow
            assert datamodule.allow_outside_root is allow and datamodule.max_pixels == DEFAULT_MAX_PIXELS
    synthetic = build_datamodule(compose_config(["data.max_pixels=null"]).data)
    assert synthetic.allow_outside_root is False and synthetic.max_pixels is None


# --- 2. one pixel limit for every decode -----------------------------------------------------------


def _bilevel_png(path: Path, width: int, height: int) -> Path:
    """A complete, valid 1-bit PNG of width x height black pixels: a few KB for tens of megapixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


@pytest.fixture
def no_pixel_decoding(monkeypatch):
    """Any pixel decode fails the test: refusals must come from the header alone."""
    def decoded(self, *args, **kwargs):
        raise AssertionError(f"pixels of {self.size} decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", decoded)


def test_the_default_limit_is_one_constant_shared_with_serving() -> None:
    from beedet.serving import handlers

    assert DEFAULT_MAX_PIXELS == 40_000_000
    assert handlers.DEFAULT_MAX_PIXELS is DEFAULT_MAX_PIXELS
    # The configs that spell it out (a YAML file cannot import the constant) say the same.
    from omegaconf import OmegaConf

    from helpers import CONF

    for name in ("predict.yaml", "serve.yaml", "data/synthetic.yaml", "data/honeybee.yaml", "data/files.yaml"):
        assert OmegaConf.load(CONF / name).max_pixels == DEFAULT_MAX_PIXELS, name


@pytest.mark.parametrize("size", [(8000, 6000), (20000, 10000)], ids=["48MP-over-ours", "200MP-over-pillows"])
def test_huge_png_is_refused_by_name_from_its_header(tmp_path: Path, size, no_pixel_decoding) -> None:
    path = _bilevel_png(tmp_path / "huge.png", *size)
    assert path.stat().st_size < 50_000
    for decode in (load_image, verify_image, lambda p: load_image_reduced(p, (300, 300)),
                   lambda p: read_image_size(p, max_pixels=DEFAULT_MAX_PIXELS),
                   lambda p: decode_image(p.read_bytes(), str(p))):
        with pytest.raises(ImageTooLarge) as info:
            decode(path)
        assert "huge.png" in str(info.value)
    if size == (8000, 6000):  # a header alone is safe to read (up to Pillow's own limit, 179 MP)
        assert read_image_size(path) == size


def test_a_huge_image_in_a_training_set_is_a_problem_by_name_and_never_decoded(tmp_path: Path, no_pixel_decoding) -> None:
    _bilevel_png(tmp_path / "images" / "huge.png", 8000, 6000)
    _bilevel_png(tmp_path / "images" / "small.png", WIDTH, HEIGHT)
    manifest = tmp_path / "m.manifest"
    manifest.write_text(_line("images/small.png") + "\n" + _line("images/huge.png", size=(8000, 6000)) + "\n")
    # Headers only (data.verify_images=false): verify_image, which decodes, is the next test's.
    label_set = check_records(read_manifest(manifest), verify_images=False)
    [problem] = label_set.problems
    assert problem.where == f"{manifest}:2" and "huge.png" in problem.reason and "40000000 allowed" in problem.reason
    assert [r.image_path.name for r in label_set.records] == ["small.png"]
    # A larger limit is the user's to set (here only the header is read: --no-verify).
    assert check_records(read_manifest(manifest), verify_images=False, max_pixels=50_000_000).problems == []


def test_verify_refuses_a_huge_image_and_the_dataset_never_decodes_one(tmp_path: Path) -> None:
    huge = _bilevel_png(tmp_path / "huge.png", 8000, 6000)
    small = _jpeg(tmp_path / "small.jpg")
    label_set = check_records(LabelSet([ImageRecord(huge, 8000, 6000, source="m:1"), ImageRecord(small, WIDTH, HEIGHT)],
                                       ["bee"]), verify_images=True)
    assert [p.where for p in label_set.problems] == ["m:1"] and "allowed" in label_set.problems[0].reason
    dataset = DetectionDataset([ImageRecord(huge, 8000, 6000), ImageRecord(small, WIDTH, HEIGHT)])
    image, target = dataset[0]  # replaced by the next sample that decodes
    assert int(target["image_id"]) == 1 and tuple(image.shape) == (3, HEIGHT, WIDTH)
    assert dataset.unreadable.tolist() == [True, False]


def test_predict_skips_an_image_over_the_limit(tmp_path: Path) -> None:
    from beedet.predict import _batches

    paths = [_bilevel_png(tmp_path / "huge.png", 8000, 6000), _jpeg(tmp_path / "small.jpg")]
    batches = list(_batches(paths, 4))
    assert [[p.name for p, _ in batch] for batch in batches] == [["small.jpg"]]
    assert [p.name for batch in _batches(paths, 4, max_pixels=10) for p, _ in batch] == []


def test_inspect_cli_applies_the_limit_and_takes_max_pixels(tmp_path: Path) -> None:
    _bilevel_png(tmp_path / "images" / "huge.png", 8000, 6000)
    (tmp_path / "m.manifest").write_text(_line("images/huge.png", size=(8000, 6000)) + "\n")
    assert inspect_cli.main([str(tmp_path / "m.manifest"), "--no-verify", "--strict"]) == 1
    assert inspect_cli.main([str(tmp_path / "m.manifest"), "--no-verify", "--strict", "--max-pixels", "48000000"]) == 0


# --- 3. empty files --------------------------------------------------------------------------------


def test_a_zero_byte_image_is_an_empty_file(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "empty.jpg").write_bytes(b"")
    for read in (load_image, read_image_size, verify_image):
        with pytest.raises(ImageError, match="empty file") as info:
            read(tmp_path / "images" / "empty.jpg")
        assert "empty.jpg" in str(info.value) and "unrecognised" not in str(info.value)
    with pytest.raises(ImageError, match="empty"):
        decode_image(b"", "the upload")
    _jpeg(tmp_path / "images" / "fine.jpg")
    (tmp_path / "m.manifest").write_text(_line("images/fine.jpg") + "\n" + _line("images/empty.jpg") + "\n")
    [problem] = check_records(read_manifest(tmp_path / "m.manifest")).problems
    assert problem.where.endswith("m.manifest:2") and "empty file" in problem.reason


# --- 4. a tolerant dataset -------------------------------------------------------------------------


def _records_with_truncated(tmp_path: Path, bad: set[int], count: int = 5) -> list[ImageRecord]:
    records = []
    for i in range(count):
        path = tmp_path / "images" / f"f{i}.jpg"
        (_truncated_jpeg if i in bad else _jpeg)(path, seed=i)
        records.append(ImageRecord(path, WIDTH, HEIGHT, boxes=[[1, 1, 9 + i, 9]], labels=[0], source=f"m:{i + 1}"))
    # verify_images=false reads headers only: truncated files pass, as in training.
    checked = check_records(LabelSet(records, ["bee"]), verify_images=False)
    assert len(checked.records) == count
    return checked.records


@pytest.mark.parametrize("num_workers", [0, 1])
def test_a_truncated_jpeg_is_replaced_and_counted_with_and_without_workers(tmp_path: Path, num_workers: int, caplog) -> None:
    records = _records_with_truncated(tmp_path, bad={1, 2})
    dataset = DetectionDataset(records)
    loader = DataLoader(dataset, batch_size=2, num_workers=num_workers, collate_fn=collate_detection)
    with caplog.at_level("WARNING", logger="beedet.data.dataset"):
        for _ in range(2):  # two epochs: counted once per file
            ids = [int(t["image_id"]) for _, targets in loader for t in targets]
            # Index 1 and 2 fail: both become index 3, the next image that decodes.
            assert ids == [0, 3, 3, 3, 4]
    assert int(dataset.unreadable.sum()) == 2
    assert [r.image_path.name for r in dataset.unreadable_records()] == ["f1.jpg", "f2.jpg"]
    if num_workers == 0:  # a worker's log records go to its own stderr, not to caplog
        assert "f1.jpg" in caplog.text and "f2.jpg" in caplog.text


def test_strict_or_nothing_decodable_raises(tmp_path: Path) -> None:
    records = _records_with_truncated(tmp_path, bad={0, 1, 2}, count=3)
    with pytest.raises(DataError, match="none of the 3 images decodes"):
        DetectionDataset(records)[0]
    with pytest.raises(ImageError, match="truncated"):
        DetectionDataset(records, replace_unreadable=False)[0]


def test_the_count_reaches_the_data_report(tmp_path: Path) -> None:
    """Through a BeeDataModule with a DataLoader worker, as in training: teardown adds one problem
    per bad file to the reports and rewrites the run's data_report.md."""
    for i in range(6):
        (_truncated_jpeg if i in (1, 4) else _jpeg)(tmp_path / "images" / f"f{i}.jpg", seed=i)
    (tmp_path / "train.manifest").write_text("\n".join(_line(f"images/f{i}.jpg") for i in range(4)) + "\n")
    (tmp_path / "val.manifest").write_text("\n".join(_line(f"images/f{i}.jpg") for i in range(4, 6)) + "\n")
    datamodule = BeeDataModule(ManifestSource(tmp_path / "train.manifest"), ManifestSource(tmp_path / "val.manifest"),
                               verify_images=False, batch_size=2, num_workers=1)
    datamodule.setup("fit")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "data_report.md").write_text(datamodule.reports_markdown())
    assert REPLACED_SAMPLE not in (run_dir / "data_report.md").read_text()
    datamodule.trainer = SimpleNamespace(is_global_zero=True, default_root_dir=str(run_dir), world_size=1)
    for loader in (datamodule.train_dataloader(), datamodule.val_dataloader()):
        assert sum(len(images) for images, _ in loader) == len(loader.dataset)
        del loader
    datamodule.teardown("fit")
    for split, name in (("train", "f1.jpg"), ("val", "f4.jpg")):
        [problem] = datamodule.reports[split].problems_by_action[REPLACED_SAMPLE]
        assert name in problem.reason and "truncated" in problem.reason, problem
    text = (run_dir / "data_report.md").read_text()
    assert text.count(f"#### {REPLACED_SAMPLE} (1)") == 2 and "f1.jpg" in text and "f4.jpg" in text
    datamodule.teardown("validate")  # noted once
    assert len(datamodule.reports["train"].problems_by_action[REPLACED_SAMPLE]) == 1


# --- 5. good boxes lost with skipped records -------------------------------------------------------


def test_the_report_counts_valid_boxes_lost_with_skipped_records(tmp_path: Path) -> None:
    for name in ("good.jpg", "offside.jpg", "unknown.jpg"):
        _jpeg(tmp_path / "images" / name)
    lines = [
        _line("images/good.jpg", [(0, 1, 1, 5, 5)]),
        _line("images/offside.jpg", [(0, 1, 1, 5, 5), (1, 2, 2, 5, 5), (0, 200, 1, 5, 5)]),  # 2 valid + 1 outside
        _line("images/missing.jpg", [(0, 1, 1, 5, 5), (0, 3, 3, 5, 5)]),  # 2 valid, no image
        _line("images/unknown.jpg", [(0, 1, 1, 5, 5), (0, 2, 1, 5, 5), (1, 3, 1, 5, 5), (7, 1, 1, 5, 5)]),  # 3 + class 7
    ]
    (tmp_path / "m.manifest").write_text("\n".join(lines) + "\n")
    label_set = check_records(read_manifest(tmp_path / "m.manifest"))
    assert [p.valid_boxes for p in label_set.problems] == [2, 2, 3]
    assert ", with 2 valid boxes)" in str(label_set.problems[0])
    report = DataReport.from_label_set(label_set)
    assert (report.skipped_records, report.skipped_valid_boxes) == (3, 7)
    assert report.to_dict()["problems"]["skipped_valid_boxes"] == 7
    assert [p["valid_boxes"] for p in report.to_dict()["problems"]["by_action"]["skipped"]] == [2, 2, 3]
    markdown = report.to_markdown()
    assert "| skipped records | 3, holding 7 valid boxes |" in markdown
    assert "#### skipped (3, holding 7 valid boxes)" in markdown
    assert "skipped 3, holding 7 valid boxes" in str(report)


def test_voc_unknown_class_counts_the_known_boxes_lost(tmp_path: Path) -> None:
    _jpeg(tmp_path / "a.jpg")
    (tmp_path / "a.xml").write_text(
        f"<annotation><filename>a.jpg</filename><size><width>{WIDTH}</width><height>{HEIGHT}</height></size>"
        + "".join(f"<object><name>{n}</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>9</xmax><ymax>9</ymax></bndbox></object>"
                  for n in ("bee", "bee", "wasp"))
        + "</annotation>")
    [problem] = read_voc(tmp_path, class_names=["bee"]).problems
    assert problem.valid_boxes == 2
