"""Input pipeline: images/s of DataLoader workers turning real 1920x1080 bee frames into augmented
SSD training tensors, beedet vs torchvision's detection-reference ``ssd`` preset on the same frames.

    python bench/input_pipeline.py --quick      # 160 frames per case (24 for torchvision's reference preset): about 2 minutes on 2 cores
    python bench/input_pipeline.py              # 429 frames per case (64 for torchvision's reference preset)
    python bench/input_pipeline.py --quick --only torchvision_ssd,torchvision_beedet_ssd,beedet_ssd300 --workers 1
                                                # the two peers beside beedet: under a minute
    python bench/input_pipeline.py --images 4 --peer-images 1 --workers 1 --repeats 1 --data-root ../shared/data/honeybee-mini
                                                # the smallest size (what the test runs)

The frames are the honeybee train split's 1920x1080 JPEGs (429 of its 496 images; other sizes are
left out so that every case decodes the same kind of frame), with their labelled boxes.

Cases (each a ``torch.utils.data.DataLoader`` with ``--workers`` worker processes, batches of the
experiment's ``data.batch_size``, the same frames in the same order):

* ``torchvision_ssd`` (the peer): what torchvision's ``references/detection/presets.py`` builds for
  ``--data-augmentation ssd`` with ``transforms.v2`` and the PIL backend, frames opened as its
  ``CocoDetection`` does (``Image.open(...).convert("RGB")``): ``RandomPhotometricDistort``,
  ``RandomZoomOut(fill=mean)``, ``RandomIoUCrop``, ``RandomHorizontalFlip``, then ``Resize((300,
  300))`` (the references leave resizing to the model; here the loader hands out the 300 px
  tensors SSD300 trains on), ``ToImage``, ``ToDtype(float32, scale=True)``,
  ``ConvertBoundingBoxFormat(XYXY)``, ``SanitizeBoundingBoxes``, ``ToPureTensor``. Its colour
  distortion runs on the full frame and its zoom-out pads it to up to 4x its size (7680x4320)
  before anything shrinks it.
* ``torchvision_beedet_ssd`` (the like-for-like peer): beedet's own ``augment=ssd`` recipe at 300
  px, each albumentations step mapped to its torchvision ``transforms.v2`` twin
  (:func:`torchvision_recipe`: resize first, then the same random crop, zoom-out, flips and colour
  jitter with the same parameters and probabilities), frames opened as ``CocoDetection`` does, on
  the same frames and as many of them as the beedet cases (the reference preset above runs a
  different recipe, zoom-out and IoU crop on the full 1080p frame, on fewer frames). Its images
  come out uint8, as beedet's do. Not mapped: albumentations' ``min_visibility`` (torchvision has
  no such box filter; its ``SanitizeBoundingBoxes`` keeps the same ``min_area``).
* ``beedet_ssd300``: ``+experiment=honeybee_wholeframe`` as configured (``augment=ssd`` at
  ``model.image_size=300``, the preset ``honeybee_ssd300_resnet50`` uses too), through the training
  ``DetectionDataset`` as the data module builds it: reduced-size JPEG decode
  (``data.reduced_decode=true``), resize first, colour last, uint8 images (the training module
  makes them float on its device), batches packed for the trip to the main process
  (``collate_detection``).
* ``beedet_ssd300_full_decode``: the same with ``data.reduced_decode=false`` (what the fast path saves).
* ``beedet_ssd300_cached``: the same with ``data.cache_bytes`` large enough for the frames; its
  warm-up epoch fills every worker's cache, so the timed epochs skip decoding (augmentation is
  still drawn anew).
* ``beedet_honeybee``: ``+experiment=honeybee``, the real-data recipe (``augment=scaled``: each
  frame to a 960 px longer side at reduced-size decode, scale jitter, 320 px crops), with its
  decoded-frame cache warmed first.
* ``beedet_tiled``: ``+experiment=honeybee_tiled`` (``augment=tiled``: 300 px crops at native
  resolution, so full-size decode), and ``beedet_tiled_cached``.

Timing: each loader keeps its workers (``persistent_workers``, as the data module does) for a
warm-up epoch (worker start, imports; for the cached cases it also fills the caches) and then
``--repeats`` timed epochs, wall clock from asking for the first batch to receiving the last; the
median epoch is reported. Each batch also carries its worker's process CPU time (stamped by the
collate function, which runs in the worker), so the CPU seconds the workers spent on an epoch are
known too: ``images_per_cpu_s`` is images per second of one worker's CPU time, which a shared,
loaded machine disturbs less than the wall clock. Every frame file is read once before any
timing: training reads its frames from the page cache after the first epoch. ``first_batch_s`` is
the epoch boundary: the median time from starting a timed epoch (persistent workers already up)
to its first batch, beside ``batch_interval_s``, the mean time per batch within an epoch.
Worker processes run single-threaded, so a worker is one core's worth of work: PyTorch sets
its own thread count to 1 in workers, and this script sets OpenCV's to 1 before they start (they
inherit it; calling ``cv2.setNumThreads`` inside a forked worker can deadlock once the parent has
used OpenCV's thread pool).

Also measured, in this process with one thread: decoding alone (``beedet.data.images.load_image``
and ``load_image_reduced``), the numbers the input pipeline was first measured at.

Where a worker's time goes (cProfile and per-step timers, beedet_ssd300, this 2-core VM): the
reduced decode (open, header, DCT-scaled decode, copy out of PIL) 5-6 ms per frame against 10-11
ms for the full decode; the ``ssd`` augmentation on the decoded frame 3.6 ms, half of it
albumentations' box bookkeeping (conversion, clipping and filtering after each of the 6 steps);
the float tensor 0.25 ms (now a uint8 tensor: the float comes on the training device); handing the
batch to the main process 0.6 ms. The RAM cache removes the
decode. torchvision's preset spends its time on full-frame colour distortion and on zoom-out
canvases up to 4x the frame before it crops or resizes anything.

The bar (issue 5): at least 100 images/s per worker for the 300 px preset, and scaling with
workers. Writes ``bench/results/input_pipeline-<device>.json`` and prints a table with the ratio
beedet / torchvision.
"""

