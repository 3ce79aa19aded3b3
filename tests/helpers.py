"""What tests share besides fixtures (those live in conftest.py): the repository's paths, the real
Hydra config composed as a run composes it, running a beedet command as a user would, and the
overrides that shrink the default run to seconds. Tests import it as ``from helpers import ...``."""

from __future__ import annotations

import os
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
SHARED_DATA = Path(os.environ.get("BEEDET_SHARED_DATA", REPO.parent / "shared" / "data"))


def compose_config(overrides: list[str] | None = None, config_name: str = "train", run_dir: Path | None = None) -> DictConfig:
    """Compose the project's real config, as `python train.py <overrides>` would.

    Hydra's runtime is registered too (with ``run_dir`` as the run's output dir, a fresh temporary
    folder by default), so ``${hydra:runtime...}`` paths resolve as they do inside a real run.
    """
    import tempfile

    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=list(overrides or []), return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(run_dir or tempfile.mkdtemp(prefix="beedet-run-"))
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]  # as in @hydra.main, the job's config has no hydra node
    return cfg


def run_script(args: list[str], tmp_path: Path, *, timeout: float = 600, env: dict[str, str] | None = None):
    """Run a beedet command (``["train.py", "key=value", ...]``) in a subprocess, as a user would,
    with outputs and generated data under ``tmp_path``. Returns (completed process, run dir)."""
    import re
    import subprocess
    import sys

    full_env = {
        **os.environ,
        "BEEDET_OUTPUT_DIR": str(tmp_path / "outputs"),
        "BEEDET_DATA_DIR": str(tmp_path / "data"),
        "PYTHONUNBUFFERED": "1",
        **(env or {}),
    }
    script, *rest = args
    cmd = [sys.executable, *(["-m", script] if not script.endswith(".py") else [str(REPO / script)]), *rest]
    proc = subprocess.run(cmd, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    found = re.findall(r"^run dir: (.+)$", proc.stdout, flags=re.M)
    return proc, Path(found[-1]) if found else None


# Shrinks the default synthetic run to seconds: tiny data, one epoch, no worker processes.
TINY_SYNTHETIC = [
    "data.train.num_images=24",
    "data.val.num_images=8",
    "data.batch_size=8",
    "data.num_workers=0",
    "trainer.max_epochs=1",
    "trainer.log_every_n_steps=1",
    "callbacks.prediction_overlays.every_n_epochs=1",
]


def overriding(base: list[str], *extra: str) -> list[str]:
    """``base`` overrides with ``extra`` ones replacing any for the same key (Hydra keeps only the
    first of two overrides of one key), and extra deletions (``~group``) dropping its keys."""
    keys = {e.split("=", 1)[0].lstrip("~+") for e in extra}
    return [b for b in base if not any(b.split("=", 1)[0] == k or b.startswith(k + ".") for k in keys)] + list(extra)


def save_checkpoint(system, path: Path, state_dict: dict | None = None, epoch: int = 0, global_step: int = 0) -> dict:
    """Write ``system`` (a DetectionModule) to ``path`` as a beedet checkpoint without training: its
    weights (or ``state_dict``) plus the payload its own ``on_save_checkpoint`` adds, as
    Lightning's checkpoint callback would. Returns the saved dict."""
    import torch

    checkpoint = {"state_dict": state_dict if state_dict is not None else system.state_dict(),
                  "epoch": epoch, "global_step": global_step}
    system.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, path)
    return checkpoint


def tensorboard_run_dir(run_dir: Path) -> Path:
    """The folder of a training run's TensorBoard events: ``<run_dir>/tensorboard/<run name>``
    (conf/logger/tensorboard.yaml), the one folder there."""
    (found,) = [path for path in (run_dir / "tensorboard").iterdir() if path.is_dir()]
    return found


# Limits the shared server enforces (tests/test_server.py sends bodies just over and under them).
SERVER_MAX_BODY_BYTES = 1_000_000
SERVER_MAX_PIXELS = 3_000_000  # a 1920x1080 frame is 2.07 MP
