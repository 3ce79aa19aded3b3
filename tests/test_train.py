"""End-to-end: train.py, evaluate.py and beedet.predict as a user runs them, on shrunk real configs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from beedet.checkpointing import load_checkpoint
from helpers import TINY_SYNTHETIC, overriding, run_script

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("train")
    _, run_dir = run_script(["train.py", *TINY_SYNTHETIC, "trainer.max_epochs=2"], tmp)
    assert run_dir is not None and run_dir.is_dir()
    return run_dir


def test_run_dir_artifacts(trained_run: Path):
    assert (trained_run / "checkpoints" / "best.ckpt").is_file()
    assert (trained_run / "checkpoints" / "last.ckpt").is_file()
    assert "## " in (trained_run / "data_report.md").read_text()
    metrics = json.loads((trained_run / "metrics.json").read_text())
    for key in ("mAP", "AP50", "AP75", "AP_small", "AR1000", "per_class_AP", "per_class_AP50"):
        assert key in metrics
    assert set(metrics["per_class_AP"]) == {"bee", "drone", "pollenbee", "queen"}
    assert 0.0 <= metrics["mAP"] <= 1.0
    # Checkpoints carry what evaluate.py and predict need to rebuild the run.
    # They load without unpickling anything but tensors and plain data.
    _, payload = load_checkpoint(trained_run / "checkpoints" / "best.ckpt")
    assert payload.class_names == ["bee", "drone", "pollenbee", "queen"]
    assert payload.config["model"]["_target_"].startswith("beedet.models")


def test_default_recipe_learns(tmp_path: Path):
    """The default recipe on a shrunken synthetic set (192 images, 16 epochs of 12 steps, ~1 min on
    2 cores) must detect bees. Measured on the 2-core CPU: val AP50 0.399 trained, 0.0004 with the
    same run at optimizer.lr=0 (the weights never move), so 0.2 cannot be reached without learning."""
    _, run_dir = run_script(["train.py", *overriding(
        TINY_SYNTHETIC, "data.train.num_images=192", "data.val.num_images=32", "data.batch_size=16",
        "trainer.max_epochs=16", "callbacks.prediction_overlays.every_n_epochs=100")], tmp_path)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["AP50"] >= 0.2, metrics["AP50"]


def test_tensorboard_tags(trained_run: Path):
    acc = EventAccumulator(str(trained_run / "tensorboard"), size_guidance={"images": 0, "tensors": 0, "scalars": 0})
    acc.Reload()
    tags = acc.Tags()
    scalars = set(tags["scalars"])
    for tag in ("train/loss", "train/loss_classification", "train/loss_box", "val/mAP", "val/AP50", "val/AP75", "val/AP_small", "val/AR1000", "val/AP/bee"):
        assert tag in scalars, f"{tag} missing from {sorted(scalars)}"
    assert any(t.startswith("lr-") for t in scalars), sorted(scalars)
    images = set(tags["images"])
    assert "augmentation/preview" in images
    assert any(t.startswith("predictions/") for t in images), images
    tensors = set(tags["tensors"])
    assert any(t.startswith("pr_curve/") for t in tensors), tensors
    # The hparams tab: the run's hyperparameters with its final metrics.
    assert {"hp/mAP", "hp/AP50", "hp/AP75"} <= scalars
    assert "_hparams_/session_start_info" in acc.PluginTagToContent("hparams")


def test_evaluate_reproduces_val_map(trained_run: Path, tmp_path: Path):
    train_metrics = json.loads((trained_run / "metrics.json").read_text())
    _, eval_dir = run_script(["evaluate.py", f"ckpt={trained_run / 'checkpoints' / 'best.ckpt'}", "num_workers=0"], tmp_path)
    eval_metrics = json.loads((eval_dir / "metrics.json").read_text())
    assert eval_metrics["mAP"] == pytest.approx(train_metrics["mAP"], abs=1e-9)
    assert eval_metrics["per_class_AP"] == train_metrics["per_class_AP"]
    report = (eval_dir / "report.md").read_text()
    assert "mAP" in report and "bee" in report
    assert list((eval_dir / "overlays").glob("*.jpg"))


def test_predict_writes_json_per_image(trained_run: Path, tmp_path: Path):
    # The synthetic val images the run generated: <tmp>/data/synthetic/val/images (run dir is <tmp>/outputs/<name>/<stamp>).
    images = sorted((trained_run.parents[2] / "data" / "synthetic" / "val" / "images").glob("*.jpg"))
    assert images, "no generated images found"
    folder = tmp_path / "frames"
    folder.mkdir()
    for p in images[:3]:
        (folder / p.name).write_bytes(p.read_bytes())
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    proc, out_dir = run_script(["beedet.predict", f"ckpt={trained_run / 'checkpoints' / 'last.ckpt'}", f"images={folder}", "draw=true", "score_threshold=0.0"], tmp_path)
    written = sorted((out_dir / "detections").glob("*.json"))
    assert len(written) == 3, written
    record = json.loads(written[0].read_text())
    assert {"image", "width", "height", "detections", "counts"} <= set(record)
    assert sum(record["counts"].values()) == len(record["detections"])
    for det in record["detections"]:
        x1, y1, x2, y2 = det["box"]
        assert 0 <= x1 <= x2 <= record["width"] and 0 <= y1 <= y2 <= record["height"]
    assert len(list((out_dir / "drawn").glob("*.jpg"))) == 3
    assert "broken.jpg" in proc.stderr + proc.stdout


def test_predict_counts_at_the_checkpoint_count_threshold_by_default(trained_run: Path, tmp_path: Path):
    import torch

    ckpt = trained_run / "checkpoints" / "last.ckpt"
    threshold = torch.load(ckpt, map_location="cpu", weights_only=False)["beedet"]["count_threshold"]
    assert threshold is not None
    images = sorted((trained_run.parents[2] / "data" / "synthetic" / "val" / "images").glob("*.jpg"))[:1]
    proc, out_dir = run_script(["beedet.predict", f"ckpt={ckpt}", f"images={images[0]}"], tmp_path)
    assert f"keeping detections with score >= {threshold:.2f}" in proc.stdout + proc.stderr
    record = json.loads(next((out_dir / "detections").glob("*.json")).read_text())
    assert all(det["score"] >= round(threshold, 4) for det in record["detections"])
