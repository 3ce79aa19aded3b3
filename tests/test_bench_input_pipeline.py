"""bench/input_pipeline.py in its smallest size on honeybee-mini: every pipeline runs in a real
DataLoader worker and the result file is well formed. How fast each one is stays the benchmark's
business, not the tests'."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
from helpers import REPO

PIPELINES = {"torchvision_ssd", "torchvision_beedet_ssd", "beedet_ssd300", "beedet_ssd300_full_decode", "beedet_ssd300_cached", "beedet_tiled",
             "beedet_tiled_cached", "beedet_honeybee"}


@pytest.fixture
def bench(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(REPO / "bench"))  # bench scripts import their sibling `machine`
    return importlib.import_module("input_pipeline")


def test_smallest_size_writes_well_formed_results(bench, honeybee_mini: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--images", "4", "--peer-images", "1", "--workers", "1", "--repeats", "1", "--data-root", str(honeybee_mini),
            "--out", str(tmp_path), "--device-name", "test"]
    assert bench.main(argv) == 0

    results = json.loads((tmp_path / "input_pipeline-test.json").read_text())
    assert results["benchmark"] == "input_pipeline" and results["mode"] == "custom"
    assert results["device"] and results["machine"]["torch"] and results["versions"]["albumentations"]
    workload = results["workload"]
    assert workload["frames"] == 4 and workload["frame_size"] == [1920, 1080] and workload["workers"] == [1]
    for decode in ("full", "reduced"):
        assert results["decode_only"][decode]["images"] == 4 and results["decode_only"][decode]["images_per_s"] > 0

    pipelines = results["pipelines"]
    assert set(pipelines) == PIPELINES
    for name, pipeline in pipelines.items():
        timing = pipeline["workers"]["1"]
        assert timing["images"] == (1 if name == "torchvision_ssd" else 4), name  # the reference preset: --peer-images
        assert timing["wall_s"] > 0 and timing["images_per_s"] > 0 and timing["cpu_s"] >= 0, name
        assert timing["first_batch_s"] > 0 and timing["batch_interval_s"] > 0, name
        assert pipeline["image_size"] == (320 if name == "beedet_honeybee" else 300)
    # The settings that decide each beedet pipeline's speed come from the real config.
    assert pipelines["beedet_ssd300"]["decode_size"] == [300, 300] and pipelines["beedet_ssd300"]["cache_bytes"] == 0
    assert pipelines["beedet_ssd300"]["augment"][0] == "Resize" and pipelines["beedet_ssd300"]["augment"][-1] == "ColorJitter"
    assert pipelines["beedet_ssd300_full_decode"]["decode_size"] is None
    assert pipelines["beedet_ssd300_cached"]["cache_bytes"] >= 4 * 1920 * 1080 * 3
    assert pipelines["beedet_tiled"]["decode_size"] is None and pipelines["beedet_tiled"]["augment"][0] == "PadIfNeeded"
    assert pipelines["beedet_honeybee"]["augment"][0] == "LongestMaxSize" and pipelines["beedet_honeybee"]["cache_bytes"] > 0

    assert results["ratios"]["beedet_ssd300"]["x_torchvision_wall"] > 0
    # The like-for-like peer: beedet's own recipe, step for step in torchvision, on beedet's frames and count.
    assert pipelines["torchvision_beedet_ssd"]["augment"] == [
        "Resize", "RandomApply", "RandomApply", "RandomHorizontalFlip", "RandomVerticalFlip", "RandomApply", "ToImage",
        "ClampBoundingBoxes", "SanitizeBoundingBoxes", "ToPureTensor"]
    assert results["ratios"]["beedet_ssd300"]["x_torchvision_same_recipe_wall"] > 0
    assert results["scaling_2_vs_1_workers"] == results["per_worker_cpu_rate_2_vs_1_workers"] == {}  # one worker count
    assert set(results["meets_bar"]) == {"per_worker_wall", "per_worker_cpu", "per_worker_wall_cached",
                                         "per_worker_cpu_cached", "scaling"}
    assert results["meets_bar"]["scaling"] is None and isinstance(results["meets_bar"]["per_worker_wall"], bool)
    out = capsys.readouterr().out
    assert "beedet / torchvision, 1 worker:" in out and "beedet / torchvision on the same recipe and frames" in out


def test_the_like_for_like_peer_runs_beedets_recipe(bench, honeybee_mini: Path) -> None:
    """torchvision_recipe maps every step of conf/augment/ssd.yaml to its torchvision twin with the
    same parameters, and its samples keep the contract: uint8 (3, 300, 300), boxes inside."""
    import torch
    from torchvision.transforms import v2 as T

    from helpers import compose_config

    cfg = compose_config(["+experiment=honeybee_wholeframe"])
    transforms = bench.torchvision_recipe(cfg.augment).transforms
    crop, zoom_out, colour = transforms[1].transforms[0], transforms[2].transforms[0], transforms[5].transforms[0]
    assert transforms[0].size == [300, 300] and crop.scale == (0.3, 1.0) and crop.ratio == (0.5, 2.0)
    assert [t.p for t in (transforms[1], transforms[2], transforms[3], transforms[4], transforms[5])] == [0.5, 0.3, 0.5, 0.5, 0.8]
    assert zoom_out.scale == (0.6, 1.0) and zoom_out.degrees == [0.0, 0.0] and colour.hue == (-0.03, 0.03)
    assert transforms[-2].min_area == 4.0 and isinstance(transforms[-1], T.ToPureTensor)
    records = bench._frames(honeybee_mini, 2)
    dataset = bench.TorchvisionRecipeFrames(records, bench.torchvision_recipe(cfg.augment))
    for index in range(2):
        image, target = dataset[index]
        assert image.dtype == torch.uint8 and image.shape == (3, 300, 300)
        boxes = target["boxes"]
        assert boxes.shape[1] == 4 and (boxes >= 0).all() and (boxes <= 300).all() and len(target["labels"]) == len(boxes)
    cfg.augment.transforms.append({"_target_": "albumentations.Blur", "p": 0.1})
    with pytest.raises(ValueError, match="albumentations.Blur has no torchvision twin"):
        bench.torchvision_recipe(cfg.augment)
