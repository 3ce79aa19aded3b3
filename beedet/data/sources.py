"""Where labelled images come from: one small dataclass per format, each with ``read() -> LabelSet``.

Hydra instantiates these by ``_target_`` (``conf/data/*.yaml``); the CLIs build them with
:func:`source_for_path`. Paths may be ``str`` (as Hydra passes them) or :class:`~pathlib.Path`.
There is deliberately no format registry: a new format is a new dataclass here.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from beedet.data.coco import read_coco
from beedet.data.manifest import read_manifest
from beedet.data.records import LabelSet
from beedet.data.yolo import read_yolo

FORMATS = ("auto", "manifest", "coco", "yolo")
# The prefix the synthetic generator writes into source-ref, mapped back onto its root on reading.
SYNTHETIC_S3_PREFIX = "s3://beedet-synthetic/"


@dataclass
class ManifestSource:
    """A SageMaker Ground Truth bounding-box manifest; see :func:`beedet.data.manifest.read_manifest`."""

    path: str | Path
    label_attribute: str | None = None
    local_root: str | Path | None = None
    s3_prefix: str | None = None

    @property
    def name(self) -> str:
        return str(self.path)

    def read(self) -> LabelSet:
        return read_manifest(
            Path(self.path),
            label_attribute=self.label_attribute,
            local_root=Path(self.local_root) if self.local_root is not None else None,
            s3_prefix=self.s3_prefix,
        )


@dataclass
class CocoSource:
    """A COCO detection JSON; see :func:`beedet.data.coco.read_coco`."""

    path: str | Path
    image_root: str | Path | None = None

    @property
    def name(self) -> str:
        return str(self.path)

    def read(self) -> LabelSet:
        return read_coco(Path(self.path), image_root=Path(self.image_root) if self.image_root is not None else None)


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
        from beedet.data.synthetic import generate_split

        manifest_path = generate_split(root=Path(self.root), split=self.split, num_images=self.num_images,
                                       image_size=self.image_size, seed=self.seed)
        return read_manifest(manifest_path, local_root=Path(self.root), s3_prefix=SYNTHETIC_S3_PREFIX)


def detect_format(path: Path) -> str:
    """``manifest`` for ``.manifest``/``.jsonl``, ``coco`` for ``.json``, ``yolo`` for a folder
    holding ``images/`` (or an ``images`` folder itself)."""
    path = Path(path)
    if path.is_dir():
        if (path / "images").is_dir() or path.name == "images":
            return "yolo"
        raise ValueError(f"{path}: a folder is read as YOLO, but it has no images/ subfolder "
                         f"(point at a split folder such as train/)")
    suffix = path.suffix.lower()
    if suffix in (".manifest", ".jsonl"):
        return "manifest"
    if suffix == ".json":
        return "coco"
    if not path.exists():
        raise ValueError(f"{path}: not found")
    raise ValueError(f"{path}: cannot tell the format from the name; pass the format explicitly "
                     f"(manifest, coco or yolo)")


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
) -> ManifestSource | CocoSource | YoloSource:
    """The source reading ``path`` in format ``fmt`` (``auto`` looks at the path; see
    :func:`detect_format`). Options that the format does not use raise ValueError, so a
    mistyped command line fails instead of being silently ignored."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    path = Path(path)
    fmt = detect_format(path) if fmt == "auto" else fmt
    options = {"label_attribute": label_attribute, "local_root": local_root, "s3_prefix": s3_prefix,
               "image_root": image_root, "labels": labels, "class_names": class_names}
    if fmt == "manifest":
        used = {"label_attribute", "local_root", "s3_prefix"}
        source = ManifestSource(path, label_attribute=label_attribute, local_root=local_root, s3_prefix=s3_prefix)
    elif fmt == "coco":
        used = {"image_root"}
        source = CocoSource(path, image_root=image_root)
    else:
        used = {"labels", "class_names"}
        images = path if path.name == "images" or not (path / "images").is_dir() else path / "images"
        source = YoloSource(images, labels=labels, class_names=class_names)
    unused = sorted(k for k, v in options.items() if v is not None and k not in used)
    if unused:
        raise ValueError(f"{', '.join(unused)} does not apply to {fmt} data ({path})")
    return source


def add_source_arguments(parser: argparse.ArgumentParser) -> None:
    """The reader options shared by the data CLIs (``inspect``, ``convert``)."""
    group = parser.add_argument_group("reading")
    group.add_argument("--format", "--from", dest="format", choices=FORMATS, default="auto",
                       help="input format; auto: .manifest/.jsonl -> manifest, .json -> coco, "
                            "a folder with images/ -> yolo")
    group.add_argument("--label-attribute", help="manifest: the key holding the boxes (default: found automatically)")
    group.add_argument("--local-root", help="manifest: folder that s3:// source-refs map into "
                                            "(default: the manifest's folder)")
    group.add_argument("--s3-prefix", help="manifest: the S3 prefix that --local-root corresponds to "
                                           "(default: found by stripping key parts until the file exists)")
    group.add_argument("--image-root", help="coco: folder that file_name is relative to")
    group.add_argument("--labels", help="yolo: labels folder (default: the sibling labels/ of images/)")
    group.add_argument("--class-names", type=lambda s: [n.strip() for n in s.split(",")],
                       help="yolo: comma-separated class names, id order (default: data.yaml, else class_<i>)")


def source_from_args(args: argparse.Namespace, path: str | Path) -> ManifestSource | CocoSource | YoloSource:
    return source_for_path(path, args.format, label_attribute=args.label_attribute, local_root=args.local_root,
                           s3_prefix=args.s3_prefix, image_root=args.image_root, labels=args.labels,
                           class_names=args.class_names)
