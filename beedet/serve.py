"""Serve a trained bee detector over HTTP, as a SageMaker inference container does.

    python -m beedet.serve ckpt=outputs/synthetic/<stamp>/checkpoints/best.ckpt [port=8080] [host=127.0.0.1]
    python -m beedet.serve model_dir=DIR      # a model artifact (a training job's model.tar.gz unpacked)
    python -m beedet.serve serve              # what SageMaker runs in docker/serve.Dockerfile's image:
                                              # model_dir=/opt/ml/model host=0.0.0.0 port=8080

    curl -s --data-binary @frame.jpg -H 'Content-Type: image/jpeg' http://127.0.0.1:8080/invocations
    curl -s --data-binary @frame.jpg -H 'Content-Type: image/jpeg' -H 'Accept: application/json;verbose' \\
        http://127.0.0.1:8080/invocations

``GET /ping`` and ``POST /invocations`` (also ``POST /endpoints/<name>/invocations``, so a boto3
``sagemaker-runtime`` client with ``endpoint_url=http://127.0.0.1:8080`` can call it). The request
and answer formats are beedet.serving.handlers'; the limits and the HTTP behaviour are
beedet.serving.app's; the options are conf/serve.yaml's.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import hydra
import uvicorn
from omegaconf import DictConfig

from beedet.serving.app import create_app
from beedet.serving.handlers import checkpoint_in, load_detector

log = logging.getLogger("beedet.serve")

# SageMaker starts a serving image as `docker run IMAGE serve`; the model artifact is unpacked at
# /opt/ml/model and requests arrive on port 8080 from outside the container.
SAGEMAKER_COMMAND = "serve"
SAGEMAKER_OVERRIDES = ("model_dir=/opt/ml/model", "host=0.0.0.0", "port=8080")


def sagemaker_argv(args: Sequence[str]) -> list[str]:
    """The overrides for ``serve [key=value ...]``: SageMaker's settings, except for keys given."""
    given = {arg.split("=", 1)[0].lstrip("+~") for arg in args}
    return [*args, *(o for o in SAGEMAKER_OVERRIDES if o.split("=", 1)[0] not in given)]


def model_checkpoint(ckpt: str | None, model_dir: str | None) -> Path:
    """The checkpoint to serve: ``ckpt``, or ``model_dir``'s model.ckpt; SystemExit unless exactly one is given."""
    if (ckpt is None) == (model_dir is None):
        raise SystemExit("give exactly one of ckpt=PATH (a beedet checkpoint) or model_dir=DIR (a model artifact "
                         f"holding model.ckpt); got ckpt={ckpt} model_dir={model_dir}")
    return Path(ckpt) if ckpt is not None else checkpoint_in(model_dir)


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep large freed buffers instead of returning them to the system.

    Inference runs in a worker thread whose allocator arena hands the network's large activation
    buffers back to the kernel after every request, so each request pays page faults to get them
    again: measured by bench/inference.py, 4 frames took 146-154 ms each through the server against
    98 ms in-process, and 80 against 67 ms with these settings. One arena, a fixed 32 MiB mmap
    threshold and a 1 GiB trim threshold (the mallopt equivalents of MALLOC_ARENA_MAX=1,
    MALLOC_MMAP_THRESHOLD_ and MALLOC_TRIM_THRESHOLD_). A no-op off glibc; returns whether it applied."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        mallopt = libc.mallopt if libc is not None else None
    except (OSError, AttributeError):
        return False
    if mallopt is None:
        return False
    m_trim_threshold, m_mmap_threshold, m_arena_max = -1, -3, -8
    return all(mallopt(param, value) == 1 for param, value in (
        (m_arena_max, 1), (m_mmap_threshold, 32 * 1024 * 1024), (m_trim_threshold, 1024 * 1024 * 1024)))


@hydra.main(config_path="../conf", config_name="serve", version_base="1.3")
def main(cfg: DictConfig) -> None:
    keep_freed_memory()
    ckpt = model_checkpoint(cfg.ckpt, cfg.model_dir)
    device = "cpu" if cfg.accelerator == "cpu" else None
    detector = load_detector(ckpt, slicing=cfg.get("slicing"), tta=cfg.get("tta"), score_threshold=cfg.score_threshold,
                             device=device)
    log.info("serving %s on %s: classes %s, beedet JSON keeps scores >= %.3f, %s", ckpt, detector.device,
             detector.class_names, detector.score_threshold, detector.system.inference_mode)
    app = create_app(detector, max_body_bytes=cfg.max_body_bytes, max_pixels=cfg.max_pixels,
                     decode_threads=cfg.decode_threads, inference_timeout_s=cfg.inference_timeout_s)
    uvicorn.run(app, host=cfg.host, port=cfg.port)


if __name__ == "__main__":
    if sys.argv[1:2] == [SAGEMAKER_COMMAND]:
        sys.argv[1:] = sagemaker_argv(sys.argv[2:])
    main()
