"""bench/accuracy_honeybee.py in its smallest size: it runs the recipe end to end on honeybee-mini
at one budget given as a learning-curve point (``--images-seen``), evaluates it on the unseen val
images too, and writes a well-formed result file. (One budget, not two: the budgets are a plain
loop, and a second one cost the suite 20 s of its 10 minutes.) Timings and accuracy are the
benchmark's business, not the tests'."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from helpers import REPO


@pytest.mark.slow
def test_accuracy_benchmark_smallest_size_writes_well_formed_results(tmp_path, honeybee_mini):
    out = tmp_path / "results"
    cmd = [
        sys.executable, str(REPO / "bench" / "accuracy_honeybee.py"),
        "--quick", "--images-seen", "4", "--only", "honeybee", "--batch-size", "2", "--num-workers", "0",
        "--data-root", str(honeybee_mini), "--out", str(out), "--work-dir", str(tmp_path / "work"),
        "--device-name", "test",
        # An untrained network scores every anchor near 1/5: keep its sliced validation quick (and
        # its frames small: 3 tiles and a whole-frame pass each instead of 8 and one).
        "--extra", "model.score_thresh=0.3", "--extra", "slicing.long_side=480",
        # The recipe's four test-time views quadruple every validation pass; the output's form is
        # what is tested here (tests/test_test_time_flips.py tests the views).
        "--extra", "tta=none",
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((out / "accuracy_honeybee-test.json").read_text())
    assert results["benchmark"] == "accuracy_honeybee" and results["mode"] == "quick"
    assert results["device"] and results["machine"]["torch"]
    assert list(results["experiments"]) == ["honeybee@4"]
    for name, r in results["experiments"].items():
        assert r["images_seen"] == int(name.split("@")[1]) and r["wall_s"] > 0
        # honeybee-mini: 7 of its 12 val images share no video or camera with its train images.
        assert r["unseen"]["num_images"] == 7 and 0.0 <= r["unseen"]["AP50"] <= 1.0
        assert 0.0 <= r["AP50"] <= 1.0 and -1.0 <= r["mAP"] <= 1.0
        assert set(r["per_class_AP"]) == {"bee", "drone", "pollenbee", "queen"}
        assert r["count_MAE"] is not None and r["count_MAE"] >= 0
        assert len(r["size_bins"]) == 3
    assert "xbase" in proc.stdout and "unseenAP50" in proc.stdout and "wrote" in proc.stdout
