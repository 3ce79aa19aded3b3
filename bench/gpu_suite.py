"""The Python half of ``bench/gpu_suite.sh``: sliced validation timed, and the suite's one JSON.

    python bench/gpu_suite.py validate --ckpt RUN/checkpoints/last.ckpt --out WORK/validation.json [--batch-size 64 --workers 14]
    python bench/gpu_suite.py report --work WORK --out bench/results     # after the suite's steps

``validate``: the sliced validation that training runs, on the val split of the checkpoint's own
data config, timed: ``DetectionModule.validation_step`` (on a GPU the tiles of all the batch's
frames share forward passes, ``detect_sliced_frames``; the validation loss takes one more pass over
the tiles, frame by frame), then the epoch's COCO and count metrics, under ``trainer.validate`` with
the data module's val loader (``--workers`` processes, ``--batch-size`` frames per batch) in
``--precision`` (a GPU run validates in bf16-mixed, as ``trainer=gpu`` training does). Reported:
frames/s of the whole ``trainer.validate`` call (loader start and metrics included) and of the
batches after the first (the steady rate), the first batch's wait, and AP50 (a sanity check: the
minute-trained weights detect little).

``report``: merges what the suite's steps wrote in ``--work`` into ``gpu_suite-<device>.json``:
``gpu_throughput-suite.json`` (bench/gpu_throughput.py), the training minute's speed (read from its
run dir: ``SpeedMonitor``'s ``speed/*`` scalars in the TensorBoard events, the steps in
``checkpoints/last.ckpt`` and ``training_time_s`` in ``metrics.json``), ``validation.json``,
``sliced_inference-suite.json`` (bench/sliced_inference.py), ``steps.tsv`` (each step's exit code
and wall seconds, written by the shell script) and the data's size, with issue 17's bars.

The training minute's rate, two ways (``beedet.training.throughput``): ``samples_per_s_steps`` is
batch size / mean step time over SpeedMonitor's points after the first fifth of them (steps
include waiting for data, the first batch of each epoch too, but not the checkpoint written at
each epoch's end); ``samples_per_s_fit`` is every sample trained over the fit's wall time
(``training_time_s``: worker start, epoch boundaries and checkpoints included). A sample is a 320
px tile or a whole frame resized to 320 px (``augment=scaled``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from machine import describe_machine, write_results

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# Issue 17's bars, checked on an H200 with this suite as it is.
BARS = {
    "synthetic_images_per_s": 2000.0,  # SSD300-ResNet50 bf16 on synthetic batches
    "real_vs_synthetic": 0.9,  # the real loader within 10 % of synthetic
    "training_samples_per_s": 2000.0,  # tiled training, tiles/s
    "sliced_validation_frames_per_s": 50.0,  # full frames/s
    "suite_s": 360.0,  # the whole suite
    "data_mib": 45.0,  # the data carried beside the code
}
#: SpeedMonitor points dropped from the start of the training minute (worker start, cudnn.benchmark).
WARMUP_POINT_SHARE = 0.2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    val = commands.add_parser("validate", help="time sliced validation of a checkpoint's val split")
    val.add_argument("--ckpt", type=Path, required=True)
    val.add_argument("--batch-size", type=int, default=64, help="frames per validation batch")
    val.add_argument("--workers", type=int, default=14, help="val DataLoader worker processes")
    val.add_argument("--precision", default=None, help="default: bf16-mixed on CUDA, 32-true on a CPU")
    val.add_argument("--frames", type=int, default=None, help="validate only the first N val frames (the CPU smoke)")
    val.add_argument("--out", type=Path, required=True, help="the JSON to write")
    report = commands.add_parser("report", help="merge the suite's results into one JSON")
    report.add_argument("--work", type=Path, required=True, help="the folder the suite's steps wrote into")
    report.add_argument("--data-root", type=Path, required=True)
    report.add_argument("--mode", choices=("gpu", "smoke"), required=True)
    report.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    report.add_argument("--device-name", default=None, help="names the result file (default: from the machine)")
    args = parser.parse_args(argv)
    if args.command == "validate":
        result = time_validation(args.ckpt, args.batch_size, args.workers, args.precision, args.frames)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"sliced validation: {result['frames']} frames in {result['wall_s']:.1f} s: {result['frames_per_s']:.1f} "
              f"frames/s ({result['frames_per_s_after_first_batch'] or float('nan'):.1f} after the first batch), "
              f"{result['precision']}, {result['device']}")
        return 0
    payload = merge(args.work, args.data_root, args.mode)
    path = write_results("gpu_suite", args.device_name or payload["machine"]["slug"] + ("-smoke" if args.mode == "smoke" else ""),
                         payload, args.out)
    print(format_summary(payload))
    print(f"wrote {path}")
    return 0


# ---- validate ------------------------------------------------------------------------------------

def time_validation(ckpt: Path, batch_size: int, workers: int, precision: str | None, frames: int | None) -> dict[str, Any]:
    """``trainer.validate`` of the checkpoint's system on the val split of its own data config
    (module docstring), timed; ``frames``: only the first ones."""
    import torch

    from beedet.assembly import build_datamodule, load_system

    system, train_cfg = load_system(ckpt)
    # As evaluate.py builds it, without decoding every frame up front.
    datamodule = build_datamodule(train_cfg.data, batch_size=batch_size, num_workers=workers, verify_images=False)
    datamodule.load_labels()
    if frames is not None:
        datamodule.val_records = datamodule.val_records[:frames]
    cuda = torch.cuda.is_available()
    precision = precision or ("bf16-mixed" if cuda else "32-true")
    clock = _BatchClock()
    trainer = pl.Trainer(accelerator="gpu" if cuda else "cpu", devices=1, precision=precision, logger=False,
                         enable_checkpointing=False, enable_model_summary=False, enable_progress_bar=False,
                         callbacks=[clock])
    start = time.perf_counter()
    trainer.validate(system, datamodule=datamodule, verbose=False)
    wall = time.perf_counter() - start
    count = len(datamodule.val_records)
    later = count - clock.first_batch_frames
    steady_s = clock.last_end - clock.first_end if clock.first_end is not None and clock.last_end is not None else 0.0
    stats = system.last_validation.metrics.stats if system.last_validation is not None else {}
    slicing = system.slicing
    return {
        "checkpoint": str(ckpt),
        "frames": count,
        "batch_size": batch_size,
        "workers": workers,
        "precision": precision,
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "slicing": None if slicing is None else {"long_side": slicing.long_side, "tile_size": slicing.tile_size,
                                                 "overlap": slicing.overlap, "full_frame": slicing.full_frame,
                                                 "inputs_per_forward": slicing.batch_size},
        "wall_s": wall,
        "frames_per_s": count / wall,
        "first_batch_s": None if clock.first_start is None else clock.first_start - start,
        "frames_per_s_after_first_batch": later / steady_s if later > 0 and steady_s > 0 else None,
        "batches": clock.batches,
        "AP50": float(stats["AP50"]) if "AP50" in stats else None,
    }


class _BatchClock(pl.Callback):
    """When the first validation batch starts and ends, when the last one ends, and how many frames
    the first held. No CUDA synchronisation is needed: each validation step copies its detections
    to the CPU before it ends."""

    def __init__(self) -> None:
        self.first_start: float | None = None
        self.first_end: float | None = None
        self.last_end: float | None = None
        self.first_batch_frames = 0
        self.batches = 0

    def on_validation_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if self.first_start is None:
            self.first_start = time.perf_counter()
            self.first_batch_frames = len(batch[0])

    def on_validation_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int,
                                dataloader_idx: int = 0) -> None:
        now = time.perf_counter()
        if self.first_end is None:
            self.first_end = now
        self.last_end = now
        self.batches += 1


# ---- report --------------------------------------------------------------------------------------

def merge(work: Path, data_root: Path, mode: str) -> dict[str, Any]:
    """One JSON of the suite's results in ``work`` (module docstring); a part whose step failed or
    wrote nothing is None, and its step's exit code says why."""
    steps = _steps(work / "steps.tsv")
    throughput = _json(work / "gpu_throughput-suite.json")
    sliced = _json(work / "sliced_inference-suite.json")
    validation = _json(work / "validation.json")
    run_dir = _run_dir(work / "train.log")
    training = training_speed(run_dir) if run_dir is not None else None
    data_bytes = sum(f.stat().st_size for f in data_root.rglob("*") if f.is_file())
    total_s = sum(step["seconds"] for step in steps.values())
    checks = None
    if mode == "gpu":
        def at_least(value: float | None, bar: float) -> bool | None:
            return None if value is None else value >= bar

        checks = {
            "synthetic_images_per_s": at_least(throughput and throughput["synthetic"]["images_per_s"], BARS["synthetic_images_per_s"]),
            "real_vs_synthetic": at_least(throughput and throughput["real_vs_synthetic"], BARS["real_vs_synthetic"]),
            "training_samples_per_s": at_least(training and training["samples_per_s_steps"], BARS["training_samples_per_s"]),
            "sliced_validation_frames_per_s": at_least(validation and validation["frames_per_s"],
                                                       BARS["sliced_validation_frames_per_s"]),
            "suite_s": total_s <= BARS["suite_s"],
            "data_mib": data_bytes / 2**20 <= BARS["data_mib"],
        }
    return {
        "benchmark": "gpu_suite",
        "mode": mode,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": describe_machine(),
        "data": {"root": str(data_root), "mib": data_bytes / 2**20,
                 "train_frames": _lines(data_root / "train.manifest"), "valid_frames": _lines(data_root / "valid.manifest")},
        "steps": steps,
        "suite_s": total_s,
        "gpu_throughput": throughput,
        "training_minute": training,
        "sliced_validation": validation,
        "sliced_inference": sliced,
        "bars": BARS,
        "checks": checks,
    }


