"""Evaluate any COCO-format detections: ``python -m beedet.cocoeval GT.json DETS.json``.

Prints the COCO box metrics (pycocotools semantics, see ``beedet.evaluation.coco_metrics``) as JSON:
the 12 stats at top level plus ``per_class_AP`` and ``per_class_AP50``. ``DETS.json`` is a list
of results ``{image_id, category_id, bbox [x, y, w, h], score}`` or a dict whose
``annotations`` key holds that list. Exit status 0 on success, 2 on unusable input.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from beedet.evaluation.coco_json import CocoFormatError, check_detections, check_ground_truth
from beedet.evaluation.coco_metrics import evaluate_coco


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        ground_truth = _read_json(args.ground_truth)
        check_ground_truth(ground_truth, where=str(args.ground_truth))
        detections = _detection_list(_read_json(args.detections), args.detections)
        check_detections(
            detections,
            image_ids={image["id"] for image in ground_truth["images"]},
            category_ids={category["id"] for category in ground_truth["categories"]},
            where=str(args.detections),
        )
    except CocoFormatError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    summary = evaluate_coco(ground_truth, detections).to_dict()
    text = json.dumps(summary, indent=2)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m beedet.cocoeval",
        description="COCO box metrics (mAP@[.5:.95], AP50, AP75, AP/AR by size, per-class AP) of detections.",
    )
    parser.add_argument("ground_truth", type=Path, metavar="GT.json", help="COCO ground truth")
    parser.add_argument(
        "detections", type=Path, metavar="DETS.json", help="COCO results (a list, or a dict with 'annotations')"
    )
    parser.add_argument("--iou-type", choices=["bbox"], default="bbox", help="only box IoU is supported")
    parser.add_argument("--out", type=Path, default=None, metavar="metrics.json", help="also write the JSON here")
    return parser


def _read_json(path: Path) -> Any:
    try:
        with path.open() as file:
            return json.load(file)
    except OSError as error:
        raise CocoFormatError(f"{path}: cannot read: {error.strerror or error}") from error
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CocoFormatError(f"{path}: not valid JSON: {error}") from error


def _detection_list(loaded: Any, path: Path) -> Any:
    if isinstance(loaded, dict):
        if "annotations" not in loaded:
            raise CocoFormatError(f"{path}: a detections object needs an 'annotations' list")
        return loaded["annotations"]
    return loaded


if __name__ == "__main__":
    raise SystemExit(main())
