"""Training-step overhead: beedet's DetectionModule under the Lightning Trainer vs a plain PyTorch loop.

    python bench/training_overhead.py --quick                       # 2-core CPU, about 4 minutes
    python bench/training_overhead.py --quick --threads 1           # the same on a shared, busy CPU
    python bench/training_overhead.py                               # GPU size: SSD300-ResNet50, bf16
    python bench/training_overhead.py --quick +experiment=honeybee_wholeframe   # any train.py overrides

Both sides train the *same* network object (built by ``beedet.assembly`` from the composed real
config, exactly as train.py builds it), from the same initial weights, on the same pre-built batches
(augmented once, held in memory as tensors, served by the same in-memory DataLoader, so the input
pipeline is not measured), with the same optimizer and per-step lr schedule from the config:

* beedet: ``build_system`` + ``build_trainer(cfg)``: train.py's Trainer with its callbacks
  (checkpoints, lr monitor, TensorBoard previews), TensorBoard logger and progress bar, no
  validation loader (the plain loop has none either).
* plain: the loop of torchvision's ``references/detection/engine.py`` ``train_one_epoch``: move
  the batch, turn its uint8 images into float in [0, 1] there (``images_to_float``, what beedet's
  ``training_step`` does: the training loader's batches are uint8), forward under
  autocast when mixed precision is on, sum the losses, ``.item()`` each
  (the reference's finiteness check and metric logger), ``zero_grad``, ``backward``, ``step``,
  scheduler step. Its printing every ``print_freq`` steps is left out.

Timing: the steady state. Each run trains ``warmup + steps + 1`` steps; the clock reads at the start
of step ``warmup`` and of step ``warmup + steps`` (after the batch is fetched), so the measured
window holds exactly ``steps`` whole iterations, including everything either side does between
steps (logging, progress bar, callbacks, scheduler). On CUDA both clock readings synchronise first.
Repetitions alternate which side goes first (plain, beedet, beedet, plain, ...) and the headline is
the median of the per-repetition ratios, so slow drift of a shared machine cancels. Per-fit fixed
costs (Trainer construction, model summary, the end-of-epoch checkpoint) are outside the window;
they are reported separately as seconds per fit. The per-step losses of the two sides are compared
too: they must agree (same weights, same batches, same optimizer), which shows the work is the same.

Writes bench/results/training_overhead-<device>.json. Bar (issue 5): throughput ratio beedet/plain
>= 0.97.
"""

from __future__ import annotations

import argparse
import copy
import gc
import math
import os
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from machine import describe_machine, write_results

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("BEEDET_SHARED_DATA", REPO.parent / "shared" / "data"))
BAR = 0.97
THREADS_HELP = ("torch threads (default: torch's, one per core). On a shared, oversubscribed CPU two OpenMP threads "
                "can wait on each other for most of a step: --threads 1 gives steadier ratios there")

# mode -> (Hydra overrides, batch size, warm-up steps, measured steps, repetitions).
# quick: train.py's default network (the slim SSD256) on its default synthetic bees, sized for a
# 2-core CPU. full: the GPU model of issue 5 (SSD300-ResNet50, bf16, cudnn benchmark).
MODES: dict[str, tuple[list[str], int, int, int, int]] = {
    "quick": ([], 8, 2, 8, 10),
    "full": (["model=ssd300_resnet50", "model.pretrained_backbone=false", "trainer=gpu"], 64, 10, 100, 6),
}


