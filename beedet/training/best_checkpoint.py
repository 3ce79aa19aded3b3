"""The end of ``trainer.fit``: the best checkpoint validated once more, and logged once, under ``best/``.

train.py reports the best checkpoint (the file a user deploys, which evaluate.py must reproduce),
not the last epoch. Validating it through Lightning as usual would log one more ``val/*`` point at
the last step, with an ``epoch`` that never ran, and the picture callbacks would draw over the
last real epoch's count plot and PR curves. :func:`validate_best_checkpoint` therefore validates with
the trainer's loggers detached (the module still computes ``last_validation``, and
``trainer.callback_metrics`` still feeds the SageMaker metric lines), then writes the result
itself, once, at the step of the validation that made the checkpoint best (Lightning logs a
validation at the index of the last optimizer step before it: the checkpoint's global step - 1),
so ``best/mAP`` sits right above the ``val/mAP`` point it repeats:

* ``best/mAP``, ``best/AP50``, ``best/AP75``, ``best/count_MAE`` (at the count threshold in use);
* ``best/AP50/<class>`` for each class with ground truth;
* ``best/epoch``: the epoch the checkpoint was saved in, counted from 0 as TensorBoard's ``epoch``
  and the checkpoint's own ``epoch`` count.

When the fit's last validation is the one that made the checkpoint best (the module's
``last_validation_step`` is the step the file was saved at: the same weights, the same images),
that result is reported instead of validating again. On 2 CPU cores the recipe's validation of the
173 honeybee val frames with test-time flips takes 75-95 s (more on a busy CPU), and every run
validates its final weights (``beedet.training.final_validation``), which are often the best.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytorch_lightning as pl
import torch

from beedet.evaluation.results import ValidationResult
from beedet.training.throughput import SpeedMonitor


@dataclass(frozen=True)
class BestCheckpoint:
    """The checkpoint train.py reports.

    ``path``: its file, "" when there is none (no ModelCheckpoint, or it never saved): the weights
    at the end of fit were validated instead. ``epoch`` and ``global_step``: when it was saved
    (0-based epoch, optimizer steps), None without a file. ``training_time_s``: wall time of the
    whole fit, resumed sessions included (``beedet.training.throughput.SpeedMonitor``), None without that
    callback."""

    path: str
    epoch: int | None
    global_step: int | None
    training_time_s: float | None

    def summary(self) -> dict[str, Any]:
        """metrics.json's additions (those known): ``best_epoch``, ``best_step``, ``training_time_s``."""
        values = {"best_epoch": self.epoch, "best_step": self.global_step,
                  "training_time_s": None if self.training_time_s is None else round(self.training_time_s, 1)}
        return {key: value for key, value in values.items() if value is not None}


def reported_checkpoint(trainer: pl.Trainer) -> str:
    """The checkpoint a run reports and ships (``sagemaker.artifact.ModelArtifact`` too): the best
    one saved, else the last one, else "" (nothing saved: the weights in memory)."""
    callback = trainer.checkpoint_callback
    return (callback.best_model_path or callback.last_model_path) if callback is not None else ""


def validate_best_checkpoint(trainer: pl.Trainer, system: pl.LightningModule,
                             datamodule: pl.LightningDataModule) -> BestCheckpoint:
    """Validate the best checkpoint of the fit that ``trainer`` just ran (all ranks call this, as
    ``trainer.validate``), leaving its :class:`ValidationResult` in ``system.last_validation``,
    and log it under ``best/`` (module docstring). Returns what train.py reports about it."""
    path = reported_checkpoint(trainer)
    # Read before validating: Lightning restores callback states from the validated checkpoint.
    clock = next((c for c in trainer.callbacks if isinstance(c, SpeedMonitor)), None)
    training_time_s = clock.training_time_s if clock is not None else None
    saved = _when_saved(path) if path else {}
    best = BestCheckpoint(path, saved.get("epoch"), saved.get("global_step"), training_time_s)

    loggers = trainer.loggers
    if not _validated_at(trainer, system, best.global_step):
        trainer.loggers = []
        try:
            trainer.validate(system, datamodule=datamodule, ckpt_path=path or None, verbose=False)
        finally:
            trainer.loggers = loggers
    result = getattr(system, "last_validation", None)
    if trainer.is_global_zero and result is not None:
        step = max(0, (trainer.global_step if best.global_step is None else best.global_step) - 1)
        for logger in loggers:
            logger.log_metrics(best_scalars(result, best.epoch), step=step)
            logger.save()  # fit's end closed the event file: flush the new one now, not at exit
    return best


def _validated_at(trainer: pl.Trainer, system: pl.LightningModule, global_step: int | None) -> bool:
    """Whether ``system.last_validation`` is a whole validation of the weights saved at
    ``global_step``. Weights change only at optimizer steps (EMA's too), batch-norm statistics at
    every training batch: so only without gradient accumulation does one step mean one set."""
    return (global_step is not None and trainer.accumulate_grad_batches == 1
            and getattr(system, "last_validation", None) is not None
            and getattr(system, "last_validation_step", None) == global_step)


def _when_saved(path: str) -> dict[str, Any]:
    """``epoch`` and ``global_step`` of the checkpoint file this run just wrote. Tensors and plain
    data only (``weights_only``), memory-mapped so that the weights are not read: Lightning loads
    the file itself to validate it, and ``beedet.checkpointing.load_checkpoint``'s trust checks
    are for files from elsewhere."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return {key: int(checkpoint[key]) for key in ("epoch", "global_step") if key in checkpoint}


def best_scalars(result: ValidationResult, epoch: int | None) -> dict[str, float]:
    """The ``best/*`` scalars of one validation (module docstring)."""
    stats = result.metrics.stats
    scalars = {f"best/{key}": float(stats[key]) for key in ("mAP", "AP50", "AP75")}
    scalars["best/count_MAE"] = float(result.counts.overall["MAE"])
    scalars.update({f"best/AP50/{name}": float(ap) for name, ap in result.metrics.per_class_AP50.items() if ap is not None})
    if epoch is not None:
        scalars["best/epoch"] = float(epoch)
    return scalars
