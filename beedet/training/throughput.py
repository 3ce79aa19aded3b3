"""How fast a run trains, and how long it has trained: the ``SpeedMonitor`` callback.

Scalars, written to every logger of the trainer (TensorBoard: the ``speed`` group) on global rank 0,
every ``every_n_steps`` training batches, at the step Lightning logs that batch's ``train/*`` at:

* ``speed/step_time_s``: wall seconds per training batch, data loading included, averaged over the
  steps since the previous point (validation that runs inside an epoch is left out);
* ``speed/data_time_s``: of that, seconds the loop waited for the batch (from the end of one batch
  to the start of the next: loading, collating, moving to the device);
* ``speed/images_per_s``: training images per second, all processes together (the batch size
  times the number of processes, over ``step_time_s``);
* ``speed/eta_s``: seconds until training ends, from the steps left of the epoch or step budget
  (``trainer.estimated_stepping_batches``) at this session's overall pace, validation included;
  with ``trainer.max_time``, at most the time left of that budget;
* ``speed/gpu_peak_memory_gib``: only on CUDA, the most memory tensors held on this process's GPU
  since the previous point (``torch.cuda.max_memory_allocated``; the caching allocator reserves
  more), so a leak or a memory-hungry validation shows as a rising line.

CUDA runs asynchronously, so one step's time is not exact; averages over many steps are (the GPU
queue is short), which is why each point averages the steps since the previous one.

``training_time_s`` (an attribute) is the wall time of fitting so far, validation included and the
final evaluation of the best checkpoint excluded; it is saved in checkpoints, so a resumed run
counts the time before the resume too (up to its last checkpoint). ``beedet.training.best_checkpoint``
reports it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Timer

GIB = 2**30


class SpeedMonitor(pl.Callback):
    """Logs step time, data time, images per second, ETA and peak GPU memory (module docstring).

    Batches are ``(list of images, list of targets)`` as ``beedet.data.dataset.collate`` makes
    them (or any sequence whose first item has a length, the batch size).

    Args:
        every_n_steps: training batches between points; None: the trainer's ``log_every_n_steps``.
    """

    def __init__(self, every_n_steps: int | None = None) -> None:
        if every_n_steps is not None and every_n_steps < 1:
            raise ValueError(f"SpeedMonitor.every_n_steps must be >= 1, got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self.training_time_s = 0.0
        self._fit_started: float | None = None  # monotonic time this session's fit started
        self._time_before: float = 0.0  # training time of earlier sessions (restored from a checkpoint)
        self._start_step = 0  # the global step this session's fit started from
        self._total_steps = math.inf  # optimizer steps the epoch or step budget allows
        self._last_batch_end: float | None = None
        self._batch_start: float | None = None
        self._validation_started: float | None = None
        self._reset_window()

    def _reset_window(self) -> None:
        self._window_steps = 0
        self._window_images = 0
        self._window_step_s = 0.0
        self._window_data_s = 0.0

    # ---- the training clock -------------------------------------------------------------------
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._fit_started = time.monotonic()
        self._start_step = trainer.global_step
        self._total_steps = float(trainer.estimated_stepping_batches)  # inf without an epoch or step limit
        self._reset_window()
        if pl_module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(pl_module.device)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._tick()
        self._fit_started = None

    def _tick(self) -> None:
        """Bring ``training_time_s`` up to now while fitting."""
        if self._fit_started is not None:
            self.training_time_s = self._time_before + time.monotonic() - self._fit_started

    def state_dict(self) -> dict[str, Any]:
        self._tick()
        return {"training_time_s": float(self.training_time_s)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Resuming: this session's fit continues the stored clock. Lightning also restores callback
        # states when validating a checkpoint, after fit: the clock of a finished fit stays as it is.
        if self._fit_started is None and self.training_time_s == 0.0:
            self._time_before = float(state_dict.get("training_time_s", 0.0))
            self.training_time_s = self._time_before

    # ---- step and data time -------------------------------------------------------------------
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # The first batch's wait starts with the epoch (its loader starting its workers included).
        self._last_batch_end = time.monotonic()

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        self._batch_start = time.monotonic()

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._validation_started = time.monotonic()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # A validation inside an epoch (val_check_interval < 1) is not the next batch's step time.
        if self._validation_started is not None and self._last_batch_end is not None:
            self._last_batch_end += time.monotonic() - self._validation_started
        self._validation_started = None

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        now = time.monotonic()
        if self._last_batch_end is None or self._batch_start is None:
            self._last_batch_end = now
            return
        self._window_steps += 1
        self._window_images += _batch_size(batch) * trainer.world_size
        self._window_step_s += now - self._last_batch_end
        self._window_data_s += max(0.0, self._batch_start - self._last_batch_end)
        self._last_batch_end = now
        if self._window_steps >= (self.every_n_steps or trainer.log_every_n_steps):
            self._log(trainer, pl_module)

    def _log(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._tick()
        steps = self._window_steps
        metrics = {
            "speed/step_time_s": self._window_step_s / steps,
            "speed/data_time_s": self._window_data_s / steps,
            "speed/images_per_s": self._window_images / max(self._window_step_s, 1e-9),
        }
        eta = self.eta_s(trainer)
        if eta is not None:
            metrics["speed/eta_s"] = eta
        if pl_module.device.type == "cuda":
            metrics["speed/gpu_peak_memory_gib"] = torch.cuda.max_memory_allocated(pl_module.device) / GIB
            torch.cuda.reset_peak_memory_stats(pl_module.device)
        self._reset_window()
        if trainer.is_global_zero:
            # Lightning's own step for loggers (its LearningRateMonitor logs at it too), so these
            # points line up with train/loss; the global step runs one ahead after the optimizer step.
            step = getattr(trainer.fit_loop.epoch_loop, "_batches_that_stepped", trainer.global_step)
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=step)

    def eta_s(self, trainer: pl.Trainer) -> float | None:
        """Seconds until training ends (module docstring), or None before this session's first
        optimizer step or when neither steps nor time are limited."""
        steps_done = trainer.global_step - self._start_step
        if self._fit_started is None or steps_done <= 0:
            return None
        pace = (time.monotonic() - self._fit_started) / steps_done
        total = self._total_steps
        eta = max(0.0, total - trainer.global_step) * pace if math.isfinite(total) else None
        timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)
        remaining = timer.time_remaining() if timer is not None else None
        if remaining is None:
            return eta
        return float(remaining) if eta is None else min(eta, float(remaining))


def _batch_size(batch: Any) -> int:
    """Images in a ``(images, targets)`` batch; 1 for anything without a length."""
    if isinstance(batch, Sequence) and batch and hasattr(batch[0], "__len__"):
        return len(batch[0])
    return 1
