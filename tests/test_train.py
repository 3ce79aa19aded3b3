"""End-to-end: train.py, evaluate.py and beedet.predict as a user runs them, on shrunk real configs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from beedet.checkpointing import load_checkpoint
from helpers import TINY_SYNTHETIC, overriding, run_script, tensorboard_run_dir

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
    for key in ("mAP", "AP50", "AP75", "AP_small", "AR1000", "per_class_AP", "per_class_AP50", "detection_quality", "loss"):
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
    same run at optimizer.lr=0 (the weights never move), so 0.2 cannot be reached without learning.
    Validated after the last epoch only, to keep the suite short: 0.434 (the same every 4th epoch)."""
    _, run_dir = run_script(["train.py", *overriding(
        TINY_SYNTHETIC, "data.train.num_images=192", "data.val.num_images=32", "data.batch_size=16",
        "trainer.max_epochs=16", "trainer.check_val_every_n_epoch=16",
        "callbacks.prediction_overlays.every_n_epochs=100")], tmp_path)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["AP50"] >= 0.2, metrics["AP50"]


def test_tensorboard_tags(trained_run: Path):
    # The run's event files, wherever under tensorboard/ the logger puts its version folder.
    events_dir = next((trained_run / "tensorboard").rglob("events.out.tfevents*")).parent
    acc = EventAccumulator(str(events_dir), size_guidance={"images": 0, "tensors": 0, "scalars": 0})
    acc.Reload()
    tags = acc.Tags()
    scalars = set(tags["scalars"])
    # Every validation tag by its group (tests/test_validation_logging.py checks the values).
    names = ("bee", "drone", "pollenbee", "queen")
    per_class = {f"val_per_class/{m}/{n}" for m in ("AP", "AP50", "precision", "recall", "F1", "count_MAE") for n in names}
    bins = [b["name"] for b in json.loads((trained_run / "metrics.json").read_text())["size_bins"]]
    per_size = {f"val_per_size/{m}/{b}" for m in ("AP", "AP50", "recall50") for b in bins}
    expected = {
        "train/loss", "train/loss_classification", "train/loss_box", "train/lr",
        "val/mAP", "val/AP50", "val/loss", "val/precision", "val/recall", "val/F1",
        "val/count_MAE", "val/count_MAE_tuned", "val/count_threshold_tuned",
        "val_detail/AP75", "val_detail/AR1", "val_detail/AR10", "val_detail/AR1000", "val_detail/count_RMSE",
        "val_detail/count_bias", "val_detail/loss_classification", "val_detail/loss_box",
    }
    # A class or bin without ground truth in the 8 val images has no AP, AP50 or recall line.
    assert expected <= scalars, sorted(expected - scalars)
    assert {t for t in scalars if t.startswith(("val_per_class/", "val_per_size/"))} <= per_class | per_size
    assert {f"val_per_class/{m}/bee" for m in ("AP", "AP50", "precision", "recall", "F1", "count_MAE")} <= scalars
    # The old names are gone: lr-AdamW, -1 lines of COCO's medium/large, AP_small (= mAP).
    assert not any(t.startswith("lr-") or t.startswith("val/count/") or "AP_small" in t or "_medium" in t for t in scalars)
    assert {"confusion_matrix/val", "f1_curve/val"} <= set(tags["images"])
    assert "per_class/val/text_summary" in tags["tensors"]
    images = set(tags["images"])
    assert "augmentation/preview" in images
    assert any(t.startswith("predictions/") for t in images), images
    tensors = set(tags["tensors"])
    assert any(t.startswith("pr_curve/") for t in tensors), tensors
    # The hparams tab: the run's hyperparameters with its final metrics.
    assert {"hp/mAP", "hp/AP50", "hp/AP75"} <= scalars
    assert "_hparams_/session_start_info" in acc.PluginTagToContent("hparams")


