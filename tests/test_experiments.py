"""Every experiment composes, builds, and trains a few steps (shrunk) through train.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import CONF, TINY_SYNTHETIC, compose_config, overriding, run_script

EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


def test_the_required_experiments_exist():
    assert {"synthetic", "honeybee_ssd300_resnet50", "honeybee_ssd512_resnet50", "honeybee_ssdlite"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes(name: str):
    cfg = compose_config([f"+experiment={name}"])
    assert cfg.name == name
    assert cfg.data._target_ == "beedet.data.datamodule.BeeDataModule"


@pytest.mark.slow
@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_trains_a_few_steps(name: str, tmp_path: Path, request):
    if name == "synthetic":
        overrides = TINY_SYNTHETIC
    else:
        mini = request.getfixturevalue("honeybee_mini")
        overrides = [
            f"data.root={mini}",
            # One step of two frames (BatchNorm needs two samples at the 1x1 feature map) and one
            # validation batch: a smoke test of the wiring, not of learning.
            "data.batch_size=2",
            "data.num_workers=0",
            "trainer.max_epochs=1",
            "trainer.limit_train_batches=1",
            "trainer.limit_val_batches=1",
            "callbacks.augmentation_preview.num_images=1",
            "callbacks.prediction_overlays.num_images=1",
        ]
        if "pretrained_backbone" in compose_config([f"+experiment={name}"]).model:
            # No network here: the ImageNet download is tested separately (tests/test_pretrained.py).
            overrides.append("model.pretrained_backbone=false")
    _, run_dir = run_script(["train.py", f"+experiment={name}", *overrides], tmp_path)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert 0.0 <= metrics["mAP"] <= 1.0
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.slow
def test_multirun_sweep_and_bf16_on_cpu(tmp_path: Path):
    """`-m` sweeps give one run dir per value; bf16 autocast trains on a CPU too."""
    proc, _ = run_script(
        ["train.py", "-m", *overriding(TINY_SYNTHETIC, "trainer.precision=bf16-mixed", "optimizer.lr=0.001,0.002",
                                       "trainer.limit_train_batches=1", "~callbacks", "~logger")],
        tmp_path,
    )
    metrics = sorted((tmp_path / "outputs").glob("synthetic/multirun_*/*/metrics.json"))
    assert len(metrics) == 2, proc.stdout[-2000:]
    for path in metrics:
        assert 0.0 <= json.loads(path.read_text())["mAP"] <= 1.0
