"""bench/input_pipeline.py in its smallest size on honeybee-mini: every pipeline runs in a real
DataLoader worker and the result file is well formed. How fast each one is stays the benchmark's
business, not the tests'."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
from helpers import REPO

PIPELINES = {"torchvision_ssd", "beedet_ssd300", "beedet_ssd300_full_decode", "beedet_ssd300_cached", "beedet_tiled",
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
        assert timing["images"] == (1 if name == "torchvision_ssd" else 4), name
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
    assert results["scaling_2_vs_1_workers"] == results["per_worker_cpu_rate_2_vs_1_workers"] == {}  # one worker count
    assert set(results["meets_bar"]) == {"per_worker_wall", "per_worker_cpu", "per_worker_wall_cached",
                                         "per_worker_cpu_cached", "scaling"}
    assert results["meets_bar"]["scaling"] is None and isinstance(results["meets_bar"]["per_worker_wall"], bool)
    assert "beedet / torchvision, 1 worker:" in capsys.readouterr().out