def test_tensorboard_names_the_run_and_shows_overlays_speed_and_hparams(trained_run: Path):
    # The run is named after its run folder (outputs/synthetic/<stamp>): TensorBoard lists it so.
    events_dir = tensorboard_run_dir(trained_run)
    assert events_dir.name == f"synthetic_{trained_run.name}"
    acc = EventAccumulator(str(events_dir), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    scalars, images = set(acc.Tags()["scalars"]), set(acc.Tags()["images"])
    # Fixed overlays, and the hard ones of the untrained 1-2 epoch model (it misses plenty).
    assert {"predictions/val_0", "predictions/hard_misses_0"} <= images, images
    (overlay,) = acc.Images("predictions/val_0")[-1:]
    assert overlay.width == 640 and overlay.height > 640  # 256 px enlarged, legend below
    # Speed on the CPU: no GPU memory line.
    assert {"speed/step_time_s", "speed/data_time_s", "speed/images_per_s", "speed/eta_s"} <= scalars
    assert "speed/gpu_peak_memory_gib" not in scalars
    # HParams: final metrics with per-class AP50 and the best epoch; hparams.yaml (Lightning's {} before) too.
    assert {"hp/mAP", "hp/AP50", "hp/count_MAE", "hp/best_epoch", "hp/AP50/bee"} <= scalars
    hparams = yaml.safe_load((events_dir / "hparams.yaml").read_text())
    assert hparams["model"] == "ssd256_resnet_slim" and hparams["max_epochs"] == 2 and hparams["batch_size"] == 8
    assert not [key for key in hparams if "/" in key or key.startswith("_")]


def test_best_checkpoint_is_logged_once_under_best(trained_run: Path):
    acc = EventAccumulator(str(tensorboard_run_dir(trained_run)), size_guidance={"scalars": 0})
    acc.Reload()
    metrics = json.loads((trained_run / "metrics.json").read_text())
    val_steps = [e.step for e in acc.Scalars("val/mAP")]
    assert len(val_steps) == 2  # the 2 epochs that ran; the final validation adds no val/ point
    assert max(e.step for e in acc.Scalars("epoch")) == val_steps[-1] and max(e.value for e in acc.Scalars("epoch")) == 1
    (epoch,) = acc.Scalars("best/epoch")
    (best_map,) = acc.Scalars("best/mAP")
    assert epoch.value == metrics["best_epoch"] in (0, 1)
    assert best_map.step == val_steps[metrics["best_epoch"]]  # beside the val/mAP point it repeats
    assert best_map.value == pytest.approx(metrics["mAP"], abs=1e-6)
    assert {"best/AP50", "best/count_MAE", "best/AP50/bee"} <= set(acc.Tags()["scalars"])
    # report.md and metrics.json say which epoch was best and how long training took.
    assert metrics["training_time_s"] > 0 and metrics["best_step"] > 0
    report = (trained_run / "report.md").read_text()
    assert f"Best epoch: {metrics['best_epoch']} " in report and "Training time: " in report


def test_evaluate_reproduces_val_map(trained_run: Path, tmp_path: Path):
    train_metrics = json.loads((trained_run / "metrics.json").read_text())
    _, eval_dir = run_script(["evaluate.py", f"ckpt={trained_run / 'checkpoints' / 'best.ckpt'}", "num_workers=0"], tmp_path)
    eval_metrics = json.loads((eval_dir / "metrics.json").read_text())
    assert eval_metrics["mAP"] == pytest.approx(train_metrics["mAP"], abs=1e-9)
    assert eval_metrics["per_class_AP"] == train_metrics["per_class_AP"]
    report = (eval_dir / "report.md").read_text()
    assert "mAP" in report and "bee" in report
    # Overlays named by why they were chosen: the hardest images first, then the first ones.
    overlays = sorted(p.name for p in (eval_dir / "overlays").glob("*.jpg"))
    assert any(name.startswith("most_misses_1_") for name in overlays), overlays
    assert any(name.startswith("first_") for name in overlays), overlays


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