def training_speed(run_dir: Path) -> dict[str, Any] | None:
    """The training minute's rate from train.py's run dir (module docstring); None without its
    SpeedMonitor points."""
    import glob

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from beedet.checkpointing import load_checkpoint

    series: dict[str, list[float]] = {}
    for path in sorted(glob.glob(str(run_dir / "tensorboard" / "**" / "events.out.tfevents.*"), recursive=True)):
        events = EventAccumulator(path, size_guidance={"scalars": 0})
        events.Reload()
        for tag in ("speed/images_per_s", "speed/step_time_s", "speed/data_time_s"):
            if tag in events.Tags()["scalars"]:
                series.setdefault(tag, []).extend(e.value for e in events.Scalars(tag))
    step_times = series.get("speed/step_time_s", [])
    if not step_times:
        return None
    skip = int(len(step_times) * WARMUP_POINT_SHARE)
    steady_steps, steady_data = step_times[skip:], series.get("speed/data_time_s", [])[skip:]
    images_per_s = series["speed/images_per_s"]
    batch_size = round(images_per_s[-1] * step_times[-1])  # a point's images over its step time, one process
    metrics = _json(run_dir / "metrics.json") or {}
    last = run_dir / "checkpoints" / "last.ckpt"
    steps = int(load_checkpoint(last)[0]["global_step"]) if last.is_file() else None
    fit_s = metrics.get("training_time_s")
    return {
        "run_dir": str(run_dir),
        "batch_size": batch_size,
        "optimizer_steps": steps,
        "speed_points": len(step_times),
        "samples_per_s_steps": batch_size / statistics.fmean(steady_steps),
        "samples_per_s_points": images_per_s,
        "data_time_share": statistics.fmean(steady_data) / statistics.fmean(steady_steps) if steady_data else None,
        "training_time_s": fit_s,
        "samples_per_s_fit": steps * batch_size / fit_s if steps and fit_s else None,
    }


