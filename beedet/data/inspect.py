"""Check a labelled data set and report what is in it.

    python -m beedet.data.inspect ../shared/data/honeybee-mini/train.manifest
    python -m beedet.data.inspect ../shared/data/honeybee-mini/train --markdown report.md

Reads the data (Ground Truth manifest, COCO, YOLO, RecordIO, the built-in detector's per-image JSON,
Label Studio export or Pascal VOC), checks every record against its image (missing,
corrupt, truncated, empty or too large files, wrong sizes, boxes outside the image, unknown
classes, image paths outside the data root) and prints
counts, boxes per class, box-size percentiles and every problem. ``--strict`` exits with status
1 when there is any problem, for CI on a labelling repository.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from beedet.data.checks import check_records
from beedet.data.data_report import DataReport
from beedet.data.images import DEFAULT_MAX_PIXELS
from beedet.data.records import DataError
from beedet.data.sources import add_source_arguments, source_from_args


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m beedet.data.inspect", description=__doc__.split("\n\n")[0])
    parser.add_argument("data", help="labelled data: a Ground Truth .manifest/.jsonl, a COCO .json, a YOLO split folder, a RecordIO .rec, "
                             "a folder of the built-in detector's per-image .json, a Label Studio export .json, or VOC .xml")
    add_source_arguments(parser)
    parser.add_argument("--no-verify", action="store_true",
                        help="read image headers only instead of decoding every image (faster, "
                             "but truncated files go unnoticed)")
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                        help="refuse images with more pixels (width x height), from their headers "
                             f"(default: {DEFAULT_MAX_PIXELS}, as training and serving)")
    parser.add_argument("--strict", action="store_true", help="exit with status 1 if there is any problem")
    parser.add_argument("--json", type=Path, help="also write the report as JSON here")
    parser.add_argument("--markdown", type=Path, help="also write the report as Markdown here")
    args = parser.parse_args(argv)

    try:
        source = source_from_args(args, args.data)
        label_set = check_records(source.read(), verify_images=not args.no_verify, max_pixels=args.max_pixels)
    except (DataError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report = DataReport.from_label_set(label_set, name=source.name)
    print(report)
    if args.json:
        args.json.write_text(json.dumps(report.to_dict(), indent=2), encoding="utf-8")
    if args.markdown:
        args.markdown.write_text(report.to_markdown(), encoding="utf-8")
    if args.strict and report.problems:
        print(f"strict: {len(report.problems)} data problem(s)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
