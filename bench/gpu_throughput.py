"""GPU training throughput: SSD300-ResNet50 images/s and model FLOP utilisation (MFU), real loader vs synthetic.

On a GPU machine (issue 5's bar on one H100: >= 2,000 img/s, the real loader within 10 % of synthetic):

    python bench/gpu_throughput.py --data-root bench/data_subset            # batch 128, 8 workers
    python bench/gpu_throughput.py --data-root bench/data_subset --batch-size 256 --workers 14

On a CPU, only to check that it runs (tiny, fp32, a few steps; writes ``gpu_throughput-<cpu>-smoke.json``,
which is not a GPU number):

    python bench/gpu_throughput.py --smoke --data-root ../shared/data/honeybee-mini --model ssd300_resnet_slim

What runs: beedet's own training path, train.py's Trainer (``build_trainer``) with
``+experiment=honeybee_ssd300_resnet50 model.pretrained_backbone=false trainer=gpu``: bf16 autocast
(``bf16-mixed``), ``cudnn.benchmark``, parameters in ``channels_last`` (the model builders' default),
no validation. Three measurements, each a steady-state window after a warm-up:

* (a) real: the data module's own training DataLoader (``BeeDataModule.train_dataloader()``:
  decode the JPEG frames, the ``ssd`` augmentation, collate into uint8 batches) with ``--workers``
  worker processes, feeding the fit. The subset's records are repeated so one epoch holds every step.
* (b) synthetic: the same fit fed ``--distinct-batches`` batches made once by that loader and
  kept on the GPU, cycled: the input pipeline and the host-to-device copy cost nothing. They stay
  uint8, as the loader made them, so the module's ``training_step`` turns them into float on the
  GPU in every step, as it does in (a).
* (c) loader only: the DataLoader of (a) iterated with no training, to show how much it can supply.

All three, set-up and the FLOP count included, finish within ``BUDGET_S`` (90 s) on a GPU: each
measurement's warm-up ends after ``--warmup`` steps or its warm-up cap in seconds, and its timed
window after ``--steps`` steps or its window cap, whichever comes first (``TIME_CAPS``: 12 + 12 s
for (a), 6 + 8 s for (b), 6 + 6 s for (c); ``--warmup-s`` / ``--window-s`` set all of them). A
slow loader therefore gives fewer measured steps, not a longer run: issue 17's H200 run, without
caps, spent over 100 s in (a) at 2.18 steps/s and never reached (b) or (c). Each rate is over the
steps its window holds (``window_steps``); ``seconds`` gives the wall time of each part and of the
whole run, ``within_budget`` whether it stayed within 90 s.

Reported: images/s of (a), (b), (c); ``real_vs_synthetic`` = (a)/(b) (bar >= 0.9);
``loader_headroom`` = (c)/(b) (> 1: the loader could feed more than the GPU trains); FLOPs per
image of one forward + backward of the network in training mode (loss included), counted by
``torch.utils.flop_counter.FlopCounterMode`` (matrix products and convolutions, 2 FLOPs per
multiply-add; batch norm and element-wise work not counted, as in NVIDIA's and others' MFU);
MFU = images/s x FLOPs per image / the device's peak dense bf16 tensor FLOP/s (``PEAK_BF16_TFLOPS``).

The data must travel with the device call (at most 64 MiB for the whole working tree). Once, here
(``bench/data_subset`` is in .gitignore):

    python bench/gpu_throughput.py --make-subset bench/data_subset     # 160 train + 8 valid 1080p frames, ~42 MB

or the subset ``bench/gpu_suite.sh`` carries (every train and valid frame, shrunk to 960 px wide at
JPEG quality 65 with boxes scaled alike: 669 frames, 39 MiB; its frames decode faster than 1080p):

    python bench/gpu_throughput.py --make-subset bench/data_subset --subset-images 0 --subset-valid 0 --subset-width 960

The device image has torch, torchvision and pytorch-lightning but not hydra-core, omegaconf,
albumentations or the COCO evaluators: carry them as Python 3.12 wheels in ``.whl`` (README of the
device tool: ``echo /.whl/ >> .git/info/exclude``, then ``pip download --no-deps --only-binary=:all:
--python-version 3.12 --platform manylinux... -d .whl`` for the versions in your venv (the header of
``bench/gpu_suite.sh`` has the loop that reads them): hydra-core, omegaconf, antlr4-python3-runtime
(a source package: build its wheel with ``pip wheel``), albumentations, albucore, simsimd,
stringzilla, pydantic, pydantic-core, annotated-types, typing-inspection, faster-coco-eval and
pycocotools). Then the device tool's ``run`` with
``carry=["bench/data_subset", ".whl"]`` and the command:

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    && export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
    && python3 bench/gpu_throughput.py --data-root bench/data_subset --workers 14 --out $OUT

and commit the returned ``gpu_throughput-<device>.json`` into bench/results/. ``bench/gpu_suite.sh``
runs this, a training minute and sliced validation in one call (its header says how).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from machine import describe_machine, write_results

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("BEEDET_SHARED_DATA", REPO.parent / "shared" / "data"))
BAR_IMAGES_PER_S = 2000.0  # on one H100
BAR_REAL_VS_SYNTHETIC = 0.9

# Peak dense (no sparsity) bf16 tensor-core TFLOP/s by device name, first match wins.
# Sources: NVIDIA H100 Tensor Core GPU datasheet (BF16 1,979 TFLOPS SXM / 1,513 PCIe, "with
# sparsity"; dense is half), NVIDIA H200 datasheet (BF16 1,979 with sparsity, as the H100 SXM),
# NVIDIA A100 datasheet (BF16 312 dense, 624 with sparsity).
PEAK_BF16_TFLOPS: list[tuple[str, float]] = [
    ("H100 PCIe", 756.0),
    ("H200", 989.4),
    ("H100", 989.4),  # SXM5 (e.g. "NVIDIA H100 80GB HBM3")
    ("A100", 312.0),
]
PEAK_SOURCE = "NVIDIA H100 / H200 / A100 datasheets: dense bf16 tensor core = half the 'with sparsity' figure"

# (batch size, workers, warm-up steps, measured steps, distinct synthetic batches, FLOP-count batch;
# at least 2: batch norm in training mode needs two values per channel on the 1x1 map)
SIZES = {"gpu": (128, 8, 10, 50, 4, 2), "smoke": (2, 0, 1, 2, 1, 2)}
# All three measurements, set-up and FLOP count included, must finish within this (issue 17).
BUDGET_S = 90.0
# Per measurement, (warm-up cap, window cap) in seconds: each stops at its step count or its cap,
# whichever comes first (module docstring). On a GPU they add up to 56 s of the 90; the rest is
# start-up (imports, labels, CUDA, FLOP count: about 15 s) and three loaders starting workers.
TIME_CAPS = {
    "gpu": {"real_loader": (12.0, 12.0), "synthetic": (6.0, 8.0), "loader_only": (6.0, 6.0)},
    "smoke": {"real_loader": (10.0, 5.0), "synthetic": (5.0, 5.0), "loader_only": (5.0, 5.0)},
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="train.py Hydra overrides on top of the experiment")
    parser.add_argument("--smoke", action="store_true", help="tiny fp32 run on the CPU: checks that the benchmark runs, measures nothing")
    parser.add_argument("--data-root", type=Path, default=REPO / "bench" / "data_subset",
                        help="a honeybee-layout folder (train.manifest, valid.manifest, images)")
    parser.add_argument("--model", default="ssd300_resnet50",
                        help="a conf/model option (the smoke test uses the slim ssd300_resnet_slim)")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--workers", type=int, default=None, help="DataLoader worker processes for (a) and (c)")
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--distinct-batches", type=int, default=None)
    parser.add_argument("--warmup-s", type=float, default=None,
                        help="cap every measurement's warm-up at this many seconds (default: TIME_CAPS)")
    parser.add_argument("--window-s", type=float, default=None,
                        help="cap every measurement's timed window at this many seconds (default: TIME_CAPS)")
    parser.add_argument("--make-subset", type=Path, default=None, metavar="DIR", help="copy a subset of the honeybee data to DIR and exit")
    parser.add_argument("--subset-images", type=int, default=160, help="train frames in --make-subset; 0: all")
    parser.add_argument("--subset-valid", type=int, default=8, help="valid frames in --make-subset; 0: all")
    parser.add_argument("--subset-width", type=int, default=None,
                        help="--make-subset shrinks wider frames to this width (boxes scaled alike); default: copied as they are")
    parser.add_argument("--subset-quality", type=int, default=65, help="JPEG quality of the frames --subset-width shrinks")
    parser.add_argument("--subset-from", type=Path, default=SHARED_DATA / "honeybee")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--device-name", default=None, help="names the result file (default: from the machine)")
    args = parser.parse_args(argv)

    if args.make_subset:
        make_subset(args.subset_from, args.make_subset, args.subset_images, args.subset_valid,
                    width=args.subset_width, quality=args.subset_quality)
        return 0
    began = time.perf_counter()

    import torch
    from training_overhead import batch_loader, compose_run_config, lightning_fit

    cuda = torch.cuda.is_available()
    if not cuda and not args.smoke:
        parser.error("no CUDA device: this benchmark needs a GPU (use --smoke on a CPU to check that it runs)")
    mode = "smoke" if args.smoke else "gpu"
    batch_size, workers, warmup, steps, distinct, flop_batch = SIZES[mode]
    caps = {name: (cap[0] if args.warmup_s is None else args.warmup_s, cap[1] if args.window_s is None else args.window_s)
            for name, cap in TIME_CAPS[mode].items()}
    batch_size = args.batch_size or batch_size
    workers = workers if args.workers is None else args.workers
    warmup = warmup if args.warmup is None else args.warmup
    steps = args.steps or steps
    distinct = args.distinct_batches or distinct
    if not (args.data_root / "train.manifest").is_file():
        parser.error(f"no train.manifest in {args.data_root}; make one with --make-subset (see the docstring)")

    overrides = [
        "+experiment=honeybee_ssd300_resnet50",
        f"model={args.model}",
        # No ImageNet download: throughput does not depend on the starting weights. The slim
        # networks have no pretrained backbone to switch off: drop the experiment's key.
        "model.pretrained_backbone=false" if has_pretrained_switch(args.model) else "~model.pretrained_backbone",
        # The smoke run is the CPU path: fp32, no cudnn.
        "trainer=cpu" if args.smoke else "trainer=gpu",
        f"data.root={args.data_root.resolve()}",
        # The subset's frames were checked where it was made; decoding them all again costs minutes.
        "data.verify_images=false",
        f"data.batch_size={batch_size}",
        f"data.num_workers={workers}",
        *args.overrides,
    ]
    machine = describe_machine()
    total = warmup + steps + 1
    seconds: dict[str, float] = {}  # wall time of each part, for the 90 s budget
    with tempfile.TemporaryDirectory(prefix="beedet-bench-gpu-") as tmp:
        cfg = compose_run_config(overrides, Path(tmp))
        torch.backends.cudnn.benchmark = bool(cfg.trainer.benchmark)
        device = torch.device("cuda" if cuda and not args.smoke else "cpu")
        datamodule, system = build(cfg, samples=batch_size * total)
        print(f"== {'smoke (CPU, not a GPU number)' if args.smoke else machine['device']}: {cfg.model._target_}, "
              f"batch {batch_size}, {cfg.trainer.precision}, {workers} workers, up to {warmup} warm-up + {steps} "
              f"measured steps each, time caps (warm-up, window) {caps}", flush=True)
        initial = copy.deepcopy(system.net.state_dict())

        flops = count_train_flops(system, datamodule, flop_batch, device)
        seconds["setup_and_flops"] = time.perf_counter() - began
        print(f"  FLOPs per image, forward + backward: {flops / 1e9:.1f} GFLOP ({seconds['setup_and_flops']:.1f} s since start)",
              flush=True)

        system.net.load_state_dict(initial)
        real = lightning_fit(cfg, system, datamodule.train_dataloader(), total, warmup, steps, Path(tmp) / "real",
                             *caps["real_loader"])
        seconds["real_loader"] = real["wall_s"]
        print(f"  (a) real loader: {real['window_steps'] * batch_size / real['window_s']:.1f} img/s "
              f"({real['window_steps']} steps in {real['window_s']:.1f} s; {real['wall_s']:.1f} s in all)", flush=True)

        clock = time.perf_counter()
        batches = [to_device(b, device) for _, b in zip(range(distinct), datamodule.train_dataloader())]
        seconds["synthetic_batches"] = time.perf_counter() - clock
        system.net.load_state_dict(initial)
        synthetic = lightning_fit(cfg, system, batch_loader(batches, total), total, warmup, steps, Path(tmp) / "synthetic",
                                  *caps["synthetic"])
        seconds["synthetic"] = synthetic["wall_s"]
        print(f"  (b) synthetic:   {synthetic['window_steps'] * batch_size / synthetic['window_s']:.1f} img/s "
              f"({synthetic['window_steps']} steps in {synthetic['window_s']:.1f} s; {synthetic['wall_s']:.1f} s in all, "
              f"{seconds['synthetic_batches']:.1f} s to make its batches)", flush=True)
        del batches  # free the GPU memory they hold before (c)

        clock = time.perf_counter()
        loader = time_loader(datamodule.train_dataloader(), warmup, steps, *caps["loader_only"])
        seconds["loader_only"] = time.perf_counter() - clock
        print(f"  (c) loader only: {loader['window_steps'] * batch_size / loader['window_s']:.1f} img/s "
              f"({loader['window_steps']} batches in {loader['window_s']:.1f} s; {seconds['loader_only']:.1f} s in all)", flush=True)
    seconds["total"] = time.perf_counter() - began

    peak_tflops = peak_bf16_tflops(machine["device"]) if device.type == "cuda" else None
    windows = {"real_loader": real, "synthetic": synthetic, "loader_only": loader}
    result = {name: {**_rate(w["window_steps"] * batch_size, w["window_s"], flops, peak_tflops),
                     "window_steps": w["window_steps"], "window_s": w["window_s"], "wall_s": seconds[name]}
              for name, w in windows.items()}
    del result["loader_only"]["mfu"], result["loader_only"]["model_tflops"]
    rates = {name: entry["images_per_s"] for name, entry in result.items()}
    payload = {
        "benchmark": "gpu_throughput",
        "mode": mode,
        "device": machine["device"],
        "machine": machine,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "workload": {
            "overrides": overrides,
            "network": cfg.model._target_,
            "batch_size": batch_size,
            "precision": str(cfg.trainer.precision),
            "cudnn_benchmark": bool(cfg.trainer.benchmark),
            "channels_last": bool(cfg.model.get("channels_last", True)),
            "workers": workers,
            "warmup_steps": warmup,
            "measured_steps": steps,
            "time_caps_s": {name: {"warmup": cap[0], "window": cap[1]} for name, cap in caps.items()},
            "distinct_synthetic_batches": distinct,
            "train_frames": len({r.image_path for r in datamodule.train_records}),
            "cpu_count": os.cpu_count(),
        },
        "flops_per_image": flops,
        "flops_counter": "torch.utils.flop_counter.FlopCounterMode, one forward + backward in training mode",
        "peak_bf16_tflops": peak_tflops,
        "peak_source": PEAK_SOURCE if peak_tflops else None,
        **result,
        "real_vs_synthetic": rates["real_loader"] / rates["synthetic"],
        "loader_headroom": rates["loader_only"] / rates["synthetic"],
        "bars": {"images_per_s_one_h100": BAR_IMAGES_PER_S, "real_vs_synthetic": BAR_REAL_VS_SYNTHETIC},
        "max_loss": max(max(real["losses"]), max(synthetic["losses"])),
        # Wall seconds of each part and of the whole run (this process from argument parsing on).
        "seconds": seconds,
        "budget_s": BUDGET_S,
        "within_budget": seconds["total"] <= BUDGET_S,
    }
    path = write_results("gpu_throughput", args.device_name or machine["slug"] + ("-smoke" if args.smoke else ""), payload, args.out)
    print(format_summary(payload))
    print(f"wrote {path}")
    return 0


def build(cfg: Any, samples: int) -> tuple[Any, Any]:
    """The data module (set up, with at least ``samples`` training samples per epoch) and
    train.py's DetectionModule for ``cfg``."""
    from beedet.assembly import build_datamodule, build_network, build_system

    datamodule = build_datamodule(cfg.data, cfg.augment)
    datamodule.load_labels()
    net = build_network(cfg.model, num_classes=datamodule.num_classes,
                        class_counts=[datamodule.reports["train"].boxes_per_class[n] for n in datamodule.class_names])
    system = build_system(cfg, net, datamodule.class_names)
    # A subset small enough to travel with the device call holds fewer frames than the measured
    # steps need: repeat its records so that one epoch (one fit, no epoch-end pause) covers them.
    # Every repeat is decoded and augmented afresh, as a larger dataset's frames would be.
    records = datamodule.train_records
    datamodule.train_records = records * -(-samples // len(records))
    datamodule.setup("fit")
    return datamodule, system


def has_pretrained_switch(model: str) -> bool:
    """Whether ``conf/model/<model>.yaml`` has a ``pretrained_backbone`` argument."""
    from omegaconf import OmegaConf

    path = REPO / "conf" / "model" / f"{model}.yaml"
    if not path.is_file():
        raise SystemExit(f"no model config {path}")
    return "pretrained_backbone" in OmegaConf.load(path)


def to_device(batch: Any, device: Any) -> Any:
    images, targets = batch
    return [i.to(device) for i in images], [{k: v.to(device) for k, v in t.items()} for t in targets]


def count_train_flops(system: Any, datamodule: Any, batch: int, device: Any) -> float:
    """FLOPs per image of one training forward (loss included) and backward of ``system.net``."""
    from torch.utils.data import DataLoader
    from torch.utils.flop_counter import FlopCounterMode

    from beedet.data.dataset import collate_detection, images_to_float

    images, targets = to_device(next(iter(DataLoader(datamodule.train_dataset, batch_size=batch, collate_fn=collate_detection))), device)
    images = images_to_float(images)  # uint8 training images, as training_step converts them
    net = system.net.to(device).train()
    with FlopCounterMode(display=False) as counter:
        losses = net(images, system._to_network_targets(targets))
        sum(losses.values()).backward()
    net.zero_grad(set_to_none=True)
    return counter.get_total_flops() / batch


def time_loader(loader: Any, warmup: int, steps: int, warmup_s: float | None = None,
                window_s: float | None = None) -> dict[str, Any]:
    """The window of ``loader`` alone: ``window_s`` seconds for ``window_steps`` batches after a
    warm-up (worker start-up) of ``warmup`` batches or ``warmup_s`` seconds (at least one batch),
    the window ending at ``steps`` batches or at the first batch received ``window_s`` seconds or
    more after it began, as the fits' :class:`training_overhead.StepClock` cuts theirs."""
    iterator = iter(loader)
    first = time.perf_counter()
    done = 0
    while done < warmup:
        next(iterator)
        done += 1
        if warmup_s is not None and time.perf_counter() - first >= warmup_s:
            break
    start = time.perf_counter()
    count = 0
    while count < steps:
        next(iterator)
        count += 1
        if window_s is not None and time.perf_counter() - start >= window_s:
            break
    seconds = time.perf_counter() - start
    del iterator
    return {"window_s": seconds, "window_steps": count}


def peak_bf16_tflops(device_name: str) -> float | None:
    for key, tflops in PEAK_BF16_TFLOPS:
        if key.lower() in device_name.lower():
            return tflops
    return None


def _rate(images: int, seconds: float, flops_per_image: float, peak_tflops: float | None) -> dict[str, Any]:
    rate = images / seconds
    achieved = rate * flops_per_image / 1e12
    return {"images_per_s": rate, "model_tflops": achieved, "mfu": achieved / peak_tflops if peak_tflops else None}


def format_summary(payload: dict[str, Any]) -> str:
    def mfu(entry: dict[str, Any]) -> str:
        return f", MFU {100 * entry['mfu']:.1f} %" if entry.get("mfu") is not None else ""

    lines = [
        (f"{payload['device']} ({payload['mode']}), batch {payload['workload']['batch_size']}, {payload['workload']['precision']}, "
         f"{payload['flops_per_image'] / 1e9:.1f} GFLOP per image (fwd+bwd)"),
        f"  (a) real loader ({payload['workload']['workers']} workers): {payload['real_loader']['images_per_s']:.1f} img/s{mfu(payload['real_loader'])}",
        f"  (b) synthetic:                 {payload['synthetic']['images_per_s']:.1f} img/s{mfu(payload['synthetic'])}",
        f"  (c) loader alone:              {payload['loader_only']['images_per_s']:.1f} img/s",
        (f"  real / synthetic: {payload['real_vs_synthetic']:.3f} (bar >= {BAR_REAL_VS_SYNTHETIC}); "
         f"loader headroom (c)/(b): {payload['loader_headroom']:.2f}"),
        (f"  wall: {payload['seconds']['total']:.1f} s in all (budget {payload['budget_s']:g} s: "
         f"{'within' if payload['within_budget'] else 'OVER'}); " + ", ".join(
             f"{name} {value:.1f} s" for name, value in payload["seconds"].items() if name != "total")),
    ]
    if payload["mode"] == "smoke":
        lines.append("  smoke run on a CPU: these numbers say nothing about a GPU")
    elif payload["peak_bf16_tflops"] is None:
        lines.append(f"  no peak FLOP/s known for {payload['device']}: MFU not computed")
    return "\n".join(lines)


def make_subset(source: Path, dest: Path, train_images: int, valid_images: int, seed: int = 0,
                width: int | None = None, quality: int = 65) -> None:
    """Copy ``train_images`` random train frames and ``valid_images`` valid ones (seeded; 0: all)
    with their manifest lines from the honeybee folder ``source`` to ``dest``, in the same layout.

    With ``width``, frames wider than it are shrunk to it (height in proportion, Pillow's area-
    averaging reduce then Lanczos, EXIF orientation applied) and saved as JPEG at ``quality``; their
    manifest lines get the new ``image_size`` and boxes scaled by the same factors (left and width
    by new width / old width, top and height by new height / old height). All 669 frames at 960 px
    and quality 65: about 41 MB, what ``bench/gpu_suite.sh`` carries."""
    if not (source / "train.manifest").is_file():
        raise SystemExit(f"no honeybee data at {source} (train.manifest missing); see ../shared/data/README.md")
    rng = random.Random(seed)
    total_bytes, shrunk = 0, 0
    counts = {}
    for split, count in (("train", train_images), ("valid", valid_images)):
        lines = (source / f"{split}.manifest").read_text().splitlines()
        chosen = sorted(rng.sample(range(len(lines)), min(count, len(lines)))) if count > 0 else list(range(len(lines)))
        kept = []
        for index in chosen:
            line = lines[index]
            entry = json.loads(line)
            # source-ref is s3://bucket/<dataset>/<split>/images/NAME: keep <split>/images/NAME.
            relative = Path(*entry["source-ref"].split("/")[-3:])
            (dest / relative).parent.mkdir(parents=True, exist_ok=True)
            if width is not None and _shrink(source / relative, dest / relative, entry, width, quality):
                line = json.dumps(entry)
                shrunk += 1
            else:
                shutil.copy2(source / relative, dest / relative)
            total_bytes += (dest / relative).stat().st_size
            kept.append(line)
        (dest / f"{split}.manifest").write_text("\n".join(kept) + "\n")
        counts[split] = len(kept)
    resized = f", {shrunk} shrunk to {width} px wide at JPEG quality {quality}" if width is not None else ""
    print(f"wrote {counts['train']} train + {counts['valid']} valid frames ({total_bytes / 2**20:.1f} MiB{resized}) to {dest}")
    inside = dest.resolve().is_relative_to(REPO)
    if inside and subprocess.run(["git", "check-ignore", "-q", str(dest)], check=False, cwd=REPO).returncode != 0:
        print(f"NOTE: {dest} is not ignored by git; never commit it: add it to .git/info/exclude, e.g.\n"
              f"    echo /{dest.resolve().relative_to(REPO)}/ >> .git/info/exclude   (bench/data_subset is in .gitignore)")


def _shrink(src: Path, dst: Path, entry: dict[str, Any], width: int, quality: int) -> bool:
    """Write ``src`` shrunk to ``width`` px wide at JPEG ``quality`` to ``dst`` and scale the
    Ground Truth label of ``entry`` (its ``image_size`` and ``annotations``) in place; False (and
    nothing written) when the frame is not wider than ``width``."""
    from PIL import Image, ImageOps

    label = next(v for v in entry.values() if isinstance(v, dict) and "annotations" in v and "image_size" in v)
    size = label["image_size"][0] if isinstance(label["image_size"], list) else label["image_size"]
    old_w, old_h = int(size["width"]), int(size["height"])
    if old_w <= width:
        return False
    new_h = max(1, round(old_h * width / old_w))
    with Image.open(src) as image:
        frame = ImageOps.exif_transpose(image).convert("RGB")
    if frame.size != (old_w, old_h):
        raise SystemExit(f"{src} is {frame.size[0]}x{frame.size[1]} but its label says {old_w}x{old_h}")
    frame.resize((width, new_h), Image.Resampling.LANCZOS, reducing_gap=2.0).save(dst, "JPEG", quality=quality)
    sx, sy = width / old_w, new_h / old_h
    size["width"], size["height"] = width, new_h
    for box in label["annotations"]:
        box["left"], box["width"] = round(box["left"] * sx, 2), round(box["width"] * sx, 2)
        box["top"], box["height"] = round(box["top"] * sy, 2), round(box["height"] * sy, 2)
    return True


if __name__ == "__main__":
    sys.exit(main())