def _steps(path: Path) -> dict[str, dict[str, float]]:
    """``steps.tsv``: one ``name<TAB>exit code<TAB>seconds`` line per step of the suite."""
    steps = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            name, code, seconds = line.split("\t")
            steps[name] = {"exit_code": int(code), "seconds": float(seconds)}
    return steps


def _json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.is_file() else 0


def _run_dir(log: Path) -> Path | None:
    """The run dir train.py printed last (``run dir: PATH``) in its log."""
    if not log.is_file():
        return None
    found = [line.split("run dir: ", 1)[1].strip() for line in log.read_text().splitlines() if line.startswith("run dir: ")]
    return Path(found[-1]) if found else None


def format_summary(payload: dict[str, Any]) -> str:
    def number(value: float | None, digits: int = 1) -> str:
        return "n/a" if value is None else f"{value:,.{digits}f}"

    throughput, training = payload["gpu_throughput"] or {}, payload["training_minute"] or {}
    validation, sliced = payload["sliced_validation"] or {}, payload["sliced_inference"] or {}
    lines = [f"gpu_suite ({payload['mode']}) on {payload['machine']['device']}: {payload['suite_s']:.0f} s in all, "
             f"data {payload['data']['mib']:.1f} MiB"]
    lines += [f"  step {name}: exit {step['exit_code']}, {step['seconds']:.1f} s" for name, step in payload["steps"].items()]
    if throughput:
        lines.append(f"  throughput: synthetic {number(throughput['synthetic']['images_per_s'])} img/s, real loader "
                     f"{number(throughput['real_loader']['images_per_s'])} ({number(throughput['real_vs_synthetic'], 3)} of "
                     f"synthetic), loader alone {number(throughput['loader_only']['images_per_s'])}; "
                     f"{throughput['seconds']['total']:.0f} s")
    if training:
        lines.append(f"  training minute: {number(training['samples_per_s_steps'])} samples/s over its steps, "
                     f"{number(training['samples_per_s_fit'])} over the fit; batch {training['batch_size']}, "
                     f"{training['optimizer_steps']} steps, data wait {number(100 * training['data_time_share'] if training['data_time_share'] is not None else None)} % of a step")
    if validation:
        lines.append(f"  sliced validation: {validation['frames']} frames, {number(validation['frames_per_s'])} frames/s "
                     f"({number(validation['frames_per_s_after_first_batch'])} after the first batch), {validation['precision']}")
    if sliced:
        lines.append("  sliced detection alone: " + ", ".join(f"{name} {rate:.1f} frames/s" for name, rate in sliced["frames_per_s"].items()))
    if payload["checks"] is not None:
        lines.append("  issue 17's bars: " + ", ".join(f"{name} {'met' if ok else 'NOT met' if ok is False else 'not measured'}"
                                                      for name, ok in payload["checks"].items()))
    else:
        lines.append("  smoke run on a CPU: these numbers say nothing about a GPU")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
