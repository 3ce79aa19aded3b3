"""evaluate.py measures in the precision serving answers in (float32), whatever the checkpoint was
trained in, unless told otherwise, and says in metrics.json and report.md which precision it used."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import DictConfig, OmegaConf

from beedet.assembly import SERVING_PRECISION, evaluation_precision
from helpers import CONF, run_script


def train_config(precision: str | None) -> DictConfig:
    return OmegaConf.create({"trainer": {} if precision is None else {"precision": precision}})


@pytest.mark.parametrize("trained_in", ["bf16-mixed", "16-mixed", "32-true", None])
def test_evaluation_defaults_to_the_serving_precision_whatever_training_used(trained_in):
    precision = evaluation_precision(None, train_config(trained_in))
    assert precision == {"used": "32-true", "source": "serving", "training": trained_in or "32-true"}


def test_a_precision_override_is_used_and_said():
    precision = evaluation_precision("bf16-mixed", train_config("bf16-mixed"))
    assert precision == {"used": "bf16-mixed", "source": "override", "training": "bf16-mixed"}


def test_the_serving_precision_is_what_serving_runs_in():
    """beedet.serving.handlers.predict_fn feeds float32 to a float32 model with no autocast."""
    import torch

    from beedet.serving.handlers import Detector, predict_fn

    seen = {}

    class System(torch.nn.Module):
        class_names = ["bee"]

        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1))

        @property
        def device(self):
            return self.weight.device

        def detect(self, images):
            seen.update(image=images[0].dtype, weights=self.weight.dtype, autocast=torch.is_autocast_enabled())
            return [{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)}]

    import numpy as np

    predict_fn(np.zeros((4, 4, 3), dtype=np.uint8), Detector(system=System(), score_threshold=0.5))
    assert seen == {"image": torch.float32, "weights": torch.float32, "autocast": False}
    assert SERVING_PRECISION == "32-true"


def test_evaluate_yaml_leaves_the_choice_to_evaluate_py():
    assert OmegaConf.load(CONF / "evaluate.yaml").precision is None


def test_the_report_says_which_precision():
    from beedet.reporting.run_report import metrics_markdown

    metrics = {"checkpoint": "best.ckpt", "precision": {"used": "32-true", "source": "serving", "training": "bf16-mixed"},
               "per_class_AP": {}, "per_class_AP50": {}}
    lines = metrics_markdown(metrics, []).splitlines()
    note = next(i for i, line in enumerate(lines) if line.startswith("Precision: `32-true`"))
    assert "bf16-mixed" in lines[note] and note < lines.index("## COCO box metrics")
    assert not any(line.startswith("Precision") for line in metrics_markdown({**metrics, "precision": None}, []).splitlines())


@pytest.mark.slow
def test_evaluate_py_writes_the_precision_it_used(tiny_checkpoint: Path, tmp_path: Path):
    _, run_dir = run_script(["evaluate.py", f"ckpt={tiny_checkpoint}", "num_overlays=0", "num_workers=0"], tmp_path)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["precision"] == {"used": "32-true", "source": "serving", "training": "32-true"}
    assert "Precision: `32-true`" in (run_dir / "report.md").read_text()
