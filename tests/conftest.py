"""Shared test fixtures. Tests compose the real Hydra config (conf/) and shrink it with overrides;
the helpers for that (and the paths) are in ``tests/helpers.py``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from helpers import REPO, SERVER_MAX_BODY_BYTES, SERVER_MAX_PIXELS, SHARED_DATA, TINY_SYNTHETIC, run_script

# Two cores are shared by the test process and any DataLoader workers; more threads only thrash.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def honeybee_mini() -> Path:
    """../shared/data/honeybee-mini (or $BEEDET_SHARED_DATA/honeybee-mini); skipped when absent."""
    path = SHARED_DATA / "honeybee-mini"
    if not path.is_dir():
        pytest.skip(f"real bee data not found at {path} (set BEEDET_SHARED_DATA); see README")
    return path


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """best.ckpt of one TINY_SYNTHETIC training run (synthetic bees, one epoch), shared by every
    test that only needs *a* trained beedet checkpoint (serving, export, benchmarks)."""
    tmp = tmp_path_factory.mktemp("tiny_checkpoint")
    _, run_dir = run_script(["train.py", *TINY_SYNTHETIC], tmp)
    ckpt = run_dir / "checkpoints" / "best.ckpt"
    assert ckpt.is_file(), f"training wrote no best.ckpt in {run_dir}"
    return ckpt


@pytest.fixture(scope="session")
def local_server(tiny_checkpoint, tmp_path_factory):
    """``(base URL, log file)`` of one ``python -m beedet.serve serve`` for the whole session,
    started as the serving image starts it: a model directory as SageMaker unpacks it, on a free
    loopback port, with the SERVER_* limits. The server tests and the Lambda end-to-end tests share
    it, so the suite loads a model server once."""
    from beedet.serving.local_server import running_server

    tmp = tmp_path_factory.mktemp("server")
    (tmp / "model").mkdir()
    (tmp / "model" / "model.ckpt").symlink_to(tiny_checkpoint)
    log = tmp / "server.log"
    args = ["serve", f"model_dir={tmp / 'model'}", f"max_body_bytes={SERVER_MAX_BODY_BYTES}",
            f"max_pixels={SERVER_MAX_PIXELS}"]
    with running_server(args, log_path=log, cwd=REPO) as url:
        yield url, log
