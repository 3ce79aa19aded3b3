"""Accuracy on real hive footage: train named experiments on the honeybee data, evaluate on its val split.

    python bench/accuracy_honeybee.py --quick            # 2-core CPU, 6,000 images seen each
    python bench/accuracy_honeybee.py                    # full budget, for a GPU
    python bench/accuracy_honeybee.py --quick --rare-classes   # + class-imbalance variants
    python bench/accuracy_honeybee.py --quick --rare-classes --only tiled+focal --append
    python bench/accuracy_honeybee.py --images-seen 6000,24000,96000 --only honeybee --append   # a learning curve

A learning curve is one run per budget, each with its whole schedule (warmup, cosine decay to the
end) fitted to that budget: what a user gets who trains that long, not a snapshot of a longer run.
Every run is also evaluated, by `evaluate.py val_subset=unseen`, on the val images that share no
video or camera with the training images (``data.group_by``; 33 of the 173 honeybee val images),
reported beside the published split as ``unseen``.

Every experiment gets the same budget of *images seen* (training samples drawn: a whole frame for
whole-frame training, a tile for tiled training), so the comparison is about what the network is
shown, not how long it ran. Each run is a plain `python train.py +experiment=... ` subprocess, as a
user would start it; validation runs once, after the last step, on the final weights (no choosing
the best epoch on the val split that is then reported). Its metrics.json comes from the same code
as `evaluate.py` (COCO mAP/AP50, per-class AP, AP by bee-size bin, count errors at the threshold
chosen on val).

Writes bench/results/accuracy_honeybee-<device>.json: the machine, versions, and per run
(``name@images_seen``) the wall time, images seen, mAP, AP50, per-class AP, size-bin AP and count
MAE, on the published val split and on its unseen part. Prints a table with each run's ratio to the
first (the baseline).
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
    # The recipe the README recommends for real footage.
    "honeybee": ["+experiment=honeybee"],
}
# Batch size on a CPU, per experiment (default 8: more steps for the same images); 64 on a GPU.
CPU_BATCH_SIZE = {"honeybee": 16}
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
    parser.add_argument("--images-seen", default=None,
                        help="the budget of training samples per run; a comma-separated list runs each experiment once per budget (a learning curve)")
    parser.add_argument("--rare-classes", action="store_true", help="also run the class-imbalance variants")
    parser.add_argument("--only", default=None, help="comma-separated experiment names to run")
    parser.add_argument("--data-root", type=Path, default=SHARED_DATA / "honeybee", help="the honeybee folder (train.manifest, valid.manifest)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 8 on a CPU (16 for honeybee), 64 on a GPU")
    parser.add_argument("--num-workers", type=int, default=None, help="DataLoader workers (default: 2, or 8 on a GPU)")
    parser.add_argument("--trainer", default=None, help="trainer config (default: gpu when CUDA is present, else cpu)")
    parser.add_argument("--extra", action="append", default=[], help="a Hydra override added to every experiment (repeatable)")
    parser.add_argument("--append", action="store_true", help="add to (or replace runs in) the device's existing result file instead of replacing it")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--work-dir", type=Path, default=REPO / "outputs" / "bench")
    parser.add_argument("--device-name", default=None, help="names the result file (default: from the machine)")
    args = parser.parse_args(argv)

    import torch

    if not (args.data_root / "train.manifest").is_file():
        parser.error(f"no honeybee data at {args.data_root} (train.manifest missing); see ../shared/data/README.md")
    cuda = torch.cuda.is_available()
    mode = "quick" if args.quick else "full"
    budgets = [int(b) for b in args.images_seen.split(",")] if args.images_seen else [BUDGETS[mode]]
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
    results: dict = {
        "benchmark": "accuracy_honeybee",
        "mode": mode,
        "device": machine["device"],
        "machine": machine,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "data": str(args.data_root.name),
        "experiments": {},
    }
    out = args.out / f"accuracy_honeybee-{device_name}.json"
    if args.append and out.is_file():
        previous = json.loads(out.read_text())
        if previous.get("device") != results["device"]:
            parser.error(f"{out} holds runs from {previous.get('device')}: not this machine, run without --append")
        results["experiments"] = previous["experiments"]
        for entry in results["experiments"].values():  # files from before per-run batch sizes
            entry.setdefault("batch_size", previous.get("batch_size"))
    for images_seen in budgets:
        for name, overrides in experiments.items():
            batch_size = args.batch_size or (64 if cuda else CPU_BATCH_SIZE.get(name, 8))
            steps = max(1, images_seen // batch_size)
            key = name if len(budgets) == 1 and not args.images_seen else f"{name}@{steps * batch_size}"
            print(f"== {key}: {' '.join(overrides)} ({steps} steps of {batch_size})", flush=True)
            results["experiments"][key] = run_experiment(
                key, [*overrides, *args.extra], args.data_root, steps, batch_size, num_workers, trainer, args.work_dir
            )
            print(format_row(key, results["experiments"][key]), flush=True)
            # Written after every run: a long benchmark that is stopped keeps what it finished.
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
        # Validate only after the last step (every run validates the step that ends it,
        # beedet.training.final_validation): the numbers are the final weights', not those of an
        # epoch picked on the same val split.
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
    result = summarize(metrics, overrides, wall, steps * batch_size, run_dir)
    result["batch_size"] = batch_size
    result["unseen"] = evaluate_unseen(run_dir, num_workers, env, result["count_threshold"])
    return result


def evaluate_unseen(run_dir: Path, num_workers: int, env: dict[str, str], count_threshold: float | None) -> dict | None:
    """The run's final checkpoint on the val images that share no video or camera with train
    (``evaluate.py val_subset=unseen``), counting at the threshold the run chose on its whole val
    split (not one tuned on these images); None when the data
    has no ``group_by`` pattern to tell them apart."""
    # The run's one validation is at its last step (as run_experiment asks), so best.ckpt holds the
    # final weights (the average, with callbacks=ema); runs from before that validated in train.py
    # after fit and left last.ckpt only, which holds the same.
    ckpt = next(p for p in (run_dir / "checkpoints" / "best.ckpt", run_dir / "checkpoints" / "last.ckpt") if p.is_file())
    cmd = [sys.executable, str(REPO / "evaluate.py"), f"ckpt={ckpt}", "val_subset=unseen",
           f"num_workers={num_workers}", "num_overlays=0", f"run_dir={run_dir / 'unseen'}"]
    if count_threshold is not None:
        cmd.append(f"count_threshold={count_threshold}")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        if "needs data.group_by" in proc.stderr + proc.stdout:
            return None
        raise SystemExit(f"evaluate.py val_subset=unseen failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    metrics = json.loads((run_dir / "unseen" / "metrics.json").read_text())
    summary = summarize(metrics, [], 0.0, 0, run_dir / "unseen")
    summary["num_images"] = metrics.get("counting", {}).get("num_images")
    summary["checkpoint"] = str(ckpt)
    return {k: v for k, v in summary.items() if k not in ("overrides", "wall_s", "images_seen")}


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
    unseen = r.get("unseen")
    tail = f"; unseen val AP50 {_fmt(unseen['AP50'])} count MAE {_fmt(unseen['count_MAE'])}" if unseen else ""
    return f"{name}: AP50 {_fmt(r['AP50'])} mAP {_fmt(r['mAP'])} count MAE {_fmt(r['count_MAE'])} [{per_class}] ({r['wall_s']:.0f} s){tail}"


def format_table(results: dict) -> str:
    names = list(results["experiments"])
    if not names:
        return "no experiments"
    base = results["experiments"][names[0]]
    lines = [
        f"accuracy_honeybee ({results['device']}; AP50 and count MAE on the published val split, then on its unseen part)",
        f"{'run':<28} {'images':>7} {'AP50':>6} {'xbase':>6} {'mAP':>6} {'countMAE':>9} {'xbase':>6} {'unseenAP50':>10} {'wall s':>7}",
    ]
    for name in names:
        r = results["experiments"][name]
        ap_ratio = r["AP50"] / base["AP50"] if base["AP50"] and base["AP50"] > 0 else float("nan")
        mae_ratio = r["count_MAE"] / base["count_MAE"] if base.get("count_MAE") else float("nan")
        unseen = _fmt(r["unseen"]["AP50"]) if r.get("unseen") else "n/a"
        lines.append(
            f"{name:<28} {r['images_seen']:>7} {_fmt(r['AP50']):>6} {ap_ratio:>6.2f} {_fmt(r['mAP']):>6} {_fmt(r['count_MAE']):>9} "
            f"{mae_ratio:>6.2f} {unseen:>10} {r['wall_s']:>7.0f}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
