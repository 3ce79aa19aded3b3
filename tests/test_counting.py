"""Counting metrics, the count threshold, the count plot, and their way into train.py / evaluate.py."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
import torch
from torch import nn

from beedet.evaluation.counting import (
    DEFAULT_THRESHOLDS,
    CountMetrics,
    choose_count_threshold,
    count_metrics,
    count_plot,
    predicted_counts,
    threshold_grid,
    true_counts,
)
from beedet.evaluation.results import ValidationResult
from beedet.reporting.overlays import save_image
from beedet.training.system import DetectionModule
from helpers import TINY_SYNTHETIC, run_script

NAMES = ["bee", "drone"]


def _pred(labels: list[int], scores: list[float]) -> dict[str, torch.Tensor]:
    return {
        "boxes": torch.zeros(len(labels), 4),
        "labels": torch.tensor(labels, dtype=torch.int64),
        "scores": torch.tensor(scores, dtype=torch.float32),
    }


# Three images: (2 bees, 1 drone), (1 bee), (nothing). At threshold 0.5 the detector counts
# (1 bee, 1 drone), (1 bee, 1 drone), (1 bee): a score equal to the threshold counts.
TRUTH = [np.array([0, 0, 1]), np.array([0]), np.array([], dtype=np.int64)]
PREDICTIONS = [
    _pred([0, 0, 0, 1], [0.9, 0.4, 0.2, 0.7]),
    _pred([0, 1], [0.6, 0.5]),
    _pred([0], [0.95]),
]


def test_errors_by_hand() -> None:
    metrics = count_metrics(TRUTH, PREDICTIONS, NAMES, threshold=0.5)

    np.testing.assert_array_equal(metrics.true_counts, [[2, 1], [1, 0], [0, 0]])
    np.testing.assert_array_equal(metrics.pred_counts, [[1, 1], [1, 1], [1, 0]])
    # bee: pred - true = [-1, 0, +1]; drone: [0, +1, 0]; all: 3->2, 1->2, 0->1 = [-1, +1, +1].
    assert metrics.per_class["bee"] == pytest.approx({"MAE": 2 / 3, "RMSE": np.sqrt(2 / 3), "bias": 0.0, "mean_true": 1.0, "mean_pred": 1.0})
    assert metrics.per_class["drone"] == pytest.approx({"MAE": 1 / 3, "RMSE": np.sqrt(1 / 3), "bias": 1 / 3, "mean_true": 1 / 3, "mean_pred": 2 / 3})
    assert metrics.overall == pytest.approx({"MAE": 1.0, "RMSE": 1.0, "bias": 1 / 3, "mean_true": 4 / 3, "mean_pred": 5 / 3})
    summary = metrics.to_dict()
    assert json.loads(json.dumps(summary)) == summary
    assert summary["threshold"] == 0.5 and summary["num_images"] == 3 and set(summary["per_class"]) == set(NAMES)


def test_counts_reject_bad_input() -> None:
    with pytest.raises(ValueError, match="class ids must be 0-based"):
        true_counts([np.array([0, 2])], 2)
    with pytest.raises(ValueError, match="predictions of image 0"):
        predicted_counts([_pred([-1], [0.9])], 2, 0.5)  # a background id leaked through
    with pytest.raises(ValueError, match="3 ground-truth images but 2 predictions"):
        count_metrics(TRUTH, PREDICTIONS[:2], NAMES, 0.5)
    with pytest.raises(ValueError, match="at least one image"):
        CountMetrics.from_counts(np.zeros((0, 2)), np.zeros((0, 2)), NAMES, 0.5)


def test_threshold_grid() -> None:
    assert tuple(threshold_grid(0.05)) == DEFAULT_THRESHOLDS
    assert DEFAULT_THRESHOLDS[0] == 0.05 and DEFAULT_THRESHOLDS[-1] == 0.95 and len(DEFAULT_THRESHOLDS) == 19
    fine = threshold_grid(0.01)
    assert len(fine) == 99 and fine[0] == 0.01 and fine[-1] == 0.99


def test_chooser_minimises_summed_class_mae_not_total_mae() -> None:
    # Image 1 holds 2 bees; the detector finds one (0.9), calls the other a drone (0.6) and
    # repeats a bee at 0.3. Image 2 is empty but has a bee-like detection at 0.2.
    truth = [np.array([0, 0]), np.array([], dtype=np.int64)]
    predictions = [_pred([0, 1, 0], [0.9, 0.6, 0.3]), _pred([0], [0.2])]
    # Summed |error| over classes and images: t<=0.2: 2; (0.2,0.3]: 1; (0.3,0.6]: 2; (0.6,0.9]: 1.
    # The total count alone is exact in (0.3, 0.6], where the per-class counts are both wrong.
    # The two best ranges also tie on the total count error (1), so the lowest threshold wins.
    assert choose_count_threshold(truth, predictions, num_classes=2) == 0.25
    assert choose_count_threshold(truth, predictions, 2, thresholds=[0.5, 0.7, 0.4]) == 0.7


def test_chooser_breaks_ties_by_total_count_then_lowest_threshold() -> None:
    # One bee and one drone. Two drone detections at 0.9, two bee detections at 0.2: every
    # threshold misses by 2 summed over classes, but (0.2, 0.9] gets the total count right.
    truth = [np.array([0, 1])]
    predictions = [_pred([1, 1, 0, 0], [0.9, 0.9, 0.2, 0.2])]
    assert choose_count_threshold(truth, predictions, num_classes=2) == 0.25


def test_count_plot_renders_without_touching_pyplot() -> None:
    import matplotlib

    backend = matplotlib.get_backend()
    picture = count_plot(count_metrics(TRUTH, PREDICTIONS, NAMES, threshold=0.5))

    assert picture.dtype == torch.uint8 and picture.ndim == 3 and picture.shape[0] == 3
    assert picture.shape[1] >= 300 and picture.shape[2] >= 300
    assert picture.float().std() > 10, "a blank picture"
    assert matplotlib.get_backend() == backend


def test_count_plot_saves_as_png(tmp_path: Path) -> None:
    picture = count_plot(count_metrics(TRUTH, PREDICTIONS, NAMES, threshold=0.5))
    path = save_image(picture, tmp_path / "count_plot.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _module(**kwargs) -> DetectionModule:
    return DetectionModule(net=nn.Linear(1, 1), class_names=NAMES, optimizer=torch.optim.SGD, **kwargs)


def _val_outputs() -> list:
    return [
        (i, {"labels": labels}, {k: v.numpy() for k, v in pred.items()})
        for i, (labels, pred) in enumerate(zip(TRUTH, PREDICTIONS))
    ]


def test_module_counts_at_its_threshold_and_saves_it() -> None:
    best = choose_count_threshold(TRUTH, PREDICTIONS, 2)
    chosen = _module(size_bins=[100.0, 400.0])
    applied, oracle = chosen._count(_val_outputs())
    assert applied is oracle and applied.threshold == best

    fixed = _module(count_threshold=0.1)
    applied, oracle = fixed._count(_val_outputs())
    assert applied.threshold == 0.1 and oracle.threshold == best != 0.1
    assert applied.overall["mean_pred"] == pytest.approx(7 / 3)  # every detection counts at 0.1

    chosen.last_validation, checkpoint = ValidationResult(None, applied, oracle), {}
    chosen.on_save_checkpoint(checkpoint)
    assert checkpoint["beedet"]["count_threshold"] == 0.1 and checkpoint["beedet"]["size_bins"] == [100.0, 400.0]
    unvalidated = {}
    _module(count_threshold=0.3).on_save_checkpoint(unvalidated)
    assert unvalidated["beedet"]["count_threshold"] == 0.3 and unvalidated["beedet"]["size_bins"] is None


# ---- end to end -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def counted_run(tmp_path_factory) -> Path:
    _, run_dir = run_script(["train.py", *TINY_SYNTHETIC], tmp_path_factory.mktemp("counted"))
    assert run_dir is not None
    return run_dir


@pytest.mark.slow
def test_train_reports_counting_and_size_bins(counted_run: Path) -> None:
    metrics = json.loads((counted_run / "metrics.json").read_text())
    counting = metrics["counting"]
    assert counting["threshold"] in DEFAULT_THRESHOLDS
    assert counting["threshold_source"] == "chosen on this validation split"
    assert counting["oracle"]["threshold"] == counting["threshold"]
    assert counting["num_images"] == 8 and set(counting["per_class"]) == {"bee", "drone", "pollenbee", "queen"}
    assert set(counting["all"]) == {"MAE", "RMSE", "bias", "mean_true", "mean_pred"}
    assert metrics["max_detections"] == 1000 and "AR1000" in metrics and "AR100" not in metrics
    bins = metrics["size_bins"]
    assert len(bins) == 3 and bins[0]["min_area"] == 0.0 and bins[-1]["name"].startswith("over")
    assert sum(b["num_gt"] for b in bins) >= round(counting["all"]["mean_true"] * 8)

    checkpoint = torch.load(counted_run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=False)
    assert checkpoint["beedet"]["count_threshold"] == counting["threshold"]
    assert checkpoint["beedet"]["size_bins"] == [b["max_area"] for b in bins[:-1]]

    report = (counted_run / "report.md").read_text()
    for heading in ("## COCO box metrics", "## Per class", "## Confusion matrix", "## AP by box size", "## Counting"):
        assert heading in report
    assert f"| {bins[0]['name']} |" in report and "| all |" in report
    assert "](count_plot.png)" in report and (counted_run / "count_plot.png").is_file()
    # The per-class precision-recall curves, as a picture beside the numbers.
    assert "](pr_curves.png)" in report
    # P, R and F1 at the count threshold in use (the one the checkpoint keeps), per class with AP.
    quality = metrics["detection_quality"]
    assert quality["threshold"] == counting["threshold"] and quality["iou_threshold"] == 0.5
    assert set(quality["per_class"]) == set(counting["per_class"])
    assert {"precision", "recall", "F1", "instances", "AP50", "AP"} <= set(quality["per_class"]["bee"])
    assert quality["all"]["instances"] == round(counting["all"]["mean_true"] * counting["num_images"])
    assert len(quality["confusion_matrix"]["counts"]) == 5 and "| bee | " in report
    for picture in ("f1_curve.png", "confusion_matrix.png"):
        assert f"]({picture})" in report and (counted_run / picture).is_file()
    assert metrics["loss"]["total"] > 0
    with Image.open(counted_run / "pr_curves.png") as picture:
        assert picture.size == (450, 450)


@pytest.mark.slow
def test_train_logs_counting_to_tensorboard(counted_run: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    # The run's event files, wherever under tensorboard/ the logger puts its version folder.
    events_dir = next((counted_run / "tensorboard").rglob("events.out.tfevents*")).parent
    acc = EventAccumulator(str(events_dir), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    scalars = set(acc.Tags()["scalars"])
    bins = json.loads((counted_run / "metrics.json").read_text())["size_bins"]
    for tag in ("val/count_MAE", "val/count_MAE_tuned", "val/count_threshold_tuned", "val_detail/count_RMSE",
                "val_detail/count_bias", "val_per_class/count_MAE/bee", "val_detail/AR1000", "hp/count_MAE"):
        assert tag in scalars, f"{tag} missing from {sorted(scalars)}"
    assert any(tag == f"val_per_size/AP/{b['name']}" for b in bins for tag in scalars), sorted(scalars)
    assert any(tag == f"val_per_size/recall50/{bins[0]['name']}" for tag in scalars), sorted(scalars)
    # The smallest bin's recall is val_per_size/recall50/<bin>; the alias is for SageMaker's metric lines only.
    assert "val/recall50_smallest" not in scalars
    assert "counting/val" in acc.Tags()["images"]


@pytest.mark.slow
def test_evaluate_counts_at_the_checkpoint_threshold_unless_overridden(counted_run: Path, tmp_path: Path) -> None:
    trained = json.loads((counted_run / "metrics.json").read_text())
    # One process, two jobs: the checkpoint's threshold (null) and an override.
    # The synthetic images the training run generated (<tmp>/data; run dir <tmp>/outputs/<name>/<stamp>).
    proc, _ = run_script(
        ["evaluate.py", "-m", f"ckpt={counted_run / 'checkpoints' / 'best.ckpt'}", "count_threshold=null,0.5",
         "num_workers=0", "num_overlays=0"],
        tmp_path,
        env={"BEEDET_DATA_DIR": str(counted_run.parents[2] / "data")},
    )
    own_dir, override_dir = (Path(p) for p in re.findall(r"^run dir: (.+)$", proc.stdout, flags=re.M))

    own = json.loads((own_dir / "metrics.json").read_text())
    assert own["counting"]["threshold"] == trained["counting"]["threshold"]
    assert own["counting"]["threshold_source"] == "checkpoint: chosen on its training run's validation split"
    assert own["counting"]["all"] == trained["counting"]["all"]
    assert own["counting"]["per_class"] == trained["counting"]["per_class"]
    assert own["size_bins"] == trained["size_bins"] and own["mAP"] == trained["mAP"]
    assert "## Counting" in (own_dir / "report.md").read_text() and (own_dir / "count_plot.png").is_file()
    assert (own_dir / "pr_curves.png").is_file()

    override = json.loads((override_dir / "metrics.json").read_text())["counting"]
    assert override["threshold"] == 0.5 and override["threshold_source"] == "evaluate count_threshold override"
    # Same weights, same images: the best threshold for them is still the one training chose.
    assert override["oracle"]["threshold"] == trained["counting"]["threshold"]
