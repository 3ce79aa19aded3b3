"""Inference latency and throughput: the local server's ``POST /invocations`` vs calling the model directly.

    python bench/inference.py --quick                          # untrained whole-frame SSD300 (slim), 2-core CPU
    python bench/inference.py --quick --threads 1              # the same on a shared, busy CPU (see --threads)
    python bench/inference.py --ckpt outputs/.../best.ckpt     # a trained checkpoint
    python bench/inference.py --ckpt ... --no-server           # the in-process paths only

Workload: real 1920x1080 hive frames (``../shared/data/honeybee/valid/images``, or ``--images``),
sent as the JPEG bytes a client holds. Three ways to get one frame's detections, measured in turn:

* ``model``: ``DetectionModule.detect`` on an already decoded tensor (no decode, no JSON): the
  floor, what the network and its post-processing cost.
* ``direct``: the whole in-process request path, JPEG bytes in, JSON bytes out: the serving
  handlers' ``model_fn`` once, then ``input_fn -> predict_fn -> output_fn`` per frame
  (``beedet.serving.handlers``, what SageMaker's PyTorch container would call).
* ``server``: ``POST /invocations`` with ``Content-Type: image/jpeg`` and ``Accept:
  application/json`` on ``python -m beedet.serve ckpt=PATH port=N`` started by this script, over one
  keep-alive HTTP connection (the client is ``httpx``); the response body is read completely.

For one frame, each repetition takes one sample of every path, in a rotating order, so drift on a
shared machine hits all three alike; latency is reported as p50 / p90 / mean. For a batch of
``--batch`` frames: ``model`` runs one batched ``detect`` call, ``direct`` and ``server`` handle the
frames one request at a time (the server's contract is one image per request), giving images/s.
Server overhead = server p50 / direct p50 - 1 (bar, issue 5: <= 10 %), also given against ``model``.

Like for like: the server process asks glibc's malloc to keep freed buffers
(``beedet.serve.keep_freed_memory``: one arena, fixed mmap and trim thresholds), which saved it
page faults on every request. By default (``--in-process-malloc server``) this process makes the
same ``mallopt`` calls before loading the model, so ``model`` and ``direct`` allocate as the server
does and the overhead is HTTP's and the server's own. ``--in-process-malloc bare`` keeps glibc's
defaults here: the earlier comparison, in which the server looked 19 % faster than in-process
(issue 17). ``workload.in_process_malloc`` records which ran.

Without ``--ckpt`` the model is ``+experiment=honeybee_wholeframe`` (SSD300 with the slim ResNet)
with *untrained* weights, saved as a beedet checkpoint for the server: latency does not depend on
the weights, except through how many detections pass the score threshold (reported as
``detections``), which sizes the JSON answer.

Writes bench/results/inference-<device>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from machine import describe_machine, write_results

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("BEEDET_SHARED_DATA", REPO.parent / "shared" / "data"))
BAR = 0.10  # server overhead at p50, as a fraction of the direct path's p50
FRAME_SIZE = (1920, 1080)

# mode -> (single-frame repetitions, batch size, batch repetitions)
MODES = {"quick": (40, 4, 6), "full": (100, 16, 10)}
PINGS = 20


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the 2-core CPU size")
    parser.add_argument("--ckpt", type=Path, default=None, help="a beedet checkpoint (default: untrained whole-frame SSD300)")
    parser.add_argument("--images", type=Path, default=SHARED_DATA / "honeybee" / "valid" / "images",
                        help="a folder of frames; 1920x1080 ones are used first")
    parser.add_argument("--repeats", type=int, default=None, help="single-frame samples per path")
    parser.add_argument("--warmup", type=int, default=2, help="unmeasured calls per path first")
    parser.add_argument("--batch", type=int, default=None, help="frames in the batch measurement (0: skip it)")
    parser.add_argument("--batch-repeats", type=int, default=None)
    parser.add_argument("--no-server", action="store_true", help="measure the in-process paths only")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads here and in the server (OMP_NUM_THREADS; default: torch's, one per core). "
                             "On a shared, oversubscribed CPU use 1: two OpenMP threads there made one frame's "
                             "in-process detect up to 8x slower than one, which swamps what HTTP costs")
    parser.add_argument("--in-process-malloc", choices=("server", "bare"), default="server",
                        help="server: this process makes the server's mallopt calls (like for like, the default); "
                             "bare: glibc's defaults here, the earlier comparison (module docstring)")
    parser.add_argument("--server-start-timeout", type=float, default=180.0, help="seconds to wait for GET /ping")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--device-name", default=None, help="names the result file (default: from the machine)")
    args = parser.parse_args(argv)

    mode = "quick" if args.quick else "full"
    repeats, batch_size, batch_repeats = MODES[mode]
    repeats = args.repeats or repeats
    batch_size = batch_size if args.batch is None else args.batch
    batch_repeats = args.batch_repeats or batch_repeats
    frames = pick_frames(args.images, max(1, batch_size))
    if not frames:
        parser.error(f"no images in {args.images}")

    import torch

    from beedet.data.images import read_image_size

    if args.threads:
        torch.set_num_threads(args.threads)
    malloc_applied = False
    if args.in_process_malloc == "server":
        from beedet.serve import keep_freed_memory

        malloc_applied = keep_freed_memory()  # before the model's first buffers, as the server does
    machine = describe_machine()
    with tempfile.TemporaryDirectory(prefix="beedet-bench-inference-") as tmp:
        ckpt, model_note = (args.ckpt, f"checkpoint {args.ckpt}") if args.ckpt else (
            untrained_checkpoint(Path(tmp)), "+experiment=honeybee_wholeframe with untrained weights (latency only)")
        paths = InProcessPaths(ckpt, Path(tmp))
        server = None if args.no_server else local_server(ckpt, Path(tmp), args.server_start_timeout, args.threads)
        with server or contextlib.nullcontext() as client:
            bodies = [path.read_bytes() for path in frames]
            print(f"== {mode}: {model_note} on {paths.device}; server: {'POST /invocations' if client else 'not measured (--no-server)'}",
                  flush=True)
            single = measure_single(paths, client, frames[0], bodies[0], repeats, args.warmup)
            batch = measure_batch(paths, client, frames[:batch_size], bodies[:batch_size], batch_repeats) if batch_size else None

    single_summary = {name: latency_summary(samples, 1) for name, samples in single["latency_s"].items()}
    payload: dict[str, Any] = {
        "benchmark": "inference",
        "mode": mode,
        "device": machine["device"],
        "machine": machine,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "workload": {
            "model": model_note,
            "network": paths.network,
            "inference_device": str(paths.device),
            "frame": frames[0].name,
            "frame_size": list(read_image_size(frames[0])),
            "frame_bytes": len(bodies[0]),
            "direct_path": "beedet.serving.handlers: input_fn -> predict_fn -> output_fn (image/jpeg -> application/json)",
            "server": "POST /invocations (python -m beedet.serve), image/jpeg -> application/json" if single["server"] else None,
            "repeats": repeats,
            "warmup": args.warmup,
            "torch_threads": torch.get_num_threads(),
            # Whether the in-process paths ran with the server's malloc settings (module docstring).
            "in_process_malloc": {"setting": args.in_process_malloc, "applied": malloc_applied},
        },
        "detections": single["detections"],
        # GET /ping: the HTTP round trip alone (no body, no model), a floor for what the server adds.
        "http_ping_p50_ms": single["ping_p50_ms"],
        "single_frame": single_summary,
        "batch": batch,
        "bar": BAR,
    }
    if single["server"]:
        overhead = single_summary["server"]["p50_ms"] / single_summary["direct"]["p50_ms"] - 1
        payload["server_overhead_p50"] = overhead
        payload["server_overhead_p50_vs_model"] = single_summary["server"]["p50_ms"] / single_summary["model"]["p50_ms"] - 1
        if batch:
            payload["server_overhead_batch_p50"] = batch["server_sequential"]["p50_ms"] / batch["direct_sequential"]["p50_ms"] - 1
        payload["meets_bar"] = overhead <= BAR
    else:
        payload["server_overhead_p50"] = None
        payload["meets_bar"] = None
    path = write_results("inference", args.device_name or machine["slug"], payload, args.out)
    print(format_table(payload))
    print(f"wrote {path}")
    return 0


def pick_frames(folder: Path, count: int) -> list[Path]:
    """Up to ``count`` frames from ``folder``, 1920x1080 ones first (sorted by name)."""
    from beedet.data.images import find_images, read_image_size

    if not folder.is_dir():
        raise SystemExit(f"no image folder at {folder} (see ../shared/data/README.md, or pass --images)")
    images = find_images(folder)
    full_hd = [p for p in images if read_image_size(p) == FRAME_SIZE]
    others = [p for p in images if p not in set(full_hd)]
    return (full_hd + others)[:count]


def untrained_checkpoint(tmp: Path) -> Path:
    """A beedet checkpoint of ``+experiment=honeybee_wholeframe`` with freshly initialised weights,
    written by the system's own ``on_save_checkpoint`` (what ``load_system`` and the server read)."""
    import torch
    from training_overhead import compose_run_config

    from beedet.assembly import build_datamodule, build_network, build_system

    # Only the class names are needed from the data: skip decoding every frame up front.
    cfg = compose_run_config(["+experiment=honeybee_wholeframe", "data.verify_images=false"], tmp / "run")
    datamodule = build_datamodule(cfg.data)
    datamodule.load_labels()
    system = build_system(cfg, build_network(cfg.model, num_classes=datamodule.num_classes), datamodule.class_names)
    checkpoint: dict[str, Any] = {"state_dict": system.state_dict()}
    system.on_save_checkpoint(checkpoint)
    path = tmp / "untrained_wholeframe.ckpt"
    torch.save(checkpoint, path)
    return path