from __future__ import annotations

import argparse
import functools
import importlib.metadata
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from machine import describe_machine, write_results

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("BEEDET_SHARED_DATA", REPO.parent / "shared" / "data"))
SIZES = {"quick": (160, 24), "full": (429, 64)}  # (frames per beedet case, frames for torchvision)
FRAME_SIZE = (1920, 1080)
BAR_PER_WORKER = 100.0  # images/s per worker, 300 px preset
BAR_SCALING = 1.5  # 2 workers vs 1 on 2 cores: most of the second core put to use
TORCHVISION_MEAN = (123.0, 117.0, 104.0)  # references/detection/presets.py: the zoom-out fill


@dataclass(frozen=True)
class Case:
    """One pipeline: ``overrides`` of train.py's config; ``peer``: torchvision's reference preset
    instead of beedet's dataset, or with ``same_recipe`` beedet's configured recipe in torchvision
    (on as many frames as beedet's cases); ``cached``: give the data module a RAM cache and warm it
    on the first epoch."""

    name: str
    overrides: list[str]
    description: str
    peer: bool = False
    same_recipe: bool = False
    cached: bool = False


CASES = [
    Case("torchvision_ssd", ["+experiment=honeybee_wholeframe"], "torchvision references ssd preset (transforms.v2, PIL) + Resize(300)", peer=True),
    Case("torchvision_beedet_ssd", ["+experiment=honeybee_wholeframe"],
         "beedet's augment=ssd recipe at 300 px in torchvision transforms.v2 (PIL), beedet's frames and count: like for like",
         peer=True, same_recipe=True),
    Case("beedet_ssd300", ["+experiment=honeybee_wholeframe"], "beedet augment=ssd at 300 px, reduced-size decode"),
    Case("beedet_ssd300_full_decode", ["+experiment=honeybee_wholeframe", "data.reduced_decode=false"], "beedet augment=ssd at 300 px, full decode"),
    Case("beedet_ssd300_cached", ["+experiment=honeybee_wholeframe"], "beedet augment=ssd at 300 px, decoded frames cached in RAM", cached=True),
    Case("beedet_tiled", ["+experiment=honeybee_tiled"], "beedet augment=tiled (300 px native-resolution crops), full decode"),
    Case("beedet_tiled_cached", ["+experiment=honeybee_tiled"], "beedet augment=tiled, decoded frames cached in RAM", cached=True),
    Case("beedet_honeybee", ["+experiment=honeybee"], "the real-data recipe: augment=scaled (960 px frames, 320 px crops), decoded frames cached", cached=True),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="sized for a 2-core CPU")
    parser.add_argument("--images", type=int, default=None, help="frames per beedet case")
    parser.add_argument("--peer-images", type=int, default=None, help="frames for torchvision's preset (a few images/s)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="DataLoader worker counts to measure")
    parser.add_argument("--repeats", type=int, default=3, help="timed epochs per measurement (the median is reported)")
    parser.add_argument("--only", default=None, help="comma-separated case names (default: all)")
    parser.add_argument("--data-root", type=Path, default=SHARED_DATA / "honeybee", help="a folder with train.manifest")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--device-name", default=None, help="names the result file (default: from the machine)")
    args = parser.parse_args(argv)

    import cv2
    import torch

    from beedet.data.dataset import collate_detection

    # "One process, one thread", as the issue measured; workers are single-threaded anyway.
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    mode = "quick" if args.quick else "full"
    num_images, num_peer = SIZES[mode]
    num_images, num_peer = args.images or num_images, args.peer_images or num_peer
    cases = CASES if args.only is None else [c for c in CASES if c.name in args.only.split(",")]
    machine = describe_machine()

    frames = _frames(args.data_root, max(num_images, num_peer))
    # Training reads its frames from the page cache after the first epoch: so does every case here
    # (cold reads would add disk waits to whichever case ran first).
    for path in {r.image_path for r in frames}:
        Path(path).read_bytes()
    workload = {
        "data_root": str(args.data_root),
        "frames": len({r.image_path for r in frames}),
        "frame_size": list(FRAME_SIZE) if all((r.width, r.height) == FRAME_SIZE for r in frames) else "mixed",
        "boxes_per_frame_mean": round(float(np.mean([len(r.boxes) for r in frames])), 1),
        "images_per_case": num_images,
        "images_torchvision": num_peer,  # the reference preset; torchvision_beedet_ssd runs images_per_case
        "workers": args.workers,
    }
    print(f"workload: {workload['frames']} distinct frames from {args.data_root} ({workload['frame_size']}), "
          f"{workload['boxes_per_frame_mean']} boxes per frame", flush=True)

    decode_only = _time_decode_only(frames[:num_images], args.repeats)
    print(f"decode only, one process, one thread: full {decode_only['full']['images_per_s']:.0f} img/s, "
          f"reduced {decode_only['reduced']['images_per_s']:.0f} img/s (wall)", flush=True)

    results: dict[str, Any] = {}
    for case in cases:
        count = num_peer if case.peer and not case.same_recipe else num_images
        dataset, batch_size, resolved = _dataset(case, frames[:count], args.data_root)
        results[case.name] = {"description": case.description, "overrides": case.overrides, **resolved, "workers": {}}
        for workers in args.workers:
            collate = torchvision_collate if case.peer else collate_detection
            timing = _time_loader(dataset, collate, batch_size, workers, count, warm_all=case.cached, repeats=args.repeats)
            results[case.name]["workers"][str(workers)] = timing
            print(f"{case.name:<26} {workers} worker(s): {timing['images_per_s']:7.1f} img/s wall "
                  f"({timing['images_per_s_per_worker']:.1f} per worker), {timing['images_per_cpu_s'] or float('nan'):7.1f} img/s per CPU-second",
                  flush=True)

    payload = {
        "benchmark": "input_pipeline",
        "mode": mode if args.images is None and args.peer_images is None else "custom",
        "device": machine["device"],
        "machine": machine,
        "versions": {pkg: importlib.metadata.version(pkg) for pkg in ("albumentations", "pillow", "numpy", "opencv-python-headless")
                     if _installed(pkg)},
        "workload": workload,
        "bar": {"images_per_s_per_worker": BAR_PER_WORKER, "scaling_2_vs_1_workers": BAR_SCALING},
        "decode_only": decode_only,
        "pipelines": results,
        **_verdict(results),
    }
    print_table(payload)
    path = write_results("input_pipeline", args.device_name or machine["slug"], payload, args.out)
    print(f"wrote {path}")
    return 0


# ---- the frames -----------------------------------------------------------------------------------

def _frames(data_root: Path, count: int) -> list[Any]:
    """``count`` labelled 1920x1080 train frames (records, in manifest order), repeated when the
    data holds fewer (honeybee-mini); any size if it holds none at 1920x1080."""
    from beedet.assembly import build_datamodule

    cfg = _config(["+experiment=honeybee_wholeframe"], data_root)
    datamodule = build_datamodule(cfg.data, None)
    datamodule.load_labels()
    records = datamodule.train_records
    chosen = [r for r in records if (r.width, r.height) == FRAME_SIZE] or records
    return [chosen[i % len(chosen)] for i in range(count)]


def _config(overrides: list[str], data_root: Path) -> Any:
    from beedet.compose import compose_train_config

    # Every path pinned, so nothing refers to a Hydra run; labels are read, images not re-verified.
    return compose_train_config([
        f"paths.data_dir={REPO / 'data'}", f"paths.shared_data={SHARED_DATA}", "paths.output_dir=.", "paths.run_dir=.",
        *overrides, f"data.root={data_root}", "data.verify_images=false",
    ])


def _dataset(case: Case, frames: list[Any], data_root: Path) -> tuple[Any, int, dict[str, Any]]:
    """The case's dataset over ``frames``, its batch size, and the settings that decide its speed.

    beedet's is the training ``DetectionDataset`` with the configured augmentation and the data
    config's ``reduced_decode`` and uint8 images (what ``BeeDataModule.setup`` builds); cached cases get a cache
    that holds every frame at full size."""
    from beedet.assembly import build_augment
    from beedet.data.dataset import DetectionDataset

    cfg = _config(case.overrides, data_root)
    size = int(cfg.model.image_size)
    if case.same_recipe:
        dataset = TorchvisionRecipeFrames(frames, torchvision_recipe(cfg.augment))
        return dataset, int(cfg.data.batch_size), {
            "image_size": size, "augment": [type(t).__name__ for t in dataset.transforms.transforms]}
    if case.peer:
        return TorchvisionSsdFrames(frames, size), int(cfg.data.batch_size), {"image_size": size}
    full_bytes = sum(r.width * r.height * 3 for r in {str(r.image_path): r for r in frames}.values())
    dataset = DetectionDataset(frames, build_augment(cfg.augment), reduced_decode=bool(cfg.data.reduced_decode),
                               cache_bytes=full_bytes if case.cached else int(cfg.data.cache_bytes), uint8_images=True)
    return dataset, int(cfg.data.batch_size), {
        "image_size": size,
        "augment": [type(t).__name__ for t in dataset.transform.transforms],
        "decode_size": list(dataset.decode_size) if dataset.decode_size else None,
        "cache_bytes": dataset.cache.max_bytes if dataset.cache is not None else 0,
    }


class TorchvisionSsdFrames:
    """The peer: frames as torchvision's ``CocoDetection`` opens them, through the detection
    references' ``ssd`` preset (``transforms.v2``, PIL backend) plus a resize to ``size``.

    Sample: (float32 (3, size, size) in [0, 1], {"boxes": float32 (N, 4) xyxy pixels of that image,
    "labels": int64 (N,)}), as the references hand to the model."""

    def __init__(self, records: Sequence[Any], size: int) -> None:
        from collections import defaultdict

        import torch
        from torchvision import tv_tensors
        from torchvision.transforms import v2 as T

        self.records = list(records)
        fill = defaultdict(lambda: TORCHVISION_MEAN, {tv_tensors.Mask: 0})
        self.transforms = T.Compose([
            T.RandomPhotometricDistort(),
            T.RandomZoomOut(fill=fill),
            T.RandomIoUCrop(),
            T.RandomHorizontalFlip(p=0.5),
            T.Resize((size, size)),
            T.ToImage(),
            T.ToDtype(torch.float, scale=True),
            T.ConvertBoundingBoxFormat(tv_tensors.BoundingBoxFormat.XYXY),
            T.SanitizeBoundingBoxes(),
            T.ToPureTensor(),
        ])

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[Any, dict[str, Any]]:
        return self.transforms(*_coco_style_sample(self.records[index]))


def torchvision_recipe(augment_cfg: Any) -> Any:
    """beedet's albumentations recipe ``augment_cfg`` (a ``conf/augment`` config) as torchvision
    ``transforms.v2``, step for step with the same parameters and probabilities, on PIL images with
    ``BoundingBoxes`` (XYXY). Ends with uint8 tensors (``ToImage``), boxes clamped and those under
    the recipe's ``min_area`` dropped. Steps without a twin here raise ValueError."""
    from omegaconf import OmegaConf
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import v2 as T

    config = OmegaConf.to_container(augment_cfg, resolve=True)
    steps = []
    for step in config["transforms"]:
        kind, params = step["_target_"].removeprefix("albumentations."), {k: v for k, v in step.items() if k != "_target_"}
        p = float(params.pop("p", 1.0))
        if kind == "Resize":
            if params.pop("interpolation", 1) != 1:
                raise ValueError("only a bilinear albumentations.Resize has a twin here")
            twin = T.Resize((params.pop("height"), params.pop("width")), interpolation=InterpolationMode.BILINEAR)
        elif kind == "RandomResizedCrop":
            twin = T.RandomResizedCrop(tuple(params.pop("size")), scale=tuple(params.pop("scale")), ratio=tuple(params.pop("ratio")))
        elif kind == "Affine":
            if params.pop("border_mode", 0) != 0 or not params.pop("keep_ratio", False):
                raise ValueError("only a constant-border, ratio-keeping albumentations.Affine has a twin here")
            twin = T.RandomAffine(degrees=0, scale=tuple(params.pop("scale")), interpolation=InterpolationMode.BILINEAR,
                                  fill=tuple(params.pop("fill", (0, 0, 0))))
        elif kind == "HorizontalFlip":
            twin, p = T.RandomHorizontalFlip(p), 1.0
        elif kind == "VerticalFlip":
            twin, p = T.RandomVerticalFlip(p), 1.0
        elif kind == "ColorJitter":
            twin = T.ColorJitter(**{key: tuple(params.pop(key)) for key in ("brightness", "contrast", "saturation", "hue")})
        else:
            raise ValueError(f"albumentations.{kind} has no torchvision twin in torchvision_recipe")
        if params:
            raise ValueError(f"albumentations.{kind}: parameters {sorted(params)} have no twin in torchvision_recipe")
        steps.append(twin if p >= 1.0 else T.RandomApply([twin], p=p))
    return T.Compose([*steps, T.ToImage(), T.ClampBoundingBoxes(),
                      T.SanitizeBoundingBoxes(min_area=float(config.get("min_area", 1.0))), T.ToPureTensor()])


class TorchvisionRecipeFrames:
    """The like-for-like peer: frames as torchvision's ``CocoDetection`` opens them, through
    ``transforms`` (:func:`torchvision_recipe`). Sample: (uint8 (3, H, W), {"boxes": float32 (N, 4)
    xyxy pixels of that image, "labels": int64 (N,)})."""

    def __init__(self, records: Sequence[Any], transforms: Any) -> None:
        self.records = list(records)
        self.transforms = transforms

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[Any, dict[str, Any]]:
        return self.transforms(*_coco_style_sample(self.records[index]))


def _coco_style_sample(record: Any) -> tuple[Any, dict[str, Any]]:
    """A record as torchvision's detection references hold it: a PIL RGB image and its XYXY boxes."""
    import torch
    from PIL import Image
    from torchvision import tv_tensors

    image = Image.open(record.image_path).convert("RGB")
    return image, {
        "boxes": tv_tensors.BoundingBoxes(torch.as_tensor(record.boxes), format="XYXY", canvas_size=(image.height, image.width)),
        "labels": torch.as_tensor(record.labels, dtype=torch.int64),
    }


# ---- timing ---------------------------------------------------------------------------------------

class _WarmupThenTimed:
    """A sampler whose first epoch yields ``warmup`` and whose later epochs yield ``timed``."""

    def __init__(self, warmup: list[int], timed: list[int]) -> None:
        self.warmup, self.timed, self.epoch = warmup, timed, 0

    def __iter__(self) -> Iterator[int]:
        order = self.warmup if self.epoch == 0 else self.timed
        self.epoch += 1
        return iter(order)

    def __len__(self) -> int:
        return len(self.warmup if self.epoch == 0 else self.timed)


def _stamped(collate: Any) -> Any:
    """``collate`` (it runs in the worker), its batch followed by (worker pid, its CPU seconds so far)."""
    return functools.partial(_stamp, collate)


def _stamp(collate: Any, batch: Sequence[Any]) -> tuple[Any, tuple[int, float]]:
    # The collated batch is passed on untouched: beedet's packs itself for the trip (collate_detection).
    return collate(batch), (os.getpid(), time.process_time())


def torchvision_collate(batch: Sequence[Any]) -> tuple[Any, ...]:
    """torchvision references/detection/utils.py's ``collate_fn``: every tensor travels on its own."""
    return tuple(zip(*batch))


def _time_loader(dataset: Any, collate: Any, batch_size: int, workers: int, count: int, warm_all: bool,
                 repeats: int) -> dict[str, Any]:
    """Images/s over ``count`` samples: the median of ``repeats`` timed epochs after a warm-up epoch
    (module docstring)."""
    from torch.utils.data import DataLoader

    timed = list(range(count))
    # Warm-up: one batch per worker, or everything when the cache has to be filled (batches go to
    # workers round-robin in the same order every epoch, so each worker meets its own frames again).
    warmup = timed if warm_all else timed[: batch_size * max(1, workers)]
    loader = DataLoader(dataset, batch_size=batch_size, sampler=_WarmupThenTimed(warmup, timed), num_workers=workers,
                        collate_fn=_stamped(collate), persistent_workers=workers > 0)
    cpu_at: dict[int, float] = {}
    for _, (pid, cpu) in loader:
        cpu_at[pid] = cpu
    epochs, firsts = [], []
    for _ in range(repeats):
        start_cpu = dict(cpu_at)
        images = 0
        first = None
        start, main_start = time.perf_counter(), time.process_time()
        for (batch_images, _), (pid, cpu) in loader:
            if first is None:
                first = time.perf_counter() - start
            images += len(batch_images)
            cpu_at[pid] = cpu
        wall, main_cpu = time.perf_counter() - start, time.process_time() - main_start
        firsts.append(first)
        # With 0 workers the batches stamp this process: its CPU time is then the loading's.
        cpu_s = sum(cpu - start_cpu.get(pid, cpu) for pid, cpu in cpu_at.items())
        epochs.append((images / wall, images / cpu_s if cpu_s > 0 else None, wall, cpu_s, main_cpu))
    del loader  # stops the persistent workers
    rates = [e[0] for e in epochs]
    cpu_rates = [e[1] for e in epochs if e[1] is not None]
    median = epochs[int(np.argsort(rates)[len(rates) // 2])]
    return {
        "images": count,
        "batch_size": batch_size,
        "repeats": repeats,
        "wall_s": round(median[2], 3),
        "cpu_s": round(median[3], 3),
        "main_process_cpu_s": round(median[4], 3),
        "images_per_s": round(float(np.median(rates)), 2),
        "images_per_s_best": round(max(rates), 2),
        "images_per_s_per_worker": round(float(np.median(rates)) / max(1, workers), 2),
        "images_per_cpu_s": round(float(np.median(cpu_rates)), 2) if cpu_rates else None,
        # The epoch boundary with persistent workers: from asking for a new epoch to its first
        # batch, against the mean gap between batches within an epoch.
        "first_batch_s": round(float(np.median(firsts)), 4),
        "batch_interval_s": round(median[2] / max(1, -(-count // batch_size)), 4),
    }


def _time_decode_only(frames: list[Any], repeats: int) -> dict[str, Any]:
    """Decoding alone in this process (one thread): full size, and reduced for a 300 px resize;
    the median of ``repeats`` passes."""
    from beedet.data.images import load_image, load_image_reduced

    out = {}
    for name, decode in (("full", load_image), ("reduced", lambda p: load_image_reduced(p, (300, 300)))):
        passes = []
        for _ in range(repeats):
            wall, cpu = time.perf_counter(), time.process_time()
            for record in frames:
                decode(record.image_path)
            passes.append((len(frames) / (time.perf_counter() - wall), len(frames) / max(time.process_time() - cpu, 1e-9)))
        out[name] = {"images": len(frames), "images_per_s": round(float(np.median([p[0] for p in passes])), 1),
                     "images_per_cpu_s": round(float(np.median([p[1] for p in passes])), 1)}
    return out


def _installed(package: str) -> bool:
    try:
        importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


# ---- verdict and table ----------------------------------------------------------------------------

#: The peer cases and the prefix of beedet's ratios to each.
PEERS = {"torchvision_ssd": "x_torchvision", "torchvision_beedet_ssd": "x_torchvision_same_recipe"}


def _verdict(results: dict[str, Any]) -> dict[str, Any]:
    """Ratios beedet / torchvision at one worker, scaling from 1 to 2 workers, and the bar."""
    def rate(case: str, workers: str, key: str) -> float | None:
        return results.get(case, {}).get("workers", {}).get(workers, {}).get(key)

    ratios = {}
    # x_torchvision_*: against the reference preset (another recipe, fewer frames); x_torchvision_same_recipe_*:
    # against beedet's recipe in torchvision on the same frames, the like-for-like figure.
    for case in results:
        if case not in PEERS:
            for peer_case, prefix in PEERS.items():
                for key, name in (("images_per_s", "wall"), ("images_per_cpu_s", "cpu")):
                    ours, peer = rate(case, "1", key), rate(peer_case, "1", key)
                    if ours and peer:
                        ratios.setdefault(case, {})[f"{prefix}_{name}"] = round(ours / peer, 1)
    scaling = {case: round(rate(case, "2", "images_per_s") / rate(case, "1", "images_per_s"), 2)
               for case in results if rate(case, "1", "images_per_s") and rate(case, "2", "images_per_s")}
    # Whether a worker keeps its speed beside another (1.0: no contention inside the pipeline),
    # which the wall-clock ratio only shows when no other process wants the cores.
    cpu_scaling = {case: round(rate(case, "2", "images_per_cpu_s") / rate(case, "1", "images_per_cpu_s"), 2)
                   for case in results if rate(case, "1", "images_per_cpu_s") and rate(case, "2", "images_per_cpu_s")}
    def meets(value: float | None, bar: float) -> bool | None:
        return None if value is None else value >= bar

    return {
        "ratios": ratios,
        "scaling_2_vs_1_workers": scaling,
        "per_worker_cpu_rate_2_vs_1_workers": cpu_scaling,
        # The 300 px preset as configured (frames decoded every time), and with the RAM cache warm.
        "meets_bar": {
            "per_worker_wall": meets(rate("beedet_ssd300", "1", "images_per_s"), BAR_PER_WORKER),
            "per_worker_cpu": meets(rate("beedet_ssd300", "1", "images_per_cpu_s"), BAR_PER_WORKER),
            "per_worker_wall_cached": meets(rate("beedet_ssd300_cached", "1", "images_per_s"), BAR_PER_WORKER),
            "per_worker_cpu_cached": meets(rate("beedet_ssd300_cached", "1", "images_per_cpu_s"), BAR_PER_WORKER),
            "scaling": meets(scaling.get("beedet_ssd300"), BAR_SCALING),
        },
    }


def print_table(payload: dict[str, Any]) -> None:
    workers = [str(w) for w in payload["workload"]["workers"]]
    head = "".join(f" {f'{w}w img/s':>10} {f'{w}w /CPU-s':>10}" for w in workers)
    print(f"\n{'pipeline':<26}{head} {'x tv reference (wall / cpu)':>28} {'x tv same recipe':>17} {'2w / 1w (wall / cpu)':>21}")
    for name, result in payload["pipelines"].items():
        cells = ""
        for w in workers:
            r = result["workers"].get(w, {})
            cells += f" {r.get('images_per_s', float('nan')):>10.1f} {r.get('images_per_cpu_s') or float('nan'):>10.1f}"
        ratio = payload["ratios"].get(name, {})
        texts = [f"{ratio[f'{prefix}_wall']:.1f} / {ratio.get(f'{prefix}_cpu', float('nan')):.1f}" if f"{prefix}_wall" in ratio else ""
                 for prefix in PEERS.values()]
        scaling = payload["scaling_2_vs_1_workers"].get(name)
        cpu_scaling = payload["per_worker_cpu_rate_2_vs_1_workers"].get(name)
        scaling_text = "" if scaling is None else f"{scaling:.2f} / {cpu_scaling or float('nan'):.2f}"
        print(f"{name:<26}{cells} {texts[0]:>28} {texts[1]:>17} {scaling_text:>21}")
    bar = payload["meets_bar"]
    ssd = payload["ratios"].get("beedet_ssd300", {})
    if ssd.get("x_torchvision_wall"):
        print(f"beedet / torchvision, 1 worker: {ssd.get('x_torchvision_wall')}x (wall), {ssd.get('x_torchvision_cpu')}x (CPU time)"
              " against the reference preset (another recipe, on fewer frames)")
    if ssd.get("x_torchvision_same_recipe_wall"):
        print(f"beedet / torchvision on the same recipe and frames, 1 worker: {ssd.get('x_torchvision_same_recipe_wall')}x "
              f"(wall), {ssd.get('x_torchvision_same_recipe_cpu')}x (CPU time): like for like")
    print(f"bar: >= {BAR_PER_WORKER:g} img/s per worker at 300 px: decoding every frame {_word(bar['per_worker_wall'])} "
          f"(per CPU-second {_word(bar['per_worker_cpu'])}), from the RAM cache {_word(bar['per_worker_wall_cached'])} "
          f"(per CPU-second {_word(bar['per_worker_cpu_cached'])}); 2 workers >= {BAR_SCALING:g}x 1 worker: {_word(bar['scaling'])}")


def _word(passed: bool | None) -> str:
    return "not measured" if passed is None else "meets" if passed else "MISSES"


if __name__ == "__main__":
    raise SystemExit(main())