def compose_run_config(overrides: list[str], run_dir: Path, data_dir: Path | None = None) -> Any:
    """train.py's config for ``overrides``, with every path pinned so it resolves outside a Hydra
    run (no ``${hydra:...}`` left): outputs under ``run_dir``, generated data under ``data_dir``
    (default: the checkout's data/, shared with train.py's cache)."""
    from beedet.compose import compose_train_config

    paths = [
        f"paths.data_dir={data_dir or os.environ.get('BEEDET_DATA_DIR', REPO / 'data')}",
        f"paths.shared_data={SHARED_DATA}",
        f"paths.output_dir={run_dir}",
        f"paths.run_dir={run_dir}",
    ]
    return compose_train_config([*paths, *overrides])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="train.py Hydra overrides (model=..., +experiment=..., data.root=...)")
    parser.add_argument("--quick", action="store_true", help="the 2-core CPU size (default: the GPU size)")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=None, help="steps per run before the clock starts")
    parser.add_argument("--steps", type=int, default=None, help="measured steps per run")
    parser.add_argument("--repeats", type=int, default=None, help="runs of each side, alternating which goes first")
    parser.add_argument("--distinct-batches", type=int, default=8, help="pre-built batches, cycled through")
    parser.add_argument("--data-dir", type=Path, default=None, help="where synthetic bees are generated (default: data/)")
    parser.add_argument("--threads", type=int, default=None, help=THREADS_HELP)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--device-name", default=None, help="names the result file (default: from the machine)")
    args = parser.parse_args(argv)

    mode = "quick" if args.quick else "full"
    mode_overrides, batch_size, warmup, steps, repeats = MODES[mode]
    batch_size = args.batch_size or batch_size
    warmup = warmup if args.warmup is None else args.warmup
    steps = args.steps or steps
    repeats = args.repeats or repeats
    overrides = [*mode_overrides, *args.overrides, f"data.batch_size={batch_size}", "data.num_workers=0"]

    if args.threads:
        torch.set_num_threads(args.threads)
    machine = describe_machine()
    with tempfile.TemporaryDirectory(prefix="beedet-bench-overhead-") as tmp:
        cfg = compose_run_config(overrides, Path(tmp), args.data_dir)
        if str(cfg.trainer.precision) not in PLAIN_AUTOCAST:
            parser.error(f"trainer.precision={cfg.trainer.precision} is not supported here; use one of {sorted(PLAIN_AUTOCAST)}")
        pl.seed_everything(cfg.seed, workers=True)
        # Lightning sets cudnn.benchmark from the trainer config when the Trainer is built; set it
        # once up front so the plain loop, which may run first, gets the same kernels.
        torch.backends.cudnn.benchmark = bool(cfg.trainer.benchmark)
        system, batches, class_names = build_system_and_batches(cfg, args.distinct_batches)
        total = warmup + steps + 1
        device = torch.device("cuda" if torch.cuda.is_available() and cfg.trainer.accelerator in ("auto", "gpu", "cuda") else "cpu")
        print(f"== {mode}: {type(system.net).__name__} ({cfg.model._target_}), batch {batch_size}, "
              f"{cfg.trainer.precision}, {device}; {repeats} x ({warmup} warm-up + {steps} measured steps) per side", flush=True)

        initial = copy.deepcopy(system.net.state_dict())
        runs = []
        for rep in range(repeats):
            order = ["plain", "beedet"] if rep % 2 == 0 else ["beedet", "plain"]
            run: dict[str, Any] = {"order": order}
            for side in order:
                system.net.load_state_dict(initial)
                gc.collect()
                if side == "plain":
                    run["plain"] = plain_loop(system, batches, total, warmup, steps, str(cfg.trainer.precision), device)
                else:
                    run["beedet"] = lightning_fit(cfg, system, batch_loader(batches, total), total, warmup, steps, Path(tmp) / f"run{rep}")
            run["ratio"] = run["plain"]["window_s"] / run["beedet"]["window_s"]
            run["max_abs_loss_diff"] = max(abs(a - b) for a, b in zip(run["plain"]["losses"], run["beedet"]["losses"]))
            runs.append(run)
            print(f"  rep {rep + 1}/{repeats} ({' then '.join(order)}): plain {run['plain']['window_s']:.2f} s, "
                  f"beedet {run['beedet']['window_s']:.2f} s, ratio {run['ratio']:.3f}, "
                  f"max |loss diff| {run['max_abs_loss_diff']:.2e}", flush=True)

    images = steps * batch_size
    summary = {
        side: {
            "images_per_s_median": statistics.median(images / r[side]["window_s"] for r in runs),
            "step_ms_median": statistics.median(1000 * r[side]["window_s"] / steps for r in runs),
            "fit_wall_s_median": statistics.median(r[side]["wall_s"] for r in runs),
        }
        for side in ("plain", "beedet")
    }
    ratio = statistics.median(r["ratio"] for r in runs)
    # Everything a fit costs beyond its steps (Trainer setup, summary, checkpoint, teardown),
    # minus the same for the plain loop (optimizer construction, moving the model).
    fixed = statistics.median(
        (r["beedet"]["wall_s"] - r["beedet"]["steps_s"]) - (r["plain"]["wall_s"] - r["plain"]["steps_s"]) for r in runs
    )
    payload = {
        "benchmark": "training_overhead",
        "mode": mode,
        "device": machine["device"],
        "machine": machine,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "workload": {
            "overrides": overrides,
            "network": cfg.model._target_,
            "classes": class_names,
            "batch_size": batch_size,
            "precision": str(cfg.trainer.precision),
            "optimizer": cfg.optimizer._target_,
            "scheduler": cfg.scheduler._target_ if cfg.get("scheduler") else None,
            "warmup_steps": warmup,
            "measured_steps": steps,
            "repeats": repeats,
            "distinct_batches": len(batches),
            "torch_threads": torch.get_num_threads(),
        },
        "plain": summary["plain"],
        "beedet": summary["beedet"],
        "ratio_median": ratio,
        "ratio_total": sum(r["plain"]["window_s"] for r in runs) / sum(r["beedet"]["window_s"] for r in runs),
        "beedet_extra_fixed_s_per_fit": fixed,
        "max_abs_loss_diff": max(r["max_abs_loss_diff"] for r in runs),
        "bar": BAR,
        "meets_bar": ratio >= BAR,
        "runs": [
            {
                "order": r["order"],
                "ratio": r["ratio"],
                "max_abs_loss_diff": r["max_abs_loss_diff"],
                **{f"{side}_window_s": r[side]["window_s"] for side in ("plain", "beedet")},
                **{f"{side}_wall_s": r[side]["wall_s"] for side in ("plain", "beedet")},
            }
            for r in runs
        ],
    }
    path = write_results("training_overhead", args.device_name or machine["slug"], payload, args.out)
    print(f"plain loop: {summary['plain']['images_per_s_median']:.1f} img/s   beedet + Lightning: "
          f"{summary['beedet']['images_per_s_median']:.1f} img/s")
    print(f"throughput ratio beedet/plain: {ratio:.3f} (median of {repeats}; bar >= {BAR}: "
          f"{'met' if ratio >= BAR else 'NOT met'}); beedet's extra fixed cost per fit: {fixed:.2f} s")
    print(f"wrote {path}")
    return 0


