"""Convert labelled data to a Ground Truth manifest, COCO JSON or YOLO txt, from any format beedet
reads (those three, RecordIO, the built-in detector's per-image JSON, Label Studio, Pascal VOC).

    python -m beedet.data.convert train.manifest train_coco.json --to coco
    python -m beedet.data.convert train_coco.json yolo_train/ --to yolo
    python -m beedet.data.convert yolo_train/ train.manifest --to manifest \\
        --out-s3-prefix s3://my-bucket/bees/ --out-image-root yolo_train/

Records are checked against their images first (as ``beedet.data.inspect`` does), so only
usable records are written; every problem is printed. The ``--out-*`` options shape the output;
the reading options (``--s3-prefix``, ``--local-root``, ...) describe the input.

A manifest or COCO file names its images relative to its own folder (or ``--out-image-root``). When
the images lie outside that folder, readers refuse those paths by default (``beedet.data.roots``),
so a note says how to read the file back: with ``--allow-outside-root`` (``data.allow_outside_root``),
or (manifest) a ``--local-root`` that holds the images, or (COCO) ``--out-image-root`` on writing and
the same ``--image-root`` on reading.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from beedet.data.checks import check_records
from beedet.data.coco import write_coco
from beedet.data.data_report import DataReport
from beedet.data.images import DEFAULT_MAX_PIXELS
from beedet.data.manifest import write_manifest
from beedet.data.records import DataError, LabelSet
from beedet.data.roots import is_inside
from beedet.data.sources import add_source_arguments, source_from_args
from beedet.data.yolo import write_yolo


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m beedet.data.convert", description=__doc__.split("\n\n")[0])
    parser.add_argument("src", help="labelled data: a Ground Truth .manifest/.jsonl, a COCO .json, a YOLO split folder, a RecordIO .rec, "
                             "a folder of the built-in detector's per-image .json, a Label Studio export .json, or VOC .xml")
    parser.add_argument("dst", type=Path, help="output: a manifest or COCO file, or a YOLO folder")
    parser.add_argument("--to", required=True, choices=("manifest", "coco", "yolo"), help="output format")
    add_source_arguments(parser)
    out = parser.add_argument_group("writing")
    out.add_argument("--out-s3-prefix", help="manifest: write source-ref as this prefix + the image path "
                                             "relative to --out-image-root (default: paths relative to the manifest)")
    out.add_argument("--out-image-root", type=Path,
                     help="manifest/coco: folder image paths are written relative to "
                          "(default: the output file's folder)")
    out.add_argument("--out-label-attribute", default="bee-boxes", help="manifest: label attribute to write")
    out.add_argument("--job-name", default="beedet", help="manifest: labeling job name to write")
    out.add_argument("--image-mode", choices=("symlink", "copy"), default="symlink", help="yolo: how images are placed")
    parser.add_argument("--no-verify", action="store_true",
                        help="read image headers only instead of decoding every image")
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                        help=f"refuse images with more pixels, from their headers (default: {DEFAULT_MAX_PIXELS})")
    parser.add_argument("--strict", action="store_true", help="write nothing and exit 1 if there is any problem")
    args = parser.parse_args(argv)

    try:
        source = source_from_args(args, args.src)
        label_set = check_records(source.read(), verify_images=not args.no_verify, max_pixels=args.max_pixels)
    except (DataError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if label_set.problems:
        print(DataReport.from_label_set(label_set, name=source.name))
        if args.strict:
            print(f"strict: {len(label_set.problems)} data problem(s); nothing written", file=sys.stderr)
            return 1
    try:
        _write(label_set, args)
    except (DataError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    boxes = sum(r.num_boxes for r in label_set.records)
    print(f"wrote {len(label_set.records)} images, {boxes} boxes, {len(label_set.class_names)} classes "
          f"as {args.to} to {args.dst}")
    _note_paths_outside(label_set, args)
    return 0


def _note_paths_outside(label_set: LabelSet, args: argparse.Namespace) -> None:
    """Say so when the written paths lead outside the folder they are relative to (module docstring)."""
    if args.to == "yolo" or (args.to == "manifest" and args.out_s3_prefix):
        return  # images placed inside the output folder / keys under --out-image-root (checked on writing)
    root = args.out_image_root if args.to == "coco" and args.out_image_root is not None else args.dst.parent
    outside = sum(not is_inside(r.image_path, root) for r in label_set.records)
    if outside:
        other = ("with --local-root set to a folder that holds the images" if args.to == "manifest" else
                 "write it with --out-image-root set to a folder that holds the images and read it with --image-root "
                 "set to the same folder")
        print(f"note: {outside} of {len(label_set.records)} image paths lead outside {root}, which readers refuse "
              f"by default: read {args.dst} with --allow-outside-root (data.allow_outside_root=true), or {other}")


def _write(label_set: LabelSet, args: argparse.Namespace) -> None:
    if args.to == "manifest":
        write_manifest(label_set, args.dst, label_attribute=args.out_label_attribute, job_name=args.job_name,
                       s3_prefix=args.out_s3_prefix, image_root=args.out_image_root)
    elif args.to == "coco":
        write_coco(label_set, args.dst, image_root=args.out_image_root)
    else:
        write_yolo(label_set, args.dst, image_mode=args.image_mode)


if __name__ == "__main__":
    raise SystemExit(main())
