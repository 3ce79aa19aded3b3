"""Accuracy on real hive footage: train named experiments on the honeybee data, evaluate on its val split.

    python bench/accuracy_honeybee.py --quick            # 2-core CPU, about 15 minutes
    python bench/accuracy_honeybee.py                    # full budget, for a GPU
    python bench/accuracy_honeybee.py --quick --rare-classes   # + class-imbalance variants
    python bench/accuracy_honeybee.py --quick --rare-classes --only tiled+focal --append

Every experiment gets the same budget of *images seen* (training samples drawn: a whole frame for
whole-frame training, a tile for tiled training), so the comparison is about what the network is
shown, not how long it ran. Each run is a plain `python train.py +experiment=... ` subprocess, as a
user would start it; validation runs once, after the last step, on the final weights (no choosing
the best epoch on the val split that is then reported). Its metrics.json comes from the same code
as `evaluate.py` (COCO mAP/AP50, per-class AP, AP by bee-size bin, count errors at the threshold
chosen on val).

Writes bench/results/accuracy_honeybee-<device>.json: the machine, versions, and per experiment
the wall time, images seen, mAP, AP50, per-class AP, size-bin AP and count MAE. Prints a table with
each experiment's ratio to the first (the baseline).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from machine import describe_machine

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("BEEDET_SHARED_DATA", REPO.parent / "shared" / "data"))

# name -> Hydra overrides. The first experiment is the baseline the others are compared with.
EXPERIMENTS: dict[str, list[str]] = {
    "wholeframe_ssd300": ["+experiment=honeybee_wholeframe"],
    "tiled_ssd300_sliced": ["+experiment=honeybee_tiled"],
}
# Options against class imbalance (workers outnumber queens 100 to 1), on top of tiled training.
RARE_CLASS_VARIANTS: dict[str, list[str]] = {
    "tiled+repeat_factor": ["+experiment=honeybee_tiled", "data.repeat_factor_threshold=0.5"],
    "tiled+focal": ["+experiment=honeybee_tiled", "model.classification_loss=focal"],
    "tiled+class_weights": ["+experiment=honeybee_tiled", "model.class_weight_power=0.5"],
}
BUDGETS = {"quick": 6000, "full": 60000}  # images seen per experiment


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=f"a 2-core CPU budget ({BUDGETS['quick']} images seen)")
    parser.add_argument("--images-seen", type=int, default=None, help="override the budget of training samples per experiment")
    parser.add_argument("--rare-classes", action="store_true", help="also run the class-imbalance variants")
    parser.add_argument("--only", default=None, help="comma-separated experiment names to run")
    parser.add_argument("--data-root", type=Path, default=SHARED_DATA / "honeybee", help="the honeybee folder (train.manifest, valid.manifest)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 8 on a CPU (more steps for the same images), 64 on a GPU")
    parser.add_argument("--num-workers", type=int, default=None, help="DataLoader workers (default: 2, or 8 on a GPU)")
    parser.add_argument("--trainer", default=None, help="trainer config (default: gpu when CUDA is present, else cpu)")
    parser.add_argument("--extra", action="append", default=[], help="a Hydra override added to every experiment (repeatable)")
    parser.add_argument("--append", action="store_true", help="add to the device's existing result file (same mode and budget) instead of replacing it")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--work-dir", type=Path, default=REPO / "outputs" / "bench")
    parser.add_argument("--device-name", default=None, help="names the result file (default: from the machine)")
    args = parser.parse_args(argv)

    import torch

    if not (args.data_root / "train.manifest").is_file():
        parser.error(f"no honeybee data at {args.data_root} (train.manifest missing); see ../shared/data/README.md")
    cuda = torch.cuda.is_available()
    mode = "quick" if args.quick else "full"
    images_seen = args.images_seen or BUDGETS[mode]
    batch_size = args.batch_size or (64 if cuda else 8)
    num_workers = args.num_workers if args.num_workers is not None else (8 if cuda else 2)
    trainer = args.trainer or ("gpu" if cuda else "cpu")
    experiments = dict(EXPERIMENTS)
    if args.rare_classes:
        experiments.update(RARE_CLASS_VARIANTS)
    if args.only:
        wanted = args.only.split(",")
        unknown = [w for w in wanted if w not in experiments]
        if unknown:
            parser.error(f"unknown experiment(s) {unknown}; known: {sorted(experiments)}")
        experiments = {k: experiments[k] for k in wanted}  # in the order asked for

    machine = describe_machine()
    device_name = args.device_name or machine["slug"]
    steps = max(1, images_seen // batch_size)
    results: dict = {
        "benchmark": "accuracy_honeybee",
        "mode": mode,
        "device": machine["device"],
        "machine": machine,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "data": str(args.data_root.name),
        "images_seen_budget": steps * batch_size,
        "batch_size": batch_size,
        "experiments": {},
    }
    out = args.out / f"accuracy_honeybee-{device_name}.json"
    if args.append and out.is_file():
        previous = json.loads(out.read_text())
        if (previous["mode"], previous["images_seen_budget"], previous["batch_size"]) != (mode, steps * batch_size, batch_size):
            parser.error(f"{out} holds a {previous['mode']} run of {previous['images_seen_budget']} images at batch "
                         f"{previous['batch_size']}: not comparable, run without --append")
        results["experiments"] = previous["experiments"]
    for name, overrides in experiments.items():
        print(f"== {name}: {' '.join(overrides)} ({steps} steps of {batch_size})", flush=True)
        results["experiments"][name] = run_experiment(
            name, [*overrides, *args.extra], args.data_root, steps, batch_size, num_workers, trainer, args.work_dir
        )
        print(format_row(name, results["experiments"][name]), flush=True)
        # Written after every experiment: a long run that is stopped keeps what it finished.
        args.out.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2) + "\n")

    print(format_table(results))
    print(f"wrote {out}")
    return 0


def run_experiment(name: str, overrides: list[str], data_root: Path, steps: int, batch_size: int, num_workers: int, trainer: str, work_dir: Path) -> dict:
    """Train one experiment for exactly ``steps`` optimizer steps, validate once at the end, and
    read back its metrics.json."""
    cmd = [
        sys.executable,
        str(REPO / "train.py"),
        *overrides,
        f"trainer={trainer}",
        f"name=bench_{re.sub(r'[^A-Za-z0-9_]+', '_', name)}",
        f"data.root={data_root.resolve()}",
        f"data.batch_size={batch_size}",
        f"data.num_workers={num_workers}",
        # The budget is steps, not epochs: whole frames and tiles are both "images seen".
        "trainer.max_epochs=100000",
        f"trainer.max_steps={steps}",
        # Validate only after the last step (train.py always does): the numbers are the final
        # weights', not those of an epoch picked on the same val split.
        "trainer.check_val_every_n_epoch=100000",
        "trainer.enable_progress_bar=false",
    ]
    env = {**os.environ, "BEEDET_OUTPUT_DIR": str(work_dir), "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed ({proc.returncode}):\n{' '.join(cmd)}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    run_dir = Path(re.findall(r"^run dir: (.+)$", proc.stdout, flags=re.M)[-1])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return summarize(metrics, overrides, wall, steps * batch_size, run_dir)


def summarize(metrics: dict, overrides: list[str], wall: float, images_seen: int, run_dir: Path) -> dict:
    """The benchmark's view of one run's metrics.json."""
    counting = metrics.get("counting", {})
    return {
        "overrides": overrides,
        "wall_s": round(wall, 1),
        "images_seen": images_seen,
        "mAP": metrics["mAP"],
        "AP50": metrics["AP50"],
        "per_class_AP": metrics["per_class_AP"],
        "per_class_AP50": metrics["per_class_AP50"],
        "size_bins": metrics.get("size_bins"),
        "count_MAE": counting.get("all", {}).get("MAE"),
        "count_MAE_per_class": {k: v.get("MAE") for k, v in counting.get("per_class", {}).items()},
        "count_threshold": counting.get("threshold"),
        "run_dir": str(run_dir),
    }


def _fmt(value) -> str:
    return "n/a" if value is None or (isinstance(value, float) and value < 0) else f"{value:.3f}"


def format_row(name: str, r: dict) -> str:
    per_class = " ".join(f"{k}={_fmt(v)}" for k, v in r["per_class_AP50"].items())
    return f"{name}: AP50 {_fmt(r['AP50'])} mAP {_fmt(r['mAP'])} count MAE {_fmt(r['count_MAE'])} [{per_class}] ({r['wall_s']:.0f} s)"


def format_table(results: dict) -> str:
    names = list(results["experiments"])
    if not names:
        return "no experiments"
    base = results["experiments"][names[0]]
    lines = [
        f"accuracy_honeybee ({results['mode']}, {results['device']}, {results['images_seen_budget']} images seen each)",
        f"{'experiment':<24} {'AP50':>6} {'xbase':>6} {'mAP':>6} {'countMAE':>9} {'xbase':>6} {'wall s':>7}",
    ]
    for name in names:
        r = results["experiments"][name]
        ap_ratio = r["AP50"] / base["AP50"] if base["AP50"] and base["AP50"] > 0 else float("nan")
        mae_ratio = r["count_MAE"] / base["count_MAE"] if base.get("count_MAE") else float("nan")
        lines.append(
            f"{name:<24} {_fmt(r['AP50']):>6} {ap_ratio:>6.2f} {_fmt(r['mAP']):>6} {_fmt(r['count_MAE']):>9} {mae_ratio:>6.2f} {r['wall_s']:>7.0f}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