# trainer.precision -> the autocast dtype the plain loop uses (None: full precision), as Lightning's
# MixedPrecision plugin autocasts the forward pass and the loss, not the backward pass.
PLAIN_AUTOCAST = {"32-true": None, "32": None, "bf16-mixed": "bfloat16"}


def build_system_and_batches(cfg: Any, distinct: int) -> tuple[Any, list, list[str]]:
    """train.py's DetectionModule for ``cfg``, and ``distinct`` augmented training batches built
    once by the configured DataLoader (``(list[image], list[target])``, beedet's 0-based labels)."""
    from beedet.assembly import build_datamodule, build_network, build_system

    datamodule = build_datamodule(cfg.data, cfg.augment)
    datamodule.load_labels()
    net = build_network(cfg.model, num_classes=datamodule.num_classes,
                        class_counts=[datamodule.reports["train"].boxes_per_class[n] for n in datamodule.class_names])
    # No validation runs here, so no size bins are needed.
    system = build_system(cfg, net, datamodule.class_names)
    datamodule.setup("fit")
    batches = []
    for batch in datamodule.train_dataloader():
        batches.append(batch)
        if len(batches) == distinct:
            break
    return system, batches, datamodule.class_names


class PrebuiltBatches:
    """``length`` batches cycling through ``batches``: an in-memory, map-style dataset whose items
    are whole batches (served with ``DataLoader(batch_size=None)``)."""

    def __init__(self, batches: list, length: int) -> None:
        self.batches = batches
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Any:
        if not 0 <= index < self.length:
            raise IndexError(index)
        return self.batches[index % len(self.batches)]


def _whole_batch(batch: Any) -> Any:
    return batch


def batch_loader(batches: list, length: int) -> Any:
    """The same loader for both sides: no workers, no collation, no copies."""
    from torch.utils.data import DataLoader

    return DataLoader(PrebuiltBatches(batches, length), batch_size=None, shuffle=False, num_workers=0, collate_fn=_whole_batch)


def _clock(device: Any) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def plain_loop(system: Any, batches: list, total: int, warmup: int, steps: int, precision: str, device: Any) -> dict[str, Any]:
    """torchvision's detection reference loop (``train_one_epoch``) over ``total`` batches, with the
    optimizer and schedule that ``system.configure_optimizers`` would build."""
    from beedet.data.dataset import images_to_float

    start = time.perf_counter()
    net = system.net.to(device)
    net.train()
    optimizer = system.optimizer_factory(params=[p for p in system.parameters() if p.requires_grad])
    scheduler = system.scheduler_factory(optimizer, total_steps=total) if system.scheduler_factory else None
    autocast_dtype = getattr(torch, PLAIN_AUTOCAST[precision]) if PLAIN_AUTOCAST[precision] else None
    losses_seen: list[float] = []
    window_start = window_end = steps_start = 0.0
    for i, (images, targets) in enumerate(batch_loader(batches, total)):
        if i == 0:
            steps_start = time.perf_counter()
        if i == warmup:
            window_start = _clock(device)
        elif i == warmup + steps:
            window_end = _clock(device)
        images = images_to_float([image.to(device) for image in images])
        # torchvision's SSD wants 1..C with 0 = background; beedet's batches hold 0-based ids.
        targets = [{"boxes": t["boxes"].to(device), "labels": t["labels"].to(device) + 1} for t in targets]
        with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            loss_dict = net(images, targets)
            loss = sum(loss_dict.values())
        loss_value = loss.item()
        if not math.isfinite(loss_value):
            raise SystemExit(f"plain loop: loss is {loss_value} at step {i}")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        # The reference's MetricLogger.update: every loss as a Python float, and the lr.
        _logged = {k: v.item() for k, v in loss_dict.items()}, optimizer.param_groups[0]["lr"]
        losses_seen.append(loss_value)
    steps_s = _clock(device) - steps_start
    return {"window_s": window_end - window_start, "steps_s": steps_s, "wall_s": time.perf_counter() - start,
            "losses": losses_seen}


