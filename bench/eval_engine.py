"""mAP evaluation engine: beedet's COCO evaluation vs plain pycocotools (and faster-coco-eval).

    python bench/eval_engine.py --quick        # 2,000 images: about 2 CPU minutes, 85 % of them pycocotools
    python bench/eval_engine.py                # 5,000 images
    python bench/eval_engine.py --images 40    # the smallest size (what the test runs)

Every engine gets the same ground truth and detections, made up deterministically from a seed:
hive-entrance frames (1920x1080) with bee-sized boxes (median side 44 px) of four classes (bee,
pollenbee, drone, queen; queens rare), crowded frames, crowd regions (``iscrowd``) with detections
on them, misses, duplicates, mislabelled boxes, a low-score tail of false positives, scores
rounded to 2 decimals (many ties) and at most 100 detections per image (the detector's cap).

Two comparisons, each timed from in-memory ground truth and detections to the 12 COCO stats:

* **validation**: what ``DetectionModule`` does after each validation epoch,
  ``beedet.evaluation.coco_metrics.evaluate_records(records, predictions)`` with per-image prediction
  tensors. Records hold no crowd regions, so this ground truth has none.
* **coco**: ``evaluate_coco(ground_truth, detections)`` on COCO dicts with crowd regions, the path
  of ``python -m beedet.cocoeval``.

The peers get the same boxes as COCO dicts (converted untimed). Timed for pycocotools: ``loadRes``
+ ``evaluate`` + ``accumulate`` + ``summarize``, the ground-truth index (``COCO()``) built before
the clock starts; faster-coco-eval the same, used plainly (``COCOeval_faster``); beedet the whole
call, conversions and checks included. pycocotools runs once (it is the slow one), the others
``--repeats`` times (median). The bar: every stat within 1e-6 of pycocotools and at least 6x
faster. Wall and CPU (process) seconds are both written: on a shared machine CPU seconds are the
steadier ratio.

Writes ``bench/results/eval_engine-<device>.json`` (machine, versions, workload, timings, ratios,
stats) and prints a table.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib.metadata
import io
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from machine import describe_machine, write_results

REPO = Path(__file__).resolve().parents[1]
SIZES = {"quick": 2000, "full": 5000}  # images
BAR_RATIO = 6.0
BAR_TOLERANCE = 1e-6

CLASS_NAMES = ("bee", "pollenbee", "drone", "queen")
_CLASS_SHARE = np.array([0.78, 0.15, 0.06, 0.01])  # workers outnumber queens about 100 to 1
_CLASS_SIZE = np.array([1.0, 1.05, 1.25, 1.35])  # drones and queens are larger
FRAME_W, FRAME_H = 1920, 1080
MAX_DETECTIONS_PER_IMAGE = 100


@dataclass(frozen=True)
class Frame:
    """One image: ground truth ``gt_boxes`` float32 (G, 4) xyxy pixels (whole pixels, as
    labellers draw them), ``gt_labels`` int64 (G,) 0-based class ids, ``gt_crowd`` bool (G,);
    detections ``boxes`` float32 (D, 4) xyxy pixels, ``scores`` float32 (D,), ``labels`` int64 (D,)."""

    gt_boxes: np.ndarray
    gt_labels: np.ndarray
    gt_crowd: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray


def make_workload(num_images: int, seed: int = 0) -> list[Frame]:
    """Deterministic bee-like ground truth and detections for ``num_images`` frames."""
    rng = np.random.default_rng(seed)
    return [_frame(rng, index) for index in range(num_images)]


def _bee_boxes(rng: np.random.Generator, labels: np.ndarray) -> np.ndarray:
    side = np.exp(rng.normal(np.log(44.0), 0.38, len(labels))) * _CLASS_SIZE[labels]
    aspect = np.exp(rng.normal(0.0, 0.25, len(labels)))
    w, h = np.clip(side * aspect, 2.0, FRAME_W - 2.0), np.clip(side / aspect, 2.0, FRAME_H - 2.0)
    x, y = rng.uniform(0, FRAME_W - w), rng.uniform(0, FRAME_H - h)
    return np.stack([x, y, x + w, y + h], axis=1)


def _frame(rng: np.random.Generator, index: int) -> Frame:
    kind = rng.random()
    mean_bees = 0 if kind < 0.08 else 12 if kind < 0.70 else 35 if kind < 0.95 else 90  # empty ... crowded
    labels = rng.choice(len(CLASS_NAMES), size=int(rng.poisson(mean_bees)), p=_CLASS_SHARE)
    boxes = np.round(_bee_boxes(rng, labels))  # labellers draw whole pixels
    # Crowd regions: a cluster labelled as one box, in every 16th frame and a few more.
    num_crowd = int(rng.integers(1, 3)) if index % 16 == 5 or rng.random() < 0.03 else 0
    crowd_w, crowd_h = rng.uniform(150, 450, num_crowd), rng.uniform(120, 350, num_crowd)
    crowd_x, crowd_y = rng.uniform(0, FRAME_W - crowd_w), rng.uniform(0, FRAME_H - crowd_h)
    crowd = np.round(np.stack([crowd_x, crowd_y, crowd_x + crowd_w, crowd_y + crowd_h], axis=1))

    # Hits (90 % of bees over 32 px, 70 % of smaller ones), 10 % duplicated; jitter spreads
    # their IoUs over COCO's thresholds; 8 % get a wrong class.
    side = np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    found = rng.random(len(labels)) < np.where(side > 32, 0.9, 0.7)
    hits = np.concatenate([np.flatnonzero(found), np.flatnonzero(found & (rng.random(len(labels)) < 0.1))])
    wh = np.tile(boxes[hits, 2:] - boxes[hits, :2], 2)
    hit_boxes = boxes[hits] + rng.normal(0, 1, (len(hits), 4)) * rng.uniform(0.02, 0.18, (len(hits), 1)) * wh
    hit_boxes[:, 2:] = np.maximum(hit_boxes[:, 2:], hit_boxes[:, :2] + 2.0)
    relabel = rng.random(len(hits)) < 0.08
    hit_labels = np.where(relabel, rng.choice(len(CLASS_NAMES), size=len(hits), p=_CLASS_SHARE), labels[hits])
    hit_scores = np.clip(rng.normal(0.72, 0.15, len(hits)), 0.05, 0.99)
    # Bees inside crowd regions, found one by one.
    on_crowd = [np.zeros((0, 4))]
    for x1, y1, x2, y2 in crowd:
        n = int(rng.integers(3, 12))
        s = np.exp(rng.normal(np.log(44.0), 0.3, n))
        x, y = rng.uniform(x1, np.maximum(x1, x2 - s)), rng.uniform(y1, np.maximum(y1, y2 - s))
        on_crowd.append(np.stack([x, y, x + s, y + s], axis=1))
    crowd_boxes = np.concatenate(on_crowd)
    crowd_scores = np.clip(rng.normal(0.6, 0.15, len(crowd_boxes)), 0.05, 0.99)
    # The low-score tail a detector emits at a score threshold of 0.01.
    fp_labels = rng.choice(len(CLASS_NAMES), size=int(rng.poisson(35 + 0.3 * len(labels))), p=_CLASS_SHARE)
    fp_boxes, fp_scores = _bee_boxes(rng, fp_labels), rng.beta(1.5, 4.0, len(fp_labels))

    det_boxes = np.clip(np.concatenate([hit_boxes, crowd_boxes, fp_boxes]), 0, [FRAME_W, FRAME_H, FRAME_W, FRAME_H])
    det_labels = np.concatenate([hit_labels, np.zeros(len(crowd_boxes), np.int64), fp_labels]).astype(np.int64)
    scores = np.round(np.concatenate([hit_scores, crowd_scores, fp_scores]), 2)  # 2 decimals: many ties
    keep = np.argsort(-scores, kind="stable")[:MAX_DETECTIONS_PER_IMAGE]
    return Frame(
        gt_boxes=np.concatenate([boxes, crowd]).astype(np.float32),
        gt_labels=np.concatenate([labels, np.zeros(num_crowd, np.int64)]).astype(np.int64),
        gt_crowd=np.r_[np.zeros(len(labels), bool), np.ones(num_crowd, bool)],
        boxes=det_boxes[keep].astype(np.float32),
        scores=scores[keep].astype(np.float32),
        labels=det_labels[keep],
    )


# ---- the inputs each engine receives ------------------------------------------------------------


def validation_inputs(frames: list[Frame]) -> tuple[list, list[dict]]:
    """What ``DetectionModule`` evaluates: records (non-crowd boxes) and per-image prediction tensors."""
    import torch

    from beedet.data.records import ImageRecord

    records = [
        ImageRecord(f"frame-{i}.jpg", FRAME_W, FRAME_H, f.gt_boxes[~f.gt_crowd], f.gt_labels[~f.gt_crowd])
        for i, f in enumerate(frames)
    ]
    predictions = [
        {"boxes": torch.from_numpy(f.boxes), "scores": torch.from_numpy(f.scores), "labels": torch.from_numpy(f.labels)}
        for f in frames
    ]
    return records, predictions


def coco_inputs(frames: list[Frame], *, crowd: bool) -> tuple[dict, list[dict]]:
    """The same boxes as COCO dicts: image id = index + 1, category id = class id + 1, ``[x, y,
    w, h]`` and area ``w * h`` in float64 of the float32 boxes (what ``evaluate_records`` uses);
    crowd regions only with ``crowd``."""
    images, annotations, detections = [], [], []
    for index, frame in enumerate(frames):
        image_id = index + 1
        images.append({"id": image_id, "width": FRAME_W, "height": FRAME_H, "file_name": f"frame-{index}.jpg"})
        gt = frame.gt_boxes.astype(np.float64)
        for (x1, y1, x2, y2), label, is_crowd in zip(gt.tolist(), frame.gt_labels.tolist(), frame.gt_crowd.tolist()):
            if is_crowd and not crowd:
                continue
            w, h = x2 - x1, y2 - y1
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": label + 1,
                                "bbox": [x1, y1, w, h], "area": w * h, "iscrowd": int(is_crowd)})
        boxes = frame.boxes.astype(np.float64)
        xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
        for bbox, score, label in zip(xywh.tolist(), frame.scores.astype(np.float64).tolist(), frame.labels.tolist()):
            detections.append({"image_id": image_id, "category_id": label + 1, "bbox": bbox, "score": score})
    categories = [{"id": k + 1, "name": name} for k, name in enumerate(CLASS_NAMES)]
    return {"images": images, "annotations": annotations, "categories": categories}, detections


# ---- the engines, each timed from in-memory inputs to the 12 stats ------------------------------


@dataclass
class Timing:
    wall_s: float
    cpu_s: float
    stats: list[float]
    runs: int

    def to_dict(self) -> dict[str, Any]:
        return {"wall_s": round(self.wall_s, 4), "cpu_s": round(self.cpu_s, 4), "runs": self.runs}


def _timed(run: Callable[[], list[float]], repeats: int) -> Timing:
    """Median wall and CPU seconds of ``repeats`` calls of ``run`` (which returns the 12 stats)."""
    walls, cpus, stats = [], [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        stats = run()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return Timing(statistics.median(walls), statistics.median(cpus), [float(s) for s in stats], repeats)


def time_pycocotools(ground_truth: dict, detections: list[dict], repeats: int) -> Timing:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(ground_truth)
        coco_gt.createIndex()
    results = [copy.deepcopy(detections) for _ in range(repeats)]  # loadRes writes into the dicts

    def run() -> list[float]:
        with contextlib.redirect_stdout(io.StringIO()):
            evaluator = COCOeval(coco_gt, coco_gt.loadRes(results.pop()), "bbox")
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        return list(evaluator.stats)

    return _timed(run, repeats)


def time_faster_coco_eval(ground_truth: dict, detections: list[dict], repeats: int) -> Timing:
    from faster_coco_eval import COCO, COCOeval_faster

    coco_gt = COCO(copy.deepcopy(ground_truth))
    results = [copy.deepcopy(detections) for _ in range(repeats)]

    def run() -> list[float]:
        with contextlib.redirect_stdout(io.StringIO()):
            evaluator = COCOeval_faster(coco_gt, coco_gt.loadRes(results.pop()), iouType="bbox")
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        return list(evaluator.stats[:12])

    return _timed(run, repeats)


def time_beedet_validation(records: list, predictions: list[dict], repeats: int, **settings: Any) -> Timing:
    from beedet.evaluation.coco_metrics import evaluate_records

    return _timed(lambda: list(evaluate_records(records, predictions, CLASS_NAMES, **settings).stats.values()), repeats)


def time_beedet_coco(ground_truth: dict, detections: list[dict], repeats: int) -> Timing:
    from beedet.evaluation.coco_metrics import evaluate_coco

    return _timed(lambda: list(evaluate_coco(ground_truth, detections).stats.values()), repeats)


def compare(name: str, reference: Timing, peers: dict[str, Timing]) -> dict[str, Any]:
    """Ratios to pycocotools and the largest stat difference from it, per engine."""
    result: dict[str, Any] = {"pycocotools": {**reference.to_dict(), "stats": reference.stats}}
    for engine, timing in peers.items():
        result[engine] = {
            **timing.to_dict(),
            "x_pycocotools_wall": round(reference.wall_s / timing.wall_s, 2),
            "x_pycocotools_cpu": round(reference.cpu_s / timing.cpu_s, 2),
            "max_abs_stat_diff": float(np.max(np.abs(np.subtract(timing.stats, reference.stats)))),
        }
    return {"comparison": name, **result}


def describe_workload(frames: list[Frame], seed: int) -> dict[str, Any]:
    gt_labels = np.concatenate([f.gt_labels[~f.gt_crowd] for f in frames])
    scores = np.concatenate([f.scores for f in frames])
    per_image = np.array([len(f.scores) for f in frames])
    return {
        "images": len(frames),
        "seed": seed,
        "frame": [FRAME_W, FRAME_H],
        "classes": list(CLASS_NAMES),
        "gt_boxes": len(gt_labels),
        "gt_boxes_per_class": {name: int(np.sum(gt_labels == k)) for k, name in enumerate(CLASS_NAMES)},
        "crowd_regions": int(sum(f.gt_crowd.sum() for f in frames)),
        "detections": int(per_image.sum()),
        "detections_per_image_mean": round(float(per_image.mean()), 1),
        "images_at_detection_cap": int(np.sum(per_image == MAX_DETECTIONS_PER_IMAGE)),
        "distinct_scores": len(np.unique(scores)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=f"{SIZES['quick']} images (a 2-core CPU)")
    parser.add_argument("--images", type=int, default=None, help=f"number of images (default {SIZES['full']}, --quick {SIZES['quick']})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each fast engine (median); pycocotools runs once")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--device-name", default=None, help="names the result file (default: from the machine)")
    args = parser.parse_args(argv)

    mode = "quick" if args.quick else "full"
    num_images = args.images or SIZES[mode]
    machine = describe_machine()
    frames = make_workload(num_images, args.seed)
    workload = describe_workload(frames, args.seed)
    print(f"workload: {workload['images']} images, {workload['gt_boxes']} boxes, {workload['crowd_regions']} crowd regions, "
          f"{workload['detections']} detections ({workload['images_at_detection_cap']} images at {MAX_DETECTIONS_PER_IMAGE}), "
          f"{workload['distinct_scores']} distinct scores", flush=True)

    records, predictions = validation_inputs(frames)
    plain_gt, plain_dets = coco_inputs(frames, crowd=False)
    crowd_gt, crowd_dets = coco_inputs(frames, crowd=True)
    comparisons = [
        compare(
            "validation",
            time_pycocotools(plain_gt, plain_dets, 1),
            {
                "beedet": time_beedet_validation(records, predictions, args.repeats),
                "faster_coco_eval": time_faster_coco_eval(plain_gt, plain_dets, args.repeats),
            },
        ),
        compare(
            "coco",
            time_pycocotools(crowd_gt, crowd_dets, 1),
            {
                "beedet": time_beedet_coco(crowd_gt, crowd_dets, args.repeats),
                "faster_coco_eval": time_faster_coco_eval(crowd_gt, crowd_dets, args.repeats),
            },
        ),
    ]
    # For context: the settings validation runs with (conf/train.yaml): maxDets 1000, 3 size bins.
    from beedet.evaluation.size_bins import record_box_areas, size_bin_edges

    wide = time_beedet_validation(
        records, predictions, args.repeats, max_detections=1000, area_bins=size_bin_edges(record_box_areas(records), 3)
    )

    passed = all(
        c["beedet"]["max_abs_stat_diff"] <= BAR_TOLERANCE and c["beedet"]["x_pycocotools_wall"] >= BAR_RATIO for c in comparisons
    )
    payload = {
        "benchmark": "eval_engine",
        "mode": mode if args.images is None else "custom",
        "device": machine["device"],
        "machine": machine,
        "versions": {pkg: importlib.metadata.version(pkg) for pkg in ("numpy", "pycocotools", "faster-coco-eval")},
        "workload": workload,
        "bar": {"x_pycocotools": BAR_RATIO, "max_abs_stat_diff": BAR_TOLERANCE},
        "comparisons": {c.pop("comparison"): c for c in comparisons},
        "beedet_validation_settings": {**wide.to_dict(), "max_detections": 1000, "size_bins": 3},
        "passed": passed,
    }
    print_table(payload)
    path = write_results("eval_engine", args.device_name or machine["slug"], payload, args.out)
    print(f"wrote {path}")
    return 0


def print_table(payload: dict[str, Any]) -> None:
    print(f"\n{'comparison':<11} {'engine':<17} {'wall s':>8} {'cpu s':>8} {'x pycocotools (wall / cpu)':>27} {'max |stat diff|':>16}")
    for name, result in payload["comparisons"].items():
        for engine in ("pycocotools", "faster_coco_eval", "beedet"):
            r = result[engine]
            ratio = "1.00 / 1.00" if engine == "pycocotools" else f"{r['x_pycocotools_wall']:.2f} / {r['x_pycocotools_cpu']:.2f}"
            diff = "" if engine == "pycocotools" else f"{r['max_abs_stat_diff']:.1e}"
            print(f"{name:<11} {engine:<17} {r['wall_s']:>8.3f} {r['cpu_s']:>8.3f} {ratio:>27} {diff:>16}")
    wide = payload["beedet_validation_settings"]
    print(f"beedet with validation's settings (maxDets 1000, 3 size bins): {wide['wall_s']:.3f} s wall")
    verdict = "meets" if payload["passed"] else "MISSES"
    print(f"bar: x{payload['bar']['x_pycocotools']:g} and stats within {payload['bar']['max_abs_stat_diff']:g}: {verdict}")


if __name__ == "__main__":
    raise SystemExit(main())
