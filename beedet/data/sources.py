"""Where labelled images come from: one small dataclass per format, each with ``read() -> LabelSet``.

Hydra instantiates these by ``_target_`` (``conf/data/*.yaml``); the CLIs build them with
:func:`source_for_path`. Paths may be ``str`` (as Hydra passes them) or :class:`~pathlib.Path`.

``allow_outside_root`` (``data.allow_outside_root``, default false): image paths named by the label
file may lead outside its data root (:mod:`beedet.data.roots`); otherwise such a record is a
problem. YOLO, RecordIO and manifest-stream sources have no such option: their image paths come
from listing a folder or are kept inside the extraction folder, so they cannot leave it.
There is deliberately no format registry: a new format is a new dataclass here.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from beedet.data.coco import read_coco
from beedet.data.image_json import ANNOTATION_SUFFIX, read_image_json
from beedet.data.label_studio import class_names_from_config, read_label_studio
from beedet.data.manifest import read_manifest
from beedet.data.recordio import read_recordio
from beedet.data.records import LabelSet
from beedet.data.voc import read_voc
from beedet.data.yolo import read_yolo

# manifest-stream (a SageMaker Pipe channel's augmented manifest) is never detected: reading a pipe to
# find out what it holds would use it up, so it is asked for by name.
FORMATS = ("auto", "manifest", "coco", "yolo", "recordio", "image-json", "label-studio", "voc", "manifest-stream")


@dataclass
class ManifestSource:
    """A SageMaker Ground Truth bounding-box manifest; see :func:`beedet.data.manifest.read_manifest`."""

    path: str | Path
    label_attribute: str | None = None
    local_root: str | Path | None = None
    s3_prefix: str | None = None
    allow_outside_root: bool = False

    @property
    def name(self) -> str:
        return str(self.path)

    def read(self) -> LabelSet:
        return read_manifest(
            Path(self.path),
            label_attribute=self.label_attribute,
            local_root=Path(self.local_root) if self.local_root is not None else None,
            s3_prefix=self.s3_prefix,
            allow_outside_root=self.allow_outside_root,
        )


@dataclass
class CocoSource:
    """A COCO detection JSON; see :func:`beedet.data.coco.read_coco`."""

    path: str | Path
    image_root: str | Path | None = None
    allow_outside_root: bool = False

    @property
    def name(self) -> str:
        return str(self.path)

    def read(self) -> LabelSet:
        return read_coco(Path(self.path), image_root=_path(self.image_root), allow_outside_root=self.allow_outside_root)


@dataclass
class YoloSource:
    """A YOLO txt split (``images/`` + ``labels/``); see :func:`beedet.data.yolo.read_yolo`."""

    images: str | Path
    labels: str | Path | None = None
    class_names: Sequence[str] | None = None

    @property
    def name(self) -> str:
        return str(self.images)

    def read(self) -> LabelSet:
        return read_yolo(
            Path(self.images),
            Path(self.labels) if self.labels is not None else None,
            class_names=list(self.class_names) if self.class_names is not None else None,
        )


@dataclass
class RecordIOSource:
    """An MXNet RecordIO ``.rec`` packed by im2rec for SageMaker's built-in detector; see
    :func:`beedet.data.recordio.read_recordio` (its images are extracted to ``extract_dir``)."""

    path: str | Path
    idx: str | Path | None = None
    lst: str | Path | None = None
    extract_dir: str | Path | None = None
    class_names: Sequence[str] | None = None

    @property
    def name(self) -> str:
        return str(self.path)

    def read(self) -> LabelSet:
        return read_recordio(Path(self.path), idx_path=_path(self.idx), lst_path=_path(self.lst),
                             extract_dir=_path(self.extract_dir),
                             class_names=list(self.class_names) if self.class_names is not None else None)


@dataclass
class ManifestStreamSource:
    """A Ground Truth augmented manifest as a SageMaker Pipe-mode channel streams it
    (``AugmentedManifestFile``, RecordIO-wrapped: the built-in detector's way to take Ground Truth
    output); see :mod:`beedet.data.manifest_stream`. ``path``: the channel's pipe
    (``/opt/ml/input/data/<channel>_0``) or a file holding what one carried. Its images and a
    manifest are written to ``extract_dir`` (default: ``<name>_images/`` beside it) and read from
    there; a pipe is read once, later reads (other processes too) use that copy. Not a Hydra target
    of its own: configs name it through :func:`source_for_path` with ``fmt: manifest-stream``."""

    path: str | Path
    extract_dir: str | Path | None = None
    class_names: Sequence[str] | None = None

    @property
    def name(self) -> str:
        return str(self.path)

    def read(self) -> LabelSet:
        # Imported here: the stream reader needs POSIX file locks, which only this source uses.
        from beedet.data.manifest_stream import LABEL_ATTRIBUTE, materialize_stream

        path = Path(self.path)
        extract_dir = Path(self.extract_dir) if self.extract_dir is not None else path.with_name(f"{path.name}_images")
        manifest = materialize_stream(path, extract_dir,
                                      class_names=list(self.class_names) if self.class_names is not None else None)
        return read_manifest(manifest, label_attribute=LABEL_ATTRIBUTE, local_root=extract_dir)


@dataclass
class ImageJsonSource:
    """The built-in detector's "image format": one JSON per image in ``annotations``, images in
    ``images`` (default: ``train`` beside ``train_annotation``); see :mod:`beedet.data.image_json`."""

    annotations: str | Path
    images: str | Path | None = None
    allow_outside_root: bool = False

    @property
    def name(self) -> str:
        return str(self.annotations)

    def read(self) -> LabelSet:
        return read_image_json(Path(self.annotations), _path(self.images), allow_outside_root=self.allow_outside_root)


@dataclass
class LabelStudioSource:
    """A Label Studio JSON export; see :func:`beedet.data.label_studio.read_label_studio`. Class ids
    follow ``class_names``, else the labeling config ``config``, else sorted names."""

    path: str | Path
    image_root: str | Path | None = None
    class_names: Sequence[str] | None = None
    config: str | Path | None = None
    allow_outside_root: bool = False

    @property
    def name(self) -> str:
        return str(self.path)

    def read(self) -> LabelSet:
        names = list(self.class_names) if self.class_names is not None else None
        if names is None and self.config is not None:
            names = class_names_from_config(Path(self.config))
        return read_label_studio(Path(self.path), image_root=_path(self.image_root), class_names=names,
                                 allow_outside_root=self.allow_outside_root)


@dataclass
class VocSource:
    """Pascal VOC XML (CVAT, LabelImg); see :func:`beedet.data.voc.read_voc`."""

    path: str | Path
    image_root: str | Path | None = None
    class_names: Sequence[str] | None = None
    allow_outside_root: bool = False

    @property
    def name(self) -> str:
        return str(self.path)

    def read(self) -> LabelSet:
        return read_voc(Path(self.path), image_root=_path(self.image_root),
                        class_names=list(self.class_names) if self.class_names is not None else None,
                        allow_outside_root=self.allow_outside_root)


# Every source that reads labelled files (what source_for_path returns).
FileSource = (ManifestSource | CocoSource | YoloSource | RecordIOSource | ImageJsonSource | LabelStudioSource | VocSource
              | ManifestStreamSource)


def _path(value: str | Path | None) -> Path | None:
    return Path(value) if value is not None else None


@dataclass
class SyntheticSource:
    """Seeded synthetic bees, generated once under ``root`` as a Ground Truth manifest plus JPEGs,
    then read back through the same manifest reader real labeling-job output goes through."""

    root: str | Path
    split: str
    num_images: int
    image_size: int
    seed: int

    @property
    def name(self) -> str:
        return f"synthetic {self.split} ({self.root})"

    def read(self) -> LabelSet:
        # Imported here: generating images is only needed when this source is actually read.
        from beedet.data.synthetic import SYNTHETIC_S3_PREFIX, generate_split

        manifest_path = generate_split(root=Path(self.root), split=self.split, num_images=self.num_images,
                                       image_size=self.image_size, seed=self.seed)
        return read_manifest(manifest_path, local_root=Path(self.root), s3_prefix=SYNTHETIC_S3_PREFIX)


def detect_format(path: Path) -> str:
    """The format of ``path``, from its name and, for ``.json``, its top level:

    ``.manifest``/``.jsonl`` -> manifest; ``.rec`` -> recordio; ``.xml`` -> voc; ``.json`` -> coco
    (an object with ``images``) or label-studio (a list of tasks). A folder: yolo when it holds (or
    is) ``images/``; voc when it holds ``Annotations/`` or ``.xml`` files; image-json when it is a
    ``*_annotation`` channel or holds ``.json`` files.
    """
    path = Path(path)
    if path.is_dir():
        if (path / "images").is_dir() or path.name == "images":
            return "yolo"
        if (path / "Annotations").is_dir() or next(path.glob("*.xml"), None) is not None:
            return "voc"
        first_json = next(iter(sorted(path.glob("*.json"))), None)
        if path.name.endswith(ANNOTATION_SUFFIX) or first_json is not None:
            if first_json is not None and _json_format(first_json) == "coco" and _is_coco(first_json):
                raise ValueError(f"{path}: this folder holds a COCO file ({first_json.name}); point at the file itself")
            return "image-json"
        raise ValueError(f"{path}: cannot tell the format of this folder: no images/ subfolder (YOLO), no "
                         f"Annotations/ or .xml files (VOC), no .json files (the built-in detector's image format)")
    suffix = path.suffix.lower()
    if suffix in (".manifest", ".jsonl"):
        return "manifest"
    if suffix in (".rec", ".xml"):
        return "recordio" if suffix == ".rec" else "voc"
    if suffix == ".json":
        return _json_format(path)
    if not path.exists():
        raise ValueError(f"{path}: not found")
    raise ValueError(f"{path}: cannot tell the format from the name; pass the format explicitly "
                     f"({', '.join(FORMATS[1:])})")


def _is_coco(path: Path) -> bool:
    """True for a COCO detection file (an object with ``images``), False for one image's annotation."""
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(obj, dict) and "images" in obj


