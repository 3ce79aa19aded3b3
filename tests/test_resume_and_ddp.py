"""A killed run resumes with ckpt_path=last to the weights of an uninterrupted run, and DDP over 2 CPU processes trains through the same config."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers import REPO, TINY_SYNTHETIC, overriding, run_script

pytestmark = pytest.mark.slow

RESUME_ARGS = overriding(TINY_SYNTHETIC, "data.train.num_images=48", "trainer.max_epochs=4", "callbacks.prediction_overlays.every_n_epochs=10")
STEPS_PER_EPOCH = 48 // 8


def test_killed_run_resumes_from_last(tmp_path: Path):
    run_dir = tmp_path / "outputs" / "resume-me"
    env = {**os.environ, "BEEDET_OUTPUT_DIR": str(tmp_path / "outputs"), "BEEDET_DATA_DIR": str(tmp_path / "data")}
    cmd = [sys.executable, str(REPO / "train.py"), *RESUME_ARGS, f"run_dir={run_dir}"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    last = run_dir / "checkpoints" / "last.ckpt"
    deadline = time.time() + 300
    try:
        while not last.exists():
            assert proc.poll() is None, f"training ended before the first checkpoint: {proc.stderr.read().decode()[-3000:]}"
            assert time.time() < deadline, "no checkpoint within 300 s"
            time.sleep(0.2)
        # Kill it hard, mid-training, the way an OOM killer or a spot interruption would.
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    killed_at = torch.load(last, map_location="cpu", weights_only=False)
    assert killed_at["epoch"] < 3, "the run finished before it could be killed: make it longer"

    proc2, resumed_dir = run_script(["train.py", *RESUME_ARGS, f"run_dir={run_dir}", "ckpt_path=last"], tmp_path)
    assert resumed_dir == run_dir
    assert "Restoring states from the checkpoint" in proc2.stdout + proc2.stderr
    final = torch.load(last, map_location="cpu", weights_only=False)
    # Exactly the steps of an uninterrupted 4-epoch run: nothing repeated, nothing skipped.
    assert final["global_step"] == 4 * STEPS_PER_EPOCH
    assert final["epoch"] == 3
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["mAP"] >= 0.0
    # The training clock counts the killed session too, and TensorBoard continues the same run.
    assert metrics["training_time_s"] > killed_at["callbacks"]["SpeedMonitor"]["training_time_s"] > 0
    assert [p.name for p in (run_dir / "tensorboard").iterdir()] == ["synthetic_resume-me"]

    # The resumed run ends with the weights of a run that was never interrupted: the same samples,
    # augmented alike, in the same order, from the same optimizer and schedule state. (Before
    # sample seeds came from the epoch, a resumed run replayed epoch 0's augmentations and its
    # weights differed from these by far more than the tolerance.)
    _, whole_dir = run_script(["train.py", *RESUME_ARGS, f"run_dir={tmp_path / 'outputs' / 'uninterrupted'}"], tmp_path)
    whole = torch.load(whole_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert whole["global_step"] == final["global_step"]
    assert final["state_dict"].keys() == whole["state_dict"].keys()
    for name, resumed in final["state_dict"].items():
        torch.testing.assert_close(resumed, whole["state_dict"][name], rtol=1e-4, atol=1e-6, msg=name)


def test_ddp_on_two_cpu_processes(tmp_path: Path):
    proc, run_dir = run_script(["train.py", "trainer=ddp_cpu", *TINY_SYNTHETIC], tmp_path, timeout=600)
    log = proc.stdout + proc.stderr
    assert "MEMBER: 2/2" in log, log[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert 0.0 <= metrics["mAP"] <= 1.0
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    # 24 images, batch 8, 2 ranks: each rank sees 12 images = 1 full batch (drop_last) per epoch.
    assert ckpt["global_step"] == 1
