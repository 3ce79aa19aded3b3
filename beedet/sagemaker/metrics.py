"""Metric log lines and the SageMaker metric definitions that read them.

SageMaker charts a training job's metrics (and hyperparameter tuning picks its objective) by
running each ``{"Name", "Regex"}`` of the job's metric definitions over the job's log lines and
taking the regex's first group as the value. :class:`MetricLogLines` prints those lines and
:data:`METRIC_DEFINITIONS` holds the regexes, both built from one table (:data:`METRICS`), so they
cannot drift apart. One line per validation and one per training epoch, on global rank 0 only::

    beedet metrics epoch=3 step=120 val:mAP=0.4123; val:AP50=0.7811; val:AP75=0.4012; val:loss=2.31; ...
    beedet metrics epoch=3 step=120 train:loss=2.0374; train:loss_classification=1.2034; train:loss_box=0.834;

Every value is ``<name>=<number>;``; a metric that was not logged (e.g. ``val:recall50_smallest``
with ``evaluation.size_bins=null``) is left out of the line, never printed as a placeholder.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping
from typing import Any

import pytorch_lightning as pl
import torch

log = logging.getLogger("beedet.metrics")

#: SageMaker metric name -> the key ``beedet.training.system.DetectionModule`` logs it under.
#: The count metrics are at the fixed threshold of the TensorBoard curves (val:count_threshold:
#: evaluation.count_threshold, else 0.5), comparable across epochs; the ``_tuned`` pair is at the
#: best threshold for that validation set (what a run with count_threshold=null keeps).
VALIDATION_METRICS: dict[str, str] = {
    "val:mAP": "val/mAP",
    "val:AP50": "val/AP50",
    "val:AP75": "val_detail/AP75",
    "val:AR10": "val_detail/AR10",
    "val:recall50_smallest": "val/recall50_smallest",
    "val:loss": "val/loss",
    "val:precision": "val/precision",
    "val:recall": "val/recall",
    "val:F1": "val/F1",
    "val:count_MAE": "val/count_MAE",
    "val:count_RMSE": "val_detail/count_RMSE",
    "val:count_bias": "val_detail/count_bias",
    "val:count_threshold": "val/count_threshold",
    "val:count_MAE_tuned": "val/count_MAE_tuned",
    "val:count_threshold_tuned": "val/count_threshold_tuned",
}
#: SageMaker metric name -> the training-step key it averages over an epoch.
TRAIN_METRICS: dict[str, str] = {
    "train:loss": "train/loss",
    "train:loss_classification": "train/loss_classification",
    "train:loss_box": "train/loss_box",
}
#: The built-in Object Detection algorithm's metric names (its tuning objective is validation:mAP)
#: -> the beedet key each is printed from, when MetricLogLines(builtin_names=True). The built-in's
#: mAP is Pascal VOC's, at IoU 0.5: beedet's AP50, not COCO's mAP@[.5:.95]. Its losses are SSD's
#: two terms: softmax cross-entropy and smooth-L1 box regression.
BUILTIN_VALIDATION_METRICS: dict[str, str] = {"validation:mAP": "val/AP50"}
BUILTIN_TRAIN_METRICS: dict[str, str] = {
    "train:cross_entropy": "train/loss_classification",
    "train:smooth_l1": "train/loss_box",
}
#: Percent of the epochs done, printed with the training line in built-in mode (computed by the
#: callback from the trainer, not read from a logged key).
PROGRESS_METRIC = "train:progress"
METRICS: dict[str, str] = {**VALIDATION_METRICS, **TRAIN_METRICS, **BUILTIN_VALIDATION_METRICS,
                           **BUILTIN_TRAIN_METRICS, PROGRESS_METRIC: "100 * epochs done / trainer.max_epochs"}

LINE_PREFIX = "beedet metrics"
# A float as Python's format(x, ".6g") writes it: 0.4123, -1, 1e-05, 12.5. SageMaker searches
# each regex anywhere in a log line and takes its first group. Only constructs every common regex
# engine shares (no lookbehind): the leading \b keeps a name from matching inside a longer word,
# and the "=" right after the name keeps "train:loss" off "train:loss_box".
_NUMBER = r"(-?[0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?)"

#: The job's metric definitions (CreateTrainingJob ``AlgorithmSpecification.MetricDefinitions``):
#: ``[{"Name": "val:mAP", "Regex": "\\bval:mAP=(...);"}, ...]``.
METRIC_DEFINITIONS: list[dict[str, str]] = [
    {"Name": name, "Regex": rf"\b{re.escape(name)}={_NUMBER};"} for name in METRICS
]


def format_metric_line(epoch: int, step: int, values: Mapping[str, float]) -> str:
    """One log line: ``beedet metrics epoch=E step=S name=value; ...`` for the finite values of
    ``values`` (keys are SageMaker metric names from :data:`METRICS`)."""
    unknown = sorted(set(values) - set(METRICS))
    if unknown:
        raise KeyError(f"not beedet metric names: {unknown}; known: {sorted(METRICS)}")
    parts = [f"{name}={format(float(value), '.6g')};" for name, value in values.items() if math.isfinite(float(value))]
    return f"{LINE_PREFIX} epoch={epoch} step={step} " + " ".join(parts)


class MetricLogLines(pl.Callback):
    """Logs (logger ``beedet.metrics``, INFO) one metric line after every validation and one after
    every training epoch (the mean of each training loss over global rank 0's batches of the
    epoch), on global rank 0. Reads what
    ``DetectionModule`` logs (``trainer.callback_metrics`` for validation, the ``train/*`` values
    it logs per step for training), so it needs nothing from the module itself."""

    def __init__(self, builtin_names: bool = False) -> None:
        # builtin_names: also print the built-in detector's names (validation:mAP, train:progress,
        # ...), so tuning jobs and dashboards written for it keep their metrics.
        self.builtin_names = builtin_names
        self._sums: dict[str, torch.Tensor] = {}
        self._batches = 0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._sums, self._batches = {}, 0

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if not trainer.is_global_zero:
            return
        # Summed as detached tensors on the module's device: no host sync per step; the one
        # float() is at the end of the epoch.
        logged = trainer.callback_metrics
        for name, key in self._train_metrics().items():
            value = logged.get(key)
            if value is not None:
                self._sums[name] = self._sums.get(name, 0) + value.detach()
        self._batches += 1

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero and self._batches and self._sums:
            means = {name: float(total) / self._batches for name, total in self._sums.items()}
            if self.builtin_names and trainer.max_epochs:
                means[PROGRESS_METRIC] = 100.0 * (trainer.current_epoch + 1) / trainer.max_epochs
            log.info(format_metric_line(trainer.current_epoch, trainer.global_step, means))

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # on_validation_end, not on_validation_epoch_end: callbacks' epoch-end hooks run before
        # the module's, where the metrics are logged.
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        metrics = {**VALIDATION_METRICS, **(BUILTIN_VALIDATION_METRICS if self.builtin_names else {})}
        values = {name: float(trainer.callback_metrics[key]) for name, key in metrics.items()
                  if key in trainer.callback_metrics}
        if values:
            log.info(format_metric_line(trainer.current_epoch, trainer.global_step, values))

    def _train_metrics(self) -> dict[str, str]:
        return {**TRAIN_METRICS, **(BUILTIN_TRAIN_METRICS if self.builtin_names else {})}
