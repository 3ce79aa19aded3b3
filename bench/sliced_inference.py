"""Sliced inference: frames/s of the recipe's standard + sliced prediction, frame by frame vs many
frames' tiles in shared batches (``beedet.inference.tiling.detect_sliced_frames``).

    python bench/sliced_inference.py --ckpt outputs/.../last.ckpt      # 48 val frames
    python bench/sliced_inference.py --frames 4 --repeats 1            # untrained network, the smallest size

Workload: the first ``--frames`` images of the honeybee val split (1920x1080 hive frames and web
photos, as validation sees them), decoded once before timing, as float tensors in [0, 1]. The
slicing is the recipe's (``+experiment=honeybee``: 960 px longer side, 320 px tiles with 80 px of
overlap, plus one whole-frame pass, scale ranges 48 / 24): 9 network inputs per 1080p frame.

Cases, on the same frames, model and slicing, each a ``DetectionModule.detect``-style call:

* ``per_frame``: what validation, ``evaluate.py``, predict and serving did before: each frame on its
  own (``detect_sliced``), its 8 tiles in one forward pass and its whole-frame pass in another.
* ``batched``: ``--batch`` frames per call; their tiles and whole-frame passes fill forward passes
  of ``slicing.batch_size`` inputs (the recipe's 16, or ``--inputs-per-forward``) whatever frame
  they come from. ``DetectionModule.detect`` takes this path on a GPU and ``per_frame`` on a CPU,
  where this benchmark found it slower (0.76x on 2 cores).

Both give the same detections (``tests/test_tiling.py``). Reported: frames/s of each (median of
``--repeats`` timed passes over all frames, after one untimed pass) and their ratio. A peer (SAHI's
``get_sliced_prediction``) is not run: it predicts one frame at a time, as ``per_frame`` does.

Without ``--ckpt`` the network is the recipe's, untrained: time depends on the weights only through
how many candidates the merge sees, so pass a trained checkpoint for numbers to quote.

Writes bench/results/sliced_inference-<device>.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

from machine import describe_machine, write_results

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", type=Path, default=None, help="a beedet checkpoint of the recipe (default: untrained)")
    parser.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data" / "honeybee")
    parser.add_argument("--frames", type=int, default=48, help="val frames to predict")
    parser.add_argument("--batch", type=int, default=16, help="frames per batched call (validation's data.batch_size)")
    parser.add_argument("--inputs-per-forward", type=int, default=None,
                        help="slicing.batch_size: network inputs per forward pass (default: the recipe's)")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes over the frames (median reported)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--device-name", default=None, help="names the result file (default: from the machine)")
    args = parser.parse_args(argv)

    import torch

    from beedet.assembly import build_network, build_system, load_system
    from beedet.data.images import load_image
    from beedet.data.manifest import read_manifest
    from beedet.inference.tiling import detect_sliced, detect_sliced_frames

    from beedet.compose import compose_train_config

    # train.py's config for the recipe; paths pinned so that nothing refers to a Hydra run. Without
    # its test-time flips: they multiply both cases' forward passes alike, and what is measured here
    # is how the tiles share them (the results before flips existed stay comparable).
    cfg = compose_train_config([f"paths.data_dir={REPO / 'data'}", f"paths.shared_data={args.data_root.parent}",
                                "paths.output_dir=.", "paths.run_dir=.", "+experiment=honeybee", "tta=none"])
    if args.ckpt is not None:
        system, _ = load_system(args.ckpt, cfg.slicing, cfg.tta)
    else:
        names = ["bee", "drone", "pollenbee", "queen"]
        system = build_system(cfg, build_network(cfg.model, len(names)), names)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    system.to(device).eval()
    slicing = system.slicing
    if args.inputs_per_forward is not None:
        slicing = replace(slicing, batch_size=args.inputs_per_forward)

    records = read_manifest(args.data_root / "valid.manifest").records[: args.frames]
    frames = [torch.from_numpy(load_image(r.image_path)).permute(2, 0, 1).float().div(255).to(device) for r in records]

    def per_frame() -> None:
        for frame in frames:
            detect_sliced(system._detect_whole, frame, slicing)

    def batched() -> None:
        for start in range(0, len(frames), args.batch):
            detect_sliced_frames(system._detect_whole, frames[start : start + args.batch], slicing)

    cases = {"per_frame": per_frame, "batched": batched}
    seconds: dict[str, list[float]] = {name: [] for name in cases}
    with torch.inference_mode():
        for name, run in cases.items():
            run()  # untimed: allocator, kernels, caches
        for _ in range(args.repeats):
            for name, run in cases.items():  # alternate, so drift hits both alike
                if device.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                run()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                seconds[name].append(time.perf_counter() - start)

    rates = {name: len(frames) / statistics.median(values) for name, values in seconds.items()}
    machine = describe_machine()
    payload = {
        "benchmark": "sliced_inference",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine,
        "checkpoint": str(args.ckpt) if args.ckpt else None,
        "frames": len(frames),
        "frames_per_call": args.batch,
        "inputs_per_forward": slicing.batch_size,
        "slicing": {"long_side": slicing.long_side, "tile_size": slicing.tile_size, "overlap": slicing.overlap, "full_frame": slicing.full_frame},
        "repeats": args.repeats,
        "seconds": seconds,
        "frames_per_s": rates,
        "batched_vs_per_frame": rates["batched"] / rates["per_frame"],
    }
    path = write_results("sliced_inference", args.device_name or machine["slug"], payload, args.out)
    print(f"sliced_inference ({machine['device']}): {len(frames)} frames")
    for name, rate in rates.items():
        print(f"  {name:10s} {rate:7.2f} frames/s")
    print(f"  batched / per_frame = {payload['batched_vs_per_frame']:.2f}x   -> {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