class StepClock(pl.Callback):
    """Clock readings of a fit: at the start of step ``warmup`` and of step ``warmup + steps``
    (the measured window, synchronised on CUDA), at the first step's start and the last step's end
    (all steps), and each step's loss tensor (kept on the device: an ``.item()`` here would add a
    sync point that the fit does not have).

    With time caps (``gpu_throughput.py``'s budgets) the window may be cut short: it starts at step
    ``warmup`` or at the first step (from the second on) that begins ``warmup_s`` seconds or more
    after the first step began, whichever comes first, and ends at ``steps`` steps or at the first
    step that begins ``window_s`` seconds or more after it started; the fit then stops after that
    step (``trainer.should_stop``). ``window_steps`` is the number of whole steps in the window.
    Without caps the window is exactly steps ``warmup`` .. ``warmup + steps``."""

    def __init__(self, warmup: int, steps: int, total: int, warmup_s: float | None = None,
                 window_s: float | None = None) -> None:
        self.warmup, self.steps, self.total = warmup, steps, total
        self.warmup_s, self.window_s = warmup_s, window_s
        self.readings: dict[str, float] = {}
        self.losses: list[torch.Tensor] = []
        self.start_step: int | None = None
        self.window_steps: int | None = None
        self._stopping = False

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        now = time.perf_counter()
        if batch_idx == 0:
            self.readings["first"] = now
        if self.start_step is None:
            warm = batch_idx >= self.warmup or (
                self.warmup_s is not None and batch_idx >= 1 and now - self.readings["first"] >= self.warmup_s)
            if warm:
                self.readings["start"] = _clock(pl_module.device)
                self.start_step = batch_idx
        elif self.window_steps is None:
            done = batch_idx - self.start_step >= self.steps or (
                self.window_s is not None and now - self.readings["start"] >= self.window_s)
            if done:
                self.readings["end"] = _clock(pl_module.device)
                self.window_steps = batch_idx - self.start_step
                if batch_idx < self.total - 1:
                    trainer.should_stop = True  # this step is the fit's last
                    self._stopping = True

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.losses.append(outputs["loss"].detach())
        if batch_idx == self.total - 1 or self._stopping:
            self.readings["last"] = _clock(pl_module.device)
            self._stopping = False


def lightning_fit(cfg: Any, system: Any, loader: Any, total: int, warmup: int, steps: int, run_dir: Path,
                  warmup_s: float | None = None, window_s: float | None = None) -> dict[str, Any]:
    """``trainer.fit`` of train.py's Trainer (``build_trainer(cfg)``) on ``loader`` for exactly
    ``total`` steps in one epoch, without validation; with ``warmup_s`` / ``window_s`` (seconds) the
    fit may stop sooner (:class:`StepClock`). Returns the measured window (seconds and whole steps),
    the step it started at, the time of all steps and of the whole fit (seconds), and the per-step
    losses."""
    from omegaconf import open_dict

    from beedet.assembly import build_trainer

    cfg = copy.deepcopy(cfg)
    with open_dict(cfg):
        cfg.paths.run_dir = str(run_dir)
        cfg.trainer.max_steps = total
        cfg.trainer.max_epochs = 1
    start = time.perf_counter()
    trainer = build_trainer(cfg)
    clock = StepClock(warmup, steps, total, warmup_s=warmup_s, window_s=window_s)
    trainer.callbacks.append(clock)
    trainer.fit(system, train_dataloaders=loader)
    wall = time.perf_counter() - start
    capped = warmup_s is not None or window_s is not None
    if len(clock.readings) != 4 or (not capped and trainer.global_step != total):
        raise SystemExit(f"Lightning ran {trainer.global_step} of {total} steps (clock {sorted(clock.readings)})")
    return {"window_s": clock.readings["end"] - clock.readings["start"], "window_steps": clock.window_steps,
            "start_step": clock.start_step, "steps_s": clock.readings["last"] - clock.readings["first"],
            "wall_s": wall, "steps_run": trainer.global_step, "losses": [float(v) for v in clock.losses]}


if __name__ == "__main__":
    sys.exit(main())