def _json_format(path: Path) -> str:
    # Peek at the first non-space character: a list is Label Studio's export, an object COCO's.
    # (The whole file is parsed by the reader; a missing file is reported there too.)
    try:
        with path.open("rb") as f:
            head = f.read(4096).lstrip()
    except OSError:
        return "coco"
    return "label-studio" if head.startswith(b"[") else "coco"


def source_for_path(
    path: str | Path,
    fmt: str = "auto",
    *,
    label_attribute: str | None = None,
    local_root: str | Path | None = None,
    s3_prefix: str | None = None,
    image_root: str | Path | None = None,
    labels: str | Path | None = None,
    class_names: Sequence[str] | None = None,
    images: str | Path | None = None,
    extract_dir: str | Path | None = None,
    lst: str | Path | None = None,
    idx: str | Path | None = None,
    label_studio_config: str | Path | None = None,
    allow_outside_root: bool = False,
) -> FileSource:
    """The source reading ``path`` in format ``fmt`` (``auto`` looks at the path; see
    :func:`detect_format`). Options that the format does not use raise ValueError, so a
    mistyped command line fails instead of being silently ignored. ``allow_outside_root`` is a
    permission, not a setting: formats whose paths cannot leave their folder (yolo, recordio)
    accept it and need it not (module docstring)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    path = Path(path)
    fmt = detect_format(path) if fmt == "auto" else fmt
    options = {"label_attribute": label_attribute, "local_root": local_root, "s3_prefix": s3_prefix,
               "image_root": image_root, "labels": labels, "class_names": class_names, "images": images,
               "extract_dir": extract_dir, "lst": lst, "idx": idx, "label_studio_config": label_studio_config}
    if fmt == "manifest":
        used = {"label_attribute", "local_root", "s3_prefix"}
        source = ManifestSource(path, label_attribute=label_attribute, local_root=local_root, s3_prefix=s3_prefix,
                                allow_outside_root=allow_outside_root)
    elif fmt == "coco":
        used = {"image_root"}
        source = CocoSource(path, image_root=image_root, allow_outside_root=allow_outside_root)
    elif fmt == "yolo":
        used = {"labels", "class_names"}
        yolo_images = path if path.name == "images" or not (path / "images").is_dir() else path / "images"
        source = YoloSource(yolo_images, labels=labels, class_names=class_names)
    elif fmt == "recordio":
        used = {"extract_dir", "lst", "idx", "class_names"}
        source = RecordIOSource(path, idx=idx, lst=lst, extract_dir=extract_dir, class_names=class_names)
    elif fmt == "image-json":
        used = {"images"}
        source = ImageJsonSource(path, images=images, allow_outside_root=allow_outside_root)
    elif fmt == "manifest-stream":
        used = {"extract_dir", "class_names"}
        source = ManifestStreamSource(path, extract_dir=extract_dir, class_names=class_names)
    elif fmt == "label-studio":
        used = {"image_root", "class_names", "label_studio_config"}
        source = LabelStudioSource(path, image_root=image_root, class_names=class_names, config=label_studio_config,
                                   allow_outside_root=allow_outside_root)
    else:
        used = {"image_root", "class_names"}
        source = VocSource(path, image_root=image_root, class_names=class_names, allow_outside_root=allow_outside_root)
    unused = sorted(k for k, v in options.items() if v is not None and k not in used)
    if unused:
        raise ValueError(f"{', '.join(unused)} does not apply to {fmt} data ({path})")
    return source


def add_source_arguments(parser: argparse.ArgumentParser) -> None:
    """The reader options shared by the data CLIs (``inspect``, ``convert``)."""
    group = parser.add_argument_group("reading")
    group.add_argument("--format", "--from", dest="format", choices=FORMATS, default="auto",
                       help="input format; auto: .manifest/.jsonl -> manifest, .json -> coco (an object) or "
                            "label-studio (a list), .rec -> recordio, .xml or a folder of them -> voc, a folder with "
                            "images/ -> yolo, a folder of .json -> image-json; manifest-stream (what a SageMaker Pipe "
                            "channel of an augmented manifest carries) only by name")
    group.add_argument("--label-attribute", help="manifest: the key holding the boxes (default: found automatically)")
    group.add_argument("--local-root", help="manifest: folder that s3:// source-refs map into "
                                            "(default: the manifest's folder)")
    group.add_argument("--s3-prefix", help="manifest: the S3 prefix that --local-root corresponds to "
                                           "(default: found by stripping key parts until the file exists)")
    group.add_argument("--image-root", help="coco, label-studio, voc: folder the image paths resolve under")
    group.add_argument("--labels", help="yolo: labels folder (default: the sibling labels/ of images/)")
    group.add_argument("--class-names", type=lambda s: [n.strip() for n in s.split(",")],
                       help="yolo, recordio, label-studio, voc, manifest-stream: comma-separated class names in id "
                            "order (default: yolo's data.yaml; else class_<i> for recordio and a stream without a "
                            "class map, sorted names for the others)")
    group.add_argument("--images", help="image-json: the images folder (default: train/ beside train_annotation/)")
    group.add_argument("--extract-dir", help="recordio, manifest-stream: folder the images are extracted to "
                                             "(default: <stem>_images/, a stream's <name>_images/)")
    group.add_argument("--lst", help="recordio: the im2rec .lst naming the images (default: <stem>.lst if present)")
    group.add_argument("--idx", help="recordio: the .idx index to check (default: <stem>.idx if present)")
    group.add_argument("--label-studio-config", help="label-studio: the labeling config whose labels give the class order")
    group.add_argument("--allow-outside-root", action="store_true",
                       help="let image paths in the label file lead outside its data root (--local-root, "
                            "--image-root, or the label file's folder); by default such a record is a problem")


def source_from_args(args: argparse.Namespace, path: str | Path) -> FileSource:
    return source_for_path(path, args.format, label_attribute=args.label_attribute, local_root=args.local_root,
                           s3_prefix=args.s3_prefix, image_root=args.image_root, labels=args.labels,
                           class_names=args.class_names, images=args.images, extract_dir=args.extract_dir,
                           lst=args.lst, idx=args.idx, label_studio_config=args.label_studio_config,
                           allow_outside_root=args.allow_outside_root)
