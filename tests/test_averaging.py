"""The exponential moving average of the weights (beedet/training/averaging.py, callbacks=ema)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from beedet.training.averaging import ExponentialMovingAverage
from helpers import TINY_SYNTHETIC, overriding, run_script


def test_the_decay_ramps_up_from_following_the_model_to_averaging_it() -> None:
    ema = ExponentialMovingAverage(decay=0.999, warmup_steps=500)
    assert ema.decay_at(0) == 0.0  # the first average is the model itself
    assert ema.decay_at(500) == pytest.approx(0.999 * (1 - math.exp(-1)))
    assert ema.decay_at(10_000) == pytest.approx(0.999, abs=1e-6)
    averaged, current = torch.tensor([1.0]), torch.tensor([3.0])
    assert float(ema._average(averaged, current, 10_000)) == pytest.approx(1.0 * 0.999 + 3.0 * 0.001, abs=1e-5)
    with pytest.raises(ValueError, match="decay"):
        ExponentialMovingAverage(decay=1.0)
    with pytest.raises(ValueError, match="warmup_steps"):
        ExponentialMovingAverage(warmup_steps=0)


@pytest.mark.slow
def test_checkpoints_hold_the_average_and_evaluate_reproduces_the_run(tmp_path: Path) -> None:
    """With callbacks=ema, best.ckpt's weights are the average (the raw ones kept for resuming),
    and evaluate.py on it gives the training run's own numbers."""
    _, run_dir = run_script(["train.py", *overriding(TINY_SYNTHETIC, "trainer.max_epochs=2", "callbacks=ema",
                                                     "callbacks.ema.warmup_steps=2")], tmp_path)
    ckpt = torch.load(run_dir / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=False)
    averaged, raw = ckpt["state_dict"], ckpt["current_model_state"]
    assert averaged.keys() == raw.keys()
    weights = [k for k in averaged if k.endswith(".weight")]
    assert any(not torch.equal(averaged[k], raw[k]) for k in weights)
    trained = json.loads((run_dir / "metrics.json").read_text())
    _, eval_dir = run_script(["evaluate.py", f"ckpt={run_dir / 'checkpoints' / 'best.ckpt'}", "num_overlays=0"], tmp_path)
    evaluated = json.loads((eval_dir / "metrics.json").read_text())
    assert evaluated["mAP"] == pytest.approx(trained["mAP"]) and evaluated["AP50"] == pytest.approx(trained["AP50"])