class InProcessPaths:
    """The model, loaded once in this process by the serving handlers' ``model_fn``, and the two
    in-process ways to call it."""

    def __init__(self, ckpt: Path, tmp: Path) -> None:
        from beedet.serving import handlers

        self.handlers = handlers
        # The artifact layout of the serving contract: model_fn reads <model_dir>/model.ckpt.
        model_dir = tmp / "model"
        model_dir.mkdir()
        (model_dir / handlers.CHECKPOINT_NAME).symlink_to(ckpt.resolve())
        self.model = handlers.model_fn(str(model_dir))
        self.system = self.model.system
        self.device = self.model.device
        self.network = type(self.system.net).__name__

    def tensor(self, path: Path) -> Any:
        import torch

        from beedet.data.images import load_image

        # A copy: load_image's array is read-only, which torch.from_numpy warns about.
        return torch.from_numpy(load_image(path).copy()).permute(2, 0, 1).float().div(255).to(self.device)

    def model_call(self, tensors: list) -> list:
        detections = self.system.detect(tensors)
        _sync(self.device)
        return detections

    def direct(self, body: bytes) -> bytes:
        """JPEG bytes in, JSON bytes out, as the server answers a request, without HTTP."""
        data = self.handlers.input_fn(body, "image/jpeg")
        prediction = self.handlers.predict_fn(data, self.model)
        answer, _content_type = self.handlers.output_fn(prediction, "application/json")
        return answer


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def local_server(ckpt: Path, tmp: Path, timeout: float, threads: int | None) -> Iterator[Any]:
    """``python -m beedet.serve ckpt=...`` in a subprocess (with ``threads`` OpenMP threads,
    None: the default); yields an ``httpx.Client`` on it once ``GET /ping`` answers 200, and stops
    the server afterwards."""
    import httpx

    from beedet.serving.local_server import ServerStartError, running_server

    env = {**os.environ, "PYTHONUNBUFFERED": "1", "BEEDET_OUTPUT_DIR": str(tmp / "outputs"),
           **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    try:
        with running_server([f"ckpt={ckpt.resolve()}"], log_path=tmp / "serve.log", timeout=timeout, env=env, cwd=REPO) as url, \
                httpx.Client(base_url=url, timeout=300.0) as client:
            yield client
    except ServerStartError as exc:
        raise SystemExit(str(exc)) from None


def post_invocation(client: Any, body: bytes) -> bytes:
    response = client.post("/invocations", content=body, headers={"Content-Type": "image/jpeg", "Accept": "application/json"})
    if response.status_code != 200:
        raise SystemExit(f"POST /invocations answered {response.status_code}: {response.text[:2000]}")
    return response.content


def _timed(call: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = call()
    return time.perf_counter() - start, result


def _count_detections(answer: bytes) -> int:
    return len(json.loads(answer)["detections"])


def measure_single(paths: InProcessPaths, client: Any, frame: Path, body: bytes, repeats: int, warmup: int) -> dict[str, Any]:
    """One frame, ``repeats`` samples of every path, the order rotating each repetition."""
    tensor = paths.tensor(frame)
    calls: dict[str, Callable[[], Any]] = {
        "model": lambda: paths.model_call([tensor]),
        "direct": lambda: paths.direct(body),
    }
    if client is not None:
        calls["server"] = lambda: post_invocation(client, body)
    names = list(calls)
    for name in names:
        for _ in range(warmup):
            calls[name]()
    samples: dict[str, list[float]] = {name: [] for name in names}
    last: dict[str, Any] = {}
    for rep in range(repeats):
        for name in names[rep % len(names):] + names[: rep % len(names)]:
            seconds, last[name] = _timed(calls[name])
            samples[name].append(seconds)
    detections = {"model": int(last["model"][0]["boxes"].shape[0]), "direct": _count_detections(last["direct"])}
    ping_p50_ms = None
    if client is not None:
        detections["server"] = _count_detections(last["server"])
        ping_p50_ms = 1000 * statistics.median(_timed(lambda: client.get("/ping").raise_for_status())[0] for _ in range(PINGS))
    return {"latency_s": samples, "detections": detections, "server": client is not None, "ping_p50_ms": ping_p50_ms}


def measure_batch(paths: InProcessPaths, client: Any, frames: list[Path], bodies: list[bytes], repeats: int) -> dict[str, Any]:
    """``len(frames)`` frames: one batched ``detect``, and the frames one by one in-process and over HTTP."""
    tensors = [paths.tensor(f) for f in frames]
    calls: dict[str, Callable[[], Any]] = {
        "model_batched": lambda: paths.model_call(tensors),
        "direct_sequential": lambda: [paths.direct(b) for b in bodies],
    }
    if client is not None:
        calls["server_sequential"] = lambda: [post_invocation(client, b) for b in bodies]
    names = list(calls)
    for name in names:
        calls[name]()  # warm-up: a new batch shape
    samples: dict[str, list[float]] = {name: [] for name in names}
    for rep in range(repeats):
        for name in names[rep % len(names):] + names[: rep % len(names)]:
            samples[name].append(_timed(calls[name])[0])
    return {"frames": len(frames), "repeats": repeats,
            **{name: latency_summary(s, len(frames)) for name, s in samples.items()}}


def latency_summary(samples: list[float], images: int) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_ms": 1000 * statistics.median(ordered),
        "p90_ms": 1000 * _percentile(ordered, 0.9),
        "mean_ms": 1000 * statistics.fmean(ordered),
        "images_per_s": images / statistics.median(ordered),
        "samples": len(ordered),
        "samples_ms": [round(1000 * s, 2) for s in samples],  # in the order taken
    }


def _percentile(ordered: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def format_table(payload: dict[str, Any]) -> str:
    lines = [f"{'path':<28} {'p50 ms':>9} {'p90 ms':>9} {'img/s':>8}  detections"]
    for name, s in payload["single_frame"].items():
        lines.append(f"{'1 frame, ' + name:<28} {s['p50_ms']:9.1f} {s['p90_ms']:9.1f} {s['images_per_s']:8.2f}  {payload['detections'][name]}")
    if payload["batch"]:
        for name, s in payload["batch"].items():
            if isinstance(s, dict):
                lines.append(f"{str(payload['batch']['frames']) + ' frames, ' + name:<28} {s['p50_ms']:9.1f} {s['p90_ms']:9.1f} {s['images_per_s']:8.2f}")
    if payload["server_overhead_p50"] is not None:
        lines.append(f"HTTP round trip alone (GET /ping) p50: {payload['http_ping_p50_ms']:.1f} ms")
        if "server_overhead_batch_p50" in payload:
            lines.append(f"server overhead, {payload['batch']['frames']} frames one request at a time: "
                         f"{100 * payload['server_overhead_batch_p50']:+.1f} % of the direct path")
        malloc = payload["workload"]["in_process_malloc"]["setting"]
        lines.append(f"in-process paths with {'the server' if malloc == 'server' else 'glibc'}'s malloc settings "
                     f"({'like for like' if malloc == 'server' else 'not like for like: the server keeps freed buffers'})")
        lines.append(f"server overhead at p50: {100 * payload['server_overhead_p50']:+.1f} % of the direct path "
                     f"({100 * payload['server_overhead_p50_vs_model']:+.1f} % of the model alone); bar <= {100 * BAR:.0f} %: "
                     f"{'met' if payload['meets_bar'] else 'NOT met'}")
    else:
        lines.append("server overhead: not measured (no server); direct path only")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
